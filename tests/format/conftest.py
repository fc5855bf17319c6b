"""Helpers for the slapformat tests: a slapos.cfg for a node under a temporary directory."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slapos.base.config import Config
from slapos.format.options import FormatOptions
from tests.fixtures.node import node_config

REPO = Path(__file__).resolve().parents[2]


def closed_port_url() -> str:
    """A loopback URL nobody listens on (the master is unreachable)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def write_config(root: Path, partitions: int = 3, master_url: str | None = None,
                 computer_id: str = "COMP-TEST", **extra: dict[str, str]) -> Path:
    parser = node_config(root, master_url or closed_port_url(), computer_id, partitions, extra)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "slapos.cfg"
    with open(path, "w", encoding="utf-8") as f:
        parser.write(f)
    return path


def load_options(config_path: Path, euid: int | None = None, **overrides) -> FormatOptions:
    options = FormatOptions.from_config(Config(config_path), **overrides)
    options.resolve_privileges(euid)
    return options


def slapos_cli(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess:
    """Run `slapos ...` as a separate process (the CLI sets up logging for the whole process)."""
    argv = [*prefix, sys.executable, "-m", "slapos.cli.main", *args]
    return subprocess.run(argv, cwd=cwd or REPO, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def world_tmp():
    """A 0755 directory directly under /tmp, for runs as `nobody`.

    open_tmp_path opens pytest's tree for traversal, but a concurrent pytest session (several
    run on a shared machine) resets /tmp/pytest-of-<user> to 0700 at its start, which makes
    tests run as another user fail at random; a directory of our own avoids that race."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="slapformat-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
