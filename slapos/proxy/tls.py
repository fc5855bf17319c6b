"""The proxy over mutual TLS (`[slapproxy] tls = true`, docs/join.md).

waitress speaks no TLS, so a TLS proxy is served by the standard library's WSGI server on an
SSL socket, one thread per connection (at most `MAX_CONNECTIONS` at once; more wait in the
kernel's backlog; at most `MAX_PER_ADDRESS` of one client address, whose next one is closed at
once), HTTP/1.0 (one request per connection). That is enough for the few nodes of
a lab or an edge site; a bigger group outgrows a proxy anyway (a SlapOS Master).

* The server certificate is issued by the proxy's CA at each start (names: host, localhost,
  127.0.0.1, ::1 and `tls_server_names`); nodes verify it with the CA certificate
  (`master_ca_file = <ca_directory>/ca.crt`).
* Client certificates are asked for and verified against the CA (CERT_OPTIONAL: `slapos node
  register` has none yet when it exchanges its token). The verified certificate's serial goes
  into the WSGI environ; `access.Access` turns it into an identity, or refuses it (revoked).
* Reading a request has a deadline, not only a per-read timeout (a client dripping a byte every
  100 s would hold its place for ever): the handshake and the request head within `HEAD_DEADLINE`
  of the connection's start, then the body at `BODY_MIN_RATE` bytes a second on average after
  `BODY_GRACE` seconds. Writing the answer has none: a watch may wait 55 s before it answers.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .access import PEER_SERIAL_KEY
from .ca import CertificateAuthority

log = logging.getLogger("slapos.proxy")

MAX_CONNECTIONS = 64
# connections one client address holds at once: idle connections of one address (each holds its
# thread up to HANDSHAKE_TIMEOUT, then _Handler.timeout) must not take every place from the nodes
MAX_PER_ADDRESS = 16
HANDSHAKE_TIMEOUT = 30.0
MAX_HEADER_LINE = 65536
HEAD_DEADLINE = 30.0  # handshake + request line + headers, from the connection's start
BODY_GRACE = 30.0  # seconds the body may lag behind BODY_MIN_RATE (a node's first bytes, a pause)
BODY_MIN_RATE = 1024.0  # bytes a second, on average, a body must keep up (a drip is closed)


@dataclass(frozen=True)
class Deadlines:
    """How long reading a request may take (tests pass short ones)."""

    head: float = HEAD_DEADLINE
    body_grace: float = BODY_GRACE
    body_min_rate: float = BODY_MIN_RATE


class RequestTooSlow(ConnectionAbortedError):
    """A request not read within its deadline; wsgiref drops such a connection without a traceback."""


class _DeadlineReader(io.RawIOBase):
    """The connection's raw reads, each bounded by what is left of the request's deadline."""

    def __init__(self, handler: _Handler):
        self._handler = handler
        self._raw = handler.connection.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        handler, sock = self._handler, self._handler.connection
        left = handler.read_deadline() - time.monotonic()
        if left <= 0:
            raise handler.too_slow()
        sock.settimeout(min(handler.timeout, left))
        try:
            received = self._raw.readinto(buffer)
        except TimeoutError:
            if handler.read_deadline() - time.monotonic() <= 0.05:
                raise handler.too_slow() from None
            raise
        finally:
            if not self._raw.closed:
                sock.settimeout(handler.timeout)  # writing the answer: no deadline, the per-write timeout
        handler.body_received += received or 0
        return received

    def close(self) -> None:
        self._raw.close()
        super().close()


def server_context(authority: CertificateAuthority, host: str, names: tuple[str, ...]) -> ssl.SSLContext:
    """A server context with a fresh certificate of the CA, verifying (optional) client certificates."""
    hosts = tuple(dict.fromkeys(h for h in (host, "localhost", "127.0.0.1", "::1", *names)
                                if h and h not in ("0.0.0.0", "::")))
    issued = authority.issue(hosts[0], "server", hosts=hosts)
    cert_path, key_path = authority.directory / "server.crt", authority.directory / "server.key"
    for path, text, mode in ((cert_path, issued.certificate, 0o644), (key_path, issued.key, 0o600)):
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    context.load_verify_locations(cafile=str(authority.cert_path))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class _Handler(WSGIRequestHandler):
    timeout = 120  # a client silent this long is dropped (slow clients must not hold threads)
    server: TLSServer

    def __init__(self, request, client_address, server: TLSServer, started: float):
        self.started = started
        self.body_started: float | None = None  # None while the head is read
        self.body_received = 0
        self.in_body = False
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the buffered reader of StreamRequestHandler, replaced by a bounded one
        self.rfile = io.BufferedReader(_DeadlineReader(self), max(self.rbufsize, io.DEFAULT_BUFFER_SIZE))

    def read_deadline(self) -> float:
        limits = self.server.deadlines
        if not self.in_body:
            return self.started + limits.head
        if self.body_started is None:  # the body's clock starts at the app's first read of it
            self.body_started, self.body_received = time.monotonic(), 0
        return self.body_started + limits.body_grace + self.body_received / limits.body_min_rate

    def too_slow(self) -> RequestTooSlow:
        what = "body" if self.in_body else "request head"
        log.info("closing the connection of %s: its %s was not read in time", self.client_address[0], what)
        return RequestTooSlow(f"{what} not read in time")

    def get_environ(self):
        self.in_body = True  # the head is read (wsgiref asks for the environ right after it)
        environ = super().get_environ()
        environ["slapnode.tls"] = True
        environ["HTTPS"] = "on"
        environ.pop(PEER_SERIAL_KEY, None)
        der = self.connection.getpeercert(binary_form=True)
        if der:  # only a certificate the CA signed gets here (the handshake verified it)
            from cryptography import x509

            environ[PEER_SERIAL_KEY] = format(x509.load_der_x509_certificate(der).serial_number, "x")
        environ["REMOTE_PORT"] = str(self.client_address[1])
        if self.headers.get("Content-Type") is None:  # wsgiref says text/plain; waitress, as HTTP, nothing
            environ.pop("CONTENT_TYPE", None)
        return environ

    def log_message(self, format, *args):  # noqa: A002 - the base class' signature
        log.debug("%s %s", self.client_address[0], format % args)


class TLSServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app, context: ssl.SSLContext,
                 deadlines: Deadlines = Deadlines()):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.context = context
        self.deadlines = deadlines
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._per_address: dict[str, int] = {}
        self._per_address_lock = threading.Lock()
        self._last_refusal_log = -60.0
        super().__init__(address, _Handler)
        self.set_app(app)

    def server_bind(self):
        # not HTTPServer's: it asks the resolver for the host's FQDN, which can hang offline
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]
        self.setup_environ()

    def get_request(self):
        sock, address = self.socket.accept()
        sock.settimeout(HANDSHAKE_TIMEOUT)
        return sock, address

    def _leave(self, address: str) -> None:
        with self._per_address_lock:
            left = self._per_address.pop(address, 1) - 1
            if left:
                self._per_address[address] = left

    def process_request(self, request, client_address):
        address = client_address[0]
        with self._per_address_lock:
            held = self._per_address.get(address, 0)
            if held < MAX_PER_ADDRESS:
                self._per_address[address] = held + 1
        if held >= MAX_PER_ADDRESS:
            now = time.monotonic()
            if now - self._last_refusal_log >= 60:  # a flood of connections must not flood the log
                self._last_refusal_log = now
                log.warning("closing connections of %s: it holds %d already (at most %d per address)",
                            address, held, MAX_PER_ADDRESS)
            self.shutdown_request(request)
            return
        try:
            self._slots.acquire()
        except BaseException:
            self._leave(address)
            raise
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            self._leave(address)
            raise

    def process_request_thread(self, request, client_address):
        started = time.monotonic()
        try:
            # the handshake in the connection's thread: a slow client holds only its own; the
            # socket timeout bounds the whole handshake (CPython's do_handshake counts it down)
            request.settimeout(min(HANDSHAKE_TIMEOUT, self.deadlines.head))
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log.info("TLS handshake with %s failed: %s", client_address[0], e)
                self.shutdown_request(request)
                return
            try:
                _Handler(request, client_address, self, started)
            except RequestTooSlow:
                # nothing more to do than close (below): too_slow() logged it where it is raised,
                # since wsgiref swallows it when the app is the one reading the body
                return
            except TimeoutError:
                log.info("closing the connection of %s: silent for %d s", client_address[0], _Handler.timeout)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
        finally:
            self._slots.release()
            self._leave(client_address[0])

    def handle_error(self, request, client_address):
        log.info("connection from %s ended with an error", client_address[0], exc_info=True)

    @property
    def effective_port(self) -> int:
        return self.server_address[1]


def create(app, host: str, port: int, authority: CertificateAuthority, names: tuple[str, ...],
           deadlines: Deadlines = Deadlines()) -> TLSServer:
    return TLSServer((host, port), app, server_context(authority, host, names), deadlines)


def ca_file(directory: Path) -> Path:
    return directory / "ca.crt"
