"""Running children for the node: as the owner of the directory they work in, with a clean
environment, an optional timeout that kills the whole process tree, and output captured line
by line into a log file (and a callback, for progress on the console).

Never runs anything as uid 0 on behalf of a software release or partition: when the agent is
root, the child drops to the directory owner; when that owner is root itself, we refuse with a
sentence that says why and what to change (the reference only says "preexec_fn failed").
"""
from __future__ import annotations

import grp
import os
import pwd
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slapos.base.errors import PrivilegeError, SlapOSError

# Variables that would leak the agent's Python or locale into a build (reference §6.11).
_DROPPED_ENV = {
    "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONY2K", "PYTHONOPTIMIZE", "PYTHONDEBUG",
    "PYTHONDONTWRITEBYTECODE", "PYTHONINSPECT", "PYTHONUNBUFFERED", "PYTHONVERBOSE", "CONFIG_SITE",
    "ENV", "LOGNAME", "USER", "TEMP", "TMP", "TMPDIR", "LANG", "LANGUAGE", "VIRTUAL_ENV",
    "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID",
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ProcessTimeout(SlapOSError):
    """A child ran longer than its timeout; its whole process tree was killed."""


@dataclass(frozen=True)
class Identity:
    """Who a child runs as."""

    uid: int
    gid: int
    name: str
    home: str
    # `cgroup.procs` files the child writes its pid into before dropping privileges (the
    # partition's cgroup: see slapos.grid.cgroup)
    cgroup: tuple[str, ...] = ()

    @classmethod
    def owner_of(cls, path: str | Path) -> Identity:
        st = os.stat(path)
        try:
            pw = pwd.getpwuid(st.st_uid)
            name, home = pw.pw_name, pw.pw_dir
        except KeyError:
            name, home = str(st.st_uid), str(path)
        return cls(st.st_uid, st.st_gid, name, home)

    @classmethod
    def current(cls) -> Identity:
        uid = os.getuid()
        try:
            pw = pwd.getpwuid(uid)
            return cls(uid, os.getgid(), pw.pw_name, pw.pw_dir)
        except KeyError:
            return cls(uid, os.getgid(), str(uid), os.environ.get("HOME", "/"))


def identity_for(directory: str | Path, what: str) -> Identity | None:
    """The identity a child working in `directory` must run as, or None to stay as we are.

    When we are root, the child runs as the directory's owner, which must not be root.
    """
    if os.geteuid() != 0:
        return None
    ident = Identity.owner_of(directory)
    if ident.uid == 0 or ident.gid == 0:
        raise PrivilegeError(
            f"refusing to run {what} as root: {directory} is owned by uid {ident.uid} gid {ident.gid}; "
            "buildout and services run as the owner of their directory, so give it to an unprivileged "
            "user (slapos node format does this for partitions and the software root)",
            exit_code=1,
        )
    return ident


def clean_environment(home: str | Path, extra_path: Sequence[str] = (), **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV and not k.startswith("LC_")}
    path = env.get("PATH") or DEFAULT_PATH
    if extra_path:
        path = os.pathsep.join([*extra_path, path])
    env["PATH"] = path
    env["HOME"] = str(home)
    env["PYTHONNOUSERSITE"] = "true"
    env["LANG"] = "C.UTF-8"
    env.update(extra)
    return env


def supplementary_groups(ident: Identity) -> list[int]:
    """The groups `ident` runs with. Computed in the parent: the group database must not be
    read in a child forked from a threaded process (another thread may hold its lock)."""
    try:
        groups = [g.gr_gid for g in grp.getgrall() if ident.name in g.gr_mem]
    except Exception:
        groups = []
    return sorted({ident.gid, *groups})


def _demote(ident: Identity | None, umask: int | None, groups: list[int] | None = None) -> Callable[[], None]:
    if ident is not None and groups is None:
        groups = supplementary_groups(ident)
    from .cgroup import join as join_cgroup  # imported here: a child must not import

    def preexec() -> None:
        if umask is not None:
            os.umask(umask)
        if ident is None:
            return
        if ident.cgroup:  # as root, before the drop: the tenant cannot leave it afterwards
            join_cgroup(ident.cgroup)
        os.setgroups(groups)
        os.setgid(ident.gid)
        os.setuid(ident.uid)
        if os.getuid() == 0 or os.geteuid() == 0:
            raise RuntimeError("privilege drop failed")

    return preexec


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Kill a child and everything it started: children are session leaders (start_new_session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        import psutil  # stragglers that left the process group

        for child in psutil.Process(pid).children(recursive=True):
            try:
                child.send_signal(sig)
            except psutil.Error:
                pass
    except Exception:
        pass


@dataclass
class Result:
    returncode: int
    output: str  # the captured output (tail-trimmed to max_output bytes)
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def pump_output(
    fd: int,
    deadline: float | None,
    log=None,
    on_line: Callable[[str], None] | None = None,
    max_output: int = 1 << 20,
) -> bytes:
    """Read a child's output until EOF: copied to `log` as it comes, split into lines for
    `on_line`, and the last `max_output` bytes returned. TimeoutError at `deadline`."""
    chunks: list[bytes] = []
    size = 0
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError
            if not sel.select(wait):
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            if log:
                log.write(data)
                log.flush()
            chunks.append(data)
            size += len(data)
            while size > max_output * 2 and len(chunks) > 1:
                size -= len(chunks.pop(0))
            if on_line:
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
    if on_line and pending:
        on_line(pending.decode("utf-8", "replace"))
    return b"".join(chunks)[-max_output:]


def run(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: dict[str, str] | None = None,
    identity: Identity | None = None,
    umask: int | None = 0o027,
    timeout: float | None = None,
    log_file: str | Path | None = None,
    on_line: Callable[[str], None] | None = None,
    max_output: int = 1 << 20,
) -> Result:
    """Run argv (no shell), stdin closed, stdout+stderr merged and captured line by line.

    On timeout the whole process tree is killed and ProcessTimeout raised.
    """
    start = time.monotonic()
    log = open(log_file, "ab") if log_file else None
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_demote(identity, umask),
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        if log:
            log.close()
        raise SlapOSError(f"cannot run {argv[0]}: {e.strerror}") from None
    deadline = start + timeout if timeout else None
    try:
        assert proc.stdout is not None
        output = pump_output(proc.stdout.fileno(), deadline, log, on_line, max_output)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        returncode = proc.wait(remaining)
    except (subprocess.TimeoutExpired, TimeoutError):
        kill_tree(proc.pid)
        proc.wait()
        raise ProcessTimeout(f"{Path(argv[0]).name} timed out after {timeout:g} s and was killed") from None
    except BaseException:
        kill_tree(proc.pid)
        proc.wait()
        raise
    finally:
        if proc.stdout:
            proc.stdout.close()
        if log:
            log.close()
    return Result(returncode, output.decode("utf-8", "replace"), time.monotonic() - start)
