"""The real `slapos-watchdog` listener, driven over the supervisord event-listener protocol.

A loopback HTTP master records the bangs (these tests are about the listener's decisions; the
end-to-end test with supervisord and our proxy is in test_report_e2e.py).
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slapos.grid.watchdog import BANG_STATE_FILE
from tests.slap.master import start_master

WATCHDOG = str(Path(sys.executable).with_name("slapos-watchdog"))


@pytest.fixture
def master():
    server = start_master()
    server.answer("softwareInstanceBang", "OK")
    try:
        yield server
    finally:
        server.stop()


class Listener:
    """supervisord's side of the protocol."""

    def __init__(self, instance_root: Path, master_url: str, *extra: str):
        self.serial = 0
        self.proc = subprocess.Popen(
            [WATCHDOG, "--master-url", master_url, "--computer-id", "COMP-T",
             "--instance-root", str(instance_root), "--timeout", "3", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.expect(b"READY\n")

    def _read(self, size: int) -> bytes:
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        assert ready, "the watchdog did not answer within 20 s"
        return os.read(self.proc.stdout.fileno(), size)

    def expect(self, data: bytes) -> None:
        got = b""
        while len(got) < len(data):
            chunk = self._read(len(data) - len(got))
            assert chunk, f"watchdog exited: {self.proc.stderr.read().decode()}"
            got += chunk
        assert got == data

    def event(self, eventname: str, process: str, group: str, **extra: str) -> None:
        self.serial += 1
        fields = {"processname": process, "groupname": group, "from_state": "RUNNING", **extra}
        payload = " ".join(f"{k}:{v}" for k, v in fields.items()).encode()
        header = (f"ver:3.0 server:supervisor serial:{self.serial} pool:watchdog poolserial:{self.serial} "
                  f"eventname:{eventname} len:{len(payload)}\n").encode()
        self.proc.stdin.write(header + payload)
        self.proc.stdin.flush()
        self.expect(b"RESULT 2\nOK")
        self.expect(b"READY\n")

    def crash(self, process: str = "web-on-watch", group: str = "slappart0") -> None:
        self.event("PROCESS_STATE_EXITED", process, group, expected="0", pid="4242")

    def close(self) -> str:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        return self.proc.stderr.read().decode()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def instance_root(tmp_path):
    root = tmp_path / "inst"
    for name in ("slappart0", "slappart1", "etc"):
        (root / name).mkdir(parents=True, mode=0o750)
        if os.geteuid() == 0 and name != "etc":
            os.chown(root / name, 65534, 65534)  # partitions belong to their user
    return root


@pytest.fixture
def listener(instance_root, master):
    with Listener(instance_root, master.url) as started:
        yield started


def bangs(master, partition="slappart0"):
    return [r for r in master.calls("softwareInstanceBang") if r.form.get("computer_partition_id") == partition]


def test_a_crash_bangs_once_until_the_program_runs_again(instance_root, master):
    with Listener(instance_root, master.url, "--stable-after", "0") as listener:
        _crash_bangs_once_until_the_program_runs_again(listener, instance_root, master)


def _crash_bangs_once_until_the_program_runs_again(listener, instance_root, master):
    (instance_root / "slappart0" / ".timestamp").write_text("1795625303.3630798")
    listener.crash()
    [bang] = bangs(master)
    assert bang.form == {
        "computer_id": "COMP-T", "computer_partition_id": "slappart0",
        "message": "web-on-watch process in partition slappart0 encountered a problem",
    }
    assert bang.headers["Authorization"] == "X-SlapPartition computer_id=COMP-T, computer_partition_id=slappart0"
    state = instance_root / "slappart0" / BANG_STATE_FILE
    assert float(state.read_text()) == 1795625303.3630798

    # another watched program of the same partition crashes: same trouble, no second bang
    listener.crash("db-on-watch")
    listener.event("PROCESS_STATE_FATAL", "web-on-watch", "slappart0")
    assert len(bangs(master)) == 1

    # running again → the next crash bangs again
    listener.event("PROCESS_STATE_RUNNING", "web-on-watch", "slappart0", pid="4343")
    listener.crash()
    assert len(bangs(master)) == 2
    assert "banged the master" in listener.close()


def test_a_flapping_service_bangs_once_and_a_stable_run_rearms(instance_root, master):
    """supervisord restarts crashed services itself: restart-crash cycles are one problem."""
    with Listener(instance_root, master.url, "--stable-after", "0.5") as listener:
        for _ in range(4):
            listener.event("PROCESS_STATE_RUNNING", "web-on-watch", "slappart0", pid="1")
            listener.crash()
        assert len(bangs(master)) == 1
        # a program that had been running for a while crashes: a new problem
        listener.event("PROCESS_STATE_RUNNING", "web-on-watch", "slappart0", pid="2")
        time.sleep(0.6)
        listener.crash()
        assert len(bangs(master)) == 2
        assert "already banged" in listener.close()


def test_a_newer_deployment_allows_a_new_bang(listener, master, instance_root):
    part = instance_root / "slappart0"
    (part / ".timestamp").write_text("100.5")
    listener.crash()
    listener.crash()
    assert len(bangs(master)) == 1
    (part / ".timestamp").write_text("200.25")  # the master reprocessed the partition
    listener.crash()
    assert len(bangs(master)) == 2


def test_what_is_not_watched_is_ignored(listener, master, instance_root):
    listener.crash(process="plain-daemon")  # etc/run program: not watched
    listener.event("PROCESS_STATE_EXITED", "web-on-watch", "slappart0", expected="1", pid="1")  # clean exit
    listener.crash(group="slappart9")  # no such partition
    listener.crash(group="..")
    os.symlink(instance_root / "slappart1", instance_root / "alias")
    listener.crash(group="alias")  # a symlink is not a partition directory
    listener.crash(group="etc")  # the node's own directory
    listener.event("PROCESS_STATE_EXITED", "watchdog", "watchdog", expected="0", pid="1")
    assert master.calls("softwareInstanceBang") == []
    listener.crash(group="slappart1")
    assert len(bangs(master, "slappart1")) == 1


def test_master_down_is_logged_and_the_next_crash_retries(instance_root, master):
    master.answer("softwareInstanceBang", "broken", status=500)
    with Listener(instance_root, master.url) as listener:
        listener.crash()
        assert not (instance_root / "slappart0" / BANG_STATE_FILE).exists()
        master.answer("softwareInstanceBang", "OK")
        listener.crash()
        assert len(bangs(master)) == 2
        assert (instance_root / "slappart0" / BANG_STATE_FILE).exists()
        assert "bang failed" in listener.close()


def test_tenant_traps_in_the_partition_do_not_block_or_redirect(listener, master, instance_root, tmp_path):
    part = instance_root / "slappart0"
    os.mkfifo(part / ".timestamp")  # reading must not block the listener
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    (part / BANG_STATE_FILE).symlink_to(victim)  # writing must not go through the link
    listener.crash()
    assert len(bangs(master)) == 1
    assert victim.read_text() == "root's file"
    assert not (part / BANG_STATE_FILE).is_symlink()
    assert (part / BANG_STATE_FILE).read_text().strip() == "0"


def test_partition_certificates_are_used_when_present(instance_root, master, tmp_path):
    repo = tmp_path / "certs"
    repo.mkdir()
    with Listener(instance_root, master.url, "--certificate-repository-path", str(repo)) as listener:
        listener.crash(group="slappart1")  # no certificate yet: bangs anyway, with a warning
        assert len(bangs(master, "slappart1")) == 1
        assert "no certificate" in listener.close()


def test_help_and_bad_header():
    assert "supervisord event listener" in subprocess.run(
        [WATCHDOG, "--help"], capture_output=True, text=True, check=True).stdout
    proc = subprocess.run(
        [WATCHDOG, "--master-url", "http://127.0.0.1:9/", "--computer-id", "C", "--instance-root", "/nonexistent"],
        input=b"garbage\n", capture_output=True, timeout=20,
    )
    assert proc.returncode != 0
    assert b"not a supervisord event header" in proc.stderr
