"""Run the proxy on waitress (a production multi-threaded WSGI server), in the foreground.

One process with `[slapproxy] threads` threads. A multi-process mode (SO_REUSEPORT workers) was
tried and removed: on the 2-core machines we measure on it served 8 concurrent clients 0.85-1.3x as
fast as one process, within the noise, for a supervisor, a cross-process lock and shared memory.
"""
from __future__ import annotations

import errno
import logging
import signal
from collections.abc import Callable

from slapos.base.errors import SlapOSError, UsageError

from .app import ProxyApp, make_app
from .config import ProxyConfig, is_loopback

log = logging.getLogger("slapos.proxy")

def url_of(host: str, port: int, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


def check_listen_address(config: ProxyConfig) -> None:
    if is_loopback(config.host):
        return
    if config.tls:  # callers are authenticated by their certificates (docs/join.md)
        log.info("listening on %s with mutual TLS: nodes authenticate with certificates of the proxy's CA",
                 config.host)
        return
    if config.access == "credentials":
        exposure = ("every call needs a credential, but plain HTTP carries it in clear text: anyone on the "
                    "path can read and reuse it")
    else:
        exposure = ("the proxy has no authentication (access = open), anyone reaching it can request, destroy "
                    "and read every instance")
    if not config.allow_remote:
        raise UsageError(
            f"refusing to listen on {config.host}: {exposure}; pass --allow-remote (or [slapproxy] allow_remote "
            "= true) if that is what you want"
        )
    if config.access == "credentials":
        log.warning("listening on %s, not on loopback: %s", config.host, exposure)
    else:
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


def _waitress_server(app: ProxyApp, config: ProxyConfig):
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
    server = waitress.create_server(
        app,
        host=config.host,
        port=config.port,
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
    from . import drain

    drain.install(server)  # a body over the backstop still gets a readable 413, not a reset
    return server


def create_server(config: ProxyConfig, app: ProxyApp | None = None):
    """A bound waitress server (not yet serving) and the app behind it."""
    check_listen_address(config)
    app = app or make_app(config)
    try:
        if config.tls:
            from . import tls

            return tls.create(app, config.host, config.port, app.ca, config.tls_server_names), app
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
    server, app = create_server(config)
    url = url_of(config.host, server.effective_port, config.tls)

    def stop(signum, frame):  # waitress' loop ends on SystemExit and shuts its threads down
        app.watch.close()  # waiting watches answer now: waitress waits for busy threads
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    previous_int = signal.signal(signal.SIGINT, stop)
    try:
        log.info(
            "slapproxy listening on %s (database %s, computer %s, %d threads, access %s)",
            url, config.database, config.computer_id, config.threads, config.access,
        )
        if config.tls:
            log.info("TLS: nodes verify this proxy with %s", app.ca.cert_path)
        if on_ready is not None:
            on_ready(url)
        if config.tls:
            server.serve_forever(poll_interval=0.5)
        else:
            server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if config.tls:
            server.server_close()
        else:
            server.close()
        app.close()
        log.info("slapproxy on %s stopped", url)
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
        self.app.watch.close()  # waiting watches answer now, before the threads are stopped
        self._stop.set()
        self._thread.join(10)
        self.server.task_dispatcher.shutdown()
        wasyncore.close_all(self.server._map)
        self.app.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
