"""Archive a built release for the binary cache, as the software user, onto stdout.

`slapos node software` publishes a release it just built. The tree belongs to the software user,
who could swap a directory for a link while root walks it (root would then archive, and upload,
files of its own). So the walk is done by this module in a child process already switched to
that user (`python -I -m slapos.grid.cache_archive DIRECTORY TOP`): it can only read what the
user can read. It streams the tar.gz to its stdout; root writes it into a file of its own,
hashing as it goes (see `BinaryCache.publish`).
"""
from __future__ import annotations

import gzip
import sys
import tarfile

# files of the node's own in a release, never published (the same list as the cache client's)
LOCAL_ONLY = {".completed", ".slapgrid", ".netrc", ".shared"}


def _keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = info.name.split("/")
    if len(parts) > 1 and parts[1] in LOCAL_ONLY:
        return None
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
        return None  # sockets, fifos: runtime leftovers
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o777
    return info


def write_archive(directory: str, top: str, out) -> None:
    """tar.gz of `directory` as `<top>/…` (without the node's local files) onto the binary file
    `out`, in streaming mode (no seek)."""
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=out) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        tar.add(directory, arcname=top, filter=_keep)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m slapos.grid.cache_archive DIRECTORY TOP (run by slapos node software)",
              file=sys.stderr)
        return 5
    try:
        write_archive(args[0], args[1], sys.stdout.buffer)
    except OSError as e:
        print(f"cannot archive {args[0]}: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
