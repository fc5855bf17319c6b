"""tenantfs helpers for single files and trees (no root needed: links, FIFOs and hard links
behave the same for any user)."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from slapos.base import tenantfs


@pytest.fixture
def tree(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret\n")
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    return base, victim


def test_read_regular_refuses_links_fifos_and_big_files(tree):
    base, victim = tree
    (base / "ok").write_bytes(b"12")
    assert tenantfs.read_regular(base / "ok", 2) == b"12"
    with pytest.raises(tenantfs.UnsafeFile):
        tenantfs.read_regular(base / "ok", 1)
    os.symlink(victim, base / "link")
    with pytest.raises(tenantfs.UnsafeFile):
        tenantfs.read_regular(base / "link", 100)
    os.mkfifo(base / "fifo")
    with pytest.raises(tenantfs.UnsafeFile):
        tenantfs.read_regular(base / "fifo", 100)  # returns at once: never blocks
    with pytest.raises(FileNotFoundError):
        tenantfs.read_regular(base / "missing", 100)
    with pytest.raises(tenantfs.UnsafeFile):
        tenantfs.read_regular(base / "ok", 100, uid=os.geteuid() + 1)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink", "none", "regular"])
def test_open_append_never_writes_through(tree, kind):
    base, victim = tree
    target = base / "sub" / "log"
    if kind == "symlink":
        os.symlink(victim, target)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "hardlink":
        os.link(victim, target)
    elif kind == "regular":
        target.write_bytes(b"before\n")
    fd = tenantfs.open_dir(base, "sub")
    try:
        out = tenantfs.open_append("log", fd)
        os.write(out, b"line\n")
        os.close(out)
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"secret\n"
    st = os.lstat(target)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert target.read_bytes() == (b"before\nline\n" if kind == "regular" else b"line\n")


def test_open_dir_refuses_links_below_base_and_creates(tree, tmp_path):
    base, victim = tree
    os.symlink(victim.parent, base / "elsewhere")
    with pytest.raises(OSError) as e:
        tenantfs.open_dir(base, "elsewhere")
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    fd = tenantfs.open_dir(base, "new", "deeper", create=True, mode=0o750)
    os.close(fd)
    assert stat.S_IMODE(os.stat(base / "new" / "deeper").st_mode) == 0o750
    alias = tmp_path / "alias"
    os.symlink(base, alias)  # an operator's link to the trusted base itself
    with pytest.raises(OSError):
        tenantfs.open_dir(alias, "sub")
    os.close(tenantfs.open_dir(alias, "sub", follow_base=True))


def test_write_at_replaces_a_planted_link(tree):
    base, victim = tree
    os.symlink(victim, base / "file")
    fd = tenantfs.open_dir(base)
    try:
        tenantfs.write_at(fd, "file", "mine", 0o640)
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"secret\n"
    assert (base / "file").read_text() == "mine" and not (base / "file").is_symlink()
    assert [p.name for p in base.iterdir() if p.name.endswith(".tmp")] == []


def test_chown_tree_does_not_follow_links(tree):
    base, victim = tree
    (base / "sub" / "f").write_text("x")
    os.symlink(victim, base / "sub" / "to-victim")
    os.symlink(victim.parent, base / "to-dir")
    before = os.stat(victim)
    uid, gid = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    fd = tenantfs.open_dir(base)
    try:
        tenantfs.chown_tree(fd, uid, gid)
    finally:
        os.close(fd)
    after = os.stat(victim)
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert os.lstat(base / "sub" / "f").st_uid == uid and os.lstat(base / "sub" / "to-victim").st_uid == uid
