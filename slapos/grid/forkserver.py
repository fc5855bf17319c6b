"""A fork server for instance buildouts: import zc.buildout once, fork a child per partition.

Starting a Python that imports zc.buildout costs about 0.25 s; running a small instance profile
once it is imported costs a few milliseconds. A node deploying a hundred partitions would spend
most of its time starting interpreters. So `slapos node instance` starts one server process
(`python -I -u -m slapos.grid.forkserver FD`, the same interpreter, flags and module that
`slapos.grid.buildout.run_buildout` runs) which imports buildout and then, for each request,
forks a child that:

* becomes a session leader (a timeout kills its whole process tree),
* writes its output to a pipe the node hands over with the request (SCM_RIGHTS),
* joins the partition's cgroup, then drops to the partition user (groups, gid, uid) and umask 027, changes to the partition
  directory, replaces its environment with the sanitised one,
* runs `slapos.grid.buildout_extension.main(args)`, exactly what `run_buildout` runs.

The server is single-threaded (forking from the threaded node would be unsafe) and exits when
the node closes its socket, killing the children still running (a killed node must not leave
buildouts writing into partitions while the next run starts).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from slapos.base.errors import SlapOSError

MAX_MESSAGE = 1 << 20


class ForkServerGone(SlapOSError):
    """The fork server could not start or stopped: run buildout the plain way instead."""


# -- server (child process) -------------------------------------------------------------------------
def _child(request: dict, out_fd: int) -> None:
    """In the forked child: set up and run buildout; never returns."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.closerange(3, 65536)
        os.umask(request.get("umask", 0o027))
        uid = request.get("uid")
        if request.get("cgroup"):  # as root, before the drop (slapos.grid.cgroup)
            from slapos.grid.cgroup import join

            join(request["cgroup"])
        if uid is not None:
            os.setgroups(request.get("groups") or [request["gid"]])
            os.setgid(request["gid"])
            os.setuid(uid)
            if os.getuid() == 0 or os.geteuid() == 0:
                raise RuntimeError("privilege drop failed")
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["buildout", *request["argv"]]
        from slapos.grid import buildout_extension

        code = buildout_extension.main(list(request["argv"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # report, then exit: never return into the server loop
        with contextlib.suppress(Exception):
            os.write(2, f"slapos fork server: {type(e).__name__}: {e}\n".encode())
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    # preload what every child needs, once
    from slapos.grid import buildout_extension, cgroup  # noqa: F401

    buildout_extension.install_parse_hook()
    import zc.buildout.buildout  # noqa: F401
    import zc.buildout.easy_install  # noqa: F401

    gc.freeze()  # what is loaded now stays shared with the children (no copy on write by the GC)

    children: dict[int, int] = {}  # pid -> request id
    try:
        sock.send(json.dumps({"ready": os.getpid()}).encode())
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the agent finished (or died) before we were ready: nothing to serve, nothing to say
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "sock")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    try:
        while True:
            for key, _ in selector.select(1.0):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 4096):
                            pass
                    continue
                try:
                    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
                except ConnectionResetError:
                    data, fds = b"", []
                if not data:
                    return 0
                request = json.loads(data)
                out_fd = fds[0]
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    _child(request, out_fd)
                os.close(out_fd)
                children[pid] = request["id"]
                sock.send(json.dumps({"id": request["id"], "pid": pid}).encode())
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                request_id = children.pop(pid, None)
                if request_id is not None:
                    code = os.waitstatus_to_exitcode(status)
                    sock.send(json.dumps({"id": request_id, "status": code}).encode())
    finally:
        for pid in children:  # the node went away: its buildouts must not run on
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        for pid in list(children):
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


# -- client (in the node) -----------------------------------------------------------------------------
class _Waiter:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.status: int | None = None
        self.error: str | None = None
        self.event = threading.Event()
        self.started = threading.Event()


class ForkServer:
    """The node's handle on the fork server; thread-safe, started lazily by `run()`."""

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._next_id = 0
        self._dead: str | None = None
        self._groups_cache: dict[tuple[str, int], list[int]] = {}

    @property
    def alive(self) -> bool:
        """Started and not stopped (a long-running caller keeps it between runs while alive)."""
        return self._sock is not None and not self._dead

    def start(self, timeout: float = 60.0) -> None:
        with self._lock:
            if self._sock is not None:
                return
            if self._dead:
                raise ForkServerGone(self._dead)
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            from .process import clean_environment  # the server's own: each child gets the build's

            env = clean_environment("/", tmpdir="/tmp")
            try:
                self._proc = subprocess.Popen(
                    [self.python, "-I", "-u", "-m", "slapos.grid.forkserver", str(child.fileno())],
                    pass_fds=[child.fileno()], env=env, cwd="/", stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, close_fds=True,
                )
            finally:
                child.close()
            parent.settimeout(timeout)
            try:
                hello = json.loads(parent.recv(MAX_MESSAGE) or b"{}")
            except (OSError, ValueError):
                hello = {}
            if "ready" not in hello:
                parent.close()
                self._kill()
                self._dead = "the buildout fork server did not start"
                raise ForkServerGone(self._dead)
            parent.settimeout(None)
            self._sock = parent
            threading.Thread(target=self._read, name="forkserver-reader", daemon=True).start()

    def _kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            waiter = self._waiters.get(message.get("id"))
            if waiter is None:
                continue
            if "pid" in message:
                waiter.pid = message["pid"]
                waiter.started.set()
            if "status" in message:
                waiter.status = message["status"]
                waiter.event.set()
        self._dead = "the buildout fork server stopped"
        for waiter in list(self._waiters.values()):
            waiter.error = self._dead
            waiter.started.set()
            waiter.event.set()

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            if self._proc is not None:
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._kill()
                self._proc = None

    def _groups(self, identity) -> list[int]:
        from .process import supplementary_groups

        key = (identity.name, identity.gid)
        if key not in self._groups_cache:
            self._groups_cache[key] = supplementary_groups(identity)
        return self._groups_cache[key]

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: str | Path,
        env: dict[str, str],
        identity=None,
        umask: int = 0o027,
        timeout: float | None = None,
        log_file: str | Path | BinaryIO | None = None,
        on_line: Callable[[str], None] | None = None,
        max_output: int = 1 << 20,
    ):
        """Run buildout with `args` in a forked child; a `slapos.grid.process.Result`."""
        from .process import ProcessTimeout, Result, kill_tree, open_log, pump_output

        self.start()
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        request = {"argv": list(args), "cwd": str(cwd), "env": env, "umask": umask, "uid": None}
        if identity is not None:
            request.update(uid=identity.uid, gid=identity.gid, groups=self._groups(identity),
                           cgroup=list(getattr(identity, "cgroup", ())))
        waiter = _Waiter()
        read_fd, write_fd = os.pipe()
        with self._send_lock:
            self._next_id += 1
            request["id"] = self._next_id
            self._waiters[request["id"]] = waiter
            try:
                if self._sock is None or self._dead:
                    raise ForkServerGone(self._dead or "the buildout fork server is not running")
                socket.send_fds(self._sock, [json.dumps(request).encode()], [write_fd])
            except OSError as e:
                self._waiters.pop(request["id"], None)
                os.close(read_fd)
                raise ForkServerGone(f"the buildout fork server is gone: {e}") from None
            finally:
                os.close(write_fd)
        log = open_log(log_file)
        try:
            output = pump_output(read_fd, deadline, log, on_line, max_output)
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not waiter.event.wait(wait):
                raise TimeoutError
            if waiter.error:
                raise ForkServerGone(waiter.error)
        except TimeoutError:
            waiter.started.wait(5)
            if waiter.pid:
                kill_tree(waiter.pid)
            waiter.event.wait(10)
            raise ProcessTimeout(f"buildout timed out after {timeout:g} s and was killed") from None
        except BaseException:
            waiter.started.wait(5)
            if waiter.pid:
                kill_tree(waiter.pid)
            raise
        finally:
            os.close(read_fd)
            if log is not None and log is not log_file:
                log.close()
            self._waiters.pop(request["id"], None)
        status = waiter.status if waiter.status is not None else 1
        return Result(status, output.decode("utf-8", "replace"), time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m slapos.grid.forkserver FD (started by slapos node instance)", file=sys.stderr)
        return 5
    return serve(int(args[0]))


if __name__ == "__main__":
    sys.exit(main())
