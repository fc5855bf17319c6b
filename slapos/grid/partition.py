"""One computer partition on disk: `<instance_root>/<id>/` and the files the node keeps in it.

Shared by `slapos node instance` (deploy) and `slapos node report` (destroy). It knows:

* which ids are acceptable: the master names partitions, and a hostile or broken master must not
  make us act outside instance_root (reference S4). Ids are plain names (no '/', '..', NUL), never
  one of the node's own directories (`etc`, `var`...), of directories that already exist under
  instance_root and, when we are root, belong to a partition user (the formatter created them).
  `slapos node instance`, `slapos node report` and the watchdog share this one check;
* how to write files into a directory owned by the partition user without following links that
  user may have planted (every write goes through a directory fd opened with O_NOFOLLOW, into a
  fresh temporary file renamed over the target: atomic, and safe against kill -9);
* the node's bookkeeping files (SLAP-PROTOCOL §6.12): `.timestamp`, `buildout.cfg`,
  `software_release`, `.slapgrid/state.json`, `.slapgrid/log/instance.log`,
  `.slapgrid-<id>-error.log`, and the partition certificate.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

if TYPE_CHECKING:  # pragma: no cover
    from slapos.base.settings import NodeSettings

# What a partition id may look like: the formatter's `<base><n>` and anything similar.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
STATE_VERSION = 1
LOG_ROTATE_BYTES = 20 * 1024 * 1024
ERROR_MAX = 10_000  # bytes of error text kept and posted to the master (S12)
# The node's own directories under instance_root (supervisord, logs, usage ledger): a master
# naming one of them as a partition must not make us deploy, measure or empty it.
NODE_DIRECTORIES = frozenset({"etc", "var", "bin", "sbin", "tmp", "run", "log", "lib"})


class PartitionError(SlapOSError):
    """Something is wrong with one partition; the run goes on with the others."""


def check_partition_id(partition_id: str) -> str:
    """Refuse ids that could name something outside instance_root, or the node's own directories."""
    if (
        not isinstance(partition_id, str)
        or "\0" in partition_id
        or "/" in partition_id
        or ".." in partition_id
        or not _ID_RE.match(partition_id)
    ):
        raise PartitionError(f"refusing partition id {partition_id!r}: ids are plain names like slappart0")
    if partition_id in NODE_DIRECTORIES:
        raise PartitionError(f"refusing partition id {partition_id!r}: that is the node's own directory in "
                             "instance_root, not a partition")
    return partition_id


def check_is_partition(partition: Partition) -> None:
    """A partition of this computer: a real directory under instance_root (not a link), with an
    acceptable id (`check_partition_id`, done when the Partition was made) and, when we are root,
    owned by its partition user (never by root: format gives every partition to its user).
    Raises PartitionError saying what is wrong."""
    partition.check_exists()
    if os.geteuid() == 0 and os.lstat(partition.path).st_uid == 0:
        raise PartitionError(
            f"{partition.id}: {partition.path} is owned by root, so it is not a formatted partition: refusing "
            "to touch it (slapos node format gives each partition to its user)"
        )


def software_directory(software_root: Path, url: str) -> Path:
    """Where a software release lives: `<software_root>/<md5 of its URL>` (reference §6.2)."""
    return Path(software_root) / hashlib.md5(url.encode("utf-8")).hexdigest()


def truncate(text: str, limit: int = ERROR_MAX) -> str:
    """Keep the end of a long error (the interesting part of a buildout log is its tail)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return "[...truncated...]\n" + data[-limit:].decode("utf-8", "ignore")


# -- safe file operations in directories owned by someone else --------------------------------
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def open_dir(base: Path, *parts: str, create: bool = False, mode: int = 0o755,
             owner: tuple[int, int] | None = None) -> Iterator[int]:
    """A directory fd for `base/parts...`, never following a symbolic link below `base`.

    `base` itself (the partition directory) is trusted: its parent belongs to root. Missing
    components are created (with `mode`, and given to `owner`) when `create` is true.
    """
    try:
        fd = tenantfs.open_dir(base, *parts, create=create, mode=mode, owner=owner)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # someone put a link (or a file) there
            raise PartitionError(
                f"{Path(base, *parts)} is a symbolic link or not a directory: refusing to use it") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


write_at = tenantfs.write_at  # atomic replace in a directory fd (see tenantfs.write_at)


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block us


def read_at(dir_fd: int | None, name: str | Path, limit: int = 1 << 20) -> bytes | None:
    """The content of a regular file `name` (None when absent, a link, a FIFO, a device...)."""
    return tenantfs.read_small(name, limit, dir_fd=dir_fd)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Atomic replace of a file in a directory we own (node configuration, certificates)."""
    path = Path(path)
    fd = os.open(path.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        write_at(fd, path.name, data, mode, owner)
    finally:
        os.close(fd)


# -- the node's memory of a partition ---------------------------------------------------------
@dataclass
class PartitionState:
    """What the node remembers of a partition between runs (`.slapgrid/state.json`).

    `inputs` is the digest of what the master asked for at the last good run; when the master
    asks the same thing again, the partition is not reprocessed. `failed_inputs`, `failures` and
    `next_retry` drive the back-off of a partition that keeps failing on the same inputs.
    """

    version: int = STATE_VERSION
    requested_state: str | None = None
    software_release_url: str | None = None
    software_type: str | None = None
    inputs: str | None = None
    status: str = "new"  # new | ok | error | promise-error
    last_error: str | None = None
    failures: int = 0
    failed_inputs: str | None = None
    next_retry: float | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    next_promise_check: float | None = None
    reported: str | None = None  # last state told to the master: started | stopped | error
    programs: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: bytes | None) -> PartitionState:
        if not data:
            return cls()
        try:
            raw = json.loads(data)
        except ValueError:
            return cls()  # a damaged state only costs one full run
        if not isinstance(raw, dict):
            return cls()
        state = cls(**{k: v for k, v in raw.items() if k in _STATE_FIELDS})
        if not isinstance(state.programs, list):
            state.programs = []
        return state

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


_STATE_FIELDS = frozenset(f.name for f in fields(PartitionState))


@dataclass
class Partition:
    """`<instance_root>/<id>` of a formatted computer."""

    settings: NodeSettings
    partition_id: str
    path: Path = field(init=False)

    def __post_init__(self) -> None:
        check_partition_id(self.partition_id)
        root = Path(self.settings.instance_root)
        self.path = root / self.partition_id

    @property
    def id(self) -> str:
        return self.partition_id

    def __str__(self) -> str:
        return self.partition_id

    # -- existence and ownership ------------------------------------------------------------
    def exists(self) -> bool:
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode)

    def check_exists(self) -> None:
        """Only partitions the formatter created are touched (S4)."""
        if not self.exists():
            raise PartitionError(
                f"{self.partition_id}: no directory {self.path} (not a link): the master names a partition "
                "this computer does not have; run 'slapos node format' or check computer_id"
            )

    def check_is_partition(self) -> None:
        """See `check_is_partition`: what instance, report and the watchdog accept."""
        check_is_partition(self)

    def owner(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_uid, st.st_gid

    def file_owner(self) -> tuple[int, int] | None:
        """Owner to give files the node creates for the partition user (None: leave as is)."""
        if os.geteuid() != 0:
            return None
        return self.owner()

    # -- bookkeeping files ----------------------------------------------------------------------
    @property
    def timestamp_path(self) -> Path:
        return self.path / ".timestamp"

    @property
    def buildout_cfg(self) -> Path:
        return self.path / "buildout.cfg"

    @property
    def slapgrid_dir(self) -> Path:
        return self.path / ".slapgrid"

    @property
    def state_path(self) -> Path:
        return self.slapgrid_dir / "state.json"

    @property
    def log_path(self) -> Path:
        return self.slapgrid_dir / "log" / "instance.log"

    @property
    def error_log_path(self) -> Path:
        return self.path / f".slapgrid-{self.partition_id}-error.log"

    @property
    def promise_dir(self) -> Path:
        return self.slapgrid_dir / "promise"

    def read_timestamp(self) -> tuple[str | None, float | None]:
        """(content, mtime) of `.timestamp`, (None, None) when absent or not a regular file."""
        try:
            fd = os.open(self.timestamp_path, _READ_FLAGS)
        except OSError:
            return None, None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, None
            return os.read(fd, 4096).decode("utf-8", "replace").strip(), st.st_mtime
        finally:
            os.close(fd)

    def write_timestamp(self, value: str) -> None:
        with open_dir(self.path) as fd:
            write_at(fd, ".timestamp", value, 0o644)  # verbatim, no newline (reference)

    def remove_timestamp(self) -> None:
        self._unlink(".timestamp")

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), open_dir(self.path) as fd:
            os.unlink(name, dir_fd=fd)

    def load_state(self) -> PartitionState:
        # read on every run for every partition: one open. (Through a `.slapgrid` link the
        # tenant could only show us another state, which just makes us redeploy it.)
        try:
            return PartitionState.from_json(read_at(None, self.state_path))
        except OSError:
            return PartitionState()

    def save_state(self, state: PartitionState) -> None:
        with open_dir(self.path, ".slapgrid", create=True, owner=self.file_owner()) as fd:
            write_at(fd, "state.json", state.to_json(), 0o644)

    def write_error_log(self, message: str) -> None:
        with open_dir(self.path) as fd:
            write_at(fd, self.error_log_path.name, message + "\n", 0o644)

    def remove_error_log(self) -> None:
        self._unlink(self.error_log_path.name)

    def remove_request_transaction(self) -> None:
        """Recipes append the titles they request during a run; each run starts afresh (§6.3)."""
        self._unlink(f".slapos-request-transaction-{self.partition_id}")

    def ensure_slapgrid(self) -> None:
        """`.slapgrid/` (0755) and `.slapgrid/log/` (0700), owned by the partition user (§6.12)."""
        owner = self.file_owner()
        with open_dir(self.path, ".slapgrid", create=True, mode=0o755, owner=owner), \
                open_dir(self.path, ".slapgrid", "log", create=True, mode=0o700, owner=owner):
            pass

    def open_log(self) -> BinaryIO:
        """`.slapgrid/log/instance.log` opened for appending (moved to `.1` once it passes
        20 MB), through directory descriptors: a link, FIFO or hard link the tenant put at that
        name is replaced, never written through (tenantfs.open_append)."""
        self.ensure_slapgrid()
        with open_dir(self.path, ".slapgrid", "log") as fd:
            try:
                if os.stat("instance.log", dir_fd=fd, follow_symlinks=False).st_size >= LOG_ROTATE_BYTES:
                    os.replace("instance.log", "instance.log.1", src_dir_fd=fd, dst_dir_fd=fd)
            except FileNotFoundError:
                pass
            return os.fdopen(tenantfs.open_append("instance.log", fd, 0o644, self.file_owner()), "ab")

    def append_log(self, text: str) -> None:
        """Append a line of the node's own to `.slapgrid/log/instance.log`."""
        with self.open_log() as log:
            log.write(text.encode("utf-8", "replace"))

    # -- deployment files -----------------------------------------------------------------------
    def link_software_release(self, software_dir: Path) -> None:
        """`software_release` -> the SR directory, replaced atomically, owned by the partition user."""
        with open_dir(self.path) as fd:
            try:
                if os.readlink("software_release", dir_fd=fd) == str(software_dir):
                    return
            except OSError:
                pass
            tmp = f".software_release.{os.urandom(4).hex()}.tmp"
            os.symlink(str(software_dir), tmp, dir_fd=fd)
            owner = self.file_owner()
            if owner:
                os.chown(tmp, *owner, dir_fd=fd, follow_symlinks=False)
            os.replace(tmp, "software_release", src_dir_fd=fd, dst_dir_fd=fd)

    def write_buildout_cfg(self, content: str) -> bool:
        """Write buildout.cfg (0640, group = partition group); False when it was already identical."""
        with open_dir(self.path) as fd:
            if read_at(fd, "buildout.cfg") == content.encode("utf-8"):
                return False
            owner = self.file_owner()
            write_at(fd, "buildout.cfg", content, 0o640, (-1, owner[1]) if owner else None)
            return True

    def write_retention_delay(self, delay: float) -> None:
        """`.slapos-retention-lock-delay` for `node report`, written once (reference §6.5)."""
        with open_dir(self.path) as fd:
            if read_at(fd, ".slapos-retention-lock-delay") is None:
                write_at(fd, ".slapos-retention-lock-delay", str(float(delay)), 0o644, self.file_owner())

    # -- certificate ----------------------------------------------------------------------------
    def certificate_paths(self) -> tuple[Path, Path] | None:
        repo = self.settings.certificate_repository_path
        if not repo:
            return None
        return Path(repo) / f"{self.partition_id}.crt", Path(repo) / f"{self.partition_id}.key"

    def write_certificate(self, certificate: str | None, key: str | None) -> bool:
        """Store the partition's certificate and key (0600, partition user) when the master gave
        some; True when a file changed."""
        paths = self.certificate_paths()
        if paths is None or not certificate or not key:
            return False
        Path(paths[0]).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        changed = False
        owner = self.file_owner()
        for path, content in zip(paths, (certificate, key), strict=True):
            try:  # the file is the tenant's (it may be huge, sparse, a link): read what we would write, +1
                current = tenantfs.read_regular(path, len(content.encode("utf-8")) + 1).decode("utf-8", "replace")
            except OSError:  # missing, or not a regular file of that size (UnsafeFile): written anew
                current = None
            if current != content:
                atomic_write(path, content, 0o600, owner)
                changed = True
        return changed

    def certificate_files(self) -> tuple[Path, Path] | None:
        """(certificate, key) when both were written for this partition, else None: a profile or
        a promise must not be pointed at files that do not exist (reference: "or empty")."""
        paths = self.certificate_paths()
        if paths is None:
            return None
        try:
            if all(stat.S_ISREG(os.stat(path).st_mode) for path in paths):
                return paths
        except OSError:
            pass
        return None

    def remove_certificate(self) -> None:
        for path in self.certificate_paths() or ():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
