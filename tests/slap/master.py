"""A small SLAP master on loopback for the client tests: a real HTTP(S) server in a thread.

Each test sets the answers per endpoint (`master.answer("getFullComputerInformation", body)`,
or a function of the request) and inspects the requests it received (`master.requests`).
It is a stand-in for a *remote* master only; tests against our proxy use the proxy fixture.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    method: str
    endpoint: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    form: dict[str, str]
    body: bytes
    client_port: int
    peer_certificate: dict | None = None
    target: str = ""  # the raw request target (path and query as sent)


@dataclass
class Answer:
    status: int = 200
    body: bytes | str = b""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)  # extra headers (Content-Encoding, ...)
    hang_up: bool = False  # close the connection after answering, without `Connection: close`


@dataclass
class LoopbackMaster:
    server: ThreadingHTTPServer
    thread: threading.Thread
    scheme: str = "http"
    answers: dict[str, Answer | Callable[[Received], Answer]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{port}/"

    def answer(self, endpoint: str, body: bytes | str = b"", status: int = 200, delay: float = 0.0,
               headers: dict[str, str] | None = None, hang_up: bool = False) -> None:
        self.answers[endpoint] = Answer(status, body, delay, dict(headers or {}), hang_up)

    def answer_with(self, endpoint: str, function: Callable[[Received], Answer]) -> None:
        self.answers[endpoint] = function

    def calls(self, endpoint: str) -> list[Received]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _handler(master_ref: list[LoopbackMaster]):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so session reuse is visible

        def log_message(self, format, *args):  # noqa: A002 - quiet test output
            pass

        def _handle(self) -> None:
            master = master_ref[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()} if body else {}
            peer = None
            if hasattr(self.connection, "getpeercert"):
                peer = self.connection.getpeercert()
            received = Received(
                method=self.command,
                endpoint=parts.path.rsplit("/", 1)[-1],
                path=parts.path,
                headers={k: v for k, v in self.headers.items()},
                query={k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                form=form,
                body=body,
                client_port=self.client_address[1],
                peer_certificate=peer,
                target=self.path,
            )
            master.requests.append(received)
            answer = master.answers.get(received.endpoint)
            if callable(answer):
                answer = answer(received)
            if answer is None:
                answer = Answer(404, "<!doctype html>\n<title>404 Not Found</title>\n<p>not served here</p>\n")
            if answer.delay:
                time.sleep(answer.delay)
            payload = answer.body.encode() if isinstance(answer.body, str) else answer.body
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
                if answer.hang_up:
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                pass

        do_GET = _handle
        do_POST = _handle

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Failed TLS handshakes are expected in the https tests: no traceback on stderr."""


class _QuietServer6(_QuietServer):
    address_family = socket.AF_INET6


def start_master(ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> LoopbackMaster:
    ref: list[LoopbackMaster] = []
    server = (_QuietServer6 if ":" in host else _QuietServer)((host, 0), _handler(ref))
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    master = LoopbackMaster(server, thread, scheme="https" if ssl_context else "http")
    ref.append(master)
    thread.start()
    return master


# ------------------------------------------------------------------------------------------------
# Certificates for the https tests (generated per test session with `cryptography`)


@dataclass
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path


def make_pki(directory: Path) -> Pki:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str):
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn)).issuer_name(name(cn)).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
            .sign(k, hashes.SHA256())
        )
        return k, cert

    def leaf(cn: str, ca_key, ca_cert, usage, san=None):
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn)).issuer_name(ca_cert.subject).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return k, builder.sign(ca_key, hashes.SHA256())

    def write(path: Path, cert=None, private=None) -> Path:
        if cert is not None:
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
            path.chmod(0o600)
        return path

    ca_key, ca_cert = ca("slapnode test CA")
    _, other_ca = ca("unrelated CA")
    server_key, server_cert = leaf("127.0.0.1", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                                    x509.DNSName("master.test")])  # reached through a forward proxy
    client_key, client_cert = leaf("COMP-TEST", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca_cert=write(directory / "ca.crt", ca_cert),
        server_cert=write(directory / "server.crt", server_cert),
        server_key=write(directory / "server.key", private=server_key),
        client_cert=write(directory / "client.crt", client_cert),
        client_key=write(directory / "client.key", private=client_key),
        other_ca_cert=write(directory / "other-ca.crt", other_ca),
    )


def server_ssl_context(pki: Pki, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca_cert)
    return context
