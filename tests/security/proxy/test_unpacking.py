"""The binary cache's unpacking judges each link by where it really lands once the tree exists:
a chain of relative links, a link through a link, an alias created later in the archive or a
loop cannot point out of the software directory. Crafted tarballs, the real `safe_extract`."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from slapos.grid.cache import CacheRefused, safe_extract

TOP = "0123456789abcdef0123456789abcdef"


def _archive(tmp_path: Path, members: list[tuple[str, str | None]]) -> Path:
    """members: (name, link target) for a symlink, (name, None) for a small file."""
    path = tmp_path / "crafted.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, target in members:
            info = tarfile.TarInfo(f"{TOP}/{name}")
            if target is None:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tar.addfile(info)
    return path


def _extract(tmp_path: Path, members) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir()
    safe_extract(_archive(tmp_path, members), TOP, staging, tmp_path / "soft" / TOP)
    return staging


ESCAPES = {
    # sub/x is the tree's top; p = sub/x/.. is the top's parent, though "sub/x/.." reads as "sub"
    "through a link then ..": [("sub/f", None), ("sub/x", ".."), ("p", "sub/x/..")],
    # the same, with the alias created after the link that uses it
    "alias created later": [("sub/f", None), ("p", "sub/x/.."), ("sub/x", "..")],
    # a chain: each link alone stays inside, together they climb out
    "chain of relative links": [("a/b/c/f", None), ("a/b/c/up", "../.."), ("a/b/up2", "c/up/.."),
                                ("out", "a/b/up2/../..")],
    # an absolute link into the final directory that goes through a link
    "absolute through a link": [("sub/f", None), ("sub/x", ".."), ("q", "{final}/sub/x/../..")],
    "loop": [("l1", "l2"), ("l2", "l1")],
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_crafted_link_chains_are_refused(tmp_path, name):
    final = tmp_path / "soft" / TOP
    members = [(member, None if target is None else target.replace("{final}", str(final)))
               for member, target in ESCAPES[name]]
    with pytest.raises(CacheRefused, match="escapes"):
        _extract(tmp_path, members)


def test_the_old_lexical_check_was_fooled(tmp_path):
    """What the kernel does with the first crafted tree, built by hand: it lands outside."""
    root = tmp_path / "by-hand" / TOP
    (root / "sub").mkdir(parents=True)
    os.symlink("..", root / "sub" / "x")
    os.symlink("sub/x/..", root / "p")
    assert os.path.realpath(root / "p") == str(root.parent)


def test_honest_link_chains_are_kept(tmp_path):
    staging = _extract(tmp_path, [
        ("lib/python3.11/bin/python3.11", None),
        ("bin/python3", "../lib/python3.11/bin/python3.11"),
        ("bin/python", "python3"),
        ("parts/py", "../bin/python"),
        ("current", "."),
        ("via", "current/bin/python"),
    ])
    assert os.path.realpath(staging / "parts" / "py") == str((staging / "lib/python3.11/bin/python3.11").resolve())
    assert (staging / "via").read_bytes() == b"x"
