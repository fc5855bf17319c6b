"""`slapos node software` end to end: real proxy, real formatted node, real buildout runs, the real CLI.

The tests of this module share one node (module-scoped) and run in file order: the first run
builds `hello` and fails `broken`; later tests rely on that state and restrict themselves with
--only-sr so each costs at most one buildout run.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slapos.grid.lock import RunLock
from slapos.grid.software import COMPLETED, LOG_DIRECTORY, LOG_NAME, software_key
from tests.conftest import IS_ROOT, REPO
from tests.fixtures.proxy import free_port

from .conftest import BROKEN, HELLO, copy_release, run_software, software_dir, software_states, supply


def build_count(node, url: str) -> int:
    """How many builds the release's log records (one header line per buildout run)."""
    log = software_dir(node, url) / LOG_DIRECTORY / LOG_NAME
    if not log.exists():
        return 0
    return log.read_text().count("slapos node software: building")


def test_first_run_builds_reports_and_isolates_failure(shared_node):
    node = shared_node
    supply(node, HELLO)
    supply(node, BROKEN)
    run = run_software(node.config_path, "--jobs", "2")
    assert run.returncode == 1, run.output

    states = software_states(node.proxy.database)
    assert states[HELLO]["reported"] == "available"
    assert states[BROKEN]["reported"] == "error"
    # the master gets the tail of the build log, naming the failing part and the recipe's message
    assert "Installing broken" in states[BROKEN]["error_log"]
    assert "this part fails on purpose" in states[BROKEN]["error_log"]

    hello = software_dir(node, HELLO)
    assert (hello / COMPLETED).is_file()
    assert not (software_dir(node, BROKEN) / COMPLETED).exists()
    # ${:_profile_base_location_} resolved to hello/ although the part lives in an extended profile chain
    assert (hello / "greeting.txt").read_text() == "hello from a software release\n"
    # the generated profile extends the release, and bin/buildout re-runs it by hand
    assert f"extends = {HELLO}" in (hello / "buildout.cfg").read_text()
    assert os.access(hello / "bin" / "buildout", os.X_OK)

    # every console line of a build names its release; the failure is one readable line
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert any(line.startswith("[hello ") and "installing part greeting" in line for line in lines), run.output
    assert any(line.startswith("error: [broken ") and "fails on purpose" in line for line in lines), run.output
    assert "1 built, 1 failed" in run.output
    assert "unused option" not in (hello / LOG_DIRECTORY / LOG_NAME).read_text()

    if IS_ROOT:  # built as the owner of software_root, never as root
        assert (hello / "greeting.txt").stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert (hello / "bin").stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_rerun_of_a_built_release_is_a_noop(shared_node):
    node = shared_node
    completed = software_dir(node, HELLO) / COMPLETED
    before = completed.stat().st_mtime_ns
    run = run_software(node.config_path, "--only-sr", software_key(HELLO))
    assert run.returncode == 0, run.output
    assert build_count(node, HELLO) == 1
    assert completed.stat().st_mtime_ns == before
    assert "1 up-to-date" in run.output


def test_only_sr_restricts_without_forcing(shared_node):
    node = shared_node
    broken_builds = build_count(node, BROKEN)
    run = run_software(node.config_path, "--only-sr", BROKEN)
    assert run.returncode == 1, run.output
    assert build_count(node, BROKEN) == broken_builds + 1
    assert build_count(node, HELLO) == 1  # not touched
    assert "[hello" not in run.output


def test_develop_rebuilds_a_completed_release(shared_node):
    node = shared_node
    run = run_software(node.config_path, "--only-sr", HELLO, "--develop")
    assert run.returncode == 0, run.output
    assert build_count(node, HELLO) == 2
    assert software_states(node.proxy.database)[HELLO]["reported"] == "available"
    # --force is the reference's spelling of the same thing
    run = run_software(node.config_path, "--only", software_key(HELLO), "--force")
    assert run.returncode == 0, run.output
    assert build_count(node, HELLO) == 3


NOOP_PROBE = """
import json, sys
import slapos.slap.connection as slap_connection
calls = []
original = slap_connection.Connection._call
def counting(self, method, endpoint, *args, **kwargs):
    calls.append(f"{method} {self.url(endpoint)}")
    return original(self, method, endpoint, *args, **kwargs)
slap_connection.Connection._call = counting
from slapos.cli.main import main
code = main(sys.argv[1:])
heavy = [m for m in ("zc.buildout", "slapos.grid.buildout", "slapos.grid.cache", "psutil", "cryptography")
         if m in sys.modules]
print(json.dumps({"code": code, "calls": calls, "heavy": heavy}))
"""


def test_noop_path_makes_one_master_call_and_imports_no_builder(shared_node):
    import json

    node = shared_node
    proc = subprocess.run(
        [sys.executable, "-c", NOOP_PROBE, "node", "software", "--cfg", str(node.config_path), "--now",
         "--only-sr", HELLO],
        capture_output=True, text=True, cwd=str(REPO), timeout=60,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr
    assert len(result["calls"]) == 1 and "getFullComputerInformation" in result["calls"][0], result
    assert result["heavy"] == [], "the no-op path must stay cheap"


def test_destruction_waits_for_partitions_then_removes(shared_node, tmp_path):
    node = shared_node
    url = copy_release(HELLO, tmp_path / "doomed")
    supply(node, url)
    assert run_software(node.config_path, "--only-sr", url).returncode == 0
    path = software_dir(node, url)
    assert (path / COMPLETED).exists()

    link = node.instance_root / node.partition_ids[0] / "software_release"
    link.symlink_to(path)
    try:
        supply(node, url, "destroyed")
        run = run_software(node.config_path, "--only-sr", url)
        assert run.returncode == 0, run.output
        assert path.is_dir(), "removed while a partition still uses it"
        assert "still used by partition " + node.partition_ids[0] in run.output
        assert software_states(node.proxy.database)[url]["requested"] == "destroyed"
    finally:
        link.unlink()

    run = run_software(node.config_path, "--only-sr", url)
    assert run.returncode == 0, run.output
    assert not path.exists()
    assert url not in software_states(node.proxy.database)  # destroyedSoftwareRelease deletes the row
    assert not list(node.software_root.glob(".*destroy*"))


REMOTE_PROFILE = """\
[buildout]
extends = {common}
parts = where
[where]
recipe = slapnode-testrecipe:write
content = ${{:_profile_base_location_}}
output = ${{buildout:directory}}/where.txt
"""


def test_release_served_over_http(shared_node, tmp_path):
    """The usual case: the release URL is http(s); buildout fetches it into extends-cache."""
    from .conftest import DATA, serve_directory

    (tmp_path / "www" / "sr").mkdir(parents=True)
    (tmp_path / "www" / "sr" / "software.cfg").write_text(REMOTE_PROFILE.format(common=DATA / "common.cfg"))
    with serve_directory(tmp_path / "www") as base_url:
        url = f"{base_url}/sr/software.cfg"
        supply(shared_node, url)
        run = run_software(shared_node.config_path, "--only-sr", url)
        assert run.returncode == 0, run.output
    path = software_dir(shared_node, url)
    assert (path / "where.txt").read_text() == f"{base_url}/sr"
    assert list((path / "extends-cache").iterdir()), "the remote profile was not cached"
    assert software_states(shared_node.proxy.database)[url]["reported"] == "available"


SLOW_PROFILE = """\
[buildout]
extends = {common}
parts = slow
[slow]
recipe = slapnode-testrecipe:sleep
started = ${{buildout:directory}}/started
skip-if = ${{buildout:directory}}/skip
seconds = 300
"""


def _slow_release(release: Path) -> str:
    from tests.conftest import make_traversable

    from .conftest import DATA

    release.mkdir()
    (release / "software.cfg").write_text(SLOW_PROFILE.format(common=DATA / "common.cfg"))
    os.chmod(release, 0o755)
    os.chmod(release / "software.cfg", 0o644)
    make_traversable(release)
    return str(release / "software.cfg")


def test_killed_build_is_cleaned_up_and_rebuilt(shared_node, tmp_path):
    node = shared_node
    url = _slow_release(tmp_path / "slow")
    supply(node, url)
    path = software_dir(node, url)

    agent = subprocess.Popen(
        [sys.executable, "-m", "slapos.cli.main", "node", "software", "--cfg", str(node.config_path), "--now",
         "--only-sr", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=str(REPO),
    )
    builder_pid = None
    try:
        deadline = time.monotonic() + 60
        while not (path / "started").exists():
            assert agent.poll() is None, "the agent ended before the build started"
            assert time.monotonic() < deadline, "the slow part never started"
            time.sleep(0.05)
        builder_pid = int((path / "started").read_text())
        os.kill(agent.pid, signal.SIGKILL)  # kill -9 mid-build: no cleanup possible
        agent.wait(10)
        assert _alive(builder_pid), "the orphaned build should still be running"

        (path / "skip").write_text("")  # the rebuild goes through the part quickly
        run = run_software(node.config_path, "--only-sr", url)
        assert run.returncode == 0, run.output
        assert "left running in" in run.output  # the orphan was found and killed, not raced with
        assert not _alive(builder_pid)
        assert (path / COMPLETED).exists()
        assert software_states(node.proxy.database)[url]["reported"] == "available"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if builder_pid and _alive(builder_pid):
            os.kill(builder_pid, signal.SIGKILL)


def test_build_timeout_kills_the_build_and_reports(shared_node, tmp_path):
    node = shared_node
    release = tmp_path / "forever"
    url = _slow_release(release)
    supply(node, url)
    start = time.monotonic()
    run = run_software(node.config_path, "--only-sr", url, "--buildout-timeout", "3")
    assert run.returncode == 1, run.output
    assert time.monotonic() - start < 60
    assert "ran longer than 3 s and was killed" in run.output
    builder = int((software_dir(node, url) / "started").read_text())
    assert not _alive(builder), "the build's process tree must be killed"
    assert "was killed" in software_states(node.proxy.database)[url]["error_log"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_lock_held_gives_exit_10_and_stale_lock_is_taken_over(shared_node):
    node = shared_node
    from slapos.base.config import Config

    pidfile = Path(Config(node.config_path).get("slapos", "pidfile_software"))
    with RunLock(pidfile, "test holder"):
        run = run_software(node.config_path, "--only-sr", HELLO)
    assert run.returncode == 10, run.output
    assert "already running" in run.output

    pidfile.write_text("999999\n")  # left by a crashed run: nobody holds the lock
    run = run_software(node.config_path, "--only-sr", HELLO)
    assert run.returncode == 0, run.output
    assert not pidfile.exists()


def test_unreachable_master_is_one_clear_line(shared_node, tmp_path):
    text = shared_node.config_path.read_text().replace(shared_node.master_url, f"http://127.0.0.1:{free_port()}/")
    config = tmp_path / "slapos.cfg"
    config.write_text(text)
    run = run_software(config)
    assert run.returncode == 1
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 1, run.output
    assert lines[0].startswith("error: cannot get the software list of computer")


def test_bad_min_free_space_is_one_configuration_line(shared_node, tmp_path):
    text = shared_node.config_path.read_text().replace("[slapos]\n", "[slapos]\nsoftware_min_free_space = lots\n", 1)
    config = tmp_path / "slapos.cfg"
    config.write_text(text)
    run = run_software(config)
    assert run.returncode == 1
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert lines == ["error: [slapos] software_min_free_space 'lots' is not a size like 1000M or 2G"], run.output


@pytest.mark.root
def test_refuses_to_build_as_root_with_a_clear_message(shared_node, tmp_path):
    root_owned = tmp_path / "root-soft"
    root_owned.mkdir()
    run = run_software(shared_node.config_path, "--only-sr", HELLO, "--software-root", str(root_owned))
    assert run.returncode == 1, run.output
    assert "refusing to run buildout for software releases as root" in run.output
    states = software_states(shared_node.proxy.database)
    assert "refusing to run buildout" in states[HELLO]["error_log"]
    # the real software root is untouched: hello is still complete there
    assert (software_dir(shared_node, HELLO) / COMPLETED).exists()


@pytest.mark.root
def test_root_check_exit_5_for_a_non_root_user(tmp_path):
    from tests.conftest import make_traversable

    make_traversable(tmp_path)
    os.chmod(tmp_path, 0o755)
    config = tmp_path / "slapos.cfg"
    config.write_text(
        "[slapos]\ncomputer_id = c\nmaster_url = http://127.0.0.1:1/\n"
        f"software_root = {tmp_path}/soft\ninstance_root = {tmp_path}/inst\n"
    )
    os.chmod(config, 0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "slapos.cli.main", "node", "software", "--cfg", str(config), "--now"],
        capture_output=True, text=True, user="nobody", cwd="/", timeout=60,
    )
    assert proc.returncode == 5, proc.stderr
    assert "root_check = false" in proc.stderr
