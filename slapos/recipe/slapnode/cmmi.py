"""slapnode:cmmi — build a source tarball with configure, make, make install.

    [hello-c]
    recipe = slapnode:cmmi
    url = ${:_profile_base_location_}/hello-c-1.0.tar.gz    # path, file: or http(s) URL
    sha256 = 3a7bd3e2360a3d...                              # or md5sum = ...; one is required
    configure-options = --enable-fast                       # optional, shell-like words
    make-options = -j2 UNITS=24                             # optional, given to both make runs
    make-targets = install                                  # optional, default: install
    environment =                                           # optional NAME=value lines
        CFLAGS=-O2

The tarball's checksum is verified before anything is extracted: a mismatch fails the build.
It is extracted (members escaping the build directory are refused) into a temporary directory
under parts/; if it holds one top-level directory, the build runs there. Steps: `./configure
--prefix=<location> <configure-options>` (skipped when there is no configure script; set
`configure-command` to use another one, or to `none` to skip), `make <make-options>`, then
`make <make-options> <make-targets>`. The build output goes to buildout's output (the node log).
`${hello-c:location}` (default `parts/<section>`) is the installation prefix; buildout removes it
when the part is uninstalled or its options change, and does not rebuild it otherwise.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .common import Recipe as _Base


def file_digest(path: str | Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted (None when it may): it would land, or link,
    outside the destination, or it is a device."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        return "its path leaves the build directory"
    if member.isdev():
        return "it is a device file"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        resolved = target if member.islnk() else name.parent / target
        if target.is_absolute() or ".." in PurePosixPath(os.path.normpath(resolved)).parts:
            return f"it links outside the build directory ({member.linkname})"
    return None


def extract(archive: str | Path, destination: Path) -> Path:
    """Extract safely; return the source directory (the single top-level directory, if any)."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            reason = unsafe_member(member)
            if reason:
                raise ValueError(f"refusing member {member.name!r} of the archive: {reason}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, members=members, filter="data")
        else:  # Python < 3.11.4: the members were checked above
            tar.extractall(destination, members=members)
    entries = list(destination.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else destination


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        self.url = self.required("url")
        self.checksums = {
            algorithm: options.get(key, "").strip().lower()
            for algorithm, key in (("sha256", "sha256"), ("md5", "md5sum"))
            if options.get(key, "").strip()
        }
        if not self.checksums:
            raise self.error("give the tarball's sha256 (or md5sum): an unverified download is never built")
        self.location = self.path("location", str(Path(buildout["buildout"]["parts-directory"], name)))
        options["location"] = str(self.location)
        try:
            configure = options.get("configure-command", "./configure").strip()
            self.configure = [] if configure in ("", "none") else shlex.split(configure)
            self.configure_given = "configure-command" in options
            self.configure_options = shlex.split(options.get("configure-options", ""))
            self.make_options = shlex.split(options.get("make-options", ""))
            self.make_targets = shlex.split(options.get("make-targets", "install"))
        except ValueError as e:
            raise self.error(f"unbalanced quotes in an option: {e}") from None
        self.environment = {}
        for line in self.lines("environment"):
            key, equal, value = line.partition("=")
            if not equal or not key.strip():
                raise self.error(f"environment line {line!r}: expected NAME=value")
            self.environment[key.strip()] = value.strip()

    def verify(self, path: str) -> None:
        for algorithm, expected in self.checksums.items():
            actual = file_digest(path, algorithm)
            if actual != expected:
                raise self.error(
                    f"checksum mismatch for {self.url}: its {algorithm} is {actual}, the profile expects "
                    f"{expected}. The file changed or is corrupt: check it, then update the checksum"
                )

    def steps(self, source: Path) -> list[tuple[str, list[str]]]:
        steps = []
        if self.configure and (self.configure_given or (source / "configure").exists()):
            steps.append(("configure", [*self.configure, f"--prefix={self.location}", *self.configure_options]))
        steps.append(("make", ["make", *self.make_options]))
        steps.append(("make install", ["make", *self.make_options, *self.make_targets]))
        return steps

    def install(self):
        from zc.buildout.download import Download

        archive, is_temp = Download(self.buildout["buildout"])(self.url)
        parts = Path(self.buildout["buildout"]["parts-directory"])
        parts.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}__build__", dir=parts))
        try:
            self.verify(archive)
            try:
                source = extract(archive, workdir)
            except (tarfile.TarError, ValueError) as e:
                raise self.error(f"cannot extract {self.url}: {e}") from None
            if self.location.exists():  # left by an interrupted build
                shutil.rmtree(self.location)
            environment = {**os.environ, **self.environment}
            for step, command in self.steps(source):
                self.log.info("%s: %s", step, shlex.join(command))
                try:
                    returncode = subprocess.run(command, cwd=source, env=environment, stdin=subprocess.DEVNULL).returncode
                except OSError as e:
                    returncode, detail = None, str(e)
                else:
                    detail = f"exit code {returncode}"
                if returncode != 0:
                    shutil.rmtree(self.location, ignore_errors=True)
                    raise self.error(f"{step} failed ({detail}) in {source.name}: the output above says why")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if is_temp:
                os.unlink(archive)
        if not self.location.exists():
            raise self.error(f"make {' '.join(self.make_targets)} installed nothing into {self.location}")
        return [str(self.location)]

    def update(self):
        # built once: buildout reinstalls the part when url, checksum or options change
        return []
