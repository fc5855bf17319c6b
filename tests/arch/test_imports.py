"""The import graph of `slapos` points down only and has no cycle (DESIGN.md, CONTRIBUTING.md).

Layers, top to bottom: cli → client / grid / format / proxy / recipe → slap → base. A layer may
import its own layer and any layer below it; `base` imports nothing of ours; the proxy never
imports the grid and the grid never imports the proxy. Lazy imports inside functions count.
"""
from __future__ import annotations

from .importgraph import find_cycle, layer, module_graph

# what each layer may import besides itself
ALLOWED = {
    "base": set(),
    "slap": {"base"},
    "proxy": {"slap", "base"},
    "grid": {"slap", "base"},
    "format": {"slap", "base"},
    "client": {"slap", "base"},
    "recipe": {"slap", "base"},
    "cli": {"client", "grid", "format", "proxy", "slap", "base"},
    # what software releases import (their recipes, promise plugins and test suites): nothing of ours imports them
    "util": {"slap", "base"},
    "testing": {"slap", "base"},
}


def test_every_layer_is_known():
    layers = {layer(m) for m in module_graph()}
    assert layers <= set(ALLOWED), f"new package(s) {layers - set(ALLOWED)}: place them in ALLOWED"


def test_arrows_point_down():
    wrong = [
        f"{module} imports {target} (line {line}): {layer(module)} may not import {layer(target)}"
        for module, targets in module_graph().items()
        for target, line in targets
        if layer(target) != layer(module) and layer(target) not in ALLOWED[layer(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {module: sorted({t for t, _ in targets}) for module, targets in module_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level import and a relative import are arrows."""
    import ast

    from .importgraph import _imports

    source = "from . import wire\nfrom ..base import errors\ndef f():\n    import slapos.grid.lock\n"
    found = {t for t, _ in _imports(ast.parse(source), "slapos.slap.objects", False)}
    assert {"slapos.slap.wire", "slapos.base.errors", "slapos.grid.lock"} <= found
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
