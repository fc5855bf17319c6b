"""Helpers of the report tests: a formatted node on a real proxy, partitions "deployed" into a
real supervisord (the files a profile would produce, the programs node instance would run),
and `slapos node report` run as the real command."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

SR_URL = "http://sr.example/software.cfg"


@dataclass
class ReportNode:
    node: object  # tests.fixtures.node.Node
    certificates: Path

    def __getattr__(self, name):
        return getattr(self.node, name)

    def settings(self, **overrides):
        from slapos.base.config import Config
        from slapos.base.settings import NodeSettings

        return NodeSettings.from_config(Config(self.node.config_path), **overrides)

    def supervisor(self):
        from slapos.grid.supervisor import Supervisor

        return Supervisor(self.settings())

    # -- master side -----------------------------------------------------------------------
    def request(self, title: str, state: str = "started", filter_kw: dict | None = None) -> str:
        slap = self.node.proxy.connect()
        try:
            cp = slap.registerOpenOrder().request(SR_URL, title, state=state, filter_kw=filter_kw or {})
            return cp.getId()
        finally:
            slap.close()

    def master_partitions(self) -> dict:
        slap = self.node.proxy.connect()
        try:
            return {cp.getId(): cp for cp in slap.registerComputer(self.node.computer_id).getComputerPartitionList()}
        finally:
            slap.close()

    def is_free(self, partition_id: str) -> bool:
        return self.master_partitions()[partition_id].getSoftwareRelease() is None

    def timestamp(self, partition_id: str) -> str:
        return self.master_partitions()[partition_id].getInstanceParameterDict()["timestamp"]

    # -- node side -------------------------------------------------------------------------
    def deploy(self, partition_id: str, services: dict[str, str] | None = None,
               files: dict[str, str] | None = None, start: bool = True) -> Path:
        """What `slapos node instance` leaves behind: profile output, supervisord programs."""
        from slapos.grid.supervisor import collect_programs

        path = self.node.partition_path(partition_id)
        for name, body in (services or {}).items():
            write(path / "etc" / "service" / name, body, 0o755)
        for name, body in (files or {}).items():
            write(path / name, body, 0o644)
        (self.certificates / f"{partition_id}.crt").write_text("certificate")
        (self.certificates / f"{partition_id}.key").write_text("key")
        give_to_owner(path)
        supervisor = self.supervisor()
        supervisor.ensure_running()
        supervisor.apply_partition(partition_id, collect_programs(path), path)
        if start:
            supervisor.start_partition(partition_id)
        return path

    def report(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return slapos("node", "report", "--cfg", str(self.node.config_path), "--now", *extra, timeout=timeout)


def slapos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def write(path: Path, body: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    os.chmod(path, mode)


def give_to_owner(path: Path) -> None:
    """Files a tenant's buildout made are the partition user's (when the tests run as root)."""
    if os.geteuid() != 0:
        return
    st = os.stat(path)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            if root == str(path) and name == ".slapos-resource":
                continue  # written by slapos node format, as root
            os.chown(os.path.join(root, name), st.st_uid, st.st_gid, follow_symlinks=False)




@pytest.fixture
def report_node(make_node, tmp_path):
    yield from _report_node(make_node, tmp_path, with_certificates=True)


@pytest.fixture
def plain_report_node(make_node, tmp_path):
    """Without certificate repository (the proxy hands out no certificates anyway)."""
    yield from _report_node(make_node, tmp_path, with_certificates=False)


def _report_node(make_node, tmp_path, with_certificates: bool):
    certificates = tmp_path / "certificates"
    certificates.mkdir()
    extra = {"slapos": {"certificate_repository_path": str(certificates)}} if with_certificates else None
    node = make_node(partitions=3, extra_config=extra)
    rn = ReportNode(node, certificates)
    slap = node.proxy.connect()
    slap.registerSupply().supply(SR_URL, node.computer_id)
    slap.close()
    try:
        yield rn
    finally:
        rn.supervisor().shutdown()


INSTANCE_DATA = REPO / "tests" / "data" / "instance"


def install_fake_software(report_node, url: str, profile: str) -> Path:
    """An installed software release as `slapos node software` leaves it (`.completed`, the
    instance profile, eggs), without building one: the instance tests' recipe egg is enough."""
    import shutil

    from slapos.grid.partition import software_directory

    directory = software_directory(report_node.software_root, url)
    shutil.copytree(INSTANCE_DATA / "recipe", directory / "eggs" / "slapnodetest-1.0.egg")
    (directory / "instance.cfg").write_text((INSTANCE_DATA / "_header.cfg").read_text() + "\n" + profile)
    (directory / ".completed").write_text("installed by the test")
    for path in [directory, *directory.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if os.geteuid() == 0:
            st = os.stat(report_node.software_root)
            os.chown(path, st.st_uid, st.st_gid)
    return directory
