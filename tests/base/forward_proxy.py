"""A tiny HTTP forward proxy on loopback for the HTTP policy tests: an absolute-form request
(`GET http://host:port/path`) is forwarded, `CONNECT host:port` is tunnelled.

The names the clients use (`master.test`, `cache.test`, ...) do not resolve: the proxy maps them
to loopback servers through `hosts`, so an answer proves the request went through the proxy.
`seen` records (method, target, headers) of every request the proxy received.
"""
from __future__ import annotations

import select
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ForwardProxy:
    hosts: dict[str, tuple[str, int]]
    authorization: str | None = None  # required Proxy-Authorization value, if any
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    server: socketserver.ThreadingTCPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> ForwardProxy:
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                while proxy._handle(self.connection, self.rfile):  # keep-alive, as real proxies do
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):  # quiet: clients give up in tests
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, client: socket.socket, rfile) -> bool:
        """One request; True when the client may send another on this connection."""
        line = rfile.readline(65536).decode("latin-1").strip()
        if not line:
            return False
        method, target, _version = line.split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = rfile.readline(65536).decode("latin-1")
            if header in ("\r\n", "\n", ""):
                break
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        self.seen.append((method, target, headers))
        if self.authorization and headers.get("Proxy-Authorization") != self.authorization:
            client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
                           b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = self._connect(host, int(port))
            if upstream is None:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return False
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(client, upstream, rfile)
            return False
        parts = urlsplit(target)
        upstream = self._connect(parts.hostname or "", parts.port or 80)
        if upstream is None:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        length = int(headers.get("Content-Length") or 0)
        body = rfile.read(length) if length else b""
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        forwarded = {k: v for k, v in headers.items() if not k.lower().startswith("proxy-")
                     and k.lower() != "connection"}
        forwarded["Connection"] = "close"
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in forwarded.items()) + "\r\n"
        with upstream:
            upstream.sendall(head.encode("latin-1") + body)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        return True

    def _connect(self, host: str, port: int) -> socket.socket | None:
        where = self.hosts.get(host.lower().strip("[]"))
        if where is None:
            return None
        try:
            return socket.create_connection(where, timeout=10)
        except OSError:
            return None

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket, rfile) -> None:
        pending = rfile.peek() if hasattr(rfile, "peek") else b""
        if pending:
            upstream.sendall(rfile.read(len(pending)))
        with upstream:
            sockets = [client, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
