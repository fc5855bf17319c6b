"""The archive of a built release for the binary cache: make it (as the software user, see
cache_archive) and unpack one from the network member by member with checks (no absolute names,
no `..`, links must stay inside the tree once every link is followed, no devices, no set-uid
bits) into a staging directory. Split from slapos.grid.cache, which re-exports these names.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import posixpath
import shutil
import stat
import sys
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

from .cache_archive import write_archive
from .process import Identity

CHUNK = 1 << 20


class CacheError(SlapOSError):
    """The binary cache could not be used (network, server, configuration): build instead."""


class CacheRefused(CacheError):
    """What the cache gave us is not trustworthy (signature, checksum, size, unsafe archive)."""


def make_archive(directory: Path, top: str, destination: Path) -> tuple[str, int]:
    """tar.gz of `directory` (a tree we may read as we are) as `<top>/…` without local-only
    files; returns (sha512, size)."""
    with open(destination, "wb") as out:
        write_archive(str(directory), top, out)
    digest = hashlib.sha512()
    with open(destination, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), destination.stat().st_size


def archive_as(directory: Path, top: str, out: BinaryIO, identity: Identity | None) -> tuple[str, int]:
    """`make_archive` of a tree that belongs to `identity` (the software user), walked by a
    child switched to that user (slapos.grid.cache_archive): root never walks a tree the
    builder may be changing under it. The stream is written to `out` (a file of root's) and
    hashed as it comes; returns (sha512, size)."""
    import subprocess
    import tempfile

    from .process import _demote, clean_environment, kill_tree

    argv = [sys.executable, "-I", "-m", "slapos.grid.cache_archive", str(directory), top]
    digest = hashlib.sha512()
    size = 0
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, cwd="/", env=clean_environment(identity.home if identity else "/", tmpdir="/tmp"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                preexec_fn=_demote(identity, 0o022), start_new_session=True, close_fds=True)
        assert proc.stdout is not None  # stdout=PIPE
        try:
            while chunk := proc.stdout.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            code = proc.wait()
        except BaseException:
            kill_tree(proc.pid)
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if code != 0:
            errors.seek(0)
            text = errors.read(4096).decode("utf-8", "replace").strip().splitlines()
            raise CacheError(f"archiving {directory} failed (exit {code}): {text[-1] if text else 'no output'}")
    out.flush()
    return digest.hexdigest(), size


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _member_parts(name: str, top: str) -> list[str]:
    """The validated path of a member below `top`, as components ([] for `top` itself)."""
    if "\0" in name or name.startswith("/") or "\\" in name:
        raise CacheRefused(f"archive member {name!r} has an unsafe name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or parts[0] != top or ".." in parts:
        raise CacheRefused(f"archive member {name!r} is outside {top}/")
    return parts[1:]


MAX_LINK_HOPS = 40  # as the kernel: more links in one resolution is a loop


def _resolves_inside(staging: Path, final: str, parts: list[str]) -> bool:
    """Whether the link at `parts` (below the tree's top), once the tree is renamed to `final`,
    resolves inside it, following every link of the tree on the way as the kernel will: a target
    is judged by where it really lands, not by its spelling (`a -> x/..` where `x` is itself a
    link to `..` lands outside, though `a/x/..` looks like `a`). A component that does not exist
    stays a plain name; anything leaving the tree, or more than MAX_LINK_HOPS links, is refused."""
    hops = 0
    target = os.readlink(staging.joinpath(*parts))
    resolved = parts[:-1]  # where we are, as components below the top of the tree
    pending = target.split("/")  # what is left to walk (reversed below: popped from the end)
    if target.startswith("/"):
        rest = _below(target, final)
        if rest is None:
            return False
        resolved, pending = [], rest.split("/")
    pending.reverse()
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if not resolved:
                return False  # above the top of the tree
            resolved.pop()
            continue
        resolved.append(name)
        path = staging.joinpath(*resolved)
        if not path.is_symlink():
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return False
        resolved.pop()
        link = os.readlink(path)
        if link.startswith("/"):
            rest = _below(link, final)
            if rest is None:
                return False
            resolved, link = [], rest
        pending.extend(reversed(link.split("/")))
    return True


def _below(target: str, final: str) -> str | None:
    """The part of an absolute link target below `final`, still to be walked link by link (not
    normalised: `final/x/..` is not `final` when x is a link), or None when it does not start
    there literally (`/a/../final` is refused rather than guessed)."""
    parts = [p for p in target.split("/") if p not in ("", ".")]
    top = [p for p in final.split("/") if p]
    if parts[: len(top)] != top:
        return None
    return "/".join(parts[len(top):])


def safe_extract(archive: Path, top: str, staging: Path, final: Path) -> None:
    """Unpack `archive` (members `<top>/…`) into the empty directory `staging`, which will be
    renamed to `final`. Refuses (CacheRefused) anything that could write or point outside."""
    staging_real = os.path.realpath(staging)
    final_str = os.path.abspath(final)
    directories: list[tuple[Path, int]] = []
    links: list[tuple[str, list[str]]] = []  # (member name, path): checked again once all exist
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CacheRefused(f"archive is not a readable tar.gz: {e}") from None
    with tar:
        try:
            for member in tar:
                parts = _member_parts(member.name, top)
                target = staging.joinpath(*parts) if parts else staging
                parent = target.parent if parts else staging
                if not _inside(os.path.realpath(parent), staging_real):
                    raise CacheRefused(f"archive member {member.name!r} goes through a link outside the tree")
                mode = member.mode & 0o777  # no set-uid, set-gid or sticky bits from the network
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    directories.append((target, mode | 0o700))
                elif member.isreg():
                    parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with source, os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                    os.chmod(target, mode)
                elif member.issym():
                    link = member.linkname
                    if "\0" in link:
                        raise CacheRefused(f"archive link {member.name!r} has an unsafe target")
                    if link.startswith("/"):
                        ok = _inside(posixpath.normpath(link), final_str)
                    else:
                        resolved = posixpath.normpath(posixpath.join(posixpath.dirname("/".join(parts)), link))
                        ok = not (resolved == ".." or resolved.startswith("../") or resolved.startswith("/"))
                    if not ok:
                        raise CacheRefused(f"archive link {member.name!r} -> {link!r} escapes the software directory")
                    parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(link, target)
                    links.append((member.name, parts))
                elif member.islnk():
                    source_parts = _member_parts(member.linkname, top)
                    source_path = staging.joinpath(*source_parts)
                    if not source_parts or not _inside(os.path.realpath(source_path), staging_real) \
                            or not source_path.is_file() or source_path.is_symlink():
                        raise CacheRefused(f"archive hard link {member.name!r} -> {member.linkname!r} is unsafe")
                    parent.mkdir(parents=True, exist_ok=True)
                    os.link(source_path, target, follow_symlinks=False)
                else:
                    raise CacheRefused(f"archive member {member.name!r} is a device or fifo")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise CacheRefused(f"archive is truncated or corrupt: {e}") from None
        except FileExistsError:
            raise CacheRefused("archive holds the same member twice") from None
    # The check above reads each target as spelled; a chain of links (a link through a link, a
    # `..` after a link, a link created later in the archive) is only known once all exist.
    for name, parts in links:
        if not _resolves_inside(staging, final_str, parts):
            raise CacheRefused(f"archive link {name!r} escapes the software directory once its links are followed")
    for directory, mode in sorted(directories, key=lambda d: len(d[0].parts), reverse=True):
        os.chmod(directory, mode)


def remove_tree(path: Path) -> None:
    """Remove a tree a build wrote (read-only directories included) without ever following a
    link or leaving the tree (tenantfs.wipe_content); a link at `path` itself is removed, not
    followed. OSError when something could not be removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    result = tenantfs.wipe_content(path)
    if not result.ok:
        raise OSError(errno.ENOTEMPTY, "; ".join(result.errors[:3]), str(path))
    os.rmdir(path)
