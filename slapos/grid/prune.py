"""`slapos node prune` and `slapos node software --garbage-collect`: remove the software releases
and shared parts nothing uses any more.

What is kept (mark and sweep, from these roots):

* every software release the master supplies to this computer (state available), and the one
  of every partition the master assigns here;
* every software release or shared part a partition's own files name: its `.installed.cfg` and
  `buildout.cfg` (the instance profile as buildout ran it), its `software_release` link;
* every software release or shared part named by something kept: a release's `.installed.cfg`
  and `buildout.cfg`, a shared part's signature files; and the releases of
  `--additional-software-directory` trees;
* anything a running process has as its executable or working directory.

A release directory is `software_root/<32 hex>`, a shared part `<shared root>/<name>/<hash>`;
"names it" means its md5 / hash appears in the text. Removal holds the software and instance run
locks (no build, no deployment meanwhile) and goes through directory descriptors without
following any link (`tenantfs.wipe_content`): a build or a tenant cannot redirect it.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

if TYPE_CHECKING:  # pragma: no cover
    from slapos.base.settings import NodeSettings

log = logging.getLogger("slapos.grid.prune")

MD5 = re.compile(r"^[0-9a-f]{32}$")
TEXT_LIMIT = 32 * 1024 * 1024  # a profile larger than this is not read (then its partition keeps all)
PARTITION_FILES = (".installed.cfg", "buildout.cfg")
SOFTWARE_FILES = (".installed.cfg", "buildout.cfg")


class PruneError(SlapOSError):
    pass


@dataclass
class Candidate:
    kind: str  # "software release" or "shared part"
    path: Path
    parent: Path  # the trusted directory it is removed from
    name: str
    key: str  # what a referencing text contains: the md5 or the hash
    size: int = 0
    kept_because: str = ""


@dataclass
class PrunePlan:
    remove: list[Candidate] = field(default_factory=list)
    kept: list[Candidate] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(c.size for c in self.remove)


def _read(base: Path, *parts: str) -> str:
    """A file below a (possibly tenant-controlled) directory, read without following links."""
    fd = tenantfs.open_below(base, *parts[:-1])
    if fd is None:
        return ""
    try:
        data = tenantfs.read_small(parts[-1], TEXT_LIMIT, dir_fd=fd)
    finally:
        os.close(fd)
    if data is None:
        return ""
    if len(data) >= TEXT_LIMIT:
        raise PruneError(f"{base.joinpath(*parts)} is larger than {TEXT_LIMIT} bytes: nothing pruned")
    return data.decode("utf-8", "replace")


def _link(base: Path, name: str) -> str:
    try:
        return os.readlink(base / name)
    except OSError:
        return ""


def _subdirs(directory: Path) -> list[str]:
    fd = tenantfs.open_below(directory)
    if fd is None:
        return []
    try:
        with os.scandir(fd) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    finally:
        os.close(fd)


def shared_roots(settings: NodeSettings) -> list[Path]:
    return [Path(p) for p in settings.shared_part_list if p and Path(p).is_dir() and not Path(p).is_symlink()]


def candidates(settings: NodeSettings) -> tuple[list[Candidate], list[Candidate]]:
    """(software releases, shared parts) present on disk."""
    root = Path(settings.software_root)
    releases = [Candidate("software release", root / name, root, name, name)
                for name in _subdirs(root) if MD5.match(name)]
    parts = []
    for shared in shared_roots(settings):
        for name in _subdirs(shared):
            for digest in _subdirs(shared / name):
                parts.append(Candidate("shared part", shared / name / digest, shared / name, digest, digest))
    return releases, parts


def _process_paths() -> list[str]:
    """Executables and working directories of the running processes."""
    import psutil

    paths = []
    for p in psutil.process_iter(["exe", "cwd"]):
        for key in ("exe", "cwd"):
            value = p.info.get(key)
            if value:
                paths.append(value)
    return paths


def plan(settings: NodeSettings, used_urls: Iterable[str], partition_ids: Iterable[str],
         additional: Iterable[Path] = (), process_paths: list[str] | None = None) -> PrunePlan:
    """What can go. `used_urls`: the releases the master supplies or assigns to a partition."""
    import hashlib

    releases, parts = candidates(settings)
    by_key = {c.key: c for c in [*releases, *parts]}
    kept: dict[str, str] = {}  # key → why
    texts: list[tuple[str, str]] = []  # (why, text) still to scan
    for url in used_urls:
        key = hashlib.md5(url.encode("utf-8")).hexdigest()
        if key in by_key:
            kept.setdefault(key, f"supplied or used: {url}")
            texts.extend((f"named by {key}", _read(by_key[key].path, f)) for f in SOFTWARE_FILES)
    instance_root = Path(settings.instance_root)
    for pid in partition_ids:
        base = instance_root / pid
        texts.extend((f"named by partition {pid}", _read(base, f)) for f in PARTITION_FILES)
        texts.append((f"linked by partition {pid}", _link(base, "software_release")))
    for directory in additional:
        for name in _subdirs(Path(directory)):
            texts.append((f"named by {directory}/{name}", _read(Path(directory) / name, ".installed.cfg")))
    for path in process_paths if process_paths is not None else _process_paths():
        for candidate in by_key.values():
            if path == str(candidate.path) or path.startswith(str(candidate.path) + os.sep):
                kept.setdefault(candidate.key, f"in use by a running process ({path})")
                texts.extend((f"named by {candidate.key}", t) for t in _candidate_texts(candidate))
    # mark: follow what kept things name, until nothing new
    while texts:
        why, text = texts.pop()
        if not text:
            continue
        for key, candidate in by_key.items():
            if key not in kept and key in text:
                kept[key] = why
                texts.extend((f"named by {candidate.name}", t) for t in _candidate_texts(candidate))
    result = PrunePlan()
    for candidate in by_key.values():
        if candidate.key in kept:
            candidate.kept_because = kept[candidate.key]
            result.kept.append(candidate)
        else:
            candidate.size = tenantfs.space_used(candidate.path)
            result.remove.append(candidate)
    result.remove.sort(key=lambda c: (c.kind, str(c.path)))
    return result


def _candidate_texts(candidate: Candidate) -> list[str]:
    if candidate.kind == "software release":
        return [_read(candidate.path, f) for f in SOFTWARE_FILES]
    fd = tenantfs.open_below(candidate.parent, candidate.name)
    if fd is None:
        return []
    try:
        with os.scandir(fd) as entries:
            names = [e.name for e in entries if e.is_file(follow_symlinks=False)
                     and (e.name.endswith("signature") or e.name in (".installed.cfg", ".buildout-shared.json"))]
    finally:
        os.close(fd)
    return [_read(candidate.path, name) for name in names]


def remove(candidate: Candidate) -> None:
    """Empty then remove one directory, through a descriptor of its (trusted) parent."""
    fd = tenantfs.open_below(candidate.parent)
    if fd is None:
        raise PruneError(f"{candidate.parent} is not a real directory any more: {candidate.path} left alone")
    try:
        # /proc/self/fd/<fd> is the directory we hold: a link swapped in for the parent is not followed
        result = tenantfs.wipe_content(f"/proc/self/fd/{fd}/{candidate.name}")
        if not result.ok:
            raise PruneError(f"{candidate.path}: could not empty it: " + "; ".join(result.errors[:5]))
        try:
            os.rmdir(candidate.name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise PruneError(f"cannot remove {candidate.path}: {e.strerror}") from None
    finally:
        os.close(fd)


def master_view(settings: NodeSettings) -> tuple[list[str], list[str]]:
    """(release URLs the master supplies or assigns here, partition ids it knows) — one GET.
    Without the master's answer nothing can be pruned safely: exit 3."""
    from slapos.base.errors import EXIT_OFFLINE
    from slapos.slap import connect_as
    from slapos.slap.exceptions import ConnectionError as SlapConnectionError

    connection = connect_as(settings)
    try:
        return _master_view(settings, connection)
    except SlapConnectionError as e:
        raise PruneError(f"the master could not be asked what is still supplied ({e}): nothing pruned",
                         exit_code=EXIT_OFFLINE) from None
    finally:
        connection.close()


def _master_view(settings: NodeSettings, connection) -> tuple[list[str], list[str]]:
    computer = connection.registerComputer(settings.computer_id)
    urls = [sr.getURI() for sr in computer.getSoftwareReleaseList() if sr.getState() != "destroyed"]
    ids = []
    for cp in computer.getComputerPartitionList():
        ids.append(cp.getId())
        software = cp.getSoftwareRelease()
        if software is not None and software.getURI():
            urls.append(software.getURI())
    return urls, ids


def prune(settings: NodeSettings, dry_run: bool = False, additional: Iterable[Path] = (),
          local_partitions: Iterable[str] = ()) -> PrunePlan:
    """Plan then (unless `dry_run`) remove, holding the software and instance run locks."""
    from .lock import RunLock

    def run() -> PrunePlan:
        urls, ids = master_view(settings)
        result = plan(settings, urls, sorted({*ids, *local_partitions}), additional)
        if not dry_run:
            for candidate in result.remove:
                remove(candidate)
                log.info("removed %s %s (%s)", candidate.kind, candidate.path, human_size(candidate.size))
        return result

    if dry_run:
        return run()
    with RunLock(settings.pidfile_software, "slapos node prune"), RunLock(settings.pidfile_instance,
                                                                           "slapos node prune"):
        return run()


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
