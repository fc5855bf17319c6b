"""Run the proxy on waitress (a production multi-threaded WSGI server), in the foreground.

One process by default. With `[slapproxy] workers = N` (`--workers N`) the parent reserves the
port, forks N worker processes that each run waitress on their own listening socket bound to it
with SO_REUSEPORT (the kernel spreads new connections evenly over them), and supervises them: a
worker that dies is replaced, SIGTERM/SIGINT stop them all cleanly. One Python process is capped
at one core by the GIL; workers are how the proxy uses the others. They share the database
safely: writes are serialised across processes and cached documents invalidated in all of them
(`db.ProcessGate`).
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from slapos.base.errors import SlapOSError, UsageError

from .app import ProxyApp, make_app, new_run_id
from .config import ProxyConfig, is_loopback

log = logging.getLogger("slapos.proxy")

STOP_TIMEOUT = 15.0  # seconds a worker gets to finish its requests before SIGKILL
FAST_EXIT = 5.0  # a worker dying sooner than this after its start counts as a failed start
MAX_FAST_EXITS = 5  # ... and this many in a row stop the proxy: something is broken, say so


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def check_listen_address(config: ProxyConfig) -> None:
    if is_loopback(config.host):
        return
    if not config.allow_remote:
        raise UsageError(
            f"refusing to listen on {config.host}: the proxy has no authentication, anyone reaching it can "
            "request, destroy and read every instance; pass --allow-remote (or [slapproxy] allow_remote = true) "
            "if that is what you want"
        )
    log.warning(
        "listening on %s, not on loopback: the proxy has NO authentication; anyone who can reach it can "
        "request and destroy instances and read their connection parameters (passwords)", config.host
    )


def _listen_error(config: ProxyConfig, e: OSError) -> SlapOSError:
    hint = "choose another port ([slapproxy] port or --port)" if e.errno == errno.EADDRINUSE else "check host and port"
    return SlapOSError(f"cannot listen on {config.host}:{config.port}: {e.strerror}; {hint}")


def _host_error(config: ProxyConfig, e: ValueError) -> SlapOSError:
    """waitress refuses a host it cannot resolve with a ValueError."""
    reason = str(e).rstrip(".")
    return SlapOSError(f"cannot listen on {config.host}:{config.port}: {reason}; check [slapproxy] host (or --host)")


def _waitress_server(app: ProxyApp, config: ProxyConfig, sockets: list[socket.socket] | None = None):
    import waitress

    # "Task queue depth is N" fires whenever a keep-alive client sends its next request before
    # the thread that answered the previous one is back in the pool: under concurrent load that is
    # most requests, and writing the warning costs more than answering them
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    body_limit = config.max_request_size * 2
    if config.shacache_directories:
        # binary cache uploads are large; waitress spools big bodies to a temporary file, and the
        # SLAP routes still refuse anything over max_request_size from its Content-Length
        body_limit = max(body_limit, 8 << 30)
    where: dict = {"sockets": sockets} if sockets else {"host": config.host, "port": config.port}
    return waitress.create_server(
        app,
        **where,
        threads=config.threads,
        ident="slapproxy",
        # our own limit answers with a one-line 413 first; waitress' is the backstop for
        # bodies far beyond it, which it refuses before buffering them whole
        max_request_body_size=body_limit,
        channel_timeout=120,
        connection_limit=1000,
        asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True,
        expose_tracebacks=False,
    )


def create_server(config: ProxyConfig, app: ProxyApp | None = None):
    """A bound waitress server (not yet serving) and the app behind it."""
    check_listen_address(config)
    app = app or make_app(config)
    try:
        server = _waitress_server(app, config)
    except OSError as e:
        app.close()
        raise _listen_error(config, e) from None
    except ValueError as e:  # waitress: unresolvable host
        app.close()
        raise _host_error(config, e) from None
    return server, app


def serve(config: ProxyConfig, on_ready: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit code."""
    if config.workers > 1:
        return WorkerPool(config).run(on_ready)
    server, app = create_server(config)
    url = url_of(config.host, server.effective_port)

    def stop(signum, frame):  # waitress' loop ends on SystemExit and shuts its threads down
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        log.info(
            "slapproxy listening on %s (database %s, computer %s, %d threads)",
            url, config.database, config.computer_id, config.threads,
        )
        if on_ready is not None:
            on_ready(url)
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        app.close()
        log.info("slapproxy on %s stopped", url)
    return 0


# -- several worker processes -------------------------------------------------------------------
def _reusable_socket(family: int, socktype: int, proto: int) -> socket.socket:
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_addresses(config: ProxyConfig) -> list[socket.socket]:
    """Bound, not listening, SO_REUSEPORT sockets for every address `config.host` names (as
    waitress would bind them): they hold the port (port 0 becomes a real one) and tell the workers
    where to listen. Not listening, they never receive a connection themselves.

    Why one listening socket per worker rather than one shared: on a shared socket every worker
    wakes for every connection and the first one scheduled takes it, so a burst of keep-alive
    connections can all land on one worker; SO_REUSEPORT spreads them by a hash of their addresses."""
    from waitress.adjustments import Adjustments

    if not hasattr(socket, "SO_REUSEPORT"):
        raise SlapOSError("[slapproxy] workers > 1 needs SO_REUSEPORT (Linux); use workers = 1 here")
    try:
        listen = Adjustments(host=config.host, port=config.port).listen
    except ValueError as e:  # unresolvable host
        raise _host_error(config, e) from None
    sockets: list[socket.socket] = []
    try:
        for family, socktype, proto, sockaddr in listen:
            sock = _reusable_socket(family, socktype, proto)
            sockets.append(sock)
            if config.port == 0 and sockets[:-1]:  # port 0 and several addresses: one port for all
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise _listen_error(config, e) from None
    return sockets


def listen_like(reserved: list[socket.socket]) -> list[socket.socket]:
    """A worker's own listening sockets on the reserved addresses."""
    sockets: list[socket.socket] = []
    try:
        for template in reserved:
            sock = _reusable_socket(template.family, template.type, template.proto)
            sockets.append(sock)
            sock.bind(template.getsockname())
            sock.listen(1024)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies, even by SIGKILL: a worker left
    alone would keep serving the port with no one to stop it."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        raise SystemExit(0)


def _drain(fd: int) -> int:
    """Read what a non-blocking pipe holds; return the number of bytes."""
    count = 0
    try:
        while True:
            data = os.read(fd, 512)
            if not data:
                return count
            count += len(data)
    except BlockingIOError:
        return count


@dataclass
class Worker:
    index: int
    pid: int
    started: float


class WorkerPool:
    """The supervisor of `config.workers` waitress processes on one port."""

    def __init__(self, config: ProxyConfig):
        self.config = config
        self.workers: dict[int, Worker] = {}
        self.reserved: list[socket.socket] = []
        self.run_id = new_run_id()  # one for the proxy: a client must not see it change per worker
        self.stopping = False
        self.failed: str | None = None
        self.fast_exits = 0
        self.ready = 0  # workers that said they listen (a byte each on the ready pipe)
        self._wakeup: tuple[int, int] = (-1, -1)  # written by the signal handlers
        self._ready: tuple[int, int] = (-1, -1)  # written by each worker once it listens
        self._pid = os.getpid()

    # -- parent ---------------------------------------------------------------------------------
    def run(self, on_ready: Callable[[str], None] | None = None) -> int:
        from .db import Database, ProcessGate, gate_path

        config = self.config
        check_listen_address(config)
        # create or upgrade the schema once, here, before any worker opens the file
        Database.open(config.database).close()
        try:
            ProcessGate(gate_path(config.database)).close()
        except OSError as e:
            raise SlapOSError(
                f"cannot use {gate_path(config.database)} (the workers' lock file): {e.strerror}; "
                "remove whatever is in its place"
            ) from None
        self.reserved = reserve_addresses(config)
        url = url_of(config.host, self.reserved[0].getsockname()[1])
        self._wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ready = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        previous_wakeup = signal.set_wakeup_fd(self._wakeup[1])
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the select below
        announced = False
        try:
            for index in range(config.workers):
                self._spawn(index)
            while not self.stopping:
                if not announced and self.ready >= config.workers:
                    announced = True
                    log.info(
                        "slapproxy listening on %s (database %s, computer %s, %d workers × %d threads)",
                        url, config.database, config.computer_id, config.workers, config.threads,
                    )
                    if on_ready is not None:
                        on_ready(url)
                self._wait()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (*self._wakeup, *self._ready):
                os.close(fd)
            for sock in self.reserved:
                sock.close()
            log.info("slapproxy on %s stopped", url)
        if self.failed:
            raise SlapOSError(self.failed)
        return 0

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def _spawn(self, index: int) -> None:
        for stream in (sys.stdout, sys.stderr):  # or buffered output would be written twice
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            pid = os.fork()
        except OSError as e:  # out of processes or memory: stop rather than serve short-handed
            self.failed = f"cannot start proxy worker {index}: {e.strerror}"
            self.stopping = True
            return
        if pid == 0:
            self._worker(index)  # never returns
        self.workers[pid] = Worker(index, pid, time.monotonic())
        log.debug("worker %d started (pid %d)", index, pid)

    def _wait(self) -> None:
        """Sleep until a signal, a worker's exit or a worker's readiness; handle them."""
        self._reap()
        if self.stopping:
            return
        try:
            select.select([self._wakeup[0], self._ready[0]], [], [], 1.0)
        except InterruptedError:
            pass
        _drain(self._wakeup[0])
        self.ready += _drain(self._ready[0])
        self._reap()

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None or self.stopping:
                continue
            lifetime = time.monotonic() - worker.started
            self.fast_exits = self.fast_exits + 1 if lifetime < FAST_EXIT else 0
            if self.fast_exits >= MAX_FAST_EXITS:
                self.failed = (
                    f"proxy workers keep failing at start ({self.fast_exits} in a row, last: {_describe(status)}): "
                    "see the log above"
                )
                self.stopping = True
                return
            log.warning(
                "worker %d (pid %d) died after %.0f s (%s): starting another",
                worker.index, pid, lifetime, _describe(status),
            )
            self._spawn(worker.index)

    def _stop_all(self) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.workers and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                break
            if pid == 0:
                time.sleep(0.02)
                continue
            worker = self.workers.pop(pid, None)
            if worker is not None and status != 0:
                log.warning("worker %d (pid %d) stopped with %s", worker.index, pid, _describe(status))
        for pid, worker in list(self.workers.items()):
            log.warning("worker %d (pid %d) did not stop within %.0f s: killing it", worker.index, pid, STOP_TIMEOUT)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.workers.clear()

    # -- child ----------------------------------------------------------------------------------
    def _worker(self, index: int) -> None:
        """Body of a forked worker: serve until SIGTERM/SIGINT, then leave with os._exit (never
        return into the supervisor's code)."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in (*self._wakeup, self._ready[0]):
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, _exit_once)
            signal.signal(signal.SIGINT, _exit_once)
            _die_with_parent(self._pid)
            code = _serve_worker(self.config, self.reserved, self._ready[1], self.run_id, index)
        except SystemExit:
            code = 0
        except BaseException:
            log.exception("worker %d (pid %d) failed", index, os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)


def _exit_once(signum, frame) -> None:
    """Stop on the first SIGTERM/SIGINT; ignore the next ones (Ctrl-C reaches the whole process
    group, then the supervisor sends SIGTERM) so they cannot interrupt the shutdown itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(0)


def _serve_worker(config: ProxyConfig, reserved: list[socket.socket], ready: int, run_id: str, index: int) -> int:
    from .db import Database

    app = make_app(config, Database.open(config.database, shared=True))
    app.run_id = run_id
    app.requests.worker = index  # its request counters are its own: a label keeps them apart
    try:
        sockets = listen_like(reserved)
        for sock in reserved:  # the supervisor's; this process only needs its own
            sock.close()
        server = _waitress_server(app, config, sockets=sockets)
        os.write(ready, b"r")
        os.close(ready)
        log.debug("worker %d (pid %d) serving", index, os.getpid())
        try:
            server.run()  # returns once SIGTERM raised SystemExit in its loop
        finally:
            server.close()
    finally:
        app.close()
    return 0


class BackgroundServer:
    """The proxy served from a thread of this process (tests, benchmarks, embedding):

        with BackgroundServer(ProxyConfig(database=path, port=0)) as server:
            slap.initializeConnection(server.url)
    """

    def __init__(self, config: ProxyConfig):
        import threading

        self.server, self.app = create_server(config)
        self.url = url_of(config.host, self.server.effective_port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"slapproxy {self.url}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        server = self.server
        while not self._stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)

    def stop(self) -> None:
        from waitress import wasyncore

        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        self.server.task_dispatcher.shutdown()
        wasyncore.close_all(self.server._map)
        self.app.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
