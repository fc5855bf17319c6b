"""The SLAP client and the binary cache client follow the one HTTP policy (slapos.base.http):
through a real forward proxy (http, and https with CONNECT and a custom CA), NO_PROXY, the CA
variables, and the master's redirects (followed when safe, reported as redirects otherwise)."""
from __future__ import annotations

import logging

import pytest

from slapos.slap import ConnectionError, RedirectError
from slapos.slap.connection import Connection

from ..base.forward_proxy import ForwardProxy
from .master import Answer, start_master

VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
             "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def _proxy_to(server, authorization: str | None = None) -> ForwardProxy:
    return ForwardProxy({"master.test": server.server.server_address[:2],
                         "cache.test": server.server.server_address[:2]}, authorization).start()


def _port(server) -> int:
    return server.server.server_address[1]


# -- proxies ----------------------------------------------------------------------------------


def test_http_master_through_the_proxy(master, clean_env):
    master.answer("getHateoasUrl", "ok")
    proxy = _proxy_to(master, authorization="Basic dTpw")
    try:
        clean_env.setenv("HTTP_PROXY", f"http://u:p@127.0.0.1:{proxy.server.server_address[1]}")
        connection = Connection(f"http://master.test:{_port(master)}/", timeout=5)
        assert connection.get("getHateoasUrl") == b"ok"
        assert connection.post("getHateoasUrl", {"a": "b"}) == b"ok"
    finally:
        proxy.stop()
    assert [(m, t) for m, t, _ in proxy.seen] == [
        ("GET", f"http://master.test:{_port(master)}/getHateoasUrl"),
        ("POST", f"http://master.test:{_port(master)}/getHateoasUrl"),
    ]
    assert master.requests[1].form == {"a": "b"}


def test_https_master_through_a_connect_tunnel_with_a_custom_ca(https_master, pki, clean_env):
    https_master.answer("getHateoasUrl", "ok")
    proxy = _proxy_to(https_master)
    try:
        clean_env.setenv("HTTPS_PROXY", proxy.url)
        connection = Connection(f"https://master.test:{_port(https_master)}/", key_file=pki.client_key,
                                cert_file=pki.client_cert, master_ca_file=pki.ca_cert, timeout=5)
        assert connection.get("getHateoasUrl") == b"ok"
    finally:
        proxy.stop()
    assert proxy.seen[0][:2] == ("CONNECT", f"master.test:{_port(https_master)}")
    assert https_master.requests[0].peer_certificate  # the client certificate went through the tunnel


def test_requests_ca_bundle_is_the_ca_source_without_master_ca_file(https_master, pki, clean_env):
    https_master.answer("getHateoasUrl", "ok")
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_cert))
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert, timeout=5)
    assert connection.get("getHateoasUrl") == b"ok"
    clean_env.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca_cert))
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert, timeout=5)
    with pytest.raises(ConnectionError, match="could not be verified against the system CAs"):
        connection.get("getHateoasUrl")


def test_no_proxy_goes_direct(master, clean_env):
    proxy = _proxy_to(master)
    try:
        clean_env.setenv("HTTP_PROXY", proxy.url)
        clean_env.setenv("NO_PROXY", "example.org,.test")
        with pytest.raises(ConnectionError, match="cannot (connect|resolve)"):  # master.test does not resolve
            Connection(f"http://master.test:{_port(master)}/", timeout=5).get("getHateoasUrl")
        master.answer("getHateoasUrl", "ok")
        assert Connection(master.url, timeout=5).get("getHateoasUrl") == b"ok"  # loopback: always direct
    finally:
        proxy.stop()
    assert proxy.seen == []


def test_a_proxy_that_refuses_is_named(master, clean_env):
    proxy = _proxy_to(master, authorization="Basic dTpw")
    try:
        clean_env.setenv("HTTPS_PROXY", proxy.url)  # no credentials: 407 to the CONNECT
        with pytest.raises(ConnectionError, match=r"through the proxy http://127\.0\.0\.1:\d+ .*NO_PROXY"):
            Connection(f"https://master.test:{_port(master)}/", timeout=5).get("getHateoasUrl")
        clean_env.setenv("HTTP_PROXY", proxy.url)  # the same for an http master: the 407 is an answer
        with pytest.raises(ConnectionError, match="answered 407: the proxy .* wants credentials") as raised:
            Connection(f"http://master.test:{_port(master)}/", timeout=5).get("getHateoasUrl")
        assert raised.value.status == 407
    finally:
        proxy.stop()


# -- redirects --------------------------------------------------------------------------------


def _redirect(location: str, status: int = 302):
    return lambda received: Answer(status, headers={"Location": location})


def test_a_moved_master_is_followed_for_get_and_logged_once(master, caplog):
    connection = Connection(master.url + "v1/", timeout=5)
    master.answer_with("getHateoasUrl", lambda r: Answer(301, headers={"Location": "/v2/getHateoasUrl"})
                       if r.path.startswith("/v1/") else Answer(200, "moved ok"))
    with caplog.at_level(logging.WARNING, logger="slapos.slap.connection"):
        assert connection.get("getHateoasUrl") == b"moved ok"
        assert connection.get("getHateoasUrl") == b"moved ok"
    warnings = [r.getMessage() for r in caplog.records if "moved" in r.getMessage()]
    assert len(warnings) == 1 and "set master_url" in warnings[0]


def test_a_post_turned_into_a_get_is_reported_as_a_redirect(master):
    master.answer_with("requestComputerPartition", _redirect("https://elsewhere.example/slap/x", 302))
    with pytest.raises(RedirectError) as raised:
        Connection(master.url, timeout=5).post("requestComputerPartition", {"computer_id": "C"})
    message = str(raised.value)
    assert "redirected POST to https://elsewhere.example/slap/x (HTTP 302)" in message
    assert "failed" not in message and "check master_url" in message
    assert raised.value.location == "https://elsewhere.example/slap/x"


def test_307_keeps_the_method_and_body(master):
    master.answer_with("setConnectionXml", lambda r: Answer(307, headers={"Location": "/new/setConnectionXml"})
                       if not r.path.startswith("/new/") else Answer(200, "kept"))
    assert Connection(master.url, timeout=5).post("setConnectionXml", {"x": "1 2"}) == b"kept"
    first, second = master.requests
    assert (second.method, second.path, second.form) == ("POST", "/new/setConnectionXml", {"x": "1 2"})


def test_https_master_redirecting_to_http_is_refused(https_master, pki):
    https_master.answer_with("getHateoasUrl", _redirect("http://127.0.0.1:9/getHateoasUrl"))
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert,
                            master_ca_file=pki.ca_cert, timeout=5)
    with pytest.raises(RedirectError, match="downgrade from https to http is not followed"):
        connection.get("getHateoasUrl")


def test_redirect_loop_is_bounded(master):
    master.answer_with("getHateoasUrl", _redirect("/getHateoasUrl"))
    with pytest.raises(RedirectError, match="more than 5 redirects"):
        Connection(master.url, timeout=5).get("getHateoasUrl")
    assert len(master.requests) == 6


def test_credentials_stay_with_their_host(master):
    other = start_master()
    try:
        other.answer("getHateoasUrl", "there")
        master.answer_with("getHateoasUrl", _redirect(f"http://localhost:{_port(other)}/getHateoasUrl"))
        url = master.url.replace("http://", "http://user:secret@")
        assert Connection(url, timeout=5).get("getHateoasUrl") == b"there"
        assert master.requests[0].headers["Authorization"].startswith("Basic ")
        assert "Authorization" not in other.requests[0].headers
    finally:
        other.stop()


# -- the binary cache client -------------------------------------------------------------------


def test_binary_cache_goes_through_the_proxy(master, tmp_path, clean_env):
    from slapos.grid.cache import BinaryCache, CacheConfig, CacheError

    master.answer("KEY", "[]", headers={"Content-Type": "application/json"})
    proxy = _proxy_to(master)
    try:
        clean_env.setenv("HTTP_PROXY", proxy.url)
        cache = BinaryCache(CacheConfig(download_dir_url=f"http://cache.test:{_port(master)}/shadir"), tmp_path)
        assert cache.lookup("http://example.org/software.cfg", "KEY") is None
        assert proxy.seen[0][:2] == ("GET", f"http://cache.test:{_port(master)}/shadir/KEY")
        master.answer_with("KEY", _redirect("ftp://cache.example/KEY"))
        with pytest.raises(CacheError, match=r"redirected GET to ftp://cache.example/KEY .*not followed"):
            cache.lookup("http://example.org/software.cfg", "KEY")
    finally:
        proxy.stop()
