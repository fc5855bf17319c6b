"""Partition bookkeeping: safe ids, link-proof atomic writes, certificates, state, back-off."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from slapos.grid import backoff
from slapos.grid.instance import PROFILE_TAIL
from slapos.grid.partition import (
    Partition,
    PartitionError,
    PartitionState,
    check_partition_id,
    open_dir,
    software_directory,
    truncate,
    write_at,
)
from tests.fixtures.supervisor import node_settings


@pytest.fixture
def settings(tmp_path):
    return node_settings(tmp_path, certificate_repository_path=tmp_path / "certs")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "slap\0part", "", ".hidden", "x" * 200, "/abs", "etc", "var"])
def test_hostile_partition_ids_are_refused(settings, bad):
    with pytest.raises(PartitionError):
        check_partition_id(bad)
    with pytest.raises(PartitionError):
        Partition(settings, bad)


def test_partition_must_exist_locally(settings):
    partition = Partition(settings, "slappart7")
    with pytest.raises(PartitionError, match="no directory"):
        partition.check_exists()
    os.symlink("/etc", settings.instance_root / "slappart7")  # a link is not a partition
    with pytest.raises(PartitionError):
        partition.check_exists()
    with pytest.raises(PartitionError):
        partition.check_is_partition()


def test_node_directories_and_root_owned_directories_are_not_partitions(settings):
    (settings.instance_root / "etc").mkdir()
    with pytest.raises(PartitionError, match="node's own directory"):
        Partition(settings, "etc")
    (settings.instance_root / "slappart1").mkdir()
    partition = Partition(settings, "slappart1")
    if os.geteuid() == 0:  # made by root here: format gives every partition to its user
        with pytest.raises(PartitionError, match="owned by root"):
            partition.check_is_partition()
        os.chown(partition.path, 65534, 65534)
    partition.check_is_partition()


def test_writes_never_follow_links_planted_by_the_tenant(settings, tmp_path):
    path = settings.instance_root / "slappart0"
    path.mkdir()
    target = tmp_path / "precious"
    target.write_text("keep me")
    os.symlink(target, path / ".timestamp")
    partition = Partition(settings, "slappart0")
    partition.write_timestamp("1795625303.3630798")
    assert target.read_text() == "keep me"  # the link was replaced, not written through
    assert not (path / ".timestamp").is_symlink()
    assert partition.read_timestamp()[0] == "1795625303.3630798"

    os.symlink(tmp_path, path / ".slapgrid")  # the whole directory swapped for a link
    with pytest.raises(PartitionError, match="symbolic link"):
        partition.save_state(PartitionState(status="ok"))
    assert not (tmp_path / "state.json").exists()
    assert partition.load_state().status == "new"
    assert [n for n in os.listdir(path) if n.endswith(".tmp")] == []


def test_atomic_write_leaves_no_partial_file(tmp_path):
    with open_dir(tmp_path) as fd:
        write_at(fd, "f", "one")
        write_at(fd, "f", "two", 0o600)
    assert (tmp_path / "f").read_text() == "two"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_certificate_files(settings):
    (settings.instance_root / "slappart0").mkdir()
    partition = Partition(settings, "slappart0")
    assert partition.write_certificate("", "") is False  # the proxy gives empty ones: nothing written
    assert not (settings.certificate_repository_path / "slappart0.crt").exists()
    assert partition.certificate_files() is None  # the profile gets empty key-file / cert-file
    assert partition.write_certificate("CERT", "KEY") is True
    assert partition.certificate_files() == partition.certificate_paths()
    for name, content in (("slappart0.crt", "CERT"), ("slappart0.key", "KEY")):
        path = settings.certificate_repository_path / name
        assert path.read_text() == content and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert partition.write_certificate("CERT", "KEY") is False
    partition.remove_certificate()
    assert list(settings.certificate_repository_path.iterdir()) == []


def test_a_tenant_growing_its_certificate_file_costs_root_no_memory(tmp_path):
    """The partition's certificate files belong to its user (0600, so its software reads them):
    the tenant may make its own file huge (sparse: no disk used). Each run compares them with the
    master's before writing; that read is bounded by what the master gave, so a run (root) never
    loads the file whole. Run in a child with 1 GiB of address space: an unbounded read of the
    8 GiB file fails there instead of eating the shared machine's memory."""
    import subprocess
    import sys

    code = f"""
import os, resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from tests.fixtures.supervisor import node_settings
from slapos.grid.partition import Partition
root = Path({str(tmp_path)!r})
settings = node_settings(root, certificate_repository_path=root / "certs")
(settings.instance_root / "slappart0").mkdir(parents=True)
partition = Partition(settings, "slappart0")
assert partition.write_certificate("CERT", "KEY")
os.truncate(root / "certs" / "slappart0.crt", 8 << 30)  # the tenant's move
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
print(partition.write_certificate("CERT", "KEY"), (root / "certs" / "slappart0.crt").read_text())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "CERT"]


def test_state_round_trip_and_damage(settings):
    (settings.instance_root / "slappart0").mkdir()
    partition = Partition(settings, "slappart0")
    state = PartitionState(status="error", last_error="boom", failures=2, programs=["a"])
    partition.save_state(state)
    assert partition.load_state() == state
    partition.state_path.write_text("{not json")
    assert partition.load_state() == PartitionState()  # a damaged state costs one full run


def test_backoff_grows_and_is_capped():
    assert [backoff.delay_after(n) for n in (1, 2, 3, 7, 8, 20)] == [60, 120, 240, 3600, 3600, 3600]
    state = PartitionState(status="error")
    backoff.record_failure(state, "inputs-1", 1000.0)
    assert state.failures == 1 and state.next_retry == 1060.0
    assert backoff.check(state, "inputs-1", 1010.0).wait
    assert not backoff.check(state, "inputs-1", 1056.0).wait  # the next cron run is close enough
    assert not backoff.check(state, "inputs-2", 1010.0).wait  # new inputs: at once
    assert not backoff.check(state, "inputs-1", 1010.0, force=True).wait
    backoff.record_failure(state, "inputs-1", 1100.0)
    assert state.failures == 2 and state.next_retry == 1220.0
    backoff.record_failure(state, "inputs-2", 1300.0)
    assert state.failures == 1  # counting starts again on new inputs
    backoff.record_success(state)
    assert state.failures == 0 and state.next_retry is None


def test_helpers():
    assert software_directory("/opt/slapgrid", "/opt/capture/sr/software.cfg").name == \
        "35efb25c1156faa23f96ef6367017ade"  # the reference's capture
    long = "x" * 20000 + "the end"
    assert truncate(long).endswith("the end") and len(truncate(long)) < 11000
    assert "[slap-connection]" in PROFILE_TAIL and "[slap_connection]" in PROFILE_TAIL


def test_status_table_of_an_unformatted_node_says_what_to_do():
    from slapos.grid.status import format_table

    assert "slapos node format" in format_table([])
