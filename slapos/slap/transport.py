"""A small keep-alive HTTP/1.1 client for the SLAP calls, on the standard library (`http.client`, `ssl`).

Why not `requests`: importing requests + urllib3 costs about 45 ms, a third of a no-op
`slapos node software` or `slapos node instance` run, and the SLAP client needs little of it: one
host, GET and POST, url-encoded forms, TLS with a client certificate. `http.client` does the HTTP
parsing (status line, headers, chunked bodies); this module adds what a session gave us:

* **Keep-alive with a small lock-protected pool** per master: a call takes an idle connection (or
  opens one) and gives it back once the answer is read, so sequential calls share one TCP (and TLS)
  connection and threads (`--jobs N`, the proxy's concurrency tests) never share one at the same time.
* **Stale connections**: before reusing an idle connection we check that the server has not closed
  it meanwhile (the socket is readable: EOF); such a connection is dropped before anything is sent.
  If the server closes it in the short window after that check, the call is retried once on a fresh
  connection when that is safe: a GET always, a POST only if the request could not be sent at all
  (a POST that reached the server may have been acted upon).
* **Bounded answers**: a body (after gzip/deflate decoding) larger than `max_body` is refused; the
  SLAP documents themselves are limited to 64 MiB by `wire`.
* **The HTTP policy of `slapos.base.http`**: through the forward proxy it names (absolute URLs for
  http, a CONNECT tunnel for https), `connect_timeout` to connect and `timeout` for each read.
  Redirects are followed (or refused) one level up, by `slapos.slap.connection`.
* **An early answer is read**: a server that refuses a request from its headers (413 for an
  oversized body) may answer and close while we are still sending; when sending fails that way
  the answer already received is read and returned instead of a network error.

Failures are `TransportError`s saying what went wrong (`kind`); `slapos.slap.connection` turns them
into `slapos.slap.ConnectionError` messages naming the URL and what to check.
"""
from __future__ import annotations

import http.client
import logging
import os
import select
import socket
import ssl
import threading
import zlib

logger = logging.getLogger(__name__)

MAX_IDLE = 8  # idle connections kept per master; more only with more threads calling at once
MAX_BODY = 65 * 1024 * 1024  # wire.MAX_SIZE (64 MiB) plus room for the non-document answers
_CHUNK = 1 << 20

# failures of a kept-alive connection closed by the server (the answer never started)
_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
           ssl.SSLEOFError, ssl.SSLZeroReturnError)


class TransportError(Exception):
    """A failed HTTP exchange.

    `kind`: "timeout", "dns", "connect" (refused, unreachable), "proxy" (the forward proxy refused
    the tunnel), "tls" (handshake, verification),
    "closed" (the server closed the connection without answering), "protocol" (not valid HTTP, or
    an answer cut short), "too-large", "decode" (bad gzip/deflate body), "invalid" (the request
    itself cannot be sent: a control character in a header value or the path; nothing was sent).
    `cause`: the underlying exception. `sent`: whether the request may have reached the server.
    """

    def __init__(self, kind: str, cause: BaseException | str, sent: bool):
        super().__init__(f"{kind}: {cause}")
        self.kind = kind
        self.cause = cause
        self.sent = sent


class Response:
    """Status and whole body of an answer (a plain class: `dataclasses` costs ~5 ms to import)."""

    __slots__ = ("status", "reason", "body", "location")

    def __init__(self, status: int, reason: str, body: bytes, location: str | None = None):
        self.status = status
        self.reason = reason
        self.body = body
        self.location = location  # the Location header, for redirects


class Transport:
    """Keep-alive connections to one `host:port` over http or https (with `ssl_context`), directly
    or through `proxy` (a `slapos.base.http.Proxy`)."""

    def __init__(self, host: str, port: int, timeout: float, ssl_context: ssl.SSLContext | None = None,
                 max_idle: int = MAX_IDLE, max_body: int = MAX_BODY, proxy=None,
                 connect_timeout: float | None = None):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else min(connect_timeout, timeout)
        self.proxy = proxy
        self.ssl_context = ssl_context
        self.max_idle = max_idle
        self.max_body = max_body
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # -- pool --------------------------------------------------------------------------------

    def _new(self) -> http.client.HTTPConnection:
        timeout = self.connect_timeout  # the read timeout is set once connected
        proxy = self.proxy
        if self.ssl_context is not None:
            if proxy is None:
                return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ssl_context)
            conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout, context=self.ssl_context)
            conn.set_tunnel(self.host, self.port,
                            headers={"Proxy-Authorization": proxy.authorization} if proxy.authorization else None)
            return conn
        if proxy is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)

    def _target(self, target: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Through an http proxy, the request line names the absolute URL."""
        if self.proxy is None or self.ssl_context is not None:
            return target, headers
        host = f"[{self.host}]" if ":" in self.host else self.host
        headers = dict(headers)
        if self.proxy.authorization:
            headers["Proxy-Authorization"] = self.proxy.authorization
        return f"http://{host}:{self.port}{target}", headers

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection still open (reused=True) or a new one (reused=False)."""
        if self._pid != os.getpid():
            # a forked child must not talk on its parent's sockets (answers would be mixed up);
            # dropping our copies leaves the parent's connections open
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._idle = []
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new(), False
            if _dropped(conn.sock):
                logger.debug("%s:%s closed an idle connection; not reusing it", self.host, self.port)
                conn.close()
                continue
            return conn, True

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        # after a `Connection: close` answer http.client has closed the socket (sock is None)
        with self._lock:
            if conn.sock is not None and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections. Calls in flight in other threads give theirs back when they
        end; the transport stays usable (the next call opens a connection)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    # -- exchange ----------------------------------------------------------------------------

    def request(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Response:
        """Send one request and read the whole answer; retry once on a fresh connection when a
        kept-alive connection turns out closed by the server and retrying is safe."""
        conn, reused = self._checkout()
        try:
            return self._exchange(conn, method, target, body, headers)
        except TransportError as e:
            if not (reused and e.kind == "closed" and (method in ("GET", "HEAD") or not e.sent)):
                raise
            logger.debug("%s:%s closed the kept-alive connection (%s); retrying %s %s on a new one",
                         self.host, self.port, e.cause, method, target)
        return self._exchange(self._new(), method, target, body, headers)

    def _exchange(self, conn: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
                  headers: dict[str, str]) -> Response:
        try:
            response = self._send_and_read(conn, method, target, body, headers)
        except BaseException:
            conn.close()
            raise
        self._checkin(conn)
        return response

    def _send_and_read(self, conn: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
                       headers: dict[str, str]) -> Response:
        if conn.sock is None:
            try:
                conn.connect()
                conn.sock.settimeout(self.timeout)  # type: ignore[attr-defined]  # set by connect()
            except TimeoutError as e:
                raise TransportError("timeout", e, sent=False) from None
            except ssl.SSLError as e:
                raise TransportError("tls", e, sent=False) from None
            except socket.gaierror as e:
                raise TransportError("dns", e, sent=False) from None
            except OSError as e:
                if self.proxy is not None and "Tunnel connection failed" in str(e):
                    raise TransportError("proxy", e, sent=False) from None
                raise TransportError("connect", e, sent=False) from None
            except http.client.HTTPException as e:
                raise TransportError("connect", e, sent=False) from None
        target, headers = self._target(target, headers)
        try:
            conn.request(method, target, body=body, headers=headers)
        except (ValueError, http.client.HTTPException) as e:
            # http.client refuses control characters in the target and header values (injection)
            raise TransportError("invalid", e, sent=False) from None
        except TimeoutError as e:
            raise TransportError("timeout", e, sent=True) from None
        except _CLOSED as e:
            # sendall() failed: the request did not reach the server whole. A server refusing it
            # from its headers (413) answers and closes while we still send: read that answer.
            early = self._early_answer(conn) if body else None
            if early is not None:
                return early
            raise TransportError("closed", e, sent=False) from None
        except ssl.SSLError as e:
            raise TransportError("tls", e, sent=False) from None
        except OSError as e:
            raise TransportError("connect", e, sent=False) from None
        try:
            response = conn.getresponse()
        except TimeoutError as e:
            raise TransportError("timeout", e, sent=True) from None
        except _CLOSED as e:
            raise TransportError("closed", e, sent=True) from None
        except ssl.SSLError as e:
            raise TransportError("tls", e, sent=True) from None
        except http.client.HTTPException as e:
            raise TransportError("protocol", e, sent=True) from None
        except OSError as e:
            raise TransportError("connect", e, sent=True) from None
        try:
            content = self._read_body(response)
        except TimeoutError as e:
            raise TransportError("timeout", e, sent=True) from None
        except (http.client.HTTPException, OSError) as e:
            # the answer had started: this is not a stale connection, never retried
            raise TransportError("protocol", f"answer cut short ({type(e).__name__}: {e})", sent=True) from None
        return Response(response.status, response.reason, content, response.getheader("Location"))

    def _early_answer(self, conn: http.client.HTTPConnection) -> Response | None:
        """The answer the server sent before closing, when there is one (else None)."""
        try:
            response = conn.getresponse()
            return Response(response.status, response.reason, response.read(64 * 1024),
                            response.getheader("Location"))
        except (http.client.HTTPException, OSError):
            return None
        finally:
            conn.close()  # half-sent: never reused

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise TransportError("too-large", f"the answer announces {declared} bytes", sent=True)
        encoding = (response.getheader("Content-Encoding") or "").strip().lower()
        decoder = _decoder(encoding)
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            if decoder is not None:
                chunk = _decode(decoder, chunk, self.max_body - size)
            size += len(chunk)
            if size > self.max_body:
                raise TransportError("too-large", f"the answer exceeds {self.max_body} bytes", sent=True)
            parts.append(chunk)
        if decoder is not None:
            tail = decoder.flush()
            size += len(tail)
            if size > self.max_body:
                raise TransportError("too-large", f"the answer exceeds {self.max_body} bytes", sent=True)
            parts.append(tail)
        return b"".join(parts)


class _Deflate:
    """`Content-Encoding: deflate` is zlib-wrapped by the RFC, raw deflate by some servers: try both."""

    def __init__(self):
        self._object = zlib.decompressobj()
        self._first = True

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        if self._first:
            self._first = False
            try:
                return self._object.decompress(data, max_length)
            except zlib.error:
                self._object = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._object.decompress(data, max_length)

    def flush(self) -> bytes:
        return self._object.flush()


def _decoder(encoding: str):
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    raise TransportError("decode", f"unsupported Content-Encoding {encoding!r}", sent=True)


def _decode(decoder, chunk: bytes, room: int) -> bytes:
    """Decompress `chunk` into at most `room + 1` bytes: enough to tell an oversized body (a small
    compressed answer can expand to gigabytes) without producing it."""
    try:
        return decoder.decompress(chunk, max(room, 0) + 1)
    except zlib.error as e:
        raise TransportError("decode", f"the compressed answer is corrupt ({e})", sent=True) from None


def _dropped(sock: socket.socket) -> bool:
    """An idle kept-alive socket is readable only if the server closed it (or sent garbage)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed or invalid descriptor
        return True
