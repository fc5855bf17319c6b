"""The attack suite's set-up: real tenant users, a victim file root alone can reach, and helpers
that play the tenant (a process switched to the partition user's uid) before the node's real
commands run.

    victim                 a file in a root-only (0700) temporary directory; `victim.check()`
                           fails the test if its content, mode, owner or date changed
    tenant_users           two users made for the session (`tsecfs<pid>u0`, `...u1`), deleted
                           afterwards
    as_user(user, code)    run Python `code` as that user (setgroups/setgid/setuid), with a timeout

Every test here is marked `root`: without root there are no users to switch to.
"""
from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.instance.conftest import instance_node  # noqa: F401 - fixtures used by the suite
from tests.report.conftest import report_node  # noqa: F401

PREFIX = "tsecfs"
SECRET = b"root's secret: never in a tenant's hands\n"
# what the agent's environment holds and a tenant must never see
ROOT_ENV = {"SLAPNODE_SECRET_TOKEN": "x-root-token-4242", "SSH_AUTH_SOCK": "/tmp/tsecfs-agent.sock",
            "AWS_SECRET_ACCESS_KEY": "tsecfs-aws-secret"}
COMMAND_TIMEOUT = 120  # a command that blocks on a planted FIFO fails the test instead of hanging

pytestmark = pytest.mark.root


@dataclass
class Victim:
    directory: Path
    path: Path
    before: tuple

    def state(self) -> tuple:
        st = os.lstat(self.path)
        return self.path.read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink

    def check(self) -> None:
        now = self.state()
        assert now[0] == self.before[0], "root wrote into the victim file"
        assert now[1:5] == self.before[1:5], f"the victim's mode/owner/date changed: {self.before[1:5]} -> {now[1:5]}"
        assert sorted(os.listdir(self.directory)) == ["secret"], "root created something next to the victim"


@pytest.fixture
def victim():
    directory = Path(tempfile.mkdtemp(prefix="tsecfs-victim-"))  # 0700, root's
    path = directory / "secret"
    path.write_bytes(SECRET)
    os.chmod(path, 0o600)
    v = Victim(directory, path, ())
    v.before = v.state()
    yield v
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class User:
    name: str
    uid: int
    gid: int


def _delete_user(name: str) -> None:
    """Delete one of our test users, ending first (by pid) what still runs as it: a daemon a
    test's tenant left, a build killed with its agent."""
    import psutil

    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if uid is not None:
        left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(left, timeout=5)
    subprocess.run(["userdel", name], capture_output=True, check=False)
    with_group = subprocess.run(["getent", "group", name], capture_output=True, check=False)
    if with_group.returncode == 0:
        subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def tenant_users():
    """Two real users (a tenant, a software builder) for the session; deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    users = []
    for index in range(2):
        # one pair per pytest process (each xdist worker is one): two workers, or two test sessions
        # on one machine, must not delete each other's users
        name = f"{PREFIX}{os.getpid() % 100000}u{index}"
        _delete_user(name)  # a leftover of an interrupted session
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        users.append(User(name, entry.pw_uid, grp.getgrnam(name).gr_gid))
    try:
        yield users
    finally:
        for user in users:
            _delete_user(user.name)


def as_user(user: User, code: str, timeout: float = 30) -> str:
    """Run `code` (Python) as `user`, really: the kernel, not us, decides what it may do."""

    def demote():
        os.setgroups([user.gid])
        os.setgid(user.gid)
        os.setuid(user.uid)

    proc = subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(code)], preexec_fn=demote, cwd="/",
                          capture_output=True, text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, f"the tenant's code failed: {proc.stderr}"
    return proc.stdout


def give_tree(path: Path, user: User) -> None:
    """chown -R (no link followed): hand a partition or a release to one of our users."""
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)
    os.chown(path, user.uid, user.gid, follow_symlinks=False)


def plant(user: User, path: Path, kind: str, victim: Victim) -> None:
    """As the tenant, put a `symlink` to the victim, a `fifo` or a `directory` at `path`
    (parents made as the tenant). A `hardlink` is made by root on its behalf: the kernel
    (fs.protected_hardlinks) stops a tenant linking a file it cannot write, but a node must not
    rely on that sysctl, so the attack is staged as if it were off."""
    if kind == "hardlink":
        as_user(user, f"import os; os.makedirs({str(path.parent)!r}, exist_ok=True)")
        if path.exists() or path.is_symlink():
            path.unlink()
        os.link(victim.path, path)
        return
    action = {"symlink": f"os.symlink({str(victim.path)!r}, p)", "fifo": "os.mkfifo(p)",
              "directory": "os.mkdir(p)"}[kind]
    as_user(user, f"""
        import os
        p = {str(path)!r}
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if os.path.lexists(p):
            os.unlink(p)
        {action}
    """)


def agent_env() -> dict[str, str]:
    """The environment the agent runs with in these tests: ours plus planted root secrets."""
    from tests.conftest import REPO

    return dict(os.environ, PYTHONPATH=str(REPO), **ROOT_ENV)


def slapos(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """The real `slapos` command, with secrets in its environment, that must finish in time."""
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args], capture_output=True, text=True,
                          env=agent_env(), timeout=timeout, stdin=subprocess.DEVNULL)
