"""Promise plugins that talk to the master (slapos.toolbox's do: bangs, parameter checks) work on a
proxy with `access = credentials`: they get their partition's own master URL, the one its
[slap-connection] holds, through their environment (never their command line, which every tenant
can read in /proc), and never the node's credential."""
from __future__ import annotations

import json
import os

import pytest

from slapos.slap.connection import url_credential
from tests.conftest import make_traversable
from tests.fixtures.node import build_node
from tests.fixtures.supervisor import stop_supervisor
from tests.instance.conftest import install_software
from tests.security.proxy.conftest import tenant_users

pytestmark = pytest.mark.root


def test_a_promise_plugin_reaches_the_master_with_its_partition_credential(cproxy, tmp_path):
    with tenant_users(1) as (user,):
        node = build_node(tmp_path / "node", cproxy, partitions=1)
        settings = None
        try:
            partition_id = node.partition_ids[0]
            path = node.instance_root / partition_id
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(path, 0o750)
            url = install_software(node.software_root, "plugin-master")
            slap = cproxy.connect()
            slap.registerSupply().supply(url, node.computer_id)
            slap.registerOpenOrder().request(url, "asker", partition_parameter_kw={"greeting": "bonjour"})
            from slapos.base.config import Config
            from slapos.base.settings import NodeSettings
            from slapos.cli.main import main

            settings = NodeSettings.from_config(Config(node.config_path))
            make_traversable(node.root)
            assert main(["node", "instance", "--cfg", str(node.config_path), "--now"]) == 0

            result_file = path / ".slapgrid" / "promise" / "result" / "ask-master.status.json"
            result = json.loads(result_file.read_text())["result"]
            assert result["failed"] is False, result["message"]
            log = (path / ".slapgrid" / "promise" / "log" / "ask-master.log").read_text()
            assert "the master gave bonjour" in log
            node_credential = url_credential(cproxy.url)
            assert node_credential not in log
        finally:
            if settings is not None:
                stop_supervisor(settings)


def test_the_partition_url_travels_in_the_environment_not_in_argv(tmp_path):
    from slapos.grid.promise import Promise, PromiseRunner
    from slapos.grid.promise_plugin import PLUGIN_MASTER_URL
    from slapos.proxy.access import new_credential

    node_credential, partition_credential = new_credential(), new_credential()

    class Settings:
        master_url = f"http://127.0.0.1:1/c/{node_credential}/"
        computer_id = "COMP-0"
        master_ca_file = None
        promise_timeout = 5.0
        certificate_repository_path = tmp_path / "certs"

    class Partition:
        partition_id = "slappart0"
        path = tmp_path

        def certificate_files(self):
            return ()

    mine = f"http://127.0.0.1:1/c/{partition_credential}/"
    runner = PromiseRunner(Settings(), Partition(), master_url=mine)  # type: ignore[arg-type]
    argv = runner._argv(Promise("check", "check.py", tmp_path / "check.py", True), "test")
    assert not any(node_credential in arg or partition_credential in arg for arg in argv), argv
    assert PLUGIN_MASTER_URL == "SLAPNODE_PROMISE_MASTER_URL"
