"""Secure join (docs/join.md): two nodes get computer certificates from one TLS proxy with
one-time tokens (`slapos node register`), each acts for its own computer only; a replayed or
expired token, a missing, revoked or foreign certificate is refused and changes nothing.

The first part checks the join and the refusals with SLAP calls alone (no root needed). The
second part (`grid`, as root) is the whole story: two registered nodes, one in its own network
namespace, build and deploy real software releases over mutual TLS, then every cross-node and
cross-partition call is refused with the database unchanged (see "What the tests show" there).
"""
from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import pwd
import shutil
import sqlite3
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from slapos.base.config import Config
from slapos.slap.exceptions import AuthenticationError
from tests.conftest import make_traversable
from tests.fixtures.proxy import REPO, free_port, write_config
from tests.security.proxy.conftest import dump

SR = "https://example.org/tjoin/software.cfg"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLAPOS_")}
ENV["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")


def slapos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


class TLSProxy:
    def __init__(self, directory: Path, host: str = "127.0.0.1"):
        directory.mkdir(parents=True, exist_ok=True)  # (a plain proxy's directory, turned to TLS)
        self.directory = directory
        self.port = free_port()
        self.host = host
        self.url = f"https://{host}:{self.port}/"
        self.database = directory / "proxy.db"
        self.cfg = directory / "slapos.cfg"
        self.ca = directory / "ca" / "ca.crt"
        write_config(self.cfg, {"slapos": {"computer_id": "unused"},
                                "slapproxy": {"host": host, "port": str(self.port), "tls": "true",
                                              "database_uri": str(self.database)}})
        self.log = open(directory / "proxy.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--cfg",
                                         str(self.cfg)], stdout=self.log, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (directory / "proxy.log").read_text()
            try:
                if self.get("/getRunId")[0] == 200:
                    return
            except (OSError, ssl.SSLError):
                time.sleep(0.1)
        raise RuntimeError("the TLS proxy did not start")

    def context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert:
            context.load_cert_chain(str(cert), str(key))
        return context

    def get(self, path: str, cert: Path | None = None, key: Path | None = None) -> tuple[int, str]:
        return self.call("GET", path, cert=cert, key=key)

    def call(self, method: str, path: str, fields: dict | None = None, cert: Path | None = None,
             key: Path | None = None) -> tuple[int, str]:
        """One SLAP call, with the client certificate (cert, key) if given: (status, body)."""
        from urllib.parse import urlencode

        conn = http.client.HTTPSConnection(self.host, self.port, timeout=10, context=self.context(cert, key))
        try:
            if method == "GET":
                conn.request("GET", path + ("?" + urlencode(fields) if fields else ""))
            else:
                conn.request("POST", path, body=urlencode(fields or {}),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
            answer = conn.getresponse()
            return answer.status, answer.read().decode()
        finally:
            conn.close()

    def token(self, *args: str) -> str:
        result = slapos("proxy", "token", "--cfg", str(self.cfg), *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self.log.close()


class Node:
    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.cfg = root / "etc" / "slapos.cfg"

    def register(self, proxy: TLSProxy, token: str, name: str | None = None) -> subprocess.CompletedProcess:
        return slapos("node", "register", name or self.name, "--token", token, "--cfg", str(self.cfg),
                      "--master-url", proxy.url, "--master-url-web", proxy.url, "--master-ca-file", str(proxy.ca),
                      "--software-root", str(self.root / "soft"), "--instance-root", str(self.root / "srv"),
                      "--state-dir", str(self.root / "var"), "--partition-number", "2")

    @property
    def config(self) -> Config:
        return Config(self.cfg)

    def slap(self):
        from slapos.slap import slap

        cfg = self.config
        connection = slap()
        connection.initializeConnection(cfg.get("slapos", "master_url"), key_file=cfg.get("slapos", "key_file"),
                                        cert_file=cfg.get("slapos", "cert_file"),
                                        master_ca_file=cfg.get("slapos", "master_ca_file"))
        return connection


def computer_document(computer_id: str, partitions: int) -> dict:
    return {"reference": computer_id, "address": "127.0.0.1", "netmask": "255.0.0.0",
            "partition_list": [{"reference": f"slappart{i}", "address_list": [{"addr": "127.0.0.1",
                                                                                "netmask": "255.0.0.0"}],
                                "tap": {"name": f"slappart{i}"}} for i in range(partitions)]}


@pytest.fixture
def tls_proxy(tmp_path):
    proxy = TLSProxy(tmp_path / "proxy")
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def two_nodes(tls_proxy, tmp_path):
    a, b = Node(tmp_path / "a", "edge-a"), Node(tmp_path / "b", "edge-b")
    for node, token in ((a, tls_proxy.token("edge-a")), (b, tls_proxy.token())):
        result = node.register(tls_proxy, token)
        assert result.returncode == 0, result.stderr
        node.slap().registerComputer(node.name).updateConfiguration(computer_document(node.name, 2))
    return a, b


def test_the_ca_is_created_once_with_a_private_key(tls_proxy):
    key = tls_proxy.directory / "ca" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tls_proxy.directory / "ca").stat().st_mode) == 0o700


def test_two_nodes_join_and_each_acts_only_for_its_own_computer(tls_proxy, two_nodes):
    a, b = two_nodes
    for node in (a, b):
        cfg = node.config
        assert cfg.get("slapos", "computer_id") == node.name  # read from the certificate
        assert stat.S_IMODE(Path(cfg.get("slapos", "key_file")).stat().st_mode) == 0o600
    slap_a, slap_b = a.slap(), b.slap()
    assert len(slap_a.registerComputer("edge-a").getComputerPartitionList()) == 2  # as formatted
    slap_a.registerSupply().supply(SR, "edge-a")
    slap_b.registerSupply().supply(SR, "edge-b")
    instance_a = slap_a.registerOpenOrder().request(SR, "tree-a", filter_kw={"computer_guid": "edge-a"})
    instance_b = slap_b.registerOpenOrder().request(SR, "tree-b", filter_kw={"computer_guid": "edge-b"})
    assert instance_a.getId() in [p.getId() for p in slap_a.registerComputer("edge-a").getComputerPartitionList()]
    before = dump(tls_proxy.database)
    attacks = [
        lambda: slap_a.registerComputer("edge-b").getComputerPartitionList(),  # read B's documents
        lambda: slap_a.registerComputerPartition("edge-b", instance_b.getId()).getInstanceParameterDict(),
        lambda: slap_a.registerComputerPartition("edge-b", instance_b.getId()).started(),  # report for B
        lambda: slap_a.registerComputer("edge-b").updateConfiguration(computer_document("edge-b", 1)),
        lambda: slap_a.registerSupply().supply(SR, "edge-b", "destroyed"),
        lambda: slap_b.registerComputerPartition("edge-a", instance_a.getId()).setConnectionDict({"x": "y"}),
    ]
    for attack in attacks:
        with pytest.raises(AuthenticationError):
            attack()
    assert dump(tls_proxy.database) == before
    # without a certificate: only the token exchange and the harmless calls answer
    status, body = tls_proxy.get("/getFullComputerInformation?computer_id=edge-a")
    assert status == 403 and "credential" in body


def test_partition_certificates_act_for_their_partition_only(tls_proxy, two_nodes, tmp_path):
    a, _b = two_nodes
    slap_a = a.slap()
    slap_a.registerSupply().supply(SR, "edge-a")
    one = slap_a.registerOpenOrder().request(SR, "one", filter_kw={"computer_guid": "edge-a"})
    two = slap_a.registerOpenOrder().request(SR, "two", filter_kw={"computer_guid": "edge-a"})
    certificates = {}
    for partition in (one.getId(), two.getId()):
        got = slap_a.registerComputerPartition("edge-a", partition).getCertificate()
        assert "BEGIN CERTIFICATE" in got["certificate"] and "PRIVATE KEY" in got["key"]
        assert slap_a.registerComputerPartition("edge-a", partition).getCertificate() == got  # kept, not re-issued
        cert, key = tmp_path / f"{partition}.crt", tmp_path / f"{partition}.key"
        cert.write_text(got["certificate"])
        key.write_text(got["key"])
        certificates[partition] = (cert, key)
    cert, key = certificates[one.getId()]
    status, _ = tls_proxy.get(f"/registerComputerPartition?computer_reference=edge-a&computer_partition_reference="
                              f"{one.getId()}", cert, key)
    assert status == 200
    before = dump(tls_proxy.database)
    status, body = tls_proxy.get(f"/registerComputerPartition?computer_reference=edge-a&computer_partition_reference="
                                 f"{two.getId()}", cert, key)
    assert status == 403
    status, body = tls_proxy.get("/getFullComputerInformation?computer_id=edge-a", cert, key)
    assert status == 403
    assert dump(tls_proxy.database) == before


def test_replayed_and_expired_tokens_and_a_taken_name_are_refused(tls_proxy, tmp_path):
    node = Node(tmp_path / "n", "edge-n")
    token = tls_proxy.token()
    expired_token = tls_proxy.token("--lifetime", "0.2")
    assert node.register(tls_proxy, token).returncode == 0
    time.sleep(0.5)
    before = dump(tls_proxy.database)
    replay = Node(tmp_path / "r", "edge-r").register(tls_proxy, token)
    assert replay.returncode == 1 and "already used" in replay.stderr, replay.stderr
    expired = Node(tmp_path / "e", "edge-e").register(tls_proxy, expired_token)
    assert expired.returncode == 1 and "expired" in expired.stderr, expired.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()
    assert dump(tls_proxy.database) == before
    fresh = tls_proxy.token()
    taken = Node(tmp_path / "t", "edge-n").register(tls_proxy, fresh)
    assert taken.returncode == 1 and "already in use" in taken.stderr, taken.stderr
    bound = tls_proxy.token("edge-x")
    wrong = Node(tmp_path / "w", "edge-y").register(tls_proxy, bound)
    assert wrong.returncode == 1 and "it is for computer edge-x" in wrong.stderr, wrong.stderr


def test_a_revoked_certificate_is_refused_at_once(tls_proxy, two_nodes):
    a, b = two_nodes
    listed = slapos("proxy", "certificates", "--cfg", str(tls_proxy.cfg), "--format", "json")
    rows = {r["computer"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"edge-a", "edge-b"} and rows["edge-b"]["state"] == "active"
    assert b.slap().registerComputer("edge-b").getComputerPartitionList()
    revoked = slapos("proxy", "revoke", "--cfg", str(tls_proxy.cfg), rows["edge-b"]["serial"])
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(AuthenticationError):  # the running proxy, without a restart
        b.slap().registerComputer("edge-b").getComputerPartitionList()
    assert a.slap().registerComputer("edge-a").getComputerPartitionList()
    again = slapos("proxy", "revoke", "--cfg", str(tls_proxy.cfg), rows["edge-b"]["serial"])
    assert again.returncode == 1 and "no active certificate" in again.stderr
    # the name is free again: the node can join anew with a new token
    assert b.register(tls_proxy, tls_proxy.token()).returncode == 0
    assert b.slap().registerComputer("edge-b").getComputerPartitionList()


def test_registered_nodes_format_themselves_over_tls(tls_proxy, tmp_path):
    """The node's own code (slapos node format) reports to the TLS proxy with the registered
    configuration, as is: certificate, key and the proxy's CA from `slapos node register`."""
    from tests.fixtures.node import format_node

    nodes = [Node(tmp_path / "a", "edge-a"), Node(tmp_path / "b", "edge-b")]
    for node in nodes:
        assert node.register(tls_proxy, tls_proxy.token(node.name)).returncode == 0
        result = format_node(node.cfg, alter_user=False, alter_network=False, random_delay=0)
        assert [p.reference for p in result.computer.partition_list] == ["slappart0", "slappart1"]
    rows = dump(tls_proxy.database)
    for name in ("edge-a", "edge-b"):
        assert any(line.startswith('INSERT INTO "partition"') and f"'{name}'" in line for line in rows)
    # node A's configuration pointed at B's computer: refused by the proxy, B's partitions unchanged
    text = nodes[0].cfg.read_text().replace("computer_id = edge-a", "computer_id = edge-b")
    nodes[0].cfg.write_text(text)
    before = dump(tls_proxy.database)
    with pytest.raises(AssertionError, match="not told"):
        format_node(nodes[0].cfg, alter_user=False, alter_network=False, random_delay=0)
    assert dump(tls_proxy.database) == before


def test_certificates_the_proxy_did_not_issue_to_a_client_are_refused(tls_proxy, two_nodes, tmp_path):
    """A certificate of another CA fails the handshake or is anonymous; the proxy's own server
    certificate (signed by its CA, but not a client's) gets no identity."""
    from cryptography.hazmat.primitives import serialization

    from slapos.proxy.ca import CertificateAuthority

    other = CertificateAuthority(tmp_path / "other-ca").load_or_create("evil")
    forged = other.issue("edge-a", "computer")
    cert, key = tmp_path / "forged.crt", tmp_path / "forged.key"
    cert.write_text(forged.certificate)
    key.write_text(forged.key)
    try:
        status, _ = tls_proxy.get("/getFullComputerInformation?computer_id=edge-a", cert, key)
    except (ssl.SSLError, OSError):
        status = None  # the handshake refused it
    assert status in (None, 403)
    server_cert = tls_proxy.directory / "ca" / "server.crt"
    server_key = tls_proxy.directory / "ca" / "server.key"
    serialization.load_pem_private_key(server_key.read_bytes(), password=None)  # it is a real key pair
    try:
        status = tls_proxy.get("/getFullComputerInformation?computer_id=edge-a", server_cert, server_key)[0]
    except (ssl.SSLError, OSError):
        status = None
    assert status in (None, 403)


# -- two nodes deploying over mutual TLS (one in its own network namespace) ----------------------
# Set up once for the module (about 20 s): a TLS proxy on the host end of a veth pair; node A on
# the host builds hello-tree and deploys its tree (the root requests its children through the
# root partition's certificate); node B, every command of it run in the network namespace
# `twonb`, builds hello-web and deploys one instance. Both join with tokens and use only what
# `slapos node register` wrote. Names: netns `twonb`, veth `twonv0`/`twonv1`.

NETNS, VETH, NET, NET6 = "twonb", "twonv", "10.231.78", "fd00:7a:78::"
TREE = str(REPO / "software-release" / "hello-tree" / "software.cfg")
WEB = str(REPO / "software-release" / "hello-web" / "software.cfg")


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@contextlib.contextmanager
def veth_netns():
    """The network namespace NETNS linked to the host by a veth pair: host NET.1, netns NET.2 (and
    NET6 1 and 2: a node needs an IPv6 address)."""
    ip("netns", "del", NETNS, check=False)
    ip("link", "del", f"{VETH}0", check=False)
    ip("netns", "add", NETNS)
    try:
        ip("link", "add", f"{VETH}0", "type", "veth", "peer", "name", f"{VETH}1")
        ip("link", "set", f"{VETH}1", "netns", NETNS)
        ip("addr", "add", f"{NET}.1/30", "dev", f"{VETH}0")
        ip("addr", "add", f"{NET6}1/64", "dev", f"{VETH}0", "nodad")
        ip("link", "set", f"{VETH}0", "up")
        for args in (("addr", "add", f"{NET}.2/30", "dev", f"{VETH}1"), ("link", "set", f"{VETH}1", "up"),
                     ("addr", "add", f"{NET6}2/64", "dev", f"{VETH}1", "nodad"), ("link", "set", "lo", "up")):
            ip("netns", "exec", NETNS, "ip", *args)
        yield NETNS
    finally:
        ip("link", "del", f"{VETH}0", check=False)
        ip("netns", "del", NETNS, check=False)


class GridNode(Node):
    """A node whose every command runs as root, in its network namespace when it has one."""

    def __init__(self, root: Path, name: str, netns: str | None = None):
        super().__init__(root, name)
        self.netns = netns

    def slapos(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run([*prefix, sys.executable, "-m", "slapos.cli.main", *args], capture_output=True,
                              text=True, timeout=timeout, env=ENV)

    def ok(self, *args: str, timeout: float = 120) -> str:
        result = self.slapos(*args, "--cfg", str(self.cfg), timeout=timeout)
        assert result.returncode == 0, f"slapos {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def join(self, proxy: TLSProxy, ca: Path, interface: str, partitions: int) -> None:
        """Register with a token, format (directories only: no users, no addresses added), and
        give software and partitions to nobody (buildout never runs as root)."""
        self.root.mkdir()
        self.options = ["--master-url", proxy.url, "--master-url-web", proxy.url, "--master-ca-file", str(ca),
                        "--software-root", str(self.root / "soft"), "--instance-root", str(self.root / "srv"),
                        "--state-dir", str(self.root / "var"), "--interface-name", interface,
                        "--partition-number", str(partitions)]
        self.register_again(proxy)
        self.ok("node", "format", "--now")  # as `slapos node register` said, with the directories it made
        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        for path in [self.software_root, *self.instance_root.iterdir()]:
            if path.is_dir():
                os.chown(path, uid, gid)

    def register_again(self, proxy: TLSProxy) -> None:
        """`slapos node register` with a new token (the same options), then this machine's
        settings: no cgroups, no users or addresses added (shared with other tests)."""
        self.token = proxy.token(self.name)
        result = self.slapos("node", "register", self.name, "--token", self.token, "--cfg", str(self.cfg),
                             *self.options)
        assert result.returncode == 0, result.stderr
        text = self.cfg.read_text().replace("[slapos]\n", "[slapos]\npartition_cgroup = off\n", 1)
        for key in ("alter_user", "alter_network"):
            text = text.replace(f"{key} = true", f"{key} = false")
        self.cfg.write_text(text)

    @property
    def pki(self) -> Path:
        return Path(self.config.get("slapos", "certificate_repository_path"))

    @property
    def certificate(self) -> tuple[Path, Path]:
        """The computer's (certificate, key)."""
        cfg = self.config
        return Path(cfg.get("slapos", "cert_file")), Path(cfg.get("slapos", "key_file"))

    @property
    def software_root(self) -> Path:
        return Path(self.config.get("slapos", "software_root"))

    @property
    def instance_root(self) -> Path:
        return Path(self.config.get("slapos", "instance_root"))

    def request(self, title: str, url: str, **parameters: int | str) -> dict:
        """`slapos request` with this node's configuration as the client's, on this computer."""
        args = ["request", title, url, "--node", f"computer_guid={self.name}", "--format", "json"]
        if parameters:
            args += ["--parameters", *(f"{k}={v}" for k, v in parameters.items())]
        return json.loads(self.ok(*args))

    def partitions(self, database: Path) -> dict[str, str]:
        """title -> partition of this computer's busy partitions."""
        conn = sqlite3.connect(database)
        try:
            return dict(conn.execute("SELECT title, reference FROM partition WHERE computer_reference = ? "
                                     "AND slap_state = 'busy'", (self.name,)).fetchall())
        finally:
            conn.close()

    def stop(self) -> None:
        from slapos.base.settings import NodeSettings
        from tests.fixtures.supervisor import stop_supervisor

        if self.cfg.exists():
            stop_supervisor(NodeSettings.from_config(self.config))


@dataclass
class Grid:
    proxy: TLSProxy
    public_ca: Path
    a: GridNode
    b: GridNode
    ports: dict[str, int]


def tree_parameters(ports: dict[str, int]) -> dict[str, int]:
    return {key: ports[key] for key in ("port", "backend-1-port", "backend-2-port")}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    if os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        pytest.skip("needs root and ip netns")
    root = make_traversable(tmp_path_factory.mktemp("twonode"))
    with veth_netns() as netns:
        proxy = TLSProxy(root / "proxy", host=f"{NET}.1")
        public_ca = root / "proxy-ca.crt"  # what the operator copies to each node (the CA's directory is 0700)
        shutil.copyfile(proxy.ca, public_ca)
        os.chmod(public_ca, 0o644)
        a, b = GridNode(root / "a", "twon-a"), GridNode(root / "b", "twon-b", netns)
        ports = {name: free_port() for name in ("port", "backend-1-port", "backend-2-port", "web")}
        try:
            a.join(proxy, public_ca, "lo", 3)
            b.join(proxy, public_ca, f"{VETH}1", 1)
            a.ok("supply", TREE, a.name)
            b.ok("supply", WEB, b.name)
            for node in (a, b):
                node.ok("node", "software", "--now", timeout=300)
            a.request("tree", TREE, **tree_parameters(ports))
            b.request("web", WEB, port=ports["web"], message="hello from the namespace")
            b.ok("node", "instance", "--now")
            # run 1: the root requests its children; 2: they deploy and publish; 3: the root publishes
            for _ in range(3):
                result = a.slapos("node", "instance", "--now", "--cfg", str(a.cfg))
            assert result.returncode == 0, result.stdout + result.stderr
            yield Grid(proxy, public_ca, a, b, ports)
        finally:
            for node in (a, b):
                node.stop()
            proxy.stop()


def fetch(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as answer:
        return answer.read().decode()


def instance_states(database: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(computer, title) -> (requested, reported) state of every busy partition."""
    conn = sqlite3.connect(database)
    try:
        rows = conn.execute("SELECT computer_reference, title, requested_state, reported_state FROM partition "
                            "WHERE slap_state = 'busy'").fetchall()
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}
    finally:
        conn.close()


def common_name(certificate: Path) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_two_nodes_build_and_deploy_over_mutual_tls(grid):
    """Each node built its release and deployed its instance with its own certificate: the
    services answer (B's on its namespace's address, through the veth), the instances are
    started at the proxy, each partition's certificate is its own, 0600, its user's, and the
    published URLs reach the requester (`slapos request` with the node's configuration)."""
    a, b, ports = grid.a, grid.b, grid.ports
    tree = a.request("tree", TREE, **tree_parameters(ports))["connection_parameters"]
    assert fetch(tree["url"]) == ("backend-1: Hello from backend 1!\nbackend-2: Hello from backend 2!\n"
                                  "shared-1: Hello from the shared instance!\n")
    web = b.request("web", WEB, port=ports["web"], message="hello from the namespace")["connection_parameters"]
    assert web == {"url": f"http://{NET}.2:{ports['web']}/"}
    assert fetch(web["url"]) == "hello from the namespace\n"
    assert instance_states(grid.proxy.database) == {
        ("twon-a", "tree"): ("started", "started"), ("twon-a", "backend-1"): ("started", "started"),
        ("twon-a", "backend-2"): ("started", "started"), ("twon-b", "web"): ("started", "started")}
    for node in (a, b):
        pki = node.pki
        for partition in node.partitions(grid.proxy.database).values():
            owner = (node.instance_root / partition).stat().st_uid
            assert owner != 0
            for suffix in ("crt", "key"):
                info = (pki / f"{partition}.{suffix}").stat()
                assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, owner), (partition, suffix)
            assert common_name(pki / f"{partition}.crt") == f"{node.name}/{partition}"


def test_the_root_requested_its_children_with_its_own_partition_certificate(grid):
    """hello-tree's root requested its backends and shared instance from its buildout, which runs
    as the partition's user with the partition's [slap-connection]: its own certificate, the
    proxy's CA, no credential in the URL; the computer's key is root's only."""
    a, database = grid.a, grid.proxy.database
    partitions = a.partitions(database)
    assert sorted(partitions) == ["backend-1", "backend-2", "tree"]
    root = partitions["tree"]
    conn = sqlite3.connect(database)
    try:
        requested_by = dict(conn.execute("SELECT title, requested_by FROM partition WHERE computer_reference = ? "
                                         "AND slap_state = 'busy'", (a.name,)).fetchall())
    finally:
        conn.close()
    assert requested_by == {"tree": "", "backend-1": "tree", "backend-2": "tree"}
    slap_connection = (a.instance_root / root / "buildout.cfg").read_text()
    assert f"cert-file = {a.pki / root}.crt\n" in slap_connection
    assert f"key-file = {a.pki / root}.key\n" in slap_connection
    assert f"master-ca-file = {grid.public_ca}\n" in slap_connection
    assert f"server-url = {grid.proxy.url}\n" in slap_connection
    computer_key = Path(a.config.get("slapos", "key_file")).stat()
    assert (stat.S_IMODE(computer_key.st_mode), computer_key.st_uid) == (0o600, 0)
    assert (a.instance_root / root).stat().st_uid != 0


def partition_writes(computer: str, partition: str) -> list[tuple[str, str, dict]]:
    """Every call that changes a partition, made for `partition` of `computer`."""
    from slapos.slap import wire

    ids = {"computer_id": computer, "computer_partition_id": partition}
    return [
        ("POST", "/startedComputerPartition", ids),
        ("POST", "/stoppedComputerPartition", ids),
        ("POST", "/destroyedComputerPartition", ids),
        ("POST", "/softwareInstanceError", {**ids, "error_log": "forged"}),
        ("POST", "/softwareInstanceBang", {**ids, "message": "forged"}),
        ("POST", "/setComputerPartitionConnectionXml",
         {**ids, "connection_xml": wire.dumps_instance_xml({"url": "http://forged/"})}),
        ("POST", "/requestComputerPartition",  # as that partition: a child in its tree
         {**ids, "software_release": WEB, "software_type": "default", "partition_reference": "intruder",
          "shared_xml": wire.dumps(False), "partition_parameter_xml": wire.dumps({}),
          "filter_xml": wire.dumps({}), "state": wire.dumps("started")}),
        ("GET", "/getComputerPartitionCertificate", ids),  # would issue one for the caller
    ]


def computer_calls(computer: str, partition: str) -> list[tuple[str, str, dict]]:
    """Every call of the node of `computer`, reading or reporting, and for its `partition`."""
    return [
        ("GET", "/getFullComputerInformation", {"computer_id": computer}),
        ("GET", "/registerComputerPartition", {"computer_reference": computer,
                                               "computer_partition_reference": partition}),
        ("POST", "/availableSoftwareRelease", {"url": WEB, "computer_id": computer}),
        ("POST", "/softwareReleaseError", {"url": WEB, "computer_id": computer, "error_log": "forged"}),
        *partition_writes(computer, partition),
    ]


def assert_refused(proxy: TLSProxy, calls: list, cert: Path | None, key: Path | None) -> None:
    """Each call gets 403, and the database is exactly as before."""
    before = dump(proxy.database)
    answers = [(endpoint, proxy.call(method, endpoint, fields, cert, key)) for method, endpoint, fields in calls]
    assert [(endpoint, answer) for endpoint, answer in answers if answer[0] != 403] == []
    assert dump(proxy.database) == before


def test_a_computer_certificate_reaches_only_its_own_computer(grid):
    """A's certificate reading or reporting B's computer and partition, and B's A's: refused."""
    a, b, database = grid.a, grid.b, grid.proxy.database
    assert_refused(grid.proxy, computer_calls(b.name, b.partitions(database)["web"]), *a.certificate)
    assert_refused(grid.proxy, computer_calls(a.name, a.partitions(database)["tree"]), *b.certificate)
    # and from B's own network namespace, with B's configuration as written by `slapos node register`
    before = dump(database)
    script = ("import sys\nfrom slapos.client.settings import ClientSettings\nfrom slapos.slap import slap\n"
              "from slapos.slap.exceptions import AuthenticationError\n"
              "s = ClientSettings.load(sys.argv[1])\nconnection = slap()\n"
              "connection.initializeConnection(s.master_url, key_file=str(s.key_file), cert_file=str(s.cert_file),\n"
              "                                master_ca_file=str(s.master_ca_file))\n"
              "assert connection.registerComputer(sys.argv[2]).getComputerPartitionList()\n"
              "try:\n    connection.registerComputer(sys.argv[3]).getComputerPartitionList()\n"
              "except AuthenticationError as e:\n    print('refused:', e)\n")
    result = subprocess.run(["ip", "netns", "exec", NETNS, sys.executable, "-c", script, str(b.cfg), b.name, a.name],
                            capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 0 and result.stdout.startswith("refused:"), result.stdout + result.stderr
    assert dump(database) == before


def test_a_partition_certificate_acts_for_its_own_partition_only(grid):
    """The root partition's certificate: it reads itself; it cannot report, publish, request or
    take a certificate for its own children (same computer) nor for B's partition, nor read
    either computer's document or B's partition."""
    a, b, proxy = grid.a, grid.b, grid.proxy
    partitions = a.partitions(proxy.database)
    root, child = partitions["tree"], partitions["backend-1"]
    cert, key = a.pki / f"{root}.crt", a.pki / f"{root}.key"
    own = {"computer_reference": a.name, "computer_partition_reference": root}
    assert proxy.call("GET", "/registerComputerPartition", own, cert, key)[0] == 200
    assert_refused(proxy, partition_writes(a.name, child), cert, key)
    assert_refused(proxy, computer_calls(b.name, b.partitions(proxy.database)["web"]), cert, key)
    assert_refused(proxy, [("GET", "/getFullComputerInformation", {"computer_id": a.name})], cert, key)


def person_request(title: str, url: str, state: str = "started", parameters: dict | None = None,
                   **filter_kw: str) -> tuple[str, str, dict]:
    """`slapos request TITLE URL` as a person (no partition): a root instance."""
    from slapos.slap import wire

    return ("POST", "/requestComputerPartition",
            {"software_release": url, "software_type": "default", "partition_reference": title,
             "shared_xml": wire.dumps(False), "partition_parameter_xml": wire.dumps(parameters or {"port": "1"}),
             "filter_xml": wire.dumps(filter_kw), "state": wire.dumps(state)})


def test_a_node_requesting_as_a_person_reaches_only_its_own_trees_and_computer(grid):
    """A node's configuration used as a client (`slapos request`) acts as a person: it cannot
    change or destroy the other node's instance tree (same title), nor allocate on the other
    computer; its own tree it requests again as before."""
    a, b, proxy = grid.a, grid.b, grid.proxy
    assert_refused(proxy, [person_request("tree", TREE, "destroyed"), person_request("tree", TREE),
                           person_request("intruder", TREE, computer_guid=a.name)], *b.certificate)
    assert_refused(proxy, [person_request("web", WEB, "stopped"),
                           person_request("intruder", WEB, computer_guid=b.name)], *a.certificate)
    same = {"port": str(grid.ports["web"]), "message": "hello from the namespace"}
    before = dump(proxy.database)
    assert proxy.call(*person_request("web", WEB, parameters=same), *b.certificate)[0] == 200
    assert dump(proxy.database) == before  # the same request again changes nothing


def test_a_call_without_a_client_certificate_is_refused(grid):
    b = grid.b
    assert_refused(grid.proxy, computer_calls(b.name, b.partitions(grid.proxy.database)["web"]), None, None)


def test_the_tokens_the_nodes_joined_with_cannot_be_used_again(grid, tmp_path):
    before = dump(grid.proxy.database)
    for node in (grid.a, grid.b):
        replay = Node(tmp_path / node.name, node.name).register(grid.proxy, node.token)
        assert replay.returncode == 1 and "already used" in replay.stderr, replay.stderr
    assert not any((tmp_path / node.name).exists() for node in (grid.a, grid.b))
    assert dump(grid.proxy.database) == before


def test_a_revoked_node_is_refused_at_once_and_joins_again_with_new_certificates(grid):
    """Last (it changes B): `slapos proxy revoke twon-b` on the running proxy; B's computer and
    partition certificates are refused at its next call, nothing changes; B registers again with
    a new token, its next `slapos node instance` gets a new partition certificate and works."""
    a, b, proxy = grid.a, grid.b, grid.proxy
    web = b.partitions(proxy.database)["web"]
    old_cert, old_key = (b.pki / f"{web}.crt").read_text(), (b.pki / f"{web}.key").read_text()
    revoked = slapos("proxy", "revoke", "--cfg", str(proxy.cfg), b.name)
    assert revoked.returncode == 0, revoked.stderr
    calls = computer_calls(b.name, web)
    assert_refused(proxy, calls, *b.certificate)
    assert_refused(proxy, calls, b.pki / f"{web}.crt", b.pki / f"{web}.key")
    before = dump(proxy.database)
    result = b.slapos("node", "instance", "--now", "--cfg", str(b.cfg))
    assert result.returncode != 0 and "revoked" in result.stdout + result.stderr, result.stdout + result.stderr
    assert dump(proxy.database) == before
    assert a.slapos("node", "instance", "--now", "--cfg", str(a.cfg)).returncode == 0  # A is not concerned
    b.register_again(proxy)
    b.ok("node", "instance", "--now")
    new_cert = (b.pki / f"{web}.crt").read_text()
    assert new_cert != old_cert and (b.pki / f"{web}.key").read_text() != old_key
    own = {"computer_reference": b.name, "computer_partition_reference": web}
    assert proxy.call("GET", "/registerComputerPartition", own, b.pki / f"{web}.crt", b.pki / f"{web}.key")[0] == 200
    assert fetch(f"http://{NET}.2:{grid.ports['web']}/") == "hello from the namespace\n"


def test_recipes_verify_the_master_with_the_partitions_master_ca_file(tmp_path):
    """What the grid revealed: the slapnode recipes (request, publish, config) connected to an
    https master with the system CAs only; they take [slap-connection] master-ca-file."""
    from slapos.recipe.slapnode.common import Recipe, SlapConnection

    section = {"computer-id": "twon-a", "partition-id": "slappart0", "server-url": "https://10.0.0.1:1/",
               "key-file": "/p/slappart0.key", "cert-file": "/p/slappart0.crt", "master-ca-file": "/p/ca.crt"}
    connection = SlapConnection.from_recipe(Recipe({"slap-connection": section}, "publish", {}))
    assert (connection.cert_file, connection.master_ca_file) == ("/p/slappart0.crt", "/p/ca.crt")
    plain = SlapConnection.from_recipe(Recipe({"slap-connection": {**section, "master-ca-file": ""}}, "publish", {}))
    assert plain.master_ca_file == ""  # the system CAs, as before
