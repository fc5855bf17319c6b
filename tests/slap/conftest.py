"""Fixtures of the SLAP client tests: a loopback master (http and https) and a test PKI."""
from __future__ import annotations

import pytest

from slapos.slap import slap

from .master import make_pki, server_ssl_context, start_master


@pytest.fixture
def master():
    server = start_master()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def connected(master):
    """A slap connected to the loopback master, with a short timeout."""
    connection = slap()
    connection.initializeConnection(master.url, timeout=5)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_master(pki):
    """An https master that requires a client certificate signed by the test CA."""
    server = start_master(server_ssl_context(pki, require_client_cert=True))
    try:
        yield server
    finally:
        server.stop()
