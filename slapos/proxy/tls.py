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
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
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

    def get_environ(self):
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

    def __init__(self, address: tuple[str, int], app, context: ssl.SSLContext):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.context = context
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
        try:
            try:  # the handshake in the connection's thread: a slow client holds only its own
                request = self.context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log.info("TLS handshake with %s failed: %s", client_address[0], e)
                self.shutdown_request(request)
                return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            self._leave(client_address[0])

    def handle_error(self, request, client_address):
        log.info("connection from %s ended with an error", client_address[0], exc_info=True)

    @property
    def effective_port(self) -> int:
        return self.server_address[1]


def create(app, host: str, port: int, authority: CertificateAuthority, names: tuple[str, ...]) -> TLSServer:
    return TLSServer((host, port), app, server_context(authority, host, names))


def ca_file(directory: Path) -> Path:
    return directory / "ca.crt"
