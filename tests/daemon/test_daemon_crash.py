"""`slapos node run` killed at the worst moments: the next start converges (the crash tests of
`slapos node instance` and `slapos node software` apply to the daemon too)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import wait_for
from tests.fixtures.proxy import free_port
from tests.instance.conftest import REPO
from tests.instance.test_instance import running
from tests.software.conftest import software_dir, software_states
from tests.software.test_node_software import _alive, _slow_release

from .test_daemon_poll import _get


def _gone(pid: int) -> bool:
    return not _alive(pid)


def test_sigkill_mid_instance_build_then_next_start_converges(daemon_node):
    node, start = daemon_node(partitions=1)
    url = node.install("slow")
    partition = node.request(url, "slow")
    flag = node.partition_path(partition) / ".slow-flag"
    daemon = start("--poll")
    wait_for(flag.exists, timeout=30, what="buildout sleeping")
    sleeper = int(flag.read_text())

    # the daemon holds the instance lock during its pass: a hand-run command exits 10
    hand = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "instance", "--now", "--cfg",
                           str(node.config_path)], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert hand.returncode == 10, hand.stderr
    assert "already running" in hand.stderr
    assert daemon.status()["daemon"]["activity"] == ["instance: full pass"]

    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait(10)
    wait_for(lambda: _gone(sleeper), what="the buildout killed with the daemon")

    again = start("--poll", log_name="daemon2.log")  # the stale socket and pidfiles are taken over
    running(node, partition, "idle-on-watch")
    wait_for(lambda: node.partition(partition).load_state().status == "ok", timeout=30, what="state ok")
    assert list(node.partition_path(partition).rglob("*.tmp")) == []
    assert again.stop() == 0


def test_long_build_does_not_hold_back_instances_and_sigkill_mid_build_converges(daemon_node, tmp_path):
    logs = tmp_path / "logs"
    node, start = daemon_node(partitions=1, extra={"run_software_period": "1", "run_instance_period": "3600",
                                                   "run_log_directory": str(logs)})
    slow = _slow_release(tmp_path / "slow")
    node.proxy.connect().registerSupply().supply(slow, node.computer_id)
    path = software_dir(node, slow)
    daemon = start()  # push mode: the instance pass below is started by the master's change
    wait_for(lambda: (path / "started").exists(), timeout=60, what="the slow build")
    builder = int((path / "started").read_text())

    # a partition whose release is there deploys while the long build goes on
    web_url = node.install("web")
    port = free_port()
    node.request(web_url, "web", {"port": str(port), "message": "not held back"})
    assert wait_for(lambda: _get(port), timeout=30, what="the web service").strip() == "not held back"
    assert _alive(builder) and daemon.status()["daemon"]["runs"]["software"]["running"]

    os.kill(daemon.process.pid, signal.SIGKILL)  # no cleanup possible by the daemon itself
    daemon.process.wait(10)
    # its child `slapos node software` is told by the kernel (parent death signal) and stops the build
    wait_for(lambda: _gone(builder), timeout=30, what="the orphaned build stopped")

    (path / "skip").write_text("")  # the rebuild goes through the slow part at once
    again = start(log_name="daemon2.log")
    wait_for(lambda: (path / ".completed").exists(), timeout=120, what="the release built")
    wait_for(lambda: software_states(node.proxy.database)[slow]["reported"] == "available", timeout=30,
             what="reported available")
    assert _get(port).strip() == "not held back"
    assert "[slow " in (logs / "slapos-node-software.log").read_text()  # the child's output, as under cron
    assert again.stop() == 0


def test_sigterm_mid_instance_build_abandons_cleanly_then_converges(daemon_node):
    """SIGTERM waits for the running pass at most run_stop_timeout, then exits 0 anyway: locks
    released, the buildout ended with it, and the next start converges."""
    node, start = daemon_node(partitions=1, extra={"run_stop_timeout": "2"})
    url = node.install("slow")
    partition = node.request(url, "slow")
    flag = node.partition_path(partition) / ".slow-flag"
    daemon = start("--poll")
    wait_for(flag.exists, timeout=30, what="buildout sleeping")
    sleeper = int(flag.read_text())
    assert daemon.stop(timeout=30) == 0
    assert "abandoned" in daemon.log()
    for pidfile in ("slapgrid-cp.pid", "slapos-node-run.pid"):
        assert not (node.root / "var" / pidfile).exists() or _unlocked(node.root / "var" / pidfile)
    wait_for(lambda: _gone(sleeper), what="the abandoned buildout ended")

    again = start("--poll", log_name="daemon2.log")
    running(node, partition, "idle-on-watch")
    wait_for(lambda: node.partition(partition).load_state().status == "ok", timeout=30, what="state ok")
    assert again.stop() == 0


def _unlocked(pidfile) -> bool:
    import fcntl

    with open(pidfile) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
