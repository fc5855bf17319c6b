"""The proxy with `access = credentials`: a partition's credential acts for that partition only.

Each attack is a real HTTP call to a real `slapos proxy start`, made with partition A's own
credential (what a tenant of A finds in its [slap-connection]) or with none; each must be refused
with a 403 and leave the database exactly as it was (compared as a full SQL dump)."""
from __future__ import annotations

import pytest

from slapos.slap.connection import url_credential
from tests.fixtures.node import build_node
from tests.security.proxy.conftest import call, dump

SR = "https://example.org/tsecnet/software.cfg"


@pytest.fixture
def two_trees(cproxy, tmp_path):
    """A node of 5 partitions; tree 'alpha' on one, tree 'beta' on another; their URLs."""
    node = build_node(tmp_path / "node", cproxy, partitions=5)
    slap = cproxy.connect()  # the node credential
    slap.registerSupply().supply(SR, node.computer_id)
    alpha = slap.registerOpenOrder().request(SR, "alpha", partition_parameter_kw={"secret": "alpha-pw"})
    beta = slap.registerOpenOrder().request(SR, "beta", partition_parameter_kw={"secret": "beta-pw"})
    computer = slap.registerComputer(node.computer_id)
    urls = {}
    for cp in computer.getComputerPartitionList():
        relative = getattr(cp, "_slapnode_master_url", None)
        if relative:
            from urllib.parse import urljoin

            urls[cp.getId()] = urljoin(cproxy.url, relative)
    a, b = alpha.getId(), beta.getId()
    assert set(urls) == {a, b}  # busy partitions only, each its own
    assert url_credential(urls[a]) not in (url_credential(urls[b]), url_credential(cproxy.url))
    slap.registerComputerPartition(node.computer_id, b).setConnectionDict({"password": "beta-secret"})
    return node, a, b, urls


def _prefix(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path


def test_a_partition_credential_reads_and_acts_only_for_its_partition(cproxy, two_trees):
    node, a, b, urls = two_trees
    cid = node.computer_id
    mine = _prefix(urls[a])
    header = {"Authorization": f"X-SlapPartition computer_id={cid}, computer_partition_id={b}"}
    before = dump(cproxy.database)
    attacks = [
        ("GET", mine + "registerComputerPartition", {"computer_reference": cid, "computer_partition_reference": b}, None),
        ("GET", mine + "getFullComputerInformation", {"computer_id": cid}, None),
        ("GET", mine + "getComputerPartitionCertificate", {"computer_id": cid, "computer_partition_id": b}, None),
        ("POST", mine + "requestComputerPartition",
         {"software_release": SR, "partition_reference": "beta", "software_type": "default"}, header),
        ("POST", mine + "requestComputerPartition",
         {"software_release": SR, "partition_reference": "x", "computer_id": cid, "computer_partition_id": b}, None),
        ("POST", mine + "setComputerPartitionConnectionXml",
         {"computer_id": cid, "computer_partition_id": b, "connection_xml": "<marshal><dictionary id='i2'/></marshal>"},
         None),
        ("POST", mine + "destroyedComputerPartition", {"computer_id": cid, "computer_partition_id": b}, None),
        ("POST", mine + "destroyedComputerPartition", {"computer_id": cid, "computer_partition_id": a}, None),
        ("POST", mine + "stoppedComputerPartition", {"computer_id": cid, "computer_partition_id": b}, None),
        ("POST", mine + "softwareInstanceError", {"computer_id": cid, "computer_partition_id": b, "error_log": "x"}, None),
        ("POST", mine + "softwareInstanceBang", {"computer_id": cid, "computer_partition_id": b, "message": "x"}, None),
        ("POST", mine + "softwareInstanceRename", {"computer_id": cid, "computer_partition_id": b, "new_name": "z"}, None),
        ("POST", mine + "supplySupply", {"url": "https://evil/software.cfg", "computer_id": cid, "state": "available"},
         None),
        ("POST", mine + "loadComputerConfigurationFromXML", {"xml": "<marshal><none/></marshal>"}, None),
        ("POST", mine + "useComputer", {"computer_id": cid, "use_string": "x"}, None),
        ("POST", mine + "computerBang", {"computer_id": cid, "message": "x"}, None),
        ("POST", mine + "availableSoftwareRelease", {"url": SR, "computer_id": cid}, None),
        ("PUT", mine + "shacache/cache/" + "0" * 128, None, None),
        # no credential at all
        ("GET", "/registerComputerPartition", {"computer_reference": cid, "computer_partition_reference": a}, None),
        ("POST", "/requestComputerPartition", {"software_release": SR, "partition_reference": "anon"}, None),
        ("GET", "/getFullComputerInformation", {"computer_id": cid}, None),
        # a made-up credential
        ("GET", "/c/" + "A" * 43 + "/registerComputerPartition",
         {"computer_reference": cid, "computer_partition_reference": b}, None),
    ]
    for method, path, fields, headers in attacks:
        status, body = call(cproxy.port, method, path, fields, headers)
        assert status == 403, (path, fields, status, body)
        assert "beta-pw" not in body and "beta-secret" not in body
        assert "\n" not in body.strip()  # one line
    assert dump(cproxy.database) == before


def test_own_partition_and_own_tree_work_with_the_partition_url(cproxy, two_trees):
    node, a, b, urls = two_trees
    from slapos.slap import slap as Slap

    tenant = Slap()
    tenant.initializeConnection(urls[a])
    own = tenant.registerComputerPartition(node.computer_id, a)
    assert own.getInstanceParameterDict()["secret"] == "alpha-pw"
    own.setConnectionDict({"url": "http://alpha"})
    # a request names the tree by the credential: 'beta' here is a new child of alpha, not tree beta
    child = own.request(SR, "default", "beta")
    assert child.getId() not in (a, b)
    assert "password" not in child.getConnectionParameterDict()
    # a parent reads its child's document, never the child's credential
    sibling = tenant.registerComputerPartition(node.computer_id, child.getId())
    assert getattr(sibling, "_slapnode_master_url", None) is None
    assert getattr(own, "_slapnode_master_url", None) is None
    slap = cproxy.connect()
    beta = slap.registerComputerPartition(node.computer_id, b)
    assert beta.getConnectionParameterDict() == {"password": "beta-secret"}
    assert beta.getInstanceParameterDict()["root_instance_title"] == "beta"


def test_a_freed_partition_s_credential_is_dead_and_the_next_tenant_gets_another(cproxy, two_trees):
    node, a, b, urls = two_trees
    slap = cproxy.connect()
    slap.registerOpenOrder().request(SR, "alpha", state="destroyed")
    slap.registerComputerPartition(node.computer_id, a).destroyed()  # the node's word
    status, body = call(cproxy.port, "GET", _prefix(urls[a]) + "registerComputerPartition",
                        {"computer_reference": node.computer_id, "computer_partition_reference": a})
    assert status == 403 and "revoked" in body
    gamma = slap.registerOpenOrder().request(SR, "gamma")
    relative = {cp.getId(): getattr(cp, "_slapnode_master_url", None)
                for cp in slap.registerComputer(node.computer_id).getComputerPartitionList()}
    assert gamma.getId() == a and relative[a] and url_credential("http://h" + relative[a][2:]) != url_credential(urls[a])


def test_shared_instance_references_of_two_trees_never_collide(cproxy, two_trees):
    """Tree 'a' + title 'b_c' and tree 'a_b' + title 'c' spelled the same reference 'a_b_c'."""
    node, a, b, urls = two_trees
    slap = cproxy.connect()
    pa = slap.registerOpenOrder().request(SR, "a")
    pb = slap.registerOpenOrder().request(SR, "a_b")
    relative = {cp.getId(): getattr(cp, "_slapnode_master_url", None)
                for cp in slap.registerComputer(node.computer_id).getComputerPartitionList()}
    from urllib.parse import urljoin

    from slapos.slap import slap as Slap

    def tenant(partition_id):
        s = Slap()
        s.initializeConnection(urljoin(cproxy.url, relative[partition_id]))
        return s.registerComputerPartition(node.computer_id, partition_id)

    victim = tenant(pb.getId()).request(SR, "default", "c", shared=True, partition_parameter_kw={"owner": "a_b"})
    attacker = tenant(pa.getId()).request(SR, "default", "b_c", shared=True, partition_parameter_kw={"owner": "a"})
    assert victim.getInstanceGuid() != attacker.getInstanceGuid()
    import sqlite3

    rows = dict(sqlite3.connect(cproxy.database).execute("SELECT reference, parameters FROM slave").fetchall())
    assert len(rows) == 2 and any("a_b" in p for p in rows.values()) and any('"a"' in p for p in rows.values())
    assert "a%5Fb_c" in rows and "a_b_c" in rows


def test_credentials_mode_refuses_a_world_readable_configuration_and_a_missing_node_credential(tmp_path):
    import os
    import subprocess
    import sys

    from tests.fixtures.proxy import REPO, write_config

    config = tmp_path / "slapos.cfg"
    write_config(config, {"slapos": {"master_url": "http://127.0.0.1:1/"},
                          "slapproxy": {"database_uri": str(tmp_path / "db"), "access": "credentials", "port": "0"}})
    os.chmod(config, 0o600)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--cfg", str(config)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0 and "needs the node credential" in result.stderr
    assert "Traceback" not in result.stderr
    from slapos.proxy.access import new_credential

    write_config(config, {"slapos": {"master_url": f"http://127.0.0.1:1/c/{new_credential()}/"},
                          "slapproxy": {"database_uri": str(tmp_path / "db"), "access": "credentials", "port": "0"}})
    os.chmod(config, 0o644)
    result = subprocess.run([sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--cfg", str(config)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0 and "chmod 600" in result.stderr


def test_the_node_hands_each_partition_its_own_url_never_its_own():
    from slapos.grid.instance import partition_master_url
    from slapos.grid.partition import PartitionError
    from slapos.proxy.access import new_credential, partition_url

    node, mine = new_credential(), new_credential()
    node_url = f"http://127.0.0.1:8080/c/{node}/"
    assert partition_master_url(node_url, partition_url(mine)) == f"http://127.0.0.1:8080/c/{mine}/"
    assert partition_master_url("https://slap.example/", None) == "https://slap.example/"  # any other master
    with pytest.raises(PartitionError, match="refusing to hand it"):
        partition_master_url(node_url, None)
    for bad in ("../../evil/", "http://evil/c/" + mine + "/", "../" + mine + "/x", "./" + mine + "/"):
        with pytest.raises(PartitionError, match="malformed"):
            partition_master_url(node_url, bad)


def test_the_watchdog_takes_a_url_with_a_credential_from_its_environment(monkeypatch):
    from slapos.grid.watchdog import build_parser
    from slapos.proxy.access import new_credential

    url = f"http://127.0.0.1:8080/c/{new_credential()}/"
    monkeypatch.setenv("SLAPOS_WATCHDOG_MASTER_URL", url)
    args = build_parser().parse_args(["--computer-id", "C", "--instance-root", "/srv/slapgrid"])
    assert args.master_url == url


def test_busy_partitions_of_an_older_database_get_credentials_at_start(cproxy, two_trees):
    """A database from before credentials (no credential on busy partitions): the next start issues them."""
    import sqlite3

    node, a, b, urls = two_trees
    cproxy.stop()
    conn = sqlite3.connect(cproxy.database)
    with conn:
        conn.execute("UPDATE partition SET credential = NULL, credential_hash = NULL")
    conn.close()
    from slapos.proxy.app import make_app
    from slapos.proxy.config import ProxyConfig

    app = make_app(ProxyConfig(database=cproxy.database, access="credentials",
                               node_credential=url_credential(cproxy.url)))
    app.close()
    rows = sqlite3.connect(cproxy.database).execute(
        "SELECT reference, credential FROM partition WHERE slap_state = 'busy'").fetchall()
    assert {r[0] for r in rows} == {a, b} and all(r[1] for r in rows)
    assert {r[1] for r in rows}.isdisjoint({url_credential(u) for u in urls.values()})


def test_operator_pages_are_the_node_s_under_access_credentials(cproxy, two_trees):
    """The dashboard, /status.json and /metrics show every instance (and, asked for, its
    secrets): with access = credentials only the node credential reads them, and the pages'
    links keep that credential so a browser can follow them."""
    node, a, b, urls = two_trees
    mine = _prefix(urls[a])
    node_prefix = _prefix(cproxy.url)
    for page in ("dashboard", "dashboard/instance", "status.json", "metrics"):
        fields = {"computer": node.computer_id, "partition": b, "secrets": "1"} if page.endswith("instance") else None
        status, body = call(cproxy.port, "GET", "/" + page, fields)
        assert status == 403 and "beta-secret" not in body, (page, status)
        status, body = call(cproxy.port, "GET", mine + page, fields)
        assert status == 403 and "beta-secret" not in body, (page, status)
        status, body = call(cproxy.port, "GET", node_prefix + page, fields)
        assert status == 200, (page, status, body[:200])
    status, body = call(cproxy.port, "GET", node_prefix + "dashboard")
    assert f'href="{node_prefix}dashboard/computer?id={node.computer_id}"' in body
    assert 'href="/dashboard' not in body and 'src="/dashboard' not in body
    status, body = call(cproxy.port, "POST", mine + "reportNodeStatus",
                        {"computer_id": node.computer_id, "status_json": "{}"})
    assert status == 403
