"""`slapos node run` against a master it polls (`--poll`: any SLAP master without push)."""
from __future__ import annotations

from tests.conftest import wait_for
from tests.fixtures.proxy import free_port
from tests.instance.test_instance import fetch, running


def test_polling_daemon_deploys_changes_and_stops_cleanly(daemon_node, tmp_path):
    logs = tmp_path / "logs"
    node, start = daemon_node(partitions=2, extra={"run_log_directory": str(logs), "run_collect_period": "1"})
    url = node.install("web")
    port, other_port = free_port(), free_port()
    daemon = start("--poll")
    web = node.request(url, "web", {"port": str(port), "message": "first"})
    other = node.request(url, "other", {"port": str(other_port), "message": "other"})
    # request → running, without any command by hand
    assert wait_for(lambda: _get(port), timeout=60, what="the web service").strip() == "first"
    assert fetch(other_port).strip() == "other"
    running(node, other, "http-on-watch")
    attempt = wait_for(lambda: node.partition(other).load_state().last_attempt, what="the other's state")

    # parameter change → only that partition redeployed
    node.request(url, "web", {"port": str(port), "message": "second"})
    wait_for(lambda: (_get(port) or "").strip() == "second", timeout=30, what="the new message")
    assert node.buildout_runs(web) == 2 and node.buildout_runs(other) == 1
    assert node.partition(other).load_state().last_attempt == attempt  # not processed again

    status = daemon.status()
    assert status["schema"] == "slapnode.status/1" and status["source"] == "daemon"
    assert status["daemon"]["master"]["mode"] == "polling"
    assert status["daemon"]["runs"]["instance"]["last_run"]["exit_code"] == 0
    assert {p["partition"]: p["status"] for p in status["partitions"]}[web] == "ok"

    # SIGTERM → exit 0, its lock and socket gone, the services left running
    assert daemon.stop() == 0, daemon.log()[-3000:]
    assert not daemon.socket.exists()
    assert not (node.root / "var" / "slapos-node-run.pid").exists()
    assert not (node.root / "var" / "slapgrid-cp.pid").exists()
    assert fetch(port).strip() == "second"
    # run_log_directory: each command's lines in the cron block's files, as well as the daemon's output
    instance_log = (logs / "slapos-node-instance.log").read_text()
    assert f"{web}: running buildout" in instance_log and f"{other}: running buildout" in instance_log
    assert "collect:" not in instance_log and "sampled" in (logs / "slapos-node-collect.log").read_text()
    assert f"{web}: running buildout" in daemon.log()


def _get(port: int) -> str | None:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
    except OSError:
        return None


def test_master_without_push_is_polled(daemon_node):
    """Against a master without /watchComputer the daemon finds out by itself and polls."""
    from .conftest import OtherMaster

    node, start = daemon_node(partitions=1)
    other = OtherMaster(node.proxy.port)
    try:
        node.config_path.write_text(node.config_path.read_text().replace(node.master_url, other.url))
        url = node.install("web")
        daemon = start()  # no --poll
        wait_for(lambda: daemon.status()["daemon"]["master"]["mode"] == "polling", what="polling mode")
        port = free_port()
        node.request(url, "web", {"port": str(port), "message": "polled"})
        assert wait_for(lambda: _get(port), timeout=60, what="the web service").strip() == "polled"
        node.request(url, "web", {"port": str(port), "message": "polled again"})
        wait_for(lambda: (_get(port) or "").strip() == "polled again", timeout=30, what="the change")
        assert "does not serve watchComputer" in daemon.log()
        assert daemon.stop() == 0
    finally:
        other.stop()
