"""Slow-drip clients of the TLS proxy (slapos/proxy/tls.py): a per-read timeout alone lets a
client sending one byte now and then hold its place for ever (16 per address, 64 in all: four
addresses would shut every node out). Reading a request has a deadline: the handshake and head
within `head` seconds, the body at a minimum average rate. Writing the answer has none (a watch
answers after up to 55 s). A real TLS server of the proxy's CA on loopback, short deadlines."""
from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slapos.proxy.ca import CertificateAuthority
from slapos.proxy.tls import Deadlines, TLSServer, server_context

DEADLINES = Deadlines(head=1.5, body_grace=2.0, body_min_rate=100.0)
WAIT = 4.0  # the app's answer comes well after the head deadline (a long poll)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(WAIT)
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"read {len(body)}".encode()]


class Served:
    def __init__(self, tmp_path: Path):
        self.authority = CertificateAuthority(tmp_path / "ca").load_or_create("test")
        self.server = TLSServer(("127.0.0.1", 0), app, server_context(self.authority, "127.0.0.1", ()), DEADLINES)
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def tls(self) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(self.authority.cert_path))
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = Served(tmp_path)
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()


def closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (looked at for 0.2 s)."""
    if not select.select([sock], [], [], 0.2)[0]:
        return False
    try:
        sock.settimeout(0.2)
        return sock.recv(1) == b""
    except TimeoutError:  # readable for TLS 1.3's session tickets, no data: still open
        return False
    except (OSError, ssl.SSLError):
        return True


def drip(sock: socket.socket, data: bytes, every: float = 0.2) -> bool:
    """Send `data` a byte every `every` s; True as soon as the server closes the connection."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (OSError, ssl.SSLError):
            return True
        time.sleep(every)
        if closed(sock):
            return True
    return False


def test_a_request_head_dripped_byte_by_byte_is_closed_at_its_deadline(served):
    sock = served.tls()
    try:  # a head that never ends, each byte well within the 120 s allowed per read
        assert drip(sock, b"GET /getRunId HTTP/1.0\r\nX-Drip: " + b"a" * 40, every=0.2)
    finally:
        sock.close()


def test_a_handshake_dripped_byte_by_byte_is_closed_at_the_head_deadline(served):
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:  # the start of a ClientHello, never finished (the handshake timeout alone was 30 s)
        assert drip(raw, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 30, every=0.2)
    finally:
        raw.close()


def test_a_body_dripped_below_the_minimum_rate_is_closed(served):
    sock = served.tls()
    try:
        sock.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 1000\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n")
        assert drip(sock, b"b" * 40, every=0.2)  # 5 bytes a second, the minimum is 100
    finally:
        sock.close()


def read_answer(sock: ssl.SSLSocket) -> bytes:
    sock.settimeout(WAIT + 10)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def test_a_long_poll_answered_after_the_head_deadline_is_still_delivered(served):
    """The deadline is for reading the request: an answer written after it (a watch) arrives."""
    sock = served.tls()
    try:
        sock.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"read 0")
    finally:
        sock.close()


def test_a_body_at_a_fair_rate_is_read_whole(served):
    """A body sent in pieces, slower than the head deadline in all but above the minimum rate."""
    sock = served.tls()
    try:
        sock.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 600\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(6):  # 600 bytes over 1.5 s: 400 bytes a second
            sock.sendall(b"c" * 100)
            time.sleep(0.25)
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"read 600")
    finally:
        sock.close()
