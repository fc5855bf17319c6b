"""Tenants with their own users against the real proxy, after a real `slapos node instance`.

Partition A and B belong to two real users (tsecnet…a, tsecnet…b). The node deploys both with
`access = credentials`; then a process switched to A's uid takes the master URL from A's own
buildout.cfg (what any tenant has) and tries to act for B, read B, request in B's tree, destroy,
supply software and store into the binary cache. Everything is refused and the database is
byte-for-byte what it was."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from slapos.slap.connection import url_credential
from tests.conftest import make_traversable
from tests.fixtures.node import build_node
from tests.fixtures.supervisor import stop_supervisor
from tests.instance.conftest import install_software
from tests.security.proxy.conftest import dump, run_as, tenant_users

pytestmark = pytest.mark.root

ATTACKER = r"""
import json, re, sys, http.client, urllib.parse
own_dir, victim, computer = sys.argv[1], sys.argv[2], sys.argv[3]
profile = open(own_dir + "/buildout.cfg").read()
url = re.search(r"^server-url = (\S+)", profile, re.M).group(1)
parts = urllib.parse.urlsplit(url)
mine = parts.path
results = {}
try:
    open(own_dir.rsplit("/", 1)[0] + "/" + victim + "/buildout.cfg").read()
    results["read victim profile"] = "read"
except OSError as e:
    results["read victim profile"] = type(e).__name__

def call(name, method, path, fields, headers=None):
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = None
    headers = dict(headers or {})
    if method == "GET":
        path += "?" + urllib.parse.urlencode(fields)
    else:
        body = urllib.parse.urlencode(fields)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    results[name] = [response.status, response.read().decode("utf-8", "replace")]

header = {"Authorization": "X-SlapPartition computer_id=%s, computer_partition_id=%s" % (computer, victim)}
call("own document", "GET", mine + "registerComputerPartition",
     {"computer_reference": computer, "computer_partition_reference": own_dir.rsplit("/", 1)[1]})
call("read victim", "GET", mine + "registerComputerPartition",
     {"computer_reference": computer, "computer_partition_reference": victim})
call("full computer", "GET", mine + "getFullComputerInformation", {"computer_id": computer})
call("impersonate by header", "POST", mine + "requestComputerPartition",
     {"software_release": "x", "partition_reference": "child", "software_type": "default"}, header)
call("impersonate by form", "POST", mine + "requestComputerPartition",
     {"software_release": "x", "partition_reference": "child", "computer_id": computer,
      "computer_partition_id": victim})
call("publish for victim", "POST", mine + "setComputerPartitionConnectionXml",
     {"computer_id": computer, "computer_partition_id": victim,
      "connection_xml": "<marshal><dictionary id='i2'/></marshal>"})
call("destroy victim", "POST", mine + "destroyedComputerPartition",
     {"computer_id": computer, "computer_partition_id": victim})
call("rename victim", "POST", mine + "softwareInstanceRename",
     {"computer_id": computer, "computer_partition_id": victim, "new_name": "mine"})
call("bang victim", "POST", mine + "softwareInstanceBang",
     {"computer_id": computer, "computer_partition_id": victim, "message": "x"})
call("supply", "POST", mine + "supplySupply", {"url": "https://evil/software.cfg", "computer_id": computer,
                                                "state": "available"})
call("cache upload", "POST", mine + "shacache/cache", {"x": "y"})
call("no credential", "GET", "/registerComputerPartition",
     {"computer_reference": computer, "computer_partition_reference": victim})
print(json.dumps(results))
"""


def test_a_tenant_cannot_act_for_another_tenant_through_the_proxy(cproxy, tmp_path):
    with tenant_users(2) as (user_a, user_b):
        node = build_node(tmp_path / "node", cproxy, partitions=2,
                          extra_config={"slapos": {"maximum_periodicity": "86400"}})
        node_credential = url_credential(cproxy.url)
        settings = None
        try:
            for partition_id, user in zip(node.partition_ids, (user_a, user_b), strict=True):
                path = node.instance_root / partition_id
                os.chown(path, user.pw_uid, user.pw_gid)
                os.chmod(path, 0o750)
            url = install_software(node.software_root, "cheap")
            slap = cproxy.connect()
            slap.registerSupply().supply(url, node.computer_id)
            a = slap.registerOpenOrder().request(url, "alpha").getId()
            b = slap.registerOpenOrder().request(url, "beta").getId()
            from slapos.base.config import Config
            from slapos.base.settings import NodeSettings
            from slapos.cli.main import main

            settings = NodeSettings.from_config(Config(node.config_path))
            make_traversable(node.root)
            assert main(["node", "instance", "--cfg", str(node.config_path), "--now"]) == 0

            # each partition got its own URL; the node credential went nowhere a tenant can read
            profiles = {p: (node.instance_root / p / "buildout.cfg").read_text() for p in (a, b)}
            for profile in profiles.values():
                server_url = [line for line in profile.splitlines() if line.startswith("server-url = ")][0]
                assert url_credential(server_url.split(" = ", 1)[1]) not in (None, node_credential)
            assert node_credential not in profiles[a] + profiles[b]
            for directory in (node.instance_root / a, node.instance_root / b):
                for path in directory.rglob("*"):
                    if path.is_file() and not path.is_symlink():
                        assert node_credential not in path.read_text(errors="replace"), path
            # supervisord.conf is root's (0600): the watchdog gets the URL in its environment, not argv
            conf = (node.instance_root / "etc" / "supervisord.conf").read_text()
            commands = [line for line in conf.splitlines() if line.startswith("command = ")]
            assert commands and not any(node_credential in line for line in commands)
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    assert node_credential.encode() not in cmdline

            before = dump(cproxy.database)
            result = run_as(user_a, ATTACKER, str(node.instance_root / a), b, node.computer_id)
            assert result.returncode == 0, result.stderr
            outcome = json.loads(result.stdout)
            assert outcome.pop("read victim profile") == "PermissionError"
            status, body = outcome.pop("own document")
            assert status == 200 and "alpha" in body
            for name, (status, body) in outcome.items():
                assert status == 403, (name, status, body)
                assert "beta" not in body.replace(b, "") or name == "no credential"
            assert dump(cproxy.database) == before
        finally:
            if settings is not None:
                stop_supervisor(settings)
