"""Writing a partition's limits into the kernel: a limit the kernel refuses (twice: the retry
covers memory/memsw ordering only) is one clear CgroupError naming the file, the value and the
kernel's reason. Real cgroups, as root; the cgroups live under a root of this test's own."""
from __future__ import annotations

import contextlib
import os
import secrets

import pytest

from slapos.grid.cgroup import CgroupError, PartitionCgroup
from slapos.grid.cgroup_config import Limits
from slapos.grid.cgroup_mounts import choose, mounted_hierarchies

pytestmark = pytest.mark.root


@pytest.fixture
def partition_cgroup():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    hierarchies = choose("v1", mounted_hierarchies())
    if not any("cpu" in h.controllers for h in hierarchies):
        pytest.skip("needs the cgroup v1 cpu controller (the kernel refuses a child quota above its parent's)")
    root = f"ttypefix-{secrets.token_hex(3)}"
    cg = PartitionCgroup(hierarchies, f"{root}/node/slappart0", "slappart0")
    try:
        yield cg
    finally:
        for path in cg.paths:
            for directory in (path, path.parent, path.parent.parent):
                with contextlib.suppress(FileNotFoundError):
                    directory.rmdir()


def test_a_limit_the_kernel_refuses_is_one_clear_error(partition_cgroup):
    cg = partition_cgroup
    cg.ensure()
    cpu = cg._path("cpu")
    assert cpu is not None
    # the node's cgroup allows 10 % of a CPU: the kernel refuses 50 % to the partition below it
    (cpu.parent / "cpu.cfs_quota_us").write_text("10000")
    with pytest.raises(CgroupError) as refused:
        cg.apply(Limits(cpu_quota=50))
    assert str(refused.value) == "slappart0: cannot set cpu.cfs_quota_us to 50000: Invalid argument"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"  # nothing half-applied to the quota
    assert cg.apply(Limits(cpu_quota=5)) == ["cpu.cfs_quota_us"]  # within the parent's: accepted
    assert cg.usage().cpu_quota == 5
