"""`slapos node instance` against a tenant (the partition user) and a software build (the owner
of the release directory) that planted links, FIFOs and hard links where root reads or writes.

Each test: plant as that user, run the real command (a subprocess, with a timeout: a planted
FIFO must not block it), then check the victim file is unchanged and that root did not write,
chown or read anything through what was planted."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from slapos.grid.partition import software_directory
from tests.conftest import make_traversable

from .conftest import SECRET, as_user, give_tree, plant, slapos

pytestmark = pytest.mark.root


def deployed_node(instance_node, tenant_users, profile: str = "cheap"):
    """A node with one partition of the tenant (tenant_users[0]) requested from a release
    owned by the builder (tenant_users[1]); nothing deployed yet."""
    tenant, builder = tenant_users
    node = instance_node(partitions=1)
    url = node.install(profile)
    give_tree(node.software_root, builder)
    partition_id = node.request(url, "attacked")
    give_tree(node.partition_path(partition_id), tenant)
    make_traversable(node.root)
    return node, url, partition_id


def run_instance(node) -> str:
    make_traversable(node.root)
    done = slapos("node", "instance", "--cfg", str(node.config_path), "--now", "--all")
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def secret_anywhere_below(path: Path) -> list[str]:
    """Files below `path` (links not followed) that hold the victim's content."""
    found = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = os.path.join(root, name)
            st = os.lstat(file)
            if stat.S_ISREG(st.st_mode) and st.st_size < 1 << 20:
                with open(file, "rb") as f:
                    if SECRET.strip() in f.read():
                        found.append(file)
    return found


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink"])
def test_instance_log(instance_node, tenant_users, victim, kind):
    """`.slapgrid/log/instance.log`: root appends the buildout's output and its own lines."""
    node, _url, pid = deployed_node(instance_node, tenant_users)
    path = node.partition_path(pid)
    plant(tenant_users[0], path / ".slapgrid" / "log" / "instance.log", kind, victim)
    output = run_instance(node)
    assert output.startswith("exit 0"), output
    victim.check()
    log = path / ".slapgrid" / "log" / "instance.log"
    st = os.lstat(log)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == tenant_users[0].uid
    assert "running buildout" in log.read_text()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink"])
def test_supervisord_program_log(instance_node, tenant_users, victim, kind):
    """`.<id>_<program>.log`: the reference's supervisord (root) opens it itself. Ours writes
    program output in a root-owned directory and leaves the tenant a link to it."""
    node, _url, pid = deployed_node(instance_node, tenant_users)
    path = node.partition_path(pid)
    name = f".{pid}_idle.log"
    plant(tenant_users[0], path / name, kind, victim)
    output = run_instance(node)
    assert output.startswith("exit 0"), output
    info = node.processes(pid)["idle-on-watch"]
    assert info["statename"] == "RUNNING"
    victim.check()
    supervisor = node.supervisor()
    log_dir = supervisor.program_log_dir(pid)
    st = os.stat(log_dir)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == tenant_users[0].gid
    assert os.readlink(path / name) == str(supervisor.program_log_path(pid, "idle"))
    assert info["stdout_logfile"] == str(supervisor.program_log_path(pid, "idle"))
    # the tenant reads its programs' output through the link, and cannot write there
    as_user(tenant_users[0], f"""
        import os
        open({str(path / name)!r}).read()
        try:
            open({str(path / name)!r}, "a")
        except PermissionError:
            pass
        else:
            raise SystemExit("the tenant can write into root's log directory")
    """)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink"])
def test_promise_log(instance_node, tenant_users, victim, kind):
    """`.slapgrid/promise/log/<title>.log`: root appends one line per promise run."""
    node, _url, pid = deployed_node(instance_node, tenant_users)
    path = node.partition_path(pid)
    assert run_instance(node).startswith("exit 0")
    log = path / ".slapgrid" / "promise" / "log" / "ok.log"
    plant(tenant_users[0], log, kind, victim)
    output = run_instance(node)  # --all: the promise runs again
    assert output.startswith("exit 0"), output
    victim.check()
    st = os.lstat(log)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1


@pytest.mark.parametrize("name,kind", [("instance.cfg", "symlink"), ("instance.cfg", "fifo"),
                                       ("instance.cfg", "hardlink"), ("template.cfg", "symlink")])
def test_release_profile(instance_node, tenant_users, victim, name, kind):
    """The release's `instance.cfg`/`template.cfg`: root reads it into the partition's
    buildout.cfg (readable by the tenant's group), so a link to root's file would hand its
    content over, and a FIFO would block the run."""
    node, url, pid = deployed_node(instance_node, tenant_users)
    release = software_directory(node.software_root, url)
    if name == "template.cfg":
        as_user(tenant_users[1], f"import os; os.unlink({str(release / 'instance.cfg')!r})")
    plant(tenant_users[1], release / name, kind, victim)
    output = run_instance(node)
    assert output.startswith("exit 1"), output
    assert "refusing" in output and name in output
    victim.check()
    assert not secret_anywhere_below(node.partition_path(pid))


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_release_periodicity(instance_node, tenant_users, victim, kind):
    """The release's `periodicity` file is read on every run, for every partition."""
    node, url, _pid = deployed_node(instance_node, tenant_users)
    plant(tenant_users[1], software_directory(node.software_root, url) / "periodicity", kind, victim)
    output = run_instance(node)
    assert output.startswith("exit 0"), output
    victim.check()


def test_software_release_link_and_buildout_cfg(instance_node, tenant_users, victim):
    """`software_release` and `buildout.cfg`, which root (re)writes in the partition on each
    deployment: links there are replaced, never written through."""
    node, _url, pid = deployed_node(instance_node, tenant_users)
    path = node.partition_path(pid)
    plant(tenant_users[0], path / "buildout.cfg", "symlink", victim)
    plant(tenant_users[0], path / "software_release", "symlink", victim)
    plant(tenant_users[0], path / ".timestamp", "fifo", victim)
    output = run_instance(node)
    assert output.startswith("exit 0"), output
    victim.check()
    assert stat.S_ISREG(os.lstat(path / "buildout.cfg").st_mode)
    assert os.readlink(path / "software_release") != str(victim.path)
