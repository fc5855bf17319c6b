"""slapnode:promise: etc/promise executables checking a URL or a TCP port, exit 0/1, one line."""
from __future__ import annotations

import socket
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import run_buildout, write_profile


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/missing")
            self.end_headers()
            return
        status = 200 if self.path == "/" else 404
        body = b"Hello promise\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_promise(path):
    result = subprocess.run([str(path)], capture_output=True, text=True, timeout=30, env={})
    return result.returncode, result.stdout


def test_url_and_port_promises(tmp_path, web):
    closed = closed_port()
    base = f"http://127.0.0.1:{web}"
    checks = {
        "url-ok": f"url = {base}/\ncontains = Hello promise",
        "url-redirect": f"url = {base}/redirect",
        "url-404": f"url = {base}/nothing",
        "url-wrong-text": f"url = {base}/\ncontains = Goodbye",
        "url-down": f"url = http://127.0.0.1:{closed}/\ntimeout = 2",
        "port-ok": f"host = 127.0.0.1\nport = {web}",
        "port-down": f"port = {closed}",
    }
    sections = "".join(
        f"[{name}]\nrecipe = slapnode:promise\npath = ${{buildout:directory}}/etc/promise/{name}\n{body}\n"
        for name, body in checks.items()
    )
    write_profile(tmp_path, f"[buildout]\nparts = {' '.join(checks)}\n{sections}")
    run_buildout(tmp_path)

    promise = tmp_path / "etc" / "promise"
    assert stat.S_IMODE((promise / "url-ok").stat().st_mode) == 0o750
    assert run_promise(promise / "url-ok") == (0, f"OK: {base}/ answered HTTP 200\n")
    assert run_promise(promise / "url-redirect") == (0, f"OK: {base}/redirect answered HTTP 302\n")
    assert run_promise(promise / "url-404") == (1, f"FAILED: {base}/nothing answered HTTP 404\n")
    assert run_promise(promise / "url-wrong-text") == (
        1, f"FAILED: {base}/ answered HTTP 200 without 'Goodbye'\n")
    code, output = run_promise(promise / "url-down")
    assert code == 1 and output.startswith(f"FAILED: http://127.0.0.1:{closed}/ does not answer:")
    assert output.count("\n") == 1
    assert run_promise(promise / "port-ok") == (0, f"OK: 127.0.0.1 port {web} accepts connections\n")
    code, output = run_promise(promise / "port-down")
    assert code == 1 and output.startswith(f"FAILED: nothing accepts connections on 127.0.0.1 port {closed}")


def test_promise_needs_one_kind_of_check(tmp_path):
    write_profile(tmp_path, """
        [buildout]
        parts = p
        [p]
        recipe = slapnode:promise
        path = etc/promise/p
        url = http://127.0.0.1:1/
        port = 1
        """)
    result = run_buildout(tmp_path, check=False)
    assert result.returncode != 0
    assert "[p] give either 'url' (HTTP check) or 'host' and 'port' (TCP check)" in result.stdout

    write_profile(tmp_path, """
        [buildout]
        parts = p
        [p]
        recipe = slapnode:promise
        path = etc/promise/p
        url = http://:8080/
        """)
    result = run_buildout(tmp_path, check=False)
    assert result.returncode != 0 and "[p] url = 'http://:8080/': expected http://host[:port]/path" in result.stdout
