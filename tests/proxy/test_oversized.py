"""An oversized body gets a 413 the client can read, not a connection reset: below twice
max_request_size the proxy answers from Content-Length; beyond, waitress' backstop answers and
slapos.proxy.drain reads what the client still sends before closing."""
from __future__ import annotations

import http.client

import pytest

from slapos.slap import BadRequestError
from slapos.slap.connection import Connection

from ..fixtures.proxy import start_proxy

LIMIT = 1 << 20


@pytest.fixture
def small_proxy(tmp_path):
    running = start_proxy(tmp_path / "proxy", extra_config={"slapproxy": {"max_request_size": str(LIMIT)}})
    try:
        yield running
    finally:
        running.stop()


def _raw_post(port: int, size: int) -> tuple[int, bytes]:
    """What a plain client does: send the whole body, then read the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/loadComputerConfigurationFromXML", body=b"x" * size,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("size", [LIMIT + 10, 3 * LIMIT, 40 * LIMIT], ids=["over the limit", "over the backstop",
                                                                         "far over the backstop"])
def test_a_plain_client_reads_the_413(small_proxy, size):
    status, body = _raw_post(small_proxy.port, size)
    assert status == 413, body
    # the connection after it still works: the proxy is fine
    assert _raw_post(small_proxy.port, 10)[0] in (200, 400, 404)


def test_the_slap_client_says_the_request_is_too_large(small_proxy):
    connection = Connection(small_proxy.url, timeout=30)
    for size in (2 * LIMIT, 40 * LIMIT):
        with pytest.raises(BadRequestError, match=r"answered 413: the request \(\d+ bytes\) is larger than the "
                                                  r"master accepts.*max_request_size") as raised:
            connection.post("loadComputerConfigurationFromXML", {"computer_id": "C", "xml": "a" * size})
        assert raised.value.status == 413
