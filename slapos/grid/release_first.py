"""A software release's own `slapos.*` modules win over the node's, in the processes that run the
release's code: instance buildouts (their recipes import `slapos.slap`, `slapos.util`, ...) and
promise plugins (`slapos.grid.promise.generic`, `slapos.grid.svcbackend`, ...).

Both our package and the eggs of the ecosystem (slapos.core, slapos.cookbook, slapos.toolbox, ...)
are portions of the one `slapos` namespace; which portion answers `import slapos.grid` depends
on the order of `sys.path`, which buildout and generated plugins build (our site-packages may
well come before the release's slapos.core egg). `install()` puts a finder first in
`sys.meta_path` that searches the portions of a `slapos.*` namespace package with ours last:
a release's module wins when it has one; ours answers only what no release egg provides (our
compatible `slapos.grid.promise.generic`, our recipes). Modules of ours already imported are
forgotten first (`forget_ours`), so that the next import looks again.

Standard library only, and importable by file path: the promise runner loads it before anything
of our package is imported.
"""
from __future__ import annotations

import importlib.machinery
import os
import sys

# `<root>/slapos`: the directory of our portion of the namespace
OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ReleaseFirst:
    """Meta path finder: `slapos.*` submodules are searched in the other portions first."""

    def __init__(self, ours: str = OURS):
        self.ours = os.path.realpath(ours)

    def find_spec(self, fullname, path, target=None):
        if path is None or not fullname.startswith("slapos."):
            return None
        entries = [str(p) for p in path]
        mine = [e for e in entries if os.path.realpath(e) == self.ours]
        if not mine or len(mine) == len(entries):
            return None  # not our portion, or only ours: the default search is the same
        others = [e for e in entries if os.path.realpath(e) != self.ours]
        return importlib.machinery.PathFinder.find_spec(fullname, others + mine, target)

    def invalidate_caches(self) -> None:
        pass


def forget_ours() -> None:
    """Drop our `slapos` modules from `sys.modules` (those already imported keep working; the
    next `import slapos.x` searches again)."""
    for name in [n for n in sys.modules if n == "slapos" or n.startswith("slapos.")]:
        module = sys.modules.get(name)
        location = getattr(module, "__file__", None) or ""
        paths = list(getattr(module, "__path__", None) or [])
        if name == "slapos" or os.path.realpath(location).startswith(OURS + os.sep) or any(
                os.path.realpath(p).startswith(OURS) for p in paths):
            del sys.modules[name]


def install(forget: bool = True) -> object:
    """Install the finder (once) in this process; with `forget`, drop what was imported of ours.
    Returns the finder in place: ours, or the one a copy of this module loaded from another
    path installed earlier (another class, hence `object`)."""
    for installed in sys.meta_path:
        # by class name, not isinstance: a copy of this module imported from another path has its own class
        if type(installed).__name__ == "ReleaseFirst" and getattr(installed, "ours", None) == os.path.realpath(OURS):
            finder: object = installed
            break
    else:
        finder = ReleaseFirst()
        sys.meta_path.insert(0, finder)
    if forget:
        forget_ours()
    return finder
