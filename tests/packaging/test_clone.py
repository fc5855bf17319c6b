"""The README's two commands, `make test` and `make demo`, from a fresh `git clone` of this
repository (its HEAD), where a newcomer puts it: as root in a 0700 directory whose path holds a
space, with HOME unset; and as an ordinary user (created here, prefix `tpkg`) in a path with a
space below their 0700, read-only home. The Makefile must arrange by itself what the node's
unprivileged users need (tools/stage.py) and say so in one line; `make demo-stop` and `make clean`
undo it.

Running the whole suite again inside a test would double CI's time and recurse into these very
tests: the inner `make test` runs a small representative selection (INNER_TESTS, through the
Makefile's PYTEST_ARGS: the base layer, and one real software build run as the build user), and
SLAPNODE_CLONE_TEST_INNER=1 skips this module inside it. The inner `make demo` runs whole, on free
ports (SLAPNODE_DEMO_WEB_PORT / SLAPNODE_DEMO_PROXY_PORT). Each case creates a virtualenv from the
package registry's wheels (the pip cache helps), so both are marked slow (and registry).
"""
from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
# in the Makefile's staging copy (tools/stage.py), the git checkout is the one it was copied from
_ORIGIN = REPO / ".stage-origin"
SOURCE = Path(_ORIGIN.read_text().strip()) if _ORIGIN.exists() else REPO
INNER_TESTS = ("tests/base/test_config.py tests/base/test_http_policy.py "
               "tests/software/test_node_software.py::test_first_run_builds_reports_and_isolates_failure "
               "-n 0")
NOISE = re.compile(r"deprecat|compat editable|!!|A new release of pip|The directory '.*' .*not owned", re.I)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.registry,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(bool(os.environ.get("SLAPNODE_CLONE_TEST_INNER")), reason="inside a clone test: no recursion"),
    pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make"),
    pytest.mark.skipif(not (SOURCE / ".git").exists(), reason="not a git checkout (an sdist): nothing to clone"),
]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _environment(home: str | None, **extra: str) -> dict[str, str]:
    """The caller's environment without what would leak our own run into the clone's: make's
    variables (SLAPNODE_STAGED would stop the staging), the virtualenv, pytest's and slapos'."""
    drop = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "HOME")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("SLAPNODE_", "SLAPOS_", "PYTEST_"))}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if home is not None:
        env["HOME"] = home
    web, proxy = _free_ports(2)
    env.update(SLAPNODE_CLONE_TEST_INNER="1", SLAPNODE_DEMO_WEB_PORT=str(web), SLAPNODE_DEMO_PROXY_PORT=str(proxy),
               **extra)
    return env


def _make(checkout: Path, target: str, env: dict[str, str], user: pwd.struct_passwd | None = None,
          *variables: str, timeout: float = 900) -> str:
    kwargs = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    result = subprocess.run(["make", target, *variables], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                            check=False, **kwargs)
    assert result.returncode == 0, f"make {target} failed (exit {result.returncode}):\n{result.stdout[-6000:]}"
    return result.stdout


def _clone(destination: Path) -> None:
    # --no-hardlinks: the clone may be given to another user; its objects must be its own files
    subprocess.run(["git", "-c", "safe.directory=*", "clone", "-q", "--no-hardlinks", str(SOURCE), str(destination)], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)


def _stage_of(checkout: Path, uid: int) -> Path:
    digest = hashlib.sha256(os.fsencode(checkout)).hexdigest()[:12]
    base = Path("/var/lib/slapnode-stage") if uid == 0 else Path(f"/tmp/slapnode-stage-{uid}")
    return base / digest


def _check_readme_commands(checkout: Path, env: dict[str, str], stage: Path, basetemp: Path,
                           user: pwd.struct_passwd | None = None) -> None:
    try:
        test_output = _make(checkout, "test", env, user, f"PYTEST_ARGS={INNER_TESTS} --basetemp={basetemp}")
        said = [line for line in test_output.splitlines() if line.startswith("make: running in ")]
        assert len(said) == 1 and str(stage) in said[0] and "make clean" in said[0], test_output
        assert re.search(r"^\d+ passed", test_output, re.M), test_output
        assert not re.search(r"\d+ (failed|error)", test_output), test_output
        noise = [line for line in test_output.splitlines() if NOISE.search(line)]
        assert noise == [], noise
        assert (stage / ".venv" / "bin" / "slapos").exists()
        st = stage.stat()
        assert st.st_mode & 0o022 == 0 and st.st_uid == (user.pw_uid if user else 0)

        demo_output = _make(checkout, "demo", env, user)
        assert re.search(r"^Done in [\d.]+ s: the instance hello of hello-web answers on http://127\.0\.0\.1:"
                         + env["SLAPNODE_DEMO_WEB_PORT"] + "/$", demo_output, re.M), demo_output
        assert [line for line in demo_output.splitlines() if NOISE.search(line)] == []

        stop_output = _make(checkout, "demo-stop", env, user)
        assert "Stopped;" in stop_output, stop_output
    finally:
        subprocess.run(["make", "demo-stop"], cwd=checkout, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=120, check=False, **({"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
                                                    if user else {}))
        clean_output = _make(checkout, "clean", env, user, timeout=120)
    assert f"removed the staging copy {stage}" in clean_output, clean_output
    assert not stage.exists()


@pytest.mark.root
def test_readme_commands_as_root_in_a_0700_directory_with_a_space(tmp_path):
    top = Path(tempfile.mkdtemp(prefix="slapnode-clone-", dir=tmp_path))  # 0700
    os.chmod(top, 0o700)
    checkout = top / "my checkout"
    _clone(checkout)
    stage = _stage_of(checkout, 0)
    env = _environment(home=None)  # HOME unset
    _check_readme_commands(checkout, env, stage, basetemp=tmp_path / "inner-pt")


@pytest.fixture
def ordinary_user():
    name = f"tpkg{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
    user = pwd.getpwnam(name)
    try:
        yield user
    finally:
        for p in psutil.process_iter(["pid", "uids"]):  # what the tests started as that user, by pid
            if p.info["uids"] and p.info["uids"].real == user.pw_uid:
                try:
                    os.kill(p.info["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        shutil.rmtree(f"/tmp/slapnode-stage-{user.pw_uid}", ignore_errors=True)


@pytest.mark.root
def test_readme_commands_as_an_ordinary_user_in_their_read_only_home(ordinary_user, tmp_path):
    user = ordinary_user
    home = Path(user.pw_dir)
    checkout = home / "src" / "my checkout"
    checkout.parent.mkdir()
    _clone(checkout)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home / "src")], check=True)
    os.chmod(home, 0o500)  # 0700-like and read-only: no ~/.cache, no ~/.slapos
    basetemp = Path(tempfile.mkdtemp(prefix="pt-tpkg-"))
    os.chown(basetemp, user.pw_uid, user.pw_gid)
    try:
        env = _environment(home=str(home), USER=user.pw_name, LOGNAME=user.pw_name)
        _check_readme_commands(checkout, env, _stage_of(checkout, user.pw_uid), basetemp / "inner", user)
    finally:
        os.chmod(home, 0o700)
        shutil.rmtree(basetemp, ignore_errors=True)
