"""Attacks on joining (docs/join.md): a computer certificate is what lets a machine into a shared
proxy, where it is allocated everyone's instances. On a plain-HTTP proxy any local user (a
partition's tenant included) gets a computer token through HATEOAS (`slapos computer token`): such
a token must not buy a certificate, neither there (a plain proxy asks for none) nor after the
operator turned TLS on over the same database and CA (the documented way to share a node's proxy),
where only the operator's tokens let a node in."""
from __future__ import annotations

import http.client
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest

from slapos.slap import wire
from tests.fixtures.proxy import free_port, write_config
from tests.security.proxy.conftest import call, credentials_proxy, dump, run_as, tenant_users
from tests.security.proxy.test_join import ENV, SR, Node, TLSProxy, computer_document

TENANT = """
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
conn.request("GET", "/hateoas/computer_module/Base_getComputerToken?computer_reference=rogue")
answer = conn.getresponse()
body = answer.read().decode()
print(answer.status)
print(json.loads(body)["access_token"] if answer.status == 200 else body)
"""


def certificates(database: Path) -> list[tuple]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT kind, computer_reference FROM certificate").fetchall()
    finally:
        conn.close()


def exchange_over_tls(proxy: TLSProxy, token: str) -> tuple[int, str]:
    conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=15, context=proxy.context())
    try:
        conn.request("POST", "/Person_requestComputer", body=urlencode({"title": "rogue"}),
                     headers={"Content-Type": "application/x-www-form-urlencoded", "X-Access-Token": token})
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


@pytest.mark.root  # a real tenant user
def test_a_tenants_computer_token_buys_no_certificate_on_the_plain_proxy_nor_once_it_serves_tls(tmp_path):
    plain = credentials_proxy(tmp_path / "proxy")
    with tenant_users(1) as (tenant,):
        try:
            got = run_as(tenant, TENANT, str(plain.port))
            assert got.returncode == 0, got.stderr
            status, token = got.stdout.split("\n")[:2]
            assert status == "200", token  # a local user's token, as on every plain proxy
            first = call(plain.port, "POST", "/Person_requestComputer", {"title": "rogue"},
                         headers={"X-Access-Token": token})
            assert first[0] == 403, first
            assert "plain HTTP" in first[1]
            assert certificates(plain.database) == []
        finally:
            plain.stop()
        # the operator turns TLS on over the same database and CA: the tenant's token stays refused
        tls = TLSProxy(tmp_path / "proxy")
        try:
            status, body = exchange_over_tls(tls, token)
            assert status == 403, body
            assert "operator" in body
            assert certificates(tls.database) == []
            # the operator's own token lets a node of that name in, and the name is no longer the tenant's
            status, body = exchange_over_tls(tls, tls.token("rogue"))
            assert status == 200, body
            assert certificates(tls.database) == [("computer", "rogue")]
            conn = sqlite3.connect(tls.database)
            try:
                owners = conn.execute("SELECT identity FROM owner WHERE kind = 'computer' AND reference = 'rogue'")
                assert [row[0] for row in owners] == ["uid:0"]
            finally:
                conn.close()
        finally:
            tls.stop()


def test_a_node_requesting_as_a_person_places_no_shared_instance_on_another_computer(tmp_path):
    """`join.require_own_tree`: a computer certificate acting as a person places instances on its
    own computer only. A shared instance names its host with `instance_guid`: a host on another
    computer is refused like `computer_guid` of another computer (the filter holds both)."""
    proxy = TLSProxy(tmp_path / "proxy")
    try:
        a, b = Node(tmp_path / "a", "edge-a"), Node(tmp_path / "b", "edge-b")
        for node in (a, b):
            assert node.register(proxy, proxy.token(node.name)).returncode == 0
            node.slap().registerComputer(node.name).updateConfiguration(computer_document(node.name, 2))
            node.slap().registerSupply().supply(SR, node.name)
        host = a.slap().registerOpenOrder().request(SR, "host-a", filter_kw={"computer_guid": "edge-a"})
        b_cert = (b.config.get("slapos", "cert_file"), b.config.get("slapos", "key_file"))
        before = dump(proxy.database)
        status, body = proxy.call("POST", "/requestComputerPartition", {
            "software_release": SR, "software_type": "", "partition_reference": "intruder",
            "shared_xml": wire.dumps(True), "partition_parameter_xml": wire.dumps({"backend": "http://evil"}),
            "filter_xml": wire.dumps({"instance_guid": f"edge-a-{host.getId()}"}), "state": wire.dumps("started")},
            Path(b_cert[0]), Path(b_cert[1]))
        assert status in (403, 404), body
        assert dump(proxy.database) == before
        # on its own computer it may (a host of its own)
        own = b.slap().registerOpenOrder().request(SR, "host-b", filter_kw={"computer_guid": "edge-b"})
        status, body = proxy.call("POST", "/requestComputerPartition", {
            "software_release": SR, "software_type": "", "partition_reference": "mine",
            "shared_xml": wire.dumps(True), "partition_parameter_xml": wire.dumps({}),
            "filter_xml": wire.dumps({"instance_guid": f"edge-b-{own.getId()}"}), "state": wire.dumps("started")},
            Path(b_cert[0]), Path(b_cert[1]))
        assert status == 200, body
    finally:
        proxy.stop()


def test_idle_connections_of_one_address_do_not_take_every_place_of_the_tls_proxy(tmp_path):
    """The TLS listener serves at most 64 connections at once, each up to 30 s in its handshake
    and 120 s waiting for its request: 64 idle TCP connections from one address (no certificate,
    no byte sent) would hold every node off. One address holds at most 16 at once; the 17th is
    closed at once, and a node from another address is served."""
    import socket

    proxy = TLSProxy(tmp_path / "proxy")
    idle: list[socket.socket] = []
    try:
        for _ in range(64):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.3", 0))
            sock.connect((proxy.host, proxy.port))
            idle.append(sock)
        # the node, from its own address, is answered while they idle
        conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=10, context=proxy.context(),
                                           source_address=("127.0.0.1", 0))
        try:
            conn.request("GET", "/getRunId")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        # the connections over the bound were closed by the proxy (it read nothing of them)
        closed = 0
        for sock in idle:
            sock.settimeout(0.5)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass  # one of the 16 still held
        assert closed >= 64 - 16
    finally:
        for sock in idle:
            sock.close()
        proxy.stop()


def _start_tls_once(directory: Path) -> subprocess.CompletedProcess:
    """`slapos proxy start` of a TLS proxy on `directory`, expected to refuse to start."""
    write_config(directory / "slapos.cfg", {
        "slapos": {"computer_id": "unused"},
        "slapproxy": {"host": "127.0.0.1", "port": str(free_port()), "tls": "true",
                      "database_uri": str(directory / "proxy.db")}})
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--cfg",
                           str(directory / "slapos.cfg")], capture_output=True, text=True, timeout=20, env=ENV)


@pytest.mark.root  # a directory of another user
def test_a_ca_others_could_read_or_replace_is_refused_at_start(tmp_path):
    """The CA key signs every certificate and `ca.crt` is the trust anchor the TLS listener checks
    client certificates against: a key others can read, or a CA directory, key or certificate
    another user owns or others can write (planted, or restored with the wrong modes), is refused
    with one line, and nothing is written into it."""
    proxy = TLSProxy(tmp_path / "proxy")  # a CA made as it should be
    proxy.stop()
    ca = tmp_path / "proxy" / "ca"
    key = ca / "ca.key"
    os.chmod(key, 0o644)
    refused = _start_tls_once(tmp_path / "proxy")
    assert refused.returncode == 1, refused.stderr
    assert "ca.key" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    os.chmod(key, 0o600)
    os.chmod(ca / "ca.crt", 0o666)
    refused = _start_tls_once(tmp_path / "proxy")
    assert refused.returncode == 1 and "ca.crt" in refused.stderr, refused.stderr
    os.chmod(ca / "ca.crt", 0o644)
    # a CA directory planted by another user beside the database, still empty: nothing written into it
    with tenant_users(1) as (tenant,):
        planted = tmp_path / "other"
        planted.mkdir()
        (planted / "ca").mkdir(mode=0o777)
        os.chown(planted / "ca", tenant.pw_uid, tenant.pw_gid)
        refused = _start_tls_once(planted)
        assert refused.returncode == 1 and "CA directory" in refused.stderr, refused.stderr
        assert list((planted / "ca").iterdir()) == []
