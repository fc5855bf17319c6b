"""A node that built software-release/community-hello (slapos.git style, eggs from PyPI) once per
session: building it downloads and installs ~50 eggs (about a minute), so every test of this
folder shares that node, its proxy and its software release (each uses partitions of its own)."""
from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.fixtures.supervisor import stop_supervisor
from tests.instance.conftest import InstanceNode
from tests.software.conftest import run_software, software_dir, supply

RELEASE = REPO / "software-release" / "community-hello" / "software.cfg"


@pytest.fixture(scope="session")
def community_node(tmp_path_factory, request):
    """(node, url, software directory) with community-hello built by `slapos node software`."""
    from tests.fixtures.node import build_node
    from tests.fixtures.proxy import start_proxy

    root = tmp_path_factory.mktemp("community")
    proxy = start_proxy(root / "proxy")
    request.addfinalizer(proxy.stop)
    node = InstanceNode(build_node(root / "node", proxy, partitions=4,
                                   extra_config={"slapos": {"maximum_periodicity": "86400"}}))
    request.addfinalizer(lambda: stop_supervisor(node.settings()))
    url = str(RELEASE)
    supply(node, url)
    run = run_software(node.config_path, timeout=900)
    assert run.returncode == 0, run.output
    return node, url, software_dir(node, url)
