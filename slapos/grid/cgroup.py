"""Per-partition cgroups: "every process of this partition" as a kernel fact, with its limits.

Each partition of a root node gets one cgroup, `<partition_cgroup_root>/<node>/<partition id>`
below every hierarchy we use (`<node>` is the computer id and a digest of instance_root, so two
nodes on one machine never share a cgroup). Root creates it when the partition is deployed; every
process the node starts for the partition (supervisord programs through `slapos.grid.launch`,
buildout, promises, the destroy hook, report scripts) joins it *before* it drops to the partition
user and before it runs anything of the tenant, so whatever it forks, double-forked daemons
included, is born inside. A tenant cannot leave: moving a process needs write access to the
target's `cgroup.procs`, which only root has.

Two kernels' worth of interface, one class:

* cgroup v2 (a cgroup2 mount offering the `memory` and `pids` controllers, or the only cgroup
  file system mounted): one directory; `memory.max`, `pids.max`, `cpu.max`; ending everything is
  `cgroup.kill` (or `cgroup.freeze` where the kernel predates it);
* cgroup v1 (this machine's layout): one directory per controller among `pids`, `memory`,
  `freezer`, `cpu`, `cpuacct`; ending everything is freezer FROZEN, SIGKILL each member, THAWED.

Without root or without a usable cgroup file system (a standalone node of an ordinary user) the
node runs without cgroups; destruction then falls back to a /proc scan by uid (destroy.py).

Which hierarchies are used is cgroup_mounts.py; the limits asked and capped, cgroup_config.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from slapos.base.errors import ConfigError, SlapOSError

from .cgroup_config import NAME_RE, CgroupConfig, Limits, read_requested
from .cgroup_mounts import V2_CONTROLLERS, Hierarchy, choose, mounted_hierarchies

log = logging.getLogger("slapos.grid.cgroup")

CPU_PERIOD_US = 100_000


class CgroupError(SlapOSError):
    """A partition's cgroup could not be created, joined, limited or emptied."""


def node_name(computer_id: str, instance_root: str | Path) -> str:
    digest = hashlib.sha256(str(instance_root).encode()).hexdigest()[:8]
    return f"{NAME_RE.sub('_', computer_id)[:64] or 'node'}.{digest}"


# -- one partition's cgroup -------------------------------------------------------------------
@dataclass
class Usage:
    memory_current: int | None = None
    memory_max: int | None = None
    pids_current: int | None = None
    pids_max: int | None = None
    cpu_usage_seconds: float | None = None
    cpu_quota: int | None = None  # percent of one CPU

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class PartitionCgroup:
    def __init__(self, hierarchies: list[Hierarchy], relative: str, partition_id: str):
        self.hierarchies = hierarchies
        self.partition_id = partition_id
        self.relative = relative  # e.g. slapnode/COMP-1.1a2b3c4d/slappart0
        self.paths = [h.mount / relative for h in hierarchies]
        self.v2 = bool(hierarchies) and hierarchies[0].version == 2

    def __repr__(self) -> str:
        return f"cgroup {self.relative}"

    def _path(self, controller: str) -> Path | None:
        for h, p in zip(self.hierarchies, self.paths, strict=True):
            if h.version == 2 or controller in h.controllers:
                return p
        return None

    @property
    def procs_files(self) -> tuple[str, ...]:
        """What a child writes its pid into to join (the launcher, process.run, the fork server).

        The v1 `cpu` hierarchy only when the partition has a CPU quota: a cgroup in it is one
        entity for the scheduler, so without a quota joining it would only change how the
        partition's processes share the CPU with the rest of the machine (v2 enables the `cpu`
        controller for such partitions only, for the same reason)."""
        skip_cpu = not self.v2 and not self._cpu_limited()
        return tuple(str(p / "cgroup.procs") for h, p in zip(self.hierarchies, self.paths, strict=True)
                     if not (skip_cpu and "cpu" in h.controllers))

    def _cpu_limited(self) -> bool:
        path = self._path("cpu")
        quota = _int(path / "cpu.cfs_quota_us") if path is not None else None
        return quota is not None and quota > 0

    def exists(self) -> bool:
        """One stat per hierarchy: the cheap check of a run where nothing changed."""
        return all(p.is_dir() for p in self.paths)

    def ensure(self, limits: Limits | None = None) -> bool:
        """Create the cgroup where missing (True if it was) and, with `limits`, make its limits
        these (only the files whose value differs are written)."""
        created = False
        for h, path in zip(self.hierarchies, self.paths, strict=True):
            if path.is_dir():
                continue
            try:
                if h.version == 2:
                    self._mkdir_v2(h, path)
                else:
                    path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CgroupError(f"{self.partition_id}: cannot create {path}: {e.strerror}") from None
            created = True
        if limits is not None:
            self.apply(limits)
        return created

    def _mkdir_v2(self, h: Hierarchy, path: Path, controllers: tuple[str, ...] = V2_CONTROLLERS) -> None:
        """v2: each ancestor must delegate the controllers to its children (subtree_control)."""
        wanted = " ".join(f"+{c}" for c in controllers if c in h.controllers)
        parts = path.relative_to(h.mount).parts
        current = h.mount
        for part in parts:
            if wanted:
                with contextlib.suppress(OSError):  # a parent holding processes cannot: limits then fail loudly
                    _write(current / "cgroup.subtree_control", wanted)
            current = current / part
            if not current.is_dir():
                current.mkdir(exist_ok=True)

    def apply(self, limits: Limits) -> list[str]:
        """Write the limits that differ; the names of what changed."""
        quota = "max" if limits.cpu_quota is None else str(limits.cpu_quota * CPU_PERIOD_US // 100)
        if self.v2:
            if limits.cpu_quota is not None and not (self.paths[0] / "cpu.max").exists():
                self._mkdir_v2(self.hierarchies[0], self.paths[0], ("cpu",))
            wanted = {"memory.max": _max(limits.memory), "pids.max": _max(limits.pids),
                      "cpu.max": f"{quota} {CPU_PERIOD_US}"}
            if limits.memory is not None or (self.paths[0] / "memory.swap.max").exists():
                wanted["memory.swap.max"] = "0" if limits.memory is not None else "max"
            targets = [(self.paths[0] / name, value) for name, value in wanted.items()]
        else:
            memory = str(limits.memory) if limits.memory is not None else "-1"
            targets = []
            if (p := self._path("memory")) is not None:
                targets.append((p / "memory.limit_in_bytes", memory))
                if (p / "memory.memsw.limit_in_bytes").exists():  # swap must not bypass the limit
                    targets.append((p / "memory.memsw.limit_in_bytes", memory))
            if (p := self._path("pids")) is not None:
                targets.append((p / "pids.max", _max(limits.pids)))
            if (p := self._path("cpu")) is not None:
                targets += [(p / "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                            (p / "cpu.cfs_quota_us", "-1" if limits.cpu_quota is None else quota)]
        asked = {"memory": limits.memory, "pids": limits.pids, "cpu": limits.cpu_quota}
        for what, amount in asked.items():
            if amount is not None and not any(path.name.startswith(what) and path.exists() for path, _ in targets):
                raise CgroupError(f"{self.partition_id}: a {what} limit is asked but the {what} controller "
                                  "is not available on this node")
        changed = []
        pending = [(path, value) for path, value in targets if path.exists() and not _same(path, value)]
        # memory then memsw when lowering, memsw then memory when raising: retry the refused ones
        reasons: dict[Path, str] = {}  # the kernel's words, not the exception (its traceback holds this frame)
        for _ in range(2):
            refused = []
            for path, value in pending:
                try:
                    _write(path, value)
                    changed.append(path.name)
                except OSError as e:
                    refused.append((path, value))
                    reasons[path] = e.strerror or str(e)
            pending = refused
            if not refused:
                break
        if pending:
            path, value = pending[0]
            raise CgroupError(f"{self.partition_id}: cannot set {path.name} to {value}: {reasons[path]}")
        if changed:
            log.info("%s: cgroup limits set: %s", self.partition_id, ", ".join(changed))
        return changed

    def members(self) -> set[int]:
        pids: set[int] = set()
        for path in self.paths:
            pids |= _read_pids(path / "cgroup.procs")
        return pids

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL every process of the cgroup, frozen first so that none can fork meanwhile;
        returns how many were signalled. CgroupError if some are still there after `timeout`."""
        if not self.exists():
            return 0
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            members = self.members()
            if not members:
                return len(killed)
            if time.monotonic() > deadline:
                raise CgroupError(f"{self.partition_id}: processes {sorted(members)[:10]} still in {self} "
                                  f"after {timeout:g} s")
            kill_file = self.paths[0] / "cgroup.kill"
            if self.v2 and kill_file.exists():
                _write(kill_file, "1")  # the kernel kills every member, forks included
                killed |= members
            else:
                with self.frozen():
                    members = self.members()
                    for pid in members:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    killed |= members
            end = min(deadline, time.monotonic() + 1.0)
            while self.members() and time.monotonic() < end:
                time.sleep(0.01)

    @contextlib.contextmanager
    def frozen(self):
        """Freeze the cgroup for the block (nothing can fork or run); no-op without a freezer."""
        if self.v2:
            state, frozen_text, thawed = self.paths[0] / "cgroup.freeze", "1", "0"
        else:
            path = self._path("freezer")
            if path is None:
                yield
                return
            state, frozen_text, thawed = path / "freezer.state", "FROZEN", "THAWED"
        try:
            _write(state, frozen_text)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not self._is_frozen():
                time.sleep(0.005)
            yield
        finally:
            with contextlib.suppress(OSError):
                _write(state, thawed)

    def _is_frozen(self) -> bool:
        if self.v2:
            return "frozen 1" in _read(self.paths[0] / "cgroup.events")
        path = self._path("freezer")
        return path is None or _read(path / "freezer.state").strip() == "FROZEN"

    def remove(self, parents: bool = False) -> None:
        """Remove the (empty) cgroup; with `parents`, its node and root cgroups too when they are
        left empty (not during runs: a concurrent `node instance` may be creating a sibling)."""
        for h, path in zip(self.hierarchies, self.paths, strict=True):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise CgroupError(f"{self.partition_id}: cannot remove {path}: {e.strerror}") from None
            parent = path.parent
            while parents and parent != h.mount:
                try:
                    parent.rmdir()
                except OSError:
                    break  # other partitions or nodes still there
                parent = parent.parent

    def usage(self) -> Usage:
        u = Usage()
        if self.v2:
            base = self.paths[0]
            u.memory_current, u.memory_max = _int(base / "memory.current"), _int(base / "memory.max")
            u.pids_current, u.pids_max = _int(base / "pids.current"), _int(base / "pids.max")
            stat = _read(base / "cpu.stat")
            match = re.search(r"^usage_usec (\d+)", stat, re.MULTILINE)
            u.cpu_usage_seconds = int(match.group(1)) / 1e6 if match else None
            cpu_max = _read(base / "cpu.max").split()  # "max 100000" or "<quota> <period>"
            if len(cpu_max) == 2 and cpu_max[0].isdigit() and cpu_max[1].isdigit():
                u.cpu_quota = int(cpu_max[0]) * 100 // int(cpu_max[1])
            return u
        if (p := self._path("memory")) is not None:
            u.memory_current = _int(p / "memory.usage_in_bytes")
            limit = _int(p / "memory.limit_in_bytes")
            u.memory_max = limit if limit is not None and limit < (1 << 62) else None
        if (p := self._path("pids")) is not None:
            u.pids_current, u.pids_max = _int(p / "pids.current"), _int(p / "pids.max")
        if (p := self._path("cpuacct")) is not None:
            ns = _int(p / "cpuacct.usage")
            u.cpu_usage_seconds = ns / 1e9 if ns is not None else None
        if (p := self._path("cpu")) is not None:
            quota, period = _int(p / "cpu.cfs_quota_us"), _int(p / "cpu.cfs_period_us")
            if quota is not None and quota > 0 and period:
                u.cpu_quota = quota * 100 // period
        return u


def _max(value: int | None) -> str:
    return "max" if value is None else str(value)


def _read(path: Path) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _int(path: Path) -> int | None:
    text = _read(path).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _same(path: Path, value: str) -> bool:
    current = _read(path).split()
    if not current:
        return False
    if value in ("-1", "max") and current[0] in ("max", "-1", "9223372036854771712"):
        return True
    return " ".join(current) == value


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_pids(path: Path) -> set[int]:
    return {int(line) for line in _read(path).split() if line.isdigit()}


def join(procs_files: tuple[str, ...] | list[str]) -> None:
    """Move the calling process into the cgroup (every hierarchy). Only system calls: safe in a
    child between fork and exec, before the privilege drop."""
    pid = str(os.getpid()).encode()
    for name in procs_files:
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


# -- the node's view ---------------------------------------------------------------------------
class NodeCgroups:
    """The cgroups of one node's partitions (None hierarchies: the node runs without)."""

    _detected: dict[str, list[Hierarchy]] = {}

    def __init__(self, settings):
        self.config = CgroupConfig.from_config(getattr(settings, "config", None))
        self.node = node_name(str(getattr(settings, "computer_id", "")), getattr(settings, "instance_root", ""))
        self.hierarchies = self._detect() if os.geteuid() == 0 else []
        self.reason = self._why_not()
        self._checked: set[str] = set()

    def _detect(self) -> list[Hierarchy]:
        mode = self.config.mode
        if mode not in self._detected:
            self._detected[mode] = choose(mode, mounted_hierarchies())
        hierarchies = self._detected[mode]
        if mode in ("v1", "v2") and (not hierarchies or hierarchies[0].version != int(mode[1])):
            raise ConfigError(f"[slapos] partition_cgroup = {mode}, but no cgroup {mode} hierarchy is mounted")
        return hierarchies

    def _why_not(self) -> str:
        if self.config.mode == "off":
            return "partition_cgroup = off"
        if os.geteuid() != 0:
            return "not root"
        return "" if self.hierarchies else "no cgroup file system mounted"

    @property
    def enabled(self) -> bool:
        return bool(self.hierarchies)

    def partition(self, partition_id: str) -> PartitionCgroup | None:
        if not self.hierarchies:
            return None
        if NAME_RE.search(partition_id) or partition_id in ("", ".", ".."):  # never a path
            raise CgroupError(f"{partition_id!r} cannot name a cgroup")
        return PartitionCgroup(self.hierarchies, f"{self.config.root}/{self.node}/{partition_id}", partition_id)

    def limits_for(self, partition_path: Path) -> tuple[Limits, str | None]:
        requested, problem = read_requested(partition_path)
        return requested.capped(self.config.caps), problem

    def ready(self, partition_id: str, partition_path: Path, deploy: bool = False) -> PartitionCgroup | None:
        """The partition's cgroup, created if missing. On a deployment (`deploy`) or when it had
        to be created (after a reboot), its limits are brought in line with the node's caps and
        the release's request; otherwise an existing cgroup costs one stat per hierarchy, once
        per run (nothing is written)."""
        cg = self.partition(partition_id)
        if cg is None:
            return None
        if not deploy and (partition_id in self._checked or cg.exists()):
            self._checked.add(partition_id)
            return cg
        limits, problem = self.limits_for(partition_path)
        if problem:
            log.warning("%s: %s", partition_id, problem)
        cg.ensure(limits)
        self._checked.add(partition_id)
        return cg

    def existing(self) -> list[PartitionCgroup]:
        """The partition cgroups this node has now (e.g. to clean up after an uninstall)."""
        if not self.hierarchies:
            return []
        base = self.hierarchies[0].mount / self.config.root / self.node
        try:
            names = sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
        except OSError:
            return []
        return [cg for cg in (self.partition(name) for name in names) if cg is not None]

    def prune(self) -> None:
        """Remove this node's cgroup, and the root, in every hierarchy where they are empty (after
        an uninstall, or a test)."""
        for h in self.hierarchies:
            for path in (h.mount / self.config.root / self.node, h.mount / self.config.root):
                try:
                    path.rmdir()
                except OSError:
                    break

    def place(self, identity, partition_id: str, partition_path: Path, deploy: bool = False):
        """`identity` (a slapos.grid.process.Identity, or None when we do not switch users) with
        the partition's cgroup to join before the privilege drop."""
        if identity is None:
            return None
        cg = self.ready(partition_id, partition_path, deploy)
        return identity if cg is None else dataclasses.replace(identity, cgroup=cg.procs_files)


def launcher_argv(cg: PartitionCgroup, owner: tuple[int, int] | None, command: list[str]) -> list[str]:
    """The command supervisord runs for a program: join the cgroup as root, drop to `owner`
    (uid, gid), exec the command."""
    from . import launch

    argv = [sys.executable, "-I", "-S", launch.__file__]
    for name in cg.procs_files:
        argv += ["--join", name]
    if owner is not None:
        argv += ["--uid", str(owner[0]), "--gid", str(owner[1])]
    return [*argv, "--", *command]
