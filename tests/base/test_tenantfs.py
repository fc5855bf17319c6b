"""Safe filesystem operations in tenant-controlled partition directories."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from slapos.base import tenantfs


def _tree(base):
    """A tenant's partition with the traps a wipe must survive; returns (partition, outside)."""
    outside = base / "outside"
    (outside / "keepme").mkdir(parents=True)
    (outside / "keepme" / "precious").write_text("do not delete")
    (outside / "file").write_text("neither this")
    part = base / "slappart0"
    part.mkdir(mode=0o750)
    (part / ".slapos-resource").write_text("{}")
    (part / "etc" / "run").mkdir(parents=True)
    (part / "etc" / "run" / "daemon").write_text("#!/bin/sh\n")
    (part / "to-root").symlink_to("/")
    (part / "to-outside-dir").symlink_to(outside)
    (part / "to-outside-file").symlink_to(outside / "file")
    (part / "etc" / "nested-link").symlink_to(outside / "keepme")
    os.mkfifo(part / "fifo")
    (part / "hard").write_text("x")
    os.link(part / "hard", part / "etc" / "hard2")
    locked = part / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "f").write_text("secret")
    os.chmod(locked / "inner", 0)
    os.chmod(locked, 0)
    return part, outside


def test_wipe_removes_everything_inside_but_never_follows_symlinks(tmp_path):
    part, outside = _tree(tmp_path)
    before = os.stat(part)
    result = tenantfs.wipe_content(part, keep={".slapos-resource"})
    assert result.ok, result.errors
    assert sorted(os.listdir(part)) == [".slapos-resource"]
    # the directory itself stays, same inode, owner and mode
    after = os.stat(part)
    assert (after.st_ino, after.st_uid, after.st_gid, after.st_mode) == (
        before.st_ino, before.st_uid, before.st_gid, before.st_mode)
    # what the symlinks pointed to is intact
    assert (outside / "keepme" / "precious").read_text() == "do not delete"
    assert (outside / "file").read_text() == "neither this"
    assert os.path.isdir("/etc") and os.path.exists("/bin/sh")


def test_wipe_of_a_symlinked_directory_is_refused(tmp_path):
    part, outside = _tree(tmp_path)
    link = tmp_path / "partition-link"
    link.symlink_to(outside)
    result = tenantfs.wipe_content(link)
    assert not result.ok and "symlink" in result.errors[0]
    assert (outside / "file").exists()


def test_wipe_handles_trees_deeper_than_the_recursion_and_path_limits(tmp_path):
    part = tmp_path / "deep"
    part.mkdir()
    fd = os.open(part, os.O_RDONLY)
    # 1200 levels x 8 characters: deeper than PATH_MAX and than MAX_DEPTH passes
    try:
        for _ in range(1200):
            os.mkdir("dddddddd", dir_fd=fd)
            child = os.open("dddddddd", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("leaf")
    finally:
        os.close(fd)
    result = tenantfs.wipe_content(part)
    assert result.ok, result.errors[:3]
    assert os.listdir(part) == []


@pytest.mark.root
def test_wipe_does_not_cross_into_a_mounted_filesystem(tmp_path):
    part = tmp_path / "part"
    (part / "mnt").mkdir(parents=True)
    (part / "file").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "none", str(part / "mnt")], check=True)
    try:
        (part / "mnt" / "data").write_text("not the partition's")
        result = tenantfs.wipe_content(part)
        assert not result.ok
        assert "another filesystem" in result.errors[0]
        assert (part / "mnt" / "data").read_text() == "not the partition's"
        assert not (part / "file").exists()
    finally:
        subprocess.run(["umount", str(part / "mnt")], check=True)


def test_read_small_never_blocks_nor_follows(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert tenantfs.read_small(fifo) is None
    assert time.monotonic() - start < 1
    target = tmp_path / "target"
    target.write_text("123.5")
    (tmp_path / "link").symlink_to(target)
    assert tenantfs.read_small(tmp_path / "link") is None
    assert tenantfs.read_float(target) == 123.5
    (tmp_path / "garbage").write_text("not a number")
    assert tenantfs.read_float(tmp_path / "garbage") is None
    assert tenantfs.read_float(tmp_path / "missing") is None
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    assert len(tenantfs.read_small(big, 100)) == 100


def test_write_small_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("original")
    planted = tmp_path / "state"
    planted.symlink_to(victim)
    tenantfs.write_small(planted, b"42\n", mode=0o640)
    assert victim.read_text() == "original"
    assert not planted.is_symlink()
    assert planted.read_text() == "42\n"
    assert oct(planted.stat().st_mode & 0o777) == "0o640"


def test_write_small_writes_everything_and_leaves_no_temporary_file(tmp_path):
    data = os.urandom(3 << 20)
    tenantfs.write_small(tmp_path / "ledger", data)
    assert (tmp_path / "ledger").read_bytes() == data
    (tmp_path / "taken").mkdir()  # renaming a file over a directory fails
    with pytest.raises(OSError):
        tenantfs.write_small(tmp_path / "taken", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger", "taken"]


def test_space_used_counts_files_once_and_stays_inside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "huge").write_bytes(os.urandom(1 << 20))
    part = tmp_path / "part"
    part.mkdir()
    (part / "data").write_bytes(os.urandom(256 * 1024))
    os.link(part / "data", part / "data-again")
    (part / "link").symlink_to(outside)
    other = part / "other-partition-bind"
    other.mkdir()
    (other / "big").write_bytes(os.urandom(512 * 1024))
    used = tenantfs.space_used(part, skip={(other.stat().st_dev, other.stat().st_ino)})
    assert 256 * 1024 <= used < 256 * 1024 + 64 * 1024
    assert tenantfs.space_used(part) >= 768 * 1024
    assert tenantfs.space_used(tmp_path / "missing") == 0
