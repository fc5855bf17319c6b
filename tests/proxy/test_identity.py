"""The caller identity of the proxy's user endpoints: the owner of the loopback client socket,
read from the kernel's socket tables (IPv4 and IPv6); nothing for other addresses."""
from __future__ import annotations

import os
import socket

import pytest

from slapos.proxy import identity


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_loopback_client_socket_owner(family, host):
    try:
        server = socket.socket(family, socket.SOCK_STREAM)
        server.bind((host, 0))
    except OSError:
        pytest.skip(f"{host} is not available here")
    server.listen(1)
    client = socket.socket(family, socket.SOCK_STREAM)
    try:
        client.connect(server.getsockname()[:2])
        accepted, peer = server.accept()
        environ = {"REMOTE_ADDR": peer[0], "REMOTE_PORT": str(peer[1]), "SERVER_PORT": str(server.getsockname()[1])}
        assert identity.caller(environ) == f"uid:{os.geteuid()}"
        accepted.close()
    finally:
        client.close()
        server.close()


def test_no_identity_without_loopback_or_a_live_socket():
    assert identity.caller({"REMOTE_ADDR": "192.0.2.1", "REMOTE_PORT": "4000", "SERVER_PORT": "80"}) is None
    assert identity.caller({"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "1", "SERVER_PORT": "2"}) is None
    assert identity.caller({"REMOTE_ADDR": "127.0.0.1"}) is None
    # a TLS front's authenticated identity wins
    assert identity.caller({"slapos.identity": "cert:CN=COMP-1", "REMOTE_ADDR": "192.0.2.1"}) == "cert:CN=COMP-1"
