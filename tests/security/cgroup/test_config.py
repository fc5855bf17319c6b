"""The cgroup configuration: slapos.cfg caps, the release's request, the choice of hierarchy.
No root needed: parsing and choosing only (the kernel side is in test_cgroup.py)."""
from __future__ import annotations

import pytest

from slapos.base.config import Config
from slapos.base.errors import ConfigError
from slapos.grid.cgroup import node_name
from slapos.grid.cgroup_config import CgroupConfig, Limits, parse_size, read_requested
from slapos.grid.cgroup_mounts import choose, mounted_hierarchies

MOUNTS_V1 = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,net_cls,net_prio 0 0
"""


def config(text: str) -> CgroupConfig:
    return CgroupConfig.from_config(Config(text="[slapos]\n" + text))


def test_defaults_are_unlimited_and_auto():
    c = config("")
    assert (c.mode, c.root, c.caps) == ("auto", "slapnode", Limits())


def test_caps_and_sizes():
    c = config("partition_memory_limit = 1.5G\npartition_cpu_quota = 150\npartition_pids_limit = 512\n")
    assert c.caps == Limits(memory=3 << 29, cpu_quota=150, pids=512)
    assert parse_size("512M") == 512 << 20 and parse_size("max") is None and parse_size("268435456") == 1 << 28


@pytest.mark.parametrize("line", ["partition_memory_limit = lots", "partition_memory_limit = 1M",
                                  "partition_pids_limit = 3", "partition_cpu_quota = -5",
                                  "partition_cgroup = maybe", "partition_cgroup_root = ../../etc",
                                  "partition_cgroup_root = a b"])
def test_bad_keys_are_one_line(line):
    with pytest.raises(ConfigError) as e:
        config(line + "\n")
    assert "\n" not in str(e.value) and "[slapos]" in str(e.value)


def test_the_nodes_cap_wins(tmp_path):
    (tmp_path / ".slapos-cgroup").write_text("memory_limit = 4G\npids-limit = 10\n# cpu_quota unset\n")
    asked, problem = read_requested(tmp_path)
    assert problem is None and asked == Limits(memory=4 << 30, pids=10)
    assert asked.capped(Limits(memory=1 << 30, cpu_quota=50, pids=100)) == Limits(1 << 30, 50, 10)


@pytest.mark.parametrize("content", ["memory_limit = 1G\nrm -rf / = 1\n", "pids_limit = -1\n", "\xff\xfe",
                                     "x" * 5000])
def test_a_bad_request_is_ignored_as_a_whole(tmp_path, content):
    (tmp_path / ".slapos-cgroup").write_bytes(content.encode("latin-1"))
    asked, problem = read_requested(tmp_path)
    assert asked == Limits() and "ignored" in problem


def test_v1_controllers_are_chosen_one_hierarchy_each(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS_V1)
    found = mounted_hierarchies(str(mounts))
    chosen = choose("auto", found)
    assert [sorted(h.controllers) for h in chosen] == [["pids"], ["memory"], ["freezer"], ["cpu"]]
    assert choose("off", found) == [] and choose("v2", found) == []


def test_node_names_keep_two_nodes_apart():
    assert node_name("COMP-1", "/srv/a") != node_name("COMP-1", "/srv/b")
    assert node_name("../evil id", "/srv/a").startswith(".._evil_id.")


@pytest.mark.root
def test_a_partition_id_never_names_a_path(tmp_path):
    import os
    from types import SimpleNamespace

    from slapos.grid.cgroup import CgroupError, NodeCgroups

    if os.geteuid() != 0:
        pytest.skip("needs root")
    cgroups = NodeCgroups(SimpleNamespace(config=None, computer_id="tseccg", instance_root=str(tmp_path)))
    if not cgroups.enabled:
        pytest.skip("no cgroups here")
    for bad in ("..", "../../x", "a/b", ""):
        with pytest.raises(CgroupError):
            cgroups.partition(bad)
