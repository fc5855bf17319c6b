"""User certificates from our TLS proxy (docs/join.md, "Users"): `slapos proxy token --user NAME`
→ `slapos configure client --token` → `slapos request|supply|service|info|console` as that
person. A user certificate is never a node's; two users never see or change each other's
instances; a replayed, expired or foreign token, a missing or revoked certificate is refused
and changes nothing in the database."""
from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from slapos.base.config import Config
from slapos.slap import wire
from slapos.slap.exceptions import AuthenticationError
from tests.conftest import IS_ROOT, make_traversable
from tests.security.proxy.conftest import dump
from tests.security.proxy.test_join import ENV, SR, Node, TLSProxy, computer_document

USER_PREFIX = "tucert"  # system users made here (one prefix per engineer on the shared machine)


def slapos(home: Path, *args: str, preexec=None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`slapos ...` as a person whose home is `home` (its ~/.slapos/slapos-client.cfg and records)."""
    env = {**ENV, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=preexec, cwd="/")


class Pool:
    """A TLS proxy with one registered node `edge-a` (4 partitions) and the CA's public copy."""

    def __init__(self, tmp_path: Path):
        make_traversable(tmp_path)
        self.proxy = TLSProxy(tmp_path / "proxy")
        self.ca = tmp_path / "proxy-ca.crt"  # what the operator hands out (the CA's directory is 0700)
        shutil.copyfile(self.proxy.ca, self.ca)
        os.chmod(self.ca, 0o644)
        self.node = Node(tmp_path / "node", "edge-a")
        assert self.node.register(self.proxy, self.proxy.token("edge-a")).returncode == 0
        self.node.slap().registerComputer("edge-a").updateConfiguration(computer_document("edge-a", 4))
        self.homes = tmp_path / "homes"
        self.homes.mkdir()

    def user(self, name: str) -> User:
        user = User(self, name, self.homes / name)
        result = user.configure(self.proxy.token("--user", name))
        assert result.returncode == 0, result.stderr
        return user

    def database(self) -> list[str]:
        return dump(self.proxy.database)

    def call(self, method: str, endpoint: str, fields: dict | None = None, cert: tuple[Path, Path] | None = None,
             headers: dict | None = None) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        conn = http.client.HTTPSConnection("127.0.0.1", self.proxy.port, timeout=15, context=context)
        try:
            body = urlencode(fields or {}) if method == "POST" else None
            path = "/" + endpoint + ("?" + urlencode(fields) if method == "GET" and fields else "")
            all_headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
            conn.request(method, path, body=body, headers={**all_headers, **(headers or {})})
            answer = conn.getresponse()
            return answer.status, answer.read().decode("utf-8", "replace")
        finally:
            conn.close()


class User:
    def __init__(self, pool: Pool, name: str, home: Path):
        self.pool, self.name, self.home = pool, name, home
        home.mkdir(exist_ok=True)
        self.cfg = home / ".slapos" / "slapos-client.cfg"

    def configure(self, token: str, *extra: str, preexec=None) -> subprocess.CompletedProcess:
        return slapos(self.home, "configure", "client", "--master-url", self.pool.proxy.url,
                      "--master-ca-file", str(self.pool.ca), "--token", token, *extra, preexec=preexec)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return slapos(self.home, *args)

    @property
    def cert(self) -> tuple[Path, Path]:
        config = Config(self.cfg)
        return Path(config.get("slapconsole", "cert_file")), Path(config.get("slapconsole", "key_file"))

    def slap(self):
        from slapos.client.settings import ClientSettings

        return ClientSettings.from_config(Config(self.cfg)).connect()

    def request(self, title: str, *extra: str) -> subprocess.CompletedProcess:
        return self.run("request", title, SR, "--node", "computer_guid=edge-a", *extra)

    def trees(self) -> list[str]:
        result = self.run("service", "list", "--format", "json")
        assert result.returncode == 0, result.stderr
        return sorted(json.loads(result.stdout))


@pytest.fixture
def pool(tmp_path):
    made = Pool(tmp_path)
    try:
        yield made
    finally:
        made.proxy.stop()


def test_a_user_token_configures_a_client_that_requests_end_to_end(pool):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    alice = User(pool, "alice", pool.homes / "alice")
    result = alice.configure(pool.proxy.token("--user", "alice"), preexec=lambda: os.umask(0))
    assert result.returncode == 0, result.stderr
    cert_file, key_file = alice.cert
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # whatever the umask
    assert stat.S_IMODE(cert_file.parent.stat().st_mode) == 0o700  # ~/.slapos, created for the key
    assert Config(alice.cfg).get("slapos", "master_ca_file") == str(pool.ca)
    subject = x509.load_pem_x509_certificate(cert_file.read_bytes()).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "user"

    assert alice.run("supply", SR, "edge-a").returncode == 0
    requested = alice.request("tree-a", "--parameters", "colour=blue")
    assert requested.returncode == 0, requested.stderr
    assert "edge-a/slappart" in requested.stdout
    assert alice.trees() == ["tree-a"]
    computers = alice.run("computer", "list", "--format", "json")  # the operator's node is not hers
    assert computers.returncode == 0 and json.loads(computers.stdout) in ([], {}), computers.stdout
    info = alice.run("info", "tree-a", "--format", "json")
    assert info.returncode == 0, info.stderr
    status = json.loads(info.stdout)
    assert status["source"] == "master" and status["parameters"] == {"colour": "blue"}
    script = pool.homes / "console.py"
    script.write_text(f"p = request({SR!r}, 'tree-c', filter_kw={{'computer_guid': 'edge-a'}})\nprint(p.getId())\n")
    console = alice.run("console", str(script))
    assert console.returncode == 0, console.stderr
    assert console.stdout.strip().startswith("slappart")
    assert alice.trees() == ["tree-a", "tree-c"]
    listed = slapos(pool.homes, "proxy", "certificates", "--cfg", str(pool.proxy.cfg), "--format", "json")
    rows = [r for r in json.loads(listed.stdout) if r["kind"] == "user"]
    assert [(r["user"], r["computer"], r["state"]) for r in rows] == [("alice", None, "active")]
    # the node deploys what alice asked for: her partition is in its computer document
    partitions = pool.node.slap().registerComputer("edge-a").getComputerPartitionList()
    assert {p.getInstanceParameterDict().get("instance_title") for p in partitions} >= {"tree-a", "tree-c"}
    # and she destroys her own instance
    assert alice.request("tree-a", "--state", "destroyed").returncode == 0
    partition = pool.node.slap().registerComputerPartition("edge-a", status["partition_id"])
    assert partition.getState() == "destroyed"


def test_user_tokens_are_single_use_expire_and_never_serve_a_computer(pool, tmp_path):
    token, expired = pool.proxy.token("--user", "alice"), pool.proxy.token("--user", "bob", "--lifetime", "0.2")
    computer_token = pool.proxy.token("edge-z")
    stored = b"".join(f.read_bytes() for f in pool.proxy.database.parent.glob("proxy.db*"))
    assert token.encode() not in stored and expired.encode() not in stored  # only their hashes
    alice = User(pool, "alice", pool.homes / "alice")
    assert alice.configure(token).returncode == 0
    time.sleep(0.5)
    before = pool.database()
    for home, used, said in ((pool.homes / "r", token, "already used"), (pool.homes / "e", expired, "expired"),
                             (pool.homes / "u", "forged-token", "unknown token"),
                             (pool.homes / "c", computer_token, "is for a computer")):
        result = User(pool, "x", home).configure(used)
        assert result.returncode == 1, result.stderr
        assert said in result.stderr and "Traceback" not in result.stderr
        assert not (home / ".slapos").exists()  # nothing written
    user_token = pool.proxy.token("--user", "carol")
    before = pool.database()
    register = Node(tmp_path / "z", "edge-z").register(pool.proxy, user_token)
    assert register.returncode == 1 and "not for a computer" in register.stderr, register.stderr
    assert pool.database() == before
    # each token still serves its own purpose
    assert Node(tmp_path / "z2", "edge-z").register(pool.proxy, computer_token).returncode == 0
    carol = User(pool, "carol", pool.homes / "carol")
    assert carol.configure(user_token).returncode == 0
    # an existing configuration, key or certificate is kept without --force, and the token not spent
    again = pool.proxy.token("--user", "alice")
    refused = alice.configure(again)
    assert refused.returncode == 5 and "--force" in refused.stderr
    assert alice.configure(again, "--force").returncode == 0


def test_a_plain_http_proxy_issues_no_user_certificate(tmp_path):
    from tests.fixtures.proxy import start_proxy

    proxy = start_proxy(tmp_path / "plain", "local_computer")
    try:
        token = slapos(tmp_path, "proxy", "token", "--user", "alice", "--database-uri", str(proxy.database))
        assert token.returncode == 0, token.stderr
        before = dump(proxy.database)
        result = slapos(tmp_path, "configure", "client", "--master-url", proxy.url, "--token", token.stdout.strip(),
                        "-o", str(tmp_path / "client.cfg"))
        assert result.returncode == 1 and "plain HTTP" in result.stderr, result.stderr
        assert dump(proxy.database) == before and not (tmp_path / "client.key").exists()
    finally:
        proxy.stop()


def test_without_a_certificate_nothing_is_requested(pool):
    home = pool.homes / "anon"
    (home / ".slapos").mkdir(parents=True)
    (home / ".slapos" / "slapos-client.cfg").write_text(
        f"[slapos]\nmaster_url = {pool.proxy.url}\nmaster_ca_file = {pool.ca}\n")
    before = pool.database()
    refused = slapos(home, "request", "tree-x", SR)
    assert refused.returncode == 1 and "cert_file" in refused.stderr, refused.stderr
    for endpoint, fields in (("requestComputerPartition", {"software_release": SR, "partition_reference": "tree-x",
                                                           "shared_xml": wire.dumps(False)}),
                             ("supplySupply", {"url": SR, "computer_id": "edge-a", "state": "available"})):
        status, body = pool.call("POST", endpoint, fields)
        assert status == 403, (endpoint, body)
    assert pool.database() == before


def test_a_revoked_user_certificate_is_refused_at_once(pool):
    alice = pool.user("alice")
    namesake = pool.user("edge-a")  # a user named like the computer: revoking one leaves the other
    assert alice.run("supply", SR, "edge-a").returncode == 0
    assert alice.request("tree-a").returncode == 0
    revoked = slapos(pool.homes, "proxy", "revoke", "--cfg", str(pool.proxy.cfg), "--user", "alice")
    assert revoked.returncode == 0, revoked.stderr
    before = pool.database()
    for args in (("request", "tree-b", SR, "--node", "computer_guid=edge-a"), ("supply", SR, "edge-a"),
                 ("service", "list")):
        result = alice.run(*args)
        assert result.returncode != 0 and "revoked" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert pool.database() == before
    again = slapos(pool.homes, "proxy", "revoke", "--cfg", str(pool.proxy.cfg), "--user", "alice")
    assert again.returncode == 1 and "no active certificate of user 'alice'" in again.stderr
    # `revoke edge-a` is the computer's: the user edge-a keeps working, the node does not
    assert slapos(pool.homes, "proxy", "revoke", "--cfg", str(pool.proxy.cfg), "edge-a").returncode == 0
    assert namesake.run("service", "list").returncode == 0
    with pytest.raises(AuthenticationError):
        pool.node.slap().registerComputer("edge-a").getComputerPartitionList()


def test_a_user_certificate_is_no_node(pool):
    alice = pool.user("alice")
    assert alice.run("supply", SR, "edge-a").returncode == 0
    requested = alice.request("tree-a")
    assert requested.returncode == 0, requested.stderr
    partition = requested.stdout.split("edge-a/")[1].split()[0]
    mine = {"computer_id": "edge-a", "computer_partition_id": partition}
    pool.node.slap().registerComputerPartition("edge-a", partition).getCertificate()  # one to refuse below
    before = pool.database()
    attacks = [
        ("GET", "getFullComputerInformation", {"computer_id": "edge-a"}),
        ("GET", "getComputerInformation", {"computer_id": "edge-a"}),
        ("POST", "loadComputerConfigurationFromXML", {"xml": wire.dumps(computer_document("edge-a", 1))}),
        ("POST", "useComputer", {"computer_id": "edge-a", "use_string": "<xml/>"}),
        ("POST", "computerBang", {"computer_id": "edge-a", "message": "x"}),
        ("POST", "availableSoftwareRelease", {"url": SR, "computer_id": "edge-a"}),
        ("POST", "softwareReleaseError", {"url": SR, "computer_id": "edge-a", "error_log": "x"}),
        ("POST", "startedComputerPartition", mine),
        ("POST", "stoppedComputerPartition", mine),
        ("POST", "destroyedComputerPartition", mine),
        ("POST", "softwareInstanceError", {**mine, "error_log": "x"}),
        ("POST", "softwareInstanceBang", {**mine, "message": "x"}),
        ("POST", "softwareInstanceRename", {**mine, "new_name": "y"}),
        ("POST", "setComputerPartitionConnectionXml", {**mine, "connection_xml": wire.dumps({"a": "b"})}),
        ("GET", "getComputerPartitionCertificate", mine),
        ("POST", "reportNodeStatus", {"computer_id": "edge-a", "status_json": "{}"}),
        # requesting as a partition (a child in the tree): a person is no partition
        ("POST", "requestComputerPartition", {**mine, "software_release": SR, "partition_reference": "child",
                                              "shared_xml": wire.dumps(False)}),
        ("GET", "hateoas/computer_module/Base_getComputerToken", {"computer_reference": "edge-new"}),
        ("GET", "dashboard", None),
        ("GET", "status.json", None),
        ("GET", "metrics", None),
        ("POST", "shacache/", {"x": "y"}),
    ]
    for method, endpoint, fields in attacks:
        status, body = pool.call(method, endpoint, fields, cert=alice.cert)
        assert status == 403, (endpoint, status, body)
    assert pool.database() == before
    # what a person may read of its own tree: its partition (slapos info), through the slap library too
    slap = alice.slap()
    assert slap.registerComputerPartition("edge-a", partition).getInstanceParameterDict()["instance_title"] == "tree-a"
    with pytest.raises(AuthenticationError):
        slap.registerComputer("edge-a").getComputerPartitionList()


def test_two_users_neither_see_nor_change_each_others_instances(pool):
    alice, bob = pool.user("alice"), pool.user("bob")
    assert alice.run("supply", SR, "edge-a").returncode == 0
    requested = alice.request("tree-a")
    assert requested.returncode == 0, requested.stderr
    partition = requested.stdout.split("edge-a/")[1].split()[0]
    assert bob.request("tree-b").returncode == 0
    assert alice.trees() == ["tree-a"] and bob.trees() == ["tree-b"]
    before = pool.database()
    for args in (("request", "tree-a", SR, "--state", "destroyed"), ("request", "tree-a", SR, "--parameters", "a=b"),
                 ("request", "tree-a", SR, "--slave"), ("remove", SR, "edge-a")):
        result = bob.run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert "someone else" in result.stderr or "did not supply" in result.stderr, result.stderr
    shown = bob.run("service", "info", "tree-a")
    assert shown.returncode == 2, shown.stderr
    status, body = pool.call("GET", "registerComputerPartition", {
        "computer_reference": "edge-a", "computer_partition_reference": partition}, cert=bob.cert)
    assert status == 403 and "not in an instance tree" in body
    # the node's certificate acting as a person does not take a user's tree either
    with pytest.raises(AuthenticationError):
        pool.node.slap().registerOpenOrder().request(SR, "tree-a", state="destroyed")
    assert pool.database() == before
    assert alice.trees() == ["tree-a"]
    # alice removes the software she supplied
    assert alice.run("remove", SR, "edge-a").returncode == 0


@pytest.fixture
def person():
    """A real unprivileged user `tucert<pid>`, removed afterwards (root only)."""
    if not IS_ROOT:
        pytest.skip("needs root to create a user")
    name = f"{USER_PREFIX}{os.getpid() % 100000}"
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_an_unprivileged_person_configures_and_requests(pool, person):
    home = pool.homes / person.pw_name
    home.mkdir()
    os.chown(home, person.pw_uid, person.pw_gid)
    os.chmod(home, 0o700)

    def switch():
        os.setgroups([])
        os.setgid(person.pw_gid)
        os.setuid(person.pw_uid)
        os.umask(0o022)

    user = User(pool, person.pw_name, home)
    result = user.configure(pool.proxy.token("--user", "dora"), preexec=switch)
    assert result.returncode == 0, result.stderr
    cert_file, key_file = user.cert
    info = key_file.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (person.pw_uid, 0o600)
    assert slapos(home, "supply", SR, "edge-a", preexec=switch).returncode == 0
    requested = slapos(home, "request", "tree-d", SR, "--node", "computer_guid=edge-a", preexec=switch)
    assert requested.returncode == 0, requested.stderr
    assert "edge-a/slappart" in requested.stdout
    # without its certificate, over loopback, the person gets no computer token (a rogue node)
    before = pool.database()
    script = ("import http.client, ssl, sys\n"
              "c = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[1]), timeout=15,\n"
              "    context=ssl.create_default_context(cafile=sys.argv[2]))\n"
              "c.request('GET', '/hateoas/computer_module/Base_getComputerToken?computer_reference=rogue')\n"
              "r = c.getresponse()\n"
              "print(r.status, r.read().decode())\n")
    asked = subprocess.run([sys.executable, "-c", script, str(pool.proxy.port), str(pool.ca)], capture_output=True,
                           text=True, timeout=60, preexec_fn=switch, cwd="/")
    assert asked.stdout.startswith("403") and "operator" in asked.stdout, asked.stdout + asked.stderr
    assert pool.database() == before


def test_root_writing_a_client_configuration_follows_no_planted_link(pool, person, tmp_path):
    """Root configures a client into a directory a person owns: a `client.key` symlink the person
    planted towards a root-only file is replaced, never written through."""
    victims = tmp_path / "victims"
    victims.mkdir(mode=0o700)
    victim = victims / "secret"
    victim.write_text("root's\n")
    target = pool.homes / "shared"
    target.mkdir()
    os.chown(target, person.pw_uid, person.pw_gid)
    planted = target / "client.key"
    os.symlink(victim, planted)
    os.lchown(planted, person.pw_uid, person.pw_gid)
    result = slapos(pool.homes, "configure", "client", "--master-url", pool.proxy.url, "--master-ca-file",
                    str(pool.ca), "--token", pool.proxy.token("--user", "eve"), "-o", str(target / "client.cfg"))
    assert result.returncode == 5 and "--force" in result.stderr  # an existing name is never overwritten silently
    result = slapos(pool.homes, "configure", "client", "--master-url", pool.proxy.url, "--master-ca-file",
                    str(pool.ca), "--token", pool.proxy.token("--user", "eve"), "-o", str(target / "client.cfg"),
                    "--force")
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "root's\n"
    assert not planted.is_symlink() and stat.S_IMODE(planted.stat().st_mode) == 0o600


def test_the_client_reads_its_ca_from_slapconsole_first(pool):
    """`[slapconsole] master_ca_file` (beside cert_file and key_file) verifies the proxy; a wrong CA
    fails the handshake in one line, not a traceback."""
    alice = pool.user("alice")
    cert_file, key_file = alice.cert
    other = pool.homes / "other-ca.crt"
    from slapos.proxy.ca import CertificateAuthority

    other.write_bytes(CertificateAuthority(pool.homes / "other").load_or_create("other").cert_path.read_bytes())
    base = f"[slapos]\nmaster_url = {pool.proxy.url}\nmaster_ca_file = {other}\n[slapconsole]\n" \
           f"cert_file = {cert_file}\nkey_file = {key_file}\n"
    alice.cfg.write_text(base + f"master_ca_file = {pool.ca}\n")
    assert alice.run("service", "list").returncode == 0
    alice.cfg.write_text(base)  # only the wrong one
    refused = alice.run("service", "list")
    assert refused.returncode == 1 and "could not be verified" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and str(other) in refused.stderr
