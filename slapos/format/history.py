"""Earlier versions of the computer definition, kept in a zip archive next to it.

Each time `slapos.xml` changes, the previous copy is stored in `<slapos.xml>.zip` as the member
`<name>.<YYYYmmdd-HH:MM>` (the reference's naming; a second change within the same minute gets a
`.1`, `.2` suffix). A damaged archive is renamed `<archive>.corrupted-<time>` with a warning and a
new one is started: history is a convenience and must never stop a format run.
"""
from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path

log = logging.getLogger("slapos.format")


def archive_path(definition: Path) -> Path:
    return definition.with_name(definition.name + ".zip")


def _set_aside(archive: Path, reason: str) -> Path:
    target = archive.with_name(f"{archive.name}.corrupted-{time.strftime('%Y%m%d-%H%M%S')}")
    counter = 0
    while target.exists():
        counter += 1
        target = target.with_name(f"{archive.name}.corrupted-{time.strftime('%Y%m%d-%H%M%S')}.{counter}")
    os.replace(archive, target)
    log.warning("computer: history archive %s is damaged (%s); moved it to %s and started a new one",
                archive, reason, target.name)
    return target


def _open(archive: Path) -> zipfile.ZipFile:
    """Open for appending, setting a damaged archive aside first."""
    if archive.exists():
        try:
            with zipfile.ZipFile(archive) as existing:
                bad = existing.testzip()
            if bad is not None:
                _set_aside(archive, f"member {bad} fails its checksum")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            _set_aside(archive, str(e) or type(e).__name__)
    return zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED)


def keep(definition: Path, previous: bytes, when: float | None = None) -> str:
    """Store `previous` (the definition's earlier content); returns the member name used."""
    archive = archive_path(definition)
    stamp = time.strftime("%Y%m%d-%H:%M", time.localtime(when))
    with _open(archive) as zf:
        names = set(zf.namelist())
        member = f"{definition.name}.{stamp}"
        counter = 0
        while member in names:
            counter += 1
            member = f"{definition.name}.{stamp}.{counter}"
        zf.writestr(member, previous)
    os.chmod(archive, 0o644)
    return member


def versions(definition: Path) -> list[str]:
    """Member names of the archive, oldest first (empty when there is none or it is unreadable)."""
    archive = archive_path(definition)
    try:
        with zipfile.ZipFile(archive) as zf:
            return [info.filename for info in zf.infolist()]
    except (FileNotFoundError, zipfile.BadZipFile, OSError):
        return []


def read_version(definition: Path, member: str) -> bytes:
    with zipfile.ZipFile(archive_path(definition)) as zf:
        return zf.read(member)
