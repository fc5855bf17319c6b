import os
import signal
import subprocess
import sys
import time

import pytest

from slapos.base.errors import LockedError, PrivilegeError
from slapos.grid import process
from slapos.grid.lock import RunLock

HOLD_LOCK = """
import sys, time
from slapos.grid.lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_run_is_refused_with_exit_10(tmp_path):
    pidfile = tmp_path / "run.pid"
    with RunLock(pidfile):
        assert pidfile.read_text().strip() == str(os.getpid())
        with pytest.raises(LockedError) as err:
            RunLock(pidfile).acquire()
        assert err.value.exit_code == 10
        assert str(os.getpid()) in str(err.value)
    assert not pidfile.exists()


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    pidfile = tmp_path / "run.pid"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(pidfile)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(LockedError):
            RunLock(pidfile).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert pidfile.exists()  # stale file left behind by kill -9
        with RunLock(pidfile):
            assert pidfile.read_text().strip() == str(os.getpid())
    finally:
        holder.kill()
        holder.wait()


def test_run_captures_output_and_code(tmp_path):
    lines = []
    log = tmp_path / "out.log"
    result = process.run(
        ["sh", "-c", 'echo one; echo two >&2; echo "$HOME"; exit 3'],
        cwd=tmp_path,
        env=process.clean_environment(tmp_path),
        log_file=log,
        on_line=lines.append,
    )
    assert result.returncode == 3 and not result.ok
    assert lines == ["one", "two", str(tmp_path)]
    assert log.read_text() == result.output


def test_clean_environment_drops_python_leaks(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/evil")
    monkeypatch.setenv("LC_ALL", "xx")
    env = process.clean_environment(tmp_path, extra_path=["/opt/x/bin"])
    assert "PYTHONPATH" not in env and "LC_ALL" not in env
    assert env["HOME"] == str(tmp_path)
    assert env["PATH"].startswith("/opt/x/bin:")


def test_timeout_kills_the_whole_tree(tmp_path):
    marker = tmp_path / "grandchild.pid"
    start = time.monotonic()
    with pytest.raises(process.ProcessTimeout, match="timed out after 0.5 s"):
        process.run(["sh", "-c", f"sleep 30 & echo $! > {marker}; wait"], cwd=tmp_path, timeout=0.5)
    assert time.monotonic() - start < 5
    grandchild = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("grandchild survived the timeout")


@pytest.mark.root
def test_refuses_to_run_as_root_with_a_clear_reason(tmp_path):
    os.chown(tmp_path, 0, 0)
    with pytest.raises(PrivilegeError, match="refusing to run buildout as root"):
        process.identity_for(tmp_path, "buildout")


@pytest.mark.root
def test_drops_to_the_directory_owner(open_tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    work = open_tmp_path / "work"
    work.mkdir()
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    ident = process.identity_for(work, "a test")
    result = process.run(["id", "-u"], cwd=work, identity=ident, env=process.clean_environment(work))
    assert result.output.strip() == str(nobody.pw_uid)
