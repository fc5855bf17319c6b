"""`slapos node run` woken by our proxy (`/watchComputer`): full passes are an hour apart here,
so everything these tests see happened because the master pushed it."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

from tests.conftest import wait_for
from tests.fixtures.proxy import free_port
from tests.instance.conftest import REPO
from tests.instance.test_instance import fetch, running

from .test_daemon_poll import _get

PUSH_ONLY = {"run_instance_period": "3600", "run_poll_period": "3600"}


def slap_state(node, partition_id: str) -> str:
    conn = sqlite3.connect(f"file:{node.proxy.database}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT slap_state FROM partition WHERE reference = ?", (partition_id,)).fetchone()[0]
    finally:
        conn.close()


def test_push_request_change_destroy_and_hand_run(daemon_node):
    node, start = daemon_node(partitions=2, extra=PUSH_ONLY)
    url = node.install("web")
    daemon = start()
    daemon.wait_runs("instance", 0)  # the first full pass (nothing requested yet)
    wait_for(lambda: daemon.status()["daemon"]["master"]["mode"] == "push", what="push mode")

    # request → running, woken by the master
    port, other_port = free_port(), free_port()
    web = node.request(url, "web", {"port": str(port), "message": "first"})
    other = node.request(url, "other", {"port": str(other_port), "message": "other"})
    assert wait_for(lambda: _get(port), timeout=30, what="the web service").strip() == "first"
    running(node, other, "http-on-watch")
    attempt = wait_for(lambda: node.partition(other).load_state().last_attempt, what="the other's state")

    # parameter change → a pass over that partition only
    node.request(url, "web", {"port": str(port), "message": "second"})
    wait_for(lambda: (_get(port) or "").strip() == "second", timeout=30, what="the new message")
    last = daemon.wait_runs("instance", 0)["last_run"]
    assert node.buildout_runs(web) == 2 and node.buildout_runs(other) == 1
    assert node.partition(other).load_state().last_attempt == attempt
    wait_for(lambda: daemon.status()["daemon"]["runs"]["instance"]["last_run"]["scope"] == web,
             what=f"a pass over {web} only (last: {last})")

    # a hand-run `slapos node instance` while the daemon holds the lock: exit 10; the daemon goes on
    from slapos.grid.lock import RunLock

    with RunLock(node.root / "var" / "slapgrid-cp.pid", "the daemon's pass (simulated)"):
        hand = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "instance", "--now", "--cfg",
                               str(node.config_path)], capture_output=True, text=True, timeout=60, cwd=str(REPO))
        assert hand.returncode == 10, hand.stderr
        assert "already running" in hand.stderr
        # ... and the daemon, finding the lock held by someone else, skips and retries
        node.request(url, "web", {"port": str(port), "message": "third"})
        wait_for(lambda: daemon.status()["daemon"]["runs"]["instance"]["busy_skips"] > 0, what="a skipped pass")
        assert "pass skipped" in daemon.log()
    wait_for(lambda: (_get(port) or "").strip() == "third", timeout=30, what="the retried pass")

    # destroy → partition freed (the report pass runs at once)
    node.request(url, "other", {"port": str(other_port)}, state="destroyed")
    wait_for(lambda: slap_state(node, other) == "free", timeout=60, what=f"{other} freed")
    assert not node.processes(other)
    assert daemon.status()["daemon"]["runs"]["report"]["last_run"]["exit_code"] == 0
    assert daemon.stop() == 0, daemon.log()[-3000:]


def test_proxy_restart_reconnects_and_converges(daemon_node):
    node, start = daemon_node(partitions=1, extra=PUSH_ONLY)
    url = node.install("web")
    daemon = start()
    port = free_port()
    web = node.request(url, "web", {"port": str(port), "message": "before"})
    assert wait_for(lambda: _get(port), timeout=30, what="the web service").strip() == "before"
    wait_for(lambda: daemon.status()["daemon"]["master"]["mode"] == "push", what="push mode")

    proxy = node.proxy
    proxy.stop()
    wait_for(lambda: daemon.status()["daemon"]["master"]["mode"] == "offline", timeout=30, what="offline mode")
    # the same proxy (database, port) again: its change log is new, the daemon's cursor unknown → reset
    restarted = _restart(proxy)
    try:
        wait_for(lambda: daemon.status()["daemon"]["master"]["mode"] == "push", timeout=60, what="reconnected")
        node.request(url, "web", {"port": str(port), "message": "after"})
        wait_for(lambda: (_get(port) or "").strip() == "after", timeout=60, what="converged after the restart")
        assert node.buildout_runs(web) == 2
        assert daemon.status()["daemon"]["master"]["errors"] >= 1
        assert fetch(port).strip() == "after"
    finally:
        daemon.stop()
        restarted.stop()


def _restart(proxy):
    """Start `slapos proxy start` again on the stopped proxy's configuration (same port)."""
    import time

    from tests.fixtures.proxy import REPO as PROXY_REPO
    from tests.fixtures.proxy import _answers

    env_repo = str(PROXY_REPO)
    import os

    env = dict(os.environ, PYTHONPATH=env_repo)
    with open(proxy.log_path, "ab") as log:
        proxy.process = subprocess.Popen(
            [sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--cfg", str(proxy.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(proxy.directory), env=env)
    deadline = time.monotonic() + 30
    while not _answers(proxy.port):
        assert proxy.process.poll() is None and time.monotonic() < deadline, proxy.log()[-2000:]
        time.sleep(0.05)
    return proxy


def test_release_built_then_its_partition_deploys_at_once(daemon_node):
    """A partition requested before its release is built fails (back-off: a minute); the software
    pass that builds the release starts an instance pass, so it deploys in seconds."""
    node, start = daemon_node(partitions=1, extra={**PUSH_ONLY, "run_software_period": "3600"})
    daemon = start()
    wait_for(lambda: daemon.status()["daemon"]["master"]["mode"] == "push", what="push mode")
    release = str(REPO / "software-release" / "hello-web" / "software.cfg")
    node.proxy.connect().registerSupply().supply(release, node.computer_id)
    port = free_port()
    node.request(release, "hello", {"port": str(port), "message": "built and deployed"})
    answer = wait_for(lambda: _get(port), timeout=45, what="hello-web (well before the 60 s back-off)")
    assert answer.strip().startswith("built and deployed")
    assert daemon.stop() == 0
