"""A software release written exactly as slapos.git writes them, from PyPI eggs (slapos.cookbook,
slapos.recipe.template, slapos.toolbox, pinned), runs unchanged on our node: software builds,
instance deploys with cookbook recipes (slapconfiguration, mkdirectory, generate.password,
wrapper, promise.plugin, publish), the published URL answers, and the toolbox promise plugin
fails with its own message when the port is closed (exit 2) and passes when it is open (exit 0)."""
from __future__ import annotations

import json
import urllib.request

import pytest

from tests.conftest import wait_for
from tests.fixtures.proxy import free_port

from .conftest import RELEASE

pytestmark = [pytest.mark.registry, pytest.mark.slow]


def connection(node, url: str, title: str, parameters: dict) -> dict:
    """The published parameters (asked the way a user does: the same request again)."""
    cp = node.proxy.connect().registerOpenOrder().request(url, title, partition_parameter_kw=parameters)
    return cp.getConnectionParameterDict()


def test_release_files_carry_no_workaround():
    text = "\n".join(p.read_text() for p in RELEASE.parent.iterdir() if p.is_file())
    for word in ("slapnode", "slapos.grid.buildout_extension", "_slapnode", "sys.path"):
        assert word not in text


def test_community_release_deploys_and_its_toolbox_plugin_judges(community_node):
    node, url, software = community_node
    assert (software / "instance.cfg").is_file()
    port = free_port()
    parameters = {"port": str(port)}
    partition = node.request(url, "hello", parameters)
    assert node.instance() == 0, node.partition(partition).log_path.read_text()[-3000:]
    published = connection(node, url, "hello", parameters)
    assert published["url"] == f"http://127.0.0.1:{port}/"
    assert len(published["password"]) >= 12
    with urllib.request.urlopen(published["url"], timeout=10) as response:
        assert response.status == 200
    path = node.partition_path(partition)
    plugin = path / "etc" / "plugin" / "http-listening.py"
    assert "slapos.promise.plugin.check_socket_listening" in plugin.read_text()
    status = json.loads((path / ".slapgrid/promise/result/http-listening.status.json").read_text())
    assert status["result"]["failed"] is False
    assert "socket connection OK" in status["result"]["message"]
    # the plugin wrote its own log where the monitoring stack reads it
    assert "socket connection OK" in (path / ".slapgrid/promise/log/http-listening.log").read_text()

    # the port closed: `slapos node promise` runs the plugin, which fails with its own message
    node.supervisor().stop_partition(partition)
    result = node.slapos("node", "promise")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ConnectionRefusedError" in result.stdout + result.stderr
    status = json.loads((path / ".slapgrid/promise/result/http-listening.status.json").read_text())
    assert status["result"]["failed"] is True

    # open again: the plugin passes, `slapos node promise` exits 0
    node.supervisor().start_partition(partition)
    wait_for(lambda: _answers(published["url"]), timeout=30)
    result = node.slapos("node", "promise")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads((path / ".slapgrid/promise/result/http-listening.status.json").read_text())
    assert status["result"]["failed"] is False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
