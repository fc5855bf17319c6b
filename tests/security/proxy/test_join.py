"""Secure join (docs/join.md): two nodes get computer certificates from one TLS proxy with
one-time tokens (`slapos node register`), each acts for its own computer only; a replayed or
expired token, a missing, revoked or foreign certificate is refused and changes nothing."""
from __future__ import annotations

import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slapos.base.config import Config
from slapos.slap.exceptions import AuthenticationError
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
        directory.mkdir(parents=True)
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
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=10, context=self.context(cert, key))
        try:
            conn.request("GET", path)
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
        (node.root / "var").mkdir()
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


def test_a_registered_node_deploys_an_instance_over_tls(tls_proxy, tmp_path):
    """`slapos node instance` of a registered node: it fetches its computer document and the
    partition's certificate over mutual TLS, deploys, and the partition reads itself with it."""
    import shutil
    from types import SimpleNamespace

    from slapos.base.config import Config
    from slapos.base.settings import NodeSettings
    from slapos.cli.main import main
    from tests.conftest import make_traversable
    from tests.fixtures.node import format_node, give_to_nobody
    from tests.fixtures.supervisor import stop_supervisor
    from tests.instance.conftest import install_software
    from tests.instance.test_instance import fetch

    node = Node(tmp_path / "a", "edge-a")
    node.root.mkdir()
    make_traversable(node.root)
    public_ca = node.root / "proxy-ca.crt"  # what the operator copies to each node (the CA's directory is 0700)
    shutil.copyfile(tls_proxy.ca, public_ca)
    os.chmod(public_ca, 0o644)
    tls_proxy.ca = public_ca
    assert node.register(tls_proxy, tls_proxy.token(node.name)).returncode == 0
    (node.root / "var").mkdir()
    text = node.cfg.read_text().replace("[slapos]\n", "[slapos]\npartition_cgroup = off\nroot_check = false\n", 1)
    node.cfg.write_text(text)
    result = format_node(node.cfg, alter_user=False, alter_network=False, random_delay=0)
    cfg = node.config
    software_root, instance_root = Path(cfg.get("slapos", "software_root")), Path(cfg.get("slapos", "instance_root"))
    url = install_software(software_root, "web")
    slap = node.slap()
    slap.registerSupply().supply(url, "edge-a")
    port = free_port()
    partition = slap.registerOpenOrder().request(url, "web", partition_parameter_kw={
        "port": str(port), "message": "hello over tls"}, filter_kw={"computer_guid": "edge-a"}).getId()
    give_to_nobody(SimpleNamespace(software_root=software_root, instance_root=instance_root,
                                   partition_ids=[p.reference for p in result.computer.partition_list]))
    try:
        assert main(["node", "instance", "--cfg", str(node.cfg), "--now"]) == 0
        assert fetch(port).strip() == "hello over tls"
        pki = Path(cfg.get("slapos", "certificate_repository_path"))
        assert sorted(p.name for p in pki.iterdir()) == [f"{partition}.crt", f"{partition}.key"]
        slap_connection = (instance_root / partition / "buildout.cfg").read_text()
        assert f"cert-file = {pki / partition}.crt" in slap_connection
        assert f"master-ca-file = {public_ca}" in slap_connection
    finally:
        stop_supervisor(NodeSettings.from_config(Config(node.cfg)))


NETNS, VETH, PREFIX = "joinb", "joinv", "10.231.77"


@pytest.fixture
def netns():
    """A network namespace `joinb` linked to the host by a veth pair: host 10.231.77.1, netns .2."""
    if os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        pytest.skip("needs root and ip netns")

    def ip(*args: str, check: bool = True) -> None:
        subprocess.run(["ip", *args], check=check, capture_output=True)

    ip("netns", "del", NETNS, check=False)
    ip("link", "del", f"{VETH}0", check=False)
    ip("netns", "add", NETNS)
    try:
        ip("link", "add", f"{VETH}0", "type", "veth", "peer", "name", f"{VETH}1")
        ip("link", "set", f"{VETH}1", "netns", NETNS)
        ip("addr", "add", f"{PREFIX}.1/30", "dev", f"{VETH}0")
        ip("link", "set", f"{VETH}0", "up")
        for args in (("addr", "add", f"{PREFIX}.2/30", "dev", f"{VETH}1"), ("link", "set", f"{VETH}1", "up"),
                     ("link", "set", "lo", "up")):
            ip("netns", "exec", NETNS, "ip", *args)
        yield NETNS
    finally:
        ip("link", "del", f"{VETH}0", check=False)
        ip("netns", "del", NETNS, check=False)


def test_a_node_in_another_network_namespace_joins_and_is_kept_to_its_computer(netns, tmp_path):
    proxy = TLSProxy(tmp_path / "proxy", host=f"{PREFIX}.1")
    try:
        a = Node(tmp_path / "a", "edge-a")  # on the proxy's own network
        assert a.register(proxy, proxy.token("edge-a")).returncode == 0
        a.slap().registerComputer("edge-a").updateConfiguration(computer_document("edge-a", 2))
        b = Node(tmp_path / "b", "edge-b")  # in its own network namespace, reaching the proxy over the veth
        args = ["ip", "netns", "exec", netns, sys.executable, "-m", "slapos.cli.main", "node", "register", "edge-b",
                "--token", proxy.token("edge-b"), "--cfg", str(b.cfg), "--master-url", proxy.url,
                "--master-url-web", proxy.url, "--master-ca-file", str(proxy.ca),
                "--software-root", str(b.root / "soft"), "--instance-root", str(b.root / "srv"),
                "--state-dir", str(b.root / "var")]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=ENV)
        assert result.returncode == 0, result.stderr
        script = (
            "import sys\n"
            "from slapos.base.config import Config\n"
            "from slapos.slap import slap\n"
            "from slapos.slap.exceptions import AuthenticationError\n"
            "cfg = Config(sys.argv[1])\n"
            "s = slap()\n"
            "s.initializeConnection(cfg.get('slapos', 'master_url'), key_file=cfg.get('slapos', 'key_file'),\n"
            "                       cert_file=cfg.get('slapos', 'cert_file'), master_ca_file=cfg.get('slapos', 'master_ca_file'))\n"
            "s.registerComputer('edge-b').updateConfiguration({'reference': 'edge-b', 'address': '10.0.0.1',\n"
            "    'netmask': '255.0.0.0', 'partition_list': [{'reference': 'slappart0', 'address_list': [],\n"
            "    'tap': {'name': 'slappart0'}}]})\n"
            "try:\n"
            "    s.registerComputer('edge-a').getComputerPartitionList()\n"
            "    print('READ-A')\n"
            "except AuthenticationError:\n"
            "    print('REFUSED-A')\n"
        )
        before = [line for line in dump(proxy.database) if "edge-b" not in line]
        result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script, str(b.cfg)],
                                capture_output=True, text=True, timeout=60, env=ENV)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "REFUSED-A"
        assert [line for line in dump(proxy.database) if "edge-b" not in line] == before
        with pytest.raises(AuthenticationError):
            a.slap().registerComputer("edge-b").getComputerPartitionList()
    finally:
        proxy.stop()


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
