"""Shared test set-up. Fixtures live in tests/fixtures/<area>.py, one owner each."""
from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest

# fixture modules; a module not written yet is simply skipped
_FIXTURE_MODULES = ["tests.fixtures.proxy", "tests.fixtures.node", "tests.fixtures.supervisor"]
pytest_plugins = [m for m in _FIXTURE_MODULES if importlib.util.find_spec(m) is not None]

IS_ROOT = os.geteuid() == 0
# The tests read `slapos`'s console lines as a person sees them on a terminal; a command whose
# output is captured would otherwise log the timestamped `text` format (see slapos/base/logs.py).
os.environ.setdefault("SLAPNODE_LOG_FORMAT", "plain")
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root (runs in CI, where tests run as root)")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)


def make_traversable(path: Path) -> Path:
    """pytest makes its temporary directories 0700; partition and software users (when the tests
    run as root) must be able to reach what is below them, so open the ancestors for traversal."""
    path = Path(path).resolve()
    for directory in [path, *path.parents]:
        if str(directory) in ("/", "/tmp"):
            break
        try:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(directory, stat.S_IMODE(mode) | stat.S_IXOTH | stat.S_IXGRP)
        except PermissionError:
            break
    return path


@pytest.fixture
def open_tmp_path(tmp_path: Path) -> Path:
    """tmp_path, reachable by other users (partition users when tests run as root)."""
    make_traversable(tmp_path)
    os.chmod(tmp_path, 0o755)
    return tmp_path


def wait_for(predicate, timeout: float = 15.0, what: str = "condition", interval: float = 0.05):
    """Poll `predicate` until it returns a true value (returned), or fail after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
