"""Hostile tenants against per-partition cgroups: a real proxy, a node formatted for real whose
partitions belong to real users of their own (`tseccg<random><n>`, home = the partition, as
`slapos node format` makes them), real `slapos node instance` / `node report`, real supervisord.
Each node gets a cgroup root of its own (`tseccg-<random>`), removed afterwards with its users."""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.report.conftest import ReportNode, install_fake_software, slapos

pytestmark = pytest.mark.root

URL = "http://sr.example/tseccg.cfg"


def processes_of(uid: int) -> list[int]:
    """Living processes whose real uid is `uid`."""
    from slapos.grid.destroy import _processes_of

    return sorted(_processes_of(uid))


def as_user(user: pwd.struct_passwd, *argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run argv as the tenant (its uid, gid and no other group), the way a tenant process would."""
    return subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                           "--", *argv], capture_output=True, text=True, check=check, timeout=60, **kwargs)


def create_user(name: str, home: Path) -> pwd.struct_passwd:
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
                    "--user-group", name], check=True, capture_output=True)
    return pwd.getpwnam(name)


def delete_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    from slapos.grid.destroy import _kill_all_as

    for _ in range(50):  # whatever a failing test left running
        if not processes_of(uid):
            break
        _kill_all_as(uid)
        time.sleep(0.1)
    subprocess.run(["userdel", name], check=False, capture_output=True)


@dataclass
class CgroupNode:
    rn: ReportNode
    users: dict[str, pwd.struct_passwd]  # partition id -> its user
    evidence: Path  # where tenants write what they saw (one directory per partition, theirs)
    cgroup_root: str

    def __getattr__(self, name):
        return getattr(self.rn, name)

    def request(self, title: str, state: str = "started", parameters: dict | None = None) -> str:
        slap = self.rn.node.proxy.connect()
        try:
            return slap.registerOpenOrder().request(URL, title, partition_parameter_kw=parameters,
                                                    state=state).getId()
        finally:
            slap.close()

    def instance(self, *extra: str) -> subprocess.CompletedProcess:
        return slapos("node", "instance", "--cfg", str(self.rn.node.config_path), "--now", *extra, timeout=180)

    def report(self) -> subprocess.CompletedProcess:
        return slapos("node", "report", "--cfg", str(self.rn.node.config_path), "--now", "-v", timeout=180)

    def cgroups(self):
        from slapos.grid.cgroup import NodeCgroups

        return NodeCgroups(self.rn.settings())

    def cgroup(self, partition_id: str):
        return self.cgroups().partition(partition_id)

    def evidence_of(self, partition_id: str) -> Path:
        return self.evidence / partition_id


def _make(make_node, tmp_path, install_profile, config: dict[str, str]):
    tag = secrets.token_hex(3)
    root = f"tseccg-{tag}"
    node = make_node(partitions=3, extra_config={"slapos": {"partition_cgroup_root": root, **config}})
    rn = ReportNode(node, tmp_path / "unused-certificates")
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    os.chmod(evidence, 0o755)
    users = {}
    try:
        for index, partition_id in enumerate(node.partition_ids):
            path = node.partition_path(partition_id)
            user = create_user(f"tseccg{tag}{index}", path)
            users[partition_id] = user
            os.chown(path, user.pw_uid, user.pw_gid)
            mine = evidence / partition_id
            mine.mkdir()
            os.chown(mine, user.pw_uid, user.pw_gid)
        install_fake_software(rn, URL, install_profile)
        slap = node.proxy.connect()
        slap.registerSupply().supply(URL, node.computer_id)
        slap.close()
        yield CgroupNode(rn, users, evidence, root)
    finally:
        try:
            rn.supervisor().shutdown()
        except Exception:
            pass
        from tests.fixtures.supervisor import remove_cgroups

        remove_cgroups(rn.settings())
        for user in users.values():
            delete_user(user.pw_name)
        for mount in sorted(Path("/sys/fs/cgroup").glob(f"*/{root}"), reverse=True):
            for leftover in sorted(mount.rglob("*"), key=lambda p: -len(p.parts)):
                if leftover.is_dir():
                    leftover.rmdir()
            mount.rmdir()


@pytest.fixture
def cgroup_node(make_node, tmp_path, request):
    """A node whose partitions belong to tseccg users; `request.param`: (profile, extra [slapos] keys)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    profile, config = request.param
    yield from _make(make_node, tmp_path, profile, config)
