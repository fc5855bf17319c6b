"""The daemon's status endpoint, `slapos node status --daemon`, its lock, SIGHUP, back-off."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from slapos.cli.service_files import service_text
from tests.conftest import wait_for
from tests.fixtures.proxy import free_port
from tests.instance.conftest import REPO

from .test_daemon_poll import _get


def slapos(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args, "--cfg", str(node.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))


def test_status_endpoint_lock_sighup_and_backoff(daemon_node):
    node, start = daemon_node(partitions=2)
    good_url, bad_url = node.install("web"), node.install("fail")
    port = free_port()
    good = node.request(good_url, "good", {"port": str(port), "message": "fine"})
    bad = node.request(bad_url, "bad")
    daemon = start("--poll")
    # a partition that keeps failing backs off; the other deploys, and its changes are not delayed
    assert wait_for(lambda: _get(port), timeout=60, what="the good service").strip() == "fine"
    wait_for(lambda: node.partition(bad).load_state().failures == 1, what="the bad partition failed")
    node.request(good_url, "good", {"port": str(port), "message": "changed"})
    wait_for(lambda: (_get(port) or "").strip() == "changed", timeout=30, what="the good partition's change")
    daemon.wait_runs("instance", daemon.runs("instance"))  # one more full pass: the bad one waits
    assert node.buildout_runs(bad) == 1 and node.partition(bad).load_state().failures == 1

    # the documented JSON, from the socket (0600) and through `slapos node status --daemon`
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    result = slapos(node, "node", "status", "--daemon", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "slapnode.status/1" and doc["source"] == "daemon" and doc["computer"] == node.computer_id
    d = doc["daemon"]
    assert d["pid"] == daemon.process.pid and d["state"] == "running"
    assert set(d["runs"]) == {"software", "instance", "report", "collect", "format"}
    instance = d["runs"]["instance"]
    assert instance["period"] == 1 and instance["runs"] >= 2 and instance["failed_runs"] >= 1
    assert instance["last_run"]["exit_code"] == 1 and instance["last_run"]["scope"] == "full pass"
    assert set(instance["last_run"]) == {"started", "duration", "exit_code", "scope"}
    assert d["runs"]["format"]["period"] == 0  # run_format_period = 0: off
    assert set(d["queue"]) == {"partitions", "software_releases", "full_passes"}
    assert d["master"]["mode"] == "polling" and d["master"]["url"] == node.master_url
    records = {p["partition"]: p for p in doc["partitions"]}
    assert records[bad]["status"] == "waiting" and records[bad]["backoff"]["failures"] == 1
    assert records[bad]["backoff"]["next_retry"] and "broken on purpose" in records[bad]["last_error"]
    assert records[good]["status"] == "ok"

    table = slapos(node, "node", "status", "--daemon").stdout
    assert "KIND" in table and "instance" in table and "polling" in table and bad in table

    from slapos.grid.daemon_status import query

    metrics = query(daemon.socket, "/metrics").decode()
    assert 'slapos_daemon_runs_total{kind="instance"}' in metrics
    assert 'slapos_daemon_last_exit_code{kind="instance"} 1' in metrics
    assert "slapos_daemon_master_push 0" in metrics

    # a second daemon on the same node: exit 10, the first goes on
    second = slapos(node, "node", "run", "--poll")
    assert second.returncode == 10 and "already running" in second.stderr, second.stderr
    assert daemon.process.poll() is None

    # SIGHUP: slapos.cfg read again
    text = node.config_path.read_text().replace("run_instance_period = 2", "run_instance_period = 7")
    text = text.replace("run_poll_period = 1", "run_poll_period = 30")
    node.config_path.write_text(text)
    daemon.process.send_signal(1)
    wait_for(lambda: daemon.status()["daemon"]["runs"]["instance"]["period"] == 7, what="the new period")
    assert "configuration reloaded" in daemon.log()

    assert daemon.stop() == 0
    gone = slapos(node, "node", "status", "--daemon")
    assert gone.returncode == 1 and "daemon not running" in gone.stderr


def test_unit_files(tmp_path):
    cfg = tmp_path / "slapos.cfg"
    cfg.write_text("[slapos]\n")
    unit = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "run", "--print-systemd-unit",
                           "--cfg", str(cfg)], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert unit.returncode == 0, unit.stderr
    assert f"node run --cfg {cfg}" in unit.stdout and "KillMode=process" in unit.stdout
    program = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "run",
                              "--print-supervisord-program", "--cfg", str(cfg)],
                             capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert "[program:slapos-node]" in program.stdout
    # the copies in contrib/ are the same text for the default paths
    for kind, path in (("systemd", "contrib/systemd/slapos-node.service"),
                       ("supervisord", "contrib/supervisord/slapos-node.conf")):
        assert (REPO / path).read_text() == service_text(kind, executable="/usr/local/bin/slapos")
