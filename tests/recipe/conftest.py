"""Helpers for the recipe tests: real buildout runs (the node's own runner) on tiny profiles.

    profile = write_profile(tmp_path, '''
    [buildout]
    parts = x
    [x]
    recipe = slapnode:mkdir
    a = ${buildout:directory}/a
    ''', connection=partition.connection)      # the [slap-connection] tail the node would add
    run_buildout(tmp_path)                      # fails the test with buildout's output if it fails
"""
from __future__ import annotations

import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from slapos.grid.buildout import buildout_argv

BUILDOUT_TIMEOUT = 300


def write_profile(directory: Path, text: str, connection: dict[str, str] | None = None) -> Path:
    """`buildout.cfg` = the profile + the tail the node appends (offline, [slap-connection])."""
    directory.mkdir(parents=True, exist_ok=True)
    tail = "\n\n[buildout]\noffline = true\n"
    if connection is not None:
        tail += "\n[slap-connection]\n" + "".join(f"{k} = {v}\n" for k, v in connection.items())
    path = directory / "buildout.cfg"
    path.write_text(textwrap.dedent(text).lstrip() + tail)
    return path


def run_buildout(directory: Path, *, check: bool = True, env: dict[str, str] | None = None,
                 timeout: float = BUILDOUT_TIMEOUT) -> subprocess.CompletedProcess:
    """Run buildout in `directory` like the node does (umask 027, HOME = the directory)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    environment.update(HOME=str(directory), **(env or {}))
    result = subprocess.run(
        buildout_argv(directory), cwd=directory, env=environment, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, umask=0o027, timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(f"buildout failed (exit {result.returncode}):\n{result.stdout[-6000:]}")
    return result


@dataclass
class Instance:
    """An instance allocated by the proxy to a partition of a formatted node."""

    node: object  # tests.fixtures.node.Node
    partition_id: str
    title: str
    software_url: str

    @property
    def connection(self) -> dict[str, str]:
        return {
            "computer-id": self.node.computer_id,
            "partition-id": self.partition_id,
            "server-url": self.node.master_url,
            "software-release-url": self.software_url,
            "key-file": "",
            "cert-file": "",
            "requested-state": "started",
        }

    def partition(self):
        """The partition as the master sees it now (fresh GET)."""
        return self.node.proxy.connect().registerComputerPartition(self.node.computer_id, self.partition_id)


def allocated(instance: Instance) -> dict[str, Instance]:
    """title -> Instance of every instance allocated on the node of `instance`."""
    computer = instance.node.proxy.connect().registerComputer(instance.node.computer_id)
    result = {}
    for partition in computer.getComputerPartitionList():
        title = partition.getInstanceParameterDict().get("instance_title")
        if title:
            result[title] = Instance(instance.node, partition.getId(), title, instance.software_url)
    return result


@pytest.fixture
def request_instance(make_node, tmp_path):
    """Factory: request an instance as a user would (`slapos request`) and return an Instance."""
    node = make_node(partitions=4)
    software_url = str(tmp_path / "sr" / "software.cfg")
    supplied: set[str] = set()

    def factory(title: str = "main", parameters: dict | None = None, software_type: str = "default",
                software_url: str = software_url) -> Instance:
        connection = node.proxy.connect()
        if software_url not in supplied:  # our proxy allocates only for supplied releases
            connection.registerSupply().supply(software_url, computer_guid=node.computer_id)
            supplied.add(software_url)
        order = connection.registerOpenOrder()
        requested = order.request(software_url, title, partition_parameter_kw=parameters or {},
                                  software_type=software_type)
        return Instance(node, requested.getId(), title, software_url)

    return factory
