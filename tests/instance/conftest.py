"""A formatted node with a real proxy, fake installed software releases and the node's supervisord.

A software release "installed" for these tests is `<software_root>/<md5(url)>/` with `.completed`,
an `instance.cfg` (tests/data/instance/_header.cfg + one profile) and, in `eggs/`, the test-only
recipe egg of tests/data/instance/recipe: instance buildouts run for real, offline, without the
project's own recipes.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from slapos.grid.partition import software_directory
from tests.conftest import make_traversable
from tests.fixtures.supervisor import stop_supervisor

DATA = Path(__file__).resolve().parent.parent / "data" / "instance"
REPO = Path(__file__).resolve().parent.parent.parent


def chown_tree(path: Path, user: str = "nobody") -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, entry.pw_uid, entry.pw_gid)


def install_software(software_root: Path, profile: str, url: str | None = None) -> str:
    """Make a software release look built; returns its URL."""
    url = url or str(DATA / f"{profile}.cfg")
    directory = software_directory(software_root, url)
    directory.mkdir(parents=True, exist_ok=True)
    text = (DATA / "_header.cfg").read_text() + "\n" + (DATA / f"{profile}.cfg").read_text()
    (directory / "instance.cfg").write_text(text)
    egg = directory / "eggs" / f"slapnodetest-1.0-py{sys.version_info[0]}.{sys.version_info[1]}.egg"
    if not egg.exists():
        shutil.copytree(DATA / "recipe", egg, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / ".completed").write_text("installed by the tests\n")
    chown_tree(directory)
    return url


@dataclass
class InstanceNode:
    """A node of the tests (tests.fixtures.node.Node) plus helpers for instance runs.

    Before each run the node's ancestors are made traversable again: a pytest session started
    meanwhile (another test run on the same machine) resets /tmp/pytest-of-<user> to 0700, and the
    partition user could not reach its partition any more.
    """

    node: object

    def __getattr__(self, name):
        return getattr(self.node, name)

    def settings(self, **overrides):
        from slapos.base.config import Config
        from slapos.base.settings import NodeSettings

        return NodeSettings.from_config(Config(self.config_path), **overrides)

    def supervisor(self):
        from slapos.grid.supervisor import Supervisor

        return Supervisor(self.settings())

    def partition(self, partition_id: str):
        from slapos.grid.partition import Partition

        return Partition(self.settings(), partition_id)

    def install(self, profile: str, url: str | None = None) -> str:
        url = install_software(self.software_root, profile, url)
        self.proxy.connect().registerSupply().supply(url, self.computer_id)
        return url

    def request(self, url: str, title: str, parameters: dict | None = None, state: str = "started") -> str:
        cp = self.proxy.connect().registerOpenOrder().request(
            url, title, partition_parameter_kw=parameters or {}, state=state)
        return cp.getId()

    def instance(self, *args: str) -> int:
        """`slapos node instance` in this process (fast); the exit code."""
        from slapos.cli.main import main

        make_traversable(self.root)
        return main(["node", "instance", "--cfg", str(self.config_path), "--now", *args])

    def slapos(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The `slapos` command in a subprocess."""
        make_traversable(self.root)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args, "--cfg", str(self.config_path)],
                              capture_output=True, text=True, timeout=timeout, env=env)

    def processes(self, partition_id: str) -> dict[str, dict]:
        return {i["name"]: i for i in self.supervisor().partition_processes(partition_id)}

    def buildout_runs(self, partition_id: str) -> int:
        log = self.partition(partition_id).log_path
        return log.read_text().count("running buildout") if log.exists() else 0


@pytest.fixture
def instance_node(make_node):
    """Factory of nodes whose supervisord is stopped at the end of the test."""
    made: list[InstanceNode] = []

    def factory(partitions: int = 3, extra_config: dict | None = None) -> InstanceNode:
        config = {"slapos": {"maximum_periodicity": "86400"}}
        for section, values in (extra_config or {}).items():
            config.setdefault(section, {}).update(values)
        node = InstanceNode(make_node(partitions=partitions, extra_config=config))
        made.append(node)
        return node

    yield factory
    for node in made:
        stop_supervisor(node.settings())
