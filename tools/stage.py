#!/usr/bin/env python3
"""The Makefile's staging copy: where `make test` / `make demo` run when they cannot run in place.

Two cases need it (the Makefile decides, see its comment):

* as root, when the checkout is not reachable by `nobody` (e.g. a clone in root's 0700 home or in
  `mktemp -d`): builds and services run as unprivileged users (nobody in the demo, partition users
  in the tests), who must read the sources and execute the virtualenv's interpreter;
* when the checkout's path holds whitespace: buildout splits `extends` and several options on
  whitespace, so a software release below such a path cannot be built.

Then the checkout is copied to a directory of its own and every target runs there, with its own
`.venv`: `/var/lib/slapnode-stage/<hash>` for root (root-owned, 0755: readable, never writable by
others), `/tmp/slapnode-stage-<uid>/<hash>` for anyone else. `<hash>` is derived from the
checkout's path, so two checkouts never share a copy. Each run brings the copy up to date (changed
files copied, files removed from the checkout removed from the copy; the copy's `.venv`, `demo/run`
and caches are kept). `make clean` stops a demo running there and removes the copy.

Standard library only: it runs with the system Python before any virtualenv exists.

    tools/stage.py path            print the staging directory
    tools/stage.py sync WHY...     bring it up to date and say in one line what happens (WHY:
                                   "unreachable" and/or "spaces")
    tools/stage.py clean           stop a demo running there, remove it
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
ROOT_BASE = Path("/var/lib/slapnode-stage")
MANIFEST = ".stage-manifest"  # the files the last sync copied: what a later sync may remove
ORIGIN = ".stage-origin"  # the checkout this is a copy of (tests that clone the repository use it)
NODE_USER = "nobody"  # who runs the node in the demo and the tests, as root
# never copied, whatever git says (build products and the run directory of the demo)
SKIP_PARTS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist"}
SKIP_PREFIXES = ("demo/run/", "bench/out/")


class StageError(Exception):
    """One line for the user; exit code 1."""


def stage_dir(checkout: Path = CHECKOUT) -> Path:
    digest = hashlib.sha256(os.fsencode(checkout)).hexdigest()[:12]
    base = ROOT_BASE if os.geteuid() == 0 else Path(f"/tmp/slapnode-stage-{os.geteuid()}")
    return base / digest


def _safe_directory(path: Path, mode: int = 0o755) -> None:
    """Create `path` (mode 0755) or check an existing one: a real directory of ours that nobody
    else can write to (a copy others could change would run their code as root)."""
    try:
        path.mkdir(mode=mode)
        os.chmod(path, mode)  # not narrowed by the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StageError(
            f"{path} is not a directory of {'root' if os.geteuid() == 0 else 'yours'} writable only by its "
            f"owner; remove it (or fix its owner and mode) and run make again"
        )


def _source_files(checkout: Path) -> list[str]:
    """Relative paths of the checkout's files: what git tracks plus untracked files it does not
    ignore; every file but build products when this is not a git checkout (an sdist)."""
    try:
        listed = subprocess.run(
            ["git", "-c", "safe.directory=*", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=checkout, capture_output=True, check=True, timeout=60,
        ).stdout
        names = [os.fsdecode(n) for n in listed.split(b"\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
        for directory, dirs, files in os.walk(checkout):
            dirs[:] = [d for d in dirs if d not in SKIP_PARTS and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(directory, f), checkout) for f in files]
    return sorted(
        n for n in names
        if not (set(Path(n).parts) & SKIP_PARTS) and not n.startswith(SKIP_PREFIXES)
        and ".egg-info/" not in n and os.path.lexists(checkout / n)  # deleted but still tracked
    )


def _same(source: os.stat_result, target: Path) -> bool:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    return (stat.S_IFMT(st.st_mode) == stat.S_IFMT(source.st_mode) and st.st_size == source.st_size
            and int(st.st_mtime) == int(source.st_mtime))


def _copy(source: Path, target: Path) -> None:
    st = os.lstat(source)
    if _same(st, target):
        return
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif os.path.lexists(target):
        target.unlink()
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), target)
        return
    tmp = target.with_name(f".{target.name}.stage-tmp")
    shutil.copyfile(source, tmp, follow_symlinks=False)
    # readable by all, executable when the original is; never writable by others
    os.chmod(tmp, 0o755 if st.st_mode & 0o111 else 0o644)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, target)


def sync(target: Path, checkout: Path = CHECKOUT) -> int:
    """Bring `target` up to date with `checkout`; returns the number of files copied or removed."""
    _safe_directory(target.parent)
    _safe_directory(target)
    files = _source_files(checkout)
    previous: set[str] = set()
    manifest = target / MANIFEST
    if manifest.exists():
        previous = set(manifest.read_text(encoding="utf-8", errors="surrogateescape").splitlines())
    changes = 0
    for name in files:
        source = checkout / name
        destination = target / name
        parent = destination.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, mode=0o755, exist_ok=True)
        if not _same(os.lstat(source), destination):
            _copy(source, destination)
            changes += 1
    for name in sorted(previous - set(files)):  # removed from the checkout since the last sync
        old = target / name
        if os.path.lexists(old) and not old.is_dir():
            old.unlink()
            changes += 1
    (target / ORIGIN).write_text(os.fsdecode(checkout) + "\n", encoding="utf-8", errors="surrogateescape")
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("\n".join(files) + "\n", encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, manifest)
    return changes


def reason_text(why: list[str]) -> str:
    reasons = []
    if "unreachable" in why:
        reasons.append(f"{NODE_USER} (who runs the node's builds and services) cannot reach it")
    if "spaces" in why:
        reasons.append("its path holds a space, which buildout cannot handle")
    return " and ".join(reasons) or "it cannot be used in place"


def clean(target: Path) -> None:
    if not target.is_dir():
        return
    if (target / "demo" / "run").is_dir() and (target / ".venv" / "bin" / "python").exists():
        subprocess.run([str(target / ".venv" / "bin" / "python"), "demo/demo.py", "--stop"], cwd=target,
                       stdin=subprocess.DEVNULL, check=False)
    shutil.rmtree(target)  # does not follow symlinks planted below (e.g. by the demo's user)
    try:
        target.parent.rmdir()  # only when no other checkout's copy is left
    except OSError:
        pass
    print(f"make: removed the staging copy {target}")


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    os.umask(0o022)  # the copy is readable by the node's users whatever root's umask is
    target = stage_dir()
    try:
        if command == "path":
            print(target)
        elif command == "sync":
            sync(target)
            print(f"make: running in {target}, a copy of this checkout with its own .venv, because "
                  f"{reason_text(argv[1:])} (`make clean` removes it)", flush=True)
        elif command == "clean":
            clean(target)
        else:
            print(__doc__, file=sys.stderr)
            return 5
    except StageError as e:
        print(f"make: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"make: error: cannot prepare the staging copy {target}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
