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
from typing import BinaryIO

from slapos.base.errors import PrivilegeError, SlapOSError

# The only variables a child of the node inherits from the agent (buildouts, services through
# supervisord, promises, destroy hooks, report scripts): everything else (tokens, SSH_AUTH_SOCK,
# AWS_*, the agent's PYTHON* and locale) stays with root. The proxy variables are the node
# operator's way out to the network, which builds need.
INHERITED_ENV = (
    "TZ", "http_proxy", "https_proxy", "ftp_proxy", "no_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY",
)
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


def clean_environment(home: str | Path, extra_path: Sequence[str] = (), *, user: str | None = None,
                      tmpdir: str | Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of every child the node starts for a tenant or a build (and of
    supervisord itself): an allow-list, never the agent's own environment.

    PATH (the agent's, or the system default, after `extra_path`), HOME, USER and LOGNAME
    (`user`, else the owner of `home`), SHELL, LANG=C.UTF-8 (builds must not depend on the
    operator's locale: no LC_*), TZ and the proxy variables when set, TMPDIR (`tmpdir`, else
    `<home>/tmp` when it is a directory), PYTHONNOUSERSITE, then `extra`."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    path = os.environ.get("PATH") or DEFAULT_PATH
    if extra_path:
        path = os.pathsep.join([*extra_path, path])
    if user is None:
        try:
            user = pwd.getpwuid(os.stat(home).st_uid).pw_name
        except (OSError, KeyError):
            user = str(os.getuid())
    tmp = Path(tmpdir) if tmpdir is not None else Path(home) / "tmp"
    env.update(PATH=path, HOME=str(home), USER=user, LOGNAME=user, SHELL="/bin/sh", LANG="C.UTF-8",
               PYTHONNOUSERSITE="true")
    if os.path.isdir(tmp):
        env["TMPDIR"] = str(tmp)
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


def open_log(log_file: str | Path | BinaryIO | None) -> BinaryIO | None:
    """The file a child's output is appended to: a path is opened here (a place of the node's
    own); an open binary file is used as given (the caller opened it safely in a tenant's tree,
    see `tenantfs.open_append`) and left open."""
    if log_file is None:
        return None
    if isinstance(log_file, (str, os.PathLike)):
        return open(log_file, "ab")
    return log_file


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
    log_file: str | Path | BinaryIO | None = None,
    on_line: Callable[[str], None] | None = None,
    max_output: int = 1 << 20,
) -> Result:
    """Run argv (no shell), stdin closed, stdout+stderr merged and captured line by line.

    On timeout the whole process tree is killed and ProcessTimeout raised.
    """
    start = time.monotonic()
    log = open_log(log_file)
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
        if log is not None and log is not log_file:
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
        if log is not None and log is not log_file:
            log.close()
    return Result(returncode, output.decode("utf-8", "replace"), time.monotonic() - start)
