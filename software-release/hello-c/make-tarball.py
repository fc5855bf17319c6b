#!/usr/bin/env python3
"""Rebuild hello-c-1.0.tar.gz from source/hello-c-1.0/ and print its sha256.

The archive is reproducible (sorted members, fixed owner, mode and time, gzip without a
timestamp) so rebuilding it from unchanged sources gives the same content. After changing the
sources, run this and copy the printed sha256 into software.cfg ([hello-c] sha256).
"""
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "hello-c-1.0"
SOURCE = HERE / "source" / NAME
ARCHIVE = HERE / f"{NAME}.tar.gz"
MTIME = 1_700_000_000  # fixed: the archive must not change when nothing changed


def member(path: Path) -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"{NAME}/{path.relative_to(SOURCE)}" if path != SOURCE else NAME)
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    executable = path.is_dir() or path.stat().st_mode & 0o100
    info.mode = 0o755 if executable else 0o644
    if path.is_dir():
        info.type = tarfile.DIRTYPE
    else:
        info.size = path.stat().st_size
    return info


def build() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [SOURCE, *sorted(SOURCE.rglob("*"))]:
            info = member(path)
            if info.isdir():
                tar.addfile(info)
            else:
                with path.open("rb") as f:
                    tar.addfile(info, f)
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


if __name__ == "__main__":
    data = build()
    ARCHIVE.write_bytes(data)
    print(f"{ARCHIVE.name} sha256 {hashlib.sha256(data).hexdigest()}")
