"""Fixtures of the proxy tests.

`live` is a real proxy (waitress on 127.0.0.1, real SQLite file) served from a thread of the test
process: it starts in milliseconds, so every test gets a fresh one. The `proxy` fixture
(tests/fixtures/proxy.py) runs `slapos proxy start` as a subprocess; it is used where the
command itself is under test.
"""
from __future__ import annotations

import http.client
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from slapos.proxy.config import ProxyConfig
from slapos.proxy.server import BackgroundServer
from slapos.slap import slap, wire

SR = "http://sr.example/software.cfg"
OTHER_SR = "http://sr.example/other.cfg"
COMPUTER = "COMP-0"


class Http:
    """Raw HTTP to the proxy on one keep-alive connection: (status, body text, content type)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def request(self, method: str, endpoint: str, body: bytes | None = None, headers: dict | None = None):
        self.conn.request(method, "/" + endpoint, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, data.decode("utf-8", "replace"), response.getheader("Content-Type")

    def get(self, endpoint: str, **params):
        return self.request("GET", endpoint + ("?" + urlencode(params) if params else ""))

    def post(self, endpoint: str, headers: dict | None = None, **fields):
        body = urlencode(fields).encode()
        all_headers = {"Content-Type": "application/x-www-form-urlencoded"}
        all_headers.update(headers or {})
        return self.request("POST", endpoint, body, all_headers)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Live:
    url: str
    database: Path
    computer_id: str
    server: BackgroundServer
    http: Http

    def connect(self) -> slap:
        connection = slap()
        connection.initializeConnection(self.url, timeout=30)
        return connection

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.database))
        conn.row_factory = sqlite3.Row
        return conn

    def rows(self, sql: str, *args) -> list[dict]:
        conn = self.db()
        try:
            return [dict(row) for row in conn.execute(sql, args)]
        finally:
            conn.close()


def computer_dict(computer_id: str, partitions: int, network: int = 0) -> dict:
    return {
        "reference": computer_id,
        "address": f"10.{network}.0.1",
        "netmask": "255.255.0.0",
        "partition_list": [
            {
                "reference": f"slappart{i}",
                "address_list": [
                    {"addr": f"10.{network}.{i // 200}.{10 + i % 200}", "netmask": "255.255.255.255"},
                    {"addr": f"fd00::{network}:{i:x}", "netmask": "ffff:ffff:ffff:ffff::"},
                ],
                "tap": {"name": f"slaptap{i}"},
            }
            for i in range(partitions)
        ],
    }


def format_computer(connection: slap, computer_id: str, partitions: int, network: int = 0) -> None:
    answer = connection.registerComputer(computer_id).updateConfiguration(
        computer_dict(computer_id, partitions, network)
    )
    assert answer == "done"


def start_live(directory: Path, computer_id: str = COMPUTER, **options) -> Live:
    config = ProxyConfig(database=directory / "proxy.db", computer_id=computer_id, port=0, **options)
    server = BackgroundServer(config)
    return Live(server.url, config.database, computer_id, server, Http(server.url))


@pytest.fixture
def live(tmp_path: Path):
    proxy = start_live(tmp_path)
    try:
        yield proxy
    finally:
        proxy.http.close()
        proxy.server.stop()


@pytest.fixture
def node(live: Live):
    """A proxy whose computer COMP-0 has 4 partitions and SR supplied; yields (live, slap)."""
    connection = live.connect()
    format_computer(connection, COMPUTER, 4)
    connection.registerSupply().supply(SR, COMPUTER)
    try:
        yield live, connection
    finally:
        connection.close()


def marshal(value) -> str:
    return wire.dumps(value)
