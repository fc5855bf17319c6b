"""The WSGI application itself: app factory, mounting, layering."""
from __future__ import annotations

import io
import subprocess
import sys

from slapos.proxy.app import make_app
from slapos.proxy.config import ProxyConfig


def call(app, method: str, path: str, body: bytes = b"", query: str = "") -> tuple[str, dict, bytes]:
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
        "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    data = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], data


def test_make_app_builds_a_fresh_app_on_its_database(tmp_path):
    app = make_app(ProxyConfig(database=tmp_path / "a.db", computer_id="C"))
    try:
        status, headers, body = call(app, "GET", "/getFullComputerInformation", query="computer_id=C")
        assert status == "200 OK" and headers["Content-Type"].startswith("text/xml")
        assert body.startswith(b'<marshal><object id="i2" module="slapos.slap.slap" class="Computer">')
        assert int(headers["Content-Length"]) == len(body)
        status, _, body = call(app, "GET", "/getRunId")
        other = make_app(ProxyConfig(database=tmp_path / "b.db"))
        try:
            assert call(other, "GET", "/getRunId")[2] != body  # one run id per app
        finally:
            other.close()
    finally:
        app.close()
    assert (tmp_path / "a.db").exists() and (tmp_path / "b.db").exists()


def test_mounted_application_gets_its_prefix(tmp_path):
    app = make_app(ProxyConfig(database=tmp_path / "a.db"))
    try:
        def cache_app(environ, start_response):
            start_response("201 Created", [("Content-Type", "text/plain")])
            return [environ["PATH_INFO"].encode()]

        app.mount("extra", cache_app)
        assert call(app, "PUT", "/extra/thing")[:3:2] == ("201 Created", b"/extra/thing")
        assert call(app, "GET", "/extrax")[0].startswith("404")
    finally:
        app.close()


def test_proxy_never_imports_the_node_agent():
    code = (
        "import sys, slapos.proxy.app, slapos.proxy.server, slapos.proxy.show, slapos.cli.proxy\n"
        "bad = sorted(m for m in sys.modules if m.startswith('slapos.grid'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_database_held_by_another_process_is_a_503(tmp_path):
    import sqlite3
    from urllib.parse import urlencode

    from slapos.proxy.db import Database

    path = tmp_path / "a.db"
    app = make_app(ProxyConfig(database=path, computer_id="C"), db=Database.open(path, busy_timeout=0.2))
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        body = urlencode({"url": "http://sr/", "computer_id": "C", "state": "available"}).encode()
        status, _, text = call(app, "POST", "/supplySupply", body)
        assert status.startswith("503") and text == b"database busy: retry later"
        other.execute("ROLLBACK")
        assert call(app, "POST", "/supplySupply", body)[0] == "200 OK"  # the app recovered
    finally:
        other.close()
        app.close()
