"""A software release whose recipe comes from the registry: buildout downloads slapos.recipe.template
from PyPI (this test only needs the network) and imports it next to our `slapos` namespace package."""
from __future__ import annotations

import pytest

from slapos.grid.software import COMPLETED

from .conftest import DATA, run_software, software_dir, software_states, supply

TEMPLATE = str(DATA / "template" / "software.cfg")


@pytest.mark.registry
def test_release_with_a_recipe_from_pypi(make_node):
    node = make_node(partitions=1)
    supply(node, TEMPLATE)
    run = run_software(node.config_path, timeout=600)
    assert run.returncode == 0, run.output
    path = software_dir(node, TEMPLATE)
    assert (path / "hello.txt").read_text() == f"hello from {path}\n"
    assert (path / COMPLETED).exists()
    assert any(p.name.startswith("slapos.recipe.template") for p in (path / "eggs").rglob("*"))
    assert software_states(node.proxy.database)[TEMPLATE]["reported"] == "available"
