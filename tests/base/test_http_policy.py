"""The one HTTP policy (`slapos.base.http`): proxy variables and NO_PROXY, the CA source, timeouts,
the redirect rules, and `fetch` (schemas, certificates) against real loopback servers and a real
forward proxy (tests/base/forward_proxy.py)."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slapos.base import http

from .forward_proxy import ForwardProxy

VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
             "SSL_CERT_DIR")


@pytest.fixture
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


class _Origin(BaseHTTPRequestHandler):
    """/ok answers a body; /go/N redirects (status N) to /ok; /loop redirects to itself;
    /big answers 2 MiB; /down redirects to an http URL (for the https downgrade case)."""

    protocol_version = "HTTP/1.1"
    seen: list

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path == "/ok":
            self._answer(200, b"ok " + self.command.encode() + b" " + body)
        elif self.path.startswith("/go/"):
            self._answer(int(self.path[4:]), headers={"Location": "/ok"})
        elif self.path == "/loop":
            self._answer(302, headers={"Location": "/loop"})
        elif self.path == "/big":
            self._answer(200, b"x" * (2 << 20))
        elif self.path == "/elsewhere":
            self._answer(302, headers={"Location": self.server.elsewhere})
        else:
            self._answer(404, b"no")

    do_GET = do_POST = _handle


@pytest.fixture
def origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    server.seen = []
    server.elsewhere = ""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def forward(origin):
    proxy = ForwardProxy({"schema.test": origin.server_address[:2]}).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# -- proxy selection -----------------------------------------------------------------------------


def test_proxy_variables_lowercase_first_and_per_scheme(clean_env):
    clean_env.setenv("HTTP_PROXY", "http://upper:1")
    clean_env.setenv("http_proxy", "http://lower:2")
    clean_env.setenv("HTTPS_PROXY", "secure:3")
    proxy = http.proxy_for("http://master.example/")
    assert (proxy.host, proxy.port) == ("lower", 2)
    proxy = http.proxy_for("https://master.example/")
    assert (proxy.host, proxy.port) == ("secure", 3)  # `host:port` alone is an http proxy, as for curl
    clean_env.delenv("HTTPS_PROXY")
    assert http.proxy_for("https://master.example/") is None
    clean_env.setenv("ALL_PROXY", "http://all:4")
    assert http.proxy_for("https://master.example/").host == "all"


def test_proxy_credentials_become_a_header_and_stay_out_of_messages(clean_env):
    clean_env.setenv("HTTP_PROXY", "http://me:s%40cret@proxy.example:3128")
    proxy = http.proxy_for("http://master.example/")
    assert proxy.authorization == "Basic bWU6c0BjcmV0"  # me:s@cret
    assert "cret" not in proxy.display


@pytest.mark.parametrize(("no_proxy", "host", "port", "bypassed"), [
    ("*", "anything.example", 80, True),
    ("example.com", "example.com", 80, True),
    ("example.com", "api.example.com", 80, True),
    (".example.com", "api.example.com", 80, True),
    ("example.com", "badexample.com", 80, False),
    ("example.com:8080", "example.com", 80, False),
    ("example.com:8080", "example.com", 8080, True),
    ("10.0.0.0/8", "10.1.2.3", 80, True),
    ("10.0.0.0/8", "11.1.2.3", 80, False),
    ("2001:db8::/32", "[2001:db8::1]", 443, True),
    ("192.0.2.7", "192.0.2.7", 80, True),
    ("", "127.0.0.1", 80, True),  # loopback: never through a proxy
    ("", "localhost", 80, True),
    ("", "[::1]", 80, True),
    ("other.example, example.org", "example.org", 443, True),
])
def test_no_proxy(no_proxy, host, port, bypassed):
    assert http.bypasses_proxy(host, port, no_proxy) is bypassed


def test_https_or_socks_proxies_are_refused_with_one_line(clean_env):
    clean_env.setenv("HTTPS_PROXY", "socks5://proxy.example:1080")
    with pytest.raises(http.PolicyError, match="only http:// proxies are supported"):
        http.proxy_for("https://master.example/")


# -- CA source, timeouts ------------------------------------------------------------------------


def test_ca_source_order(clean_env, tmp_path):
    explicit, bundle, cert_file = (tmp_path / n for n in ("explicit.pem", "bundle.pem", "file.pem"))
    for path in (explicit, bundle, cert_file):
        path.write_text("")
    clean_env.setenv("SSL_CERT_FILE", str(cert_file))
    assert http.ca_locations() == (str(cert_file), None)
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert http.ca_locations() == (str(bundle), None)
    assert http.ca_locations(str(explicit)) == (str(explicit), None)  # master_ca_file wins
    assert http.requests_verify(str(explicit)) == str(explicit)
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(http.PolicyError, match="REQUESTS_CA_BUNDLE=.*missing.pem is not a readable file"):
        http.ca_locations()


def test_timeouts():
    assert http.timeouts() == (http.CONNECT_TIMEOUT, http.DEFAULT_TIMEOUT)
    assert http.timeouts(3) == (3, 3)
    assert http.timeouts(120) == (http.CONNECT_TIMEOUT, 120)


# -- redirect rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "status", "url", "location", "expected"), [
    ("GET", 301, "http://m/a", "/b", ("GET", "http://m/b")),
    ("GET", 302, "http://m/a", "https://m/b", ("GET", "https://m/b")),  # upgrade to https
    ("HEAD", 303, "http://m/a", "b", ("HEAD", "http://m/b")),
    ("POST", 307, "http://m/a", "/b", ("POST", "http://m/b")),
    ("POST", 308, "https://m/a", "https://n/b", ("POST", "https://n/b")),
])
def test_safe_redirects(method, status, url, location, expected):
    assert http.redirect(method, status, url, location, 0) == expected


@pytest.mark.parametrize(("method", "status", "url", "location", "words"), [
    ("GET", 302, "https://m/a", "http://m/b", "downgrade from https to http"),
    ("GET", 302, "http://m/a", "ftp://m/b", r"not an http\(s\) URL"),
    ("POST", 302, "http://m/a", "/b", "a POST is not repeated as a GET"),
    ("POST", 301, "http://m/a", "/b", "a POST is not repeated as a GET"),
    ("GET", 302, "http://m/a", None, "without a Location"),
])
def test_unsafe_redirects_say_where_they_lead(method, status, url, location, words):
    with pytest.raises(http.PolicyError, match=words) as raised:
        http.redirect(method, status, url, location, 0)
    if location:
        assert "redirected" in str(raised.value)


def test_redirects_are_bounded():
    with pytest.raises(http.PolicyError, match=f"more than {http.MAX_REDIRECTS} redirects"):
        http.redirect("GET", 302, "http://m/a", "/a", http.MAX_REDIRECTS)


# -- fetch against real servers -----------------------------------------------------------------


def test_fetch_through_the_forward_proxy(clean_env, origin, forward):
    port = origin.server_address[1]
    clean_env.setenv("HTTP_PROXY", forward.url)
    answer = http.fetch(f"http://schema.test:{port}/ok")
    assert (answer.status, answer.body) == (200, b"ok GET ")
    assert forward.seen[0][:2] == ("GET", f"http://schema.test:{port}/ok")


def test_fetch_no_proxy_goes_direct(clean_env, origin, forward):
    port = origin.server_address[1]
    clean_env.setenv("HTTP_PROXY", forward.url)
    clean_env.setenv("NO_PROXY", "schema.test")
    with pytest.raises(OSError):  # direct: schema.test does not resolve
        http.fetch(f"http://schema.test:{port}/ok", timeout=5)
    assert forward.seen == []


def test_fetch_with_proxy_credentials(clean_env, origin):
    port = origin.server_address[1]
    proxy = ForwardProxy({"schema.test": origin.server_address[:2]}, authorization="Basic dTpw").start()
    try:
        clean_env.setenv("http_proxy", f"http://u:p@127.0.0.1:{proxy.server.server_address[1]}")
        assert http.fetch(f"http://schema.test:{port}/ok").status == 200
        clean_env.setenv("http_proxy", f"http://u:wrong@127.0.0.1:{proxy.server.server_address[1]}")
        assert http.fetch(f"http://schema.test:{port}/ok").status == 407
    finally:
        proxy.stop()


def test_fetch_follows_safe_redirects_and_refuses_others(clean_env, origin):
    base = f"http://127.0.0.1:{origin.server_address[1]}"
    assert http.fetch(base + "/go/302").body == b"ok GET "
    assert http.fetch(base + "/go/307", method="POST", data=b"x=1").body == b"ok POST x=1"
    with pytest.raises(http.PolicyError, match=r"redirected POST to .*/ok \(HTTP 302\)"):
        http.fetch(base + "/go/302", method="POST", data=b"x=1")
    with pytest.raises(http.PolicyError, match="more than"):
        http.fetch(base + "/loop")


def test_fetch_drops_secrets_when_the_host_changes(clean_env, origin):
    port = origin.server_address[1]
    origin.elsewhere = f"http://localhost:{port}/ok"
    http.fetch(f"http://127.0.0.1:{port}/elsewhere", headers={"Authorization": "Basic x", "X-Access-Token": "t"})
    first, second = origin.seen
    assert first[2].get("Authorization") == "Basic x"
    assert "Authorization" not in second[2] and "X-Access-Token" not in second[2]


def test_fetch_bounds_the_answer(clean_env, origin):
    with pytest.raises(ValueError, match="larger than"):
        http.fetch(f"http://127.0.0.1:{origin.server_address[1]}/big", max_bytes=1 << 20)
