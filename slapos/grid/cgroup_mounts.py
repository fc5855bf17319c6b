"""Which cgroup file systems this machine has mounted, and which of them the node places its
partitions in (`[slapos] partition_cgroup = auto | v1 | v2 | off`, see slapos.grid.cgroup).
Read from /proc/self/mounts; nothing is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

V1_CONTROLLERS = ("pids", "memory", "freezer", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids")  # + "cpu", enabled only for a partition with a CPU quota
MOUNTS = "/proc/self/mounts"


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup file system and the controllers it offers."""

    mount: Path
    version: int  # 1 or 2
    controllers: frozenset[str]


def mounted_hierarchies(mounts: str = MOUNTS) -> list[Hierarchy]:
    found = []
    try:
        with open(mounts, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("cgroup", "cgroup2"):
            continue
        mount = Path(parts[1].replace("\\040", " "))
        if parts[2] == "cgroup2":
            try:
                controllers = frozenset((mount / "cgroup.controllers").read_text().split())
            except OSError:
                continue
            found.append(Hierarchy(mount, 2, controllers))
        else:
            options = set(parts[3].split(","))
            found.append(Hierarchy(mount, 1, frozenset(options & set(V1_CONTROLLERS))))
    return found


def choose(mode: str, hierarchies: list[Hierarchy]) -> list[Hierarchy]:
    """The hierarchies partitions are placed in: [] when cgroups cannot be used."""
    if mode == "off":
        return []
    v2 = [h for h in hierarchies if h.version == 2]
    v1: dict[str, Hierarchy] = {}
    for h in hierarchies:
        if h.version == 1:
            for c in h.controllers:
                v1.setdefault(c, h)
    full_v2 = [h for h in v2 if {"memory", "pids"} <= h.controllers]
    if mode == "v2" or (mode == "auto" and (full_v2 or (v2 and not v1))):
        return (full_v2 or v2)[:1]
    chosen: list[Hierarchy] = []
    for controller in V1_CONTROLLERS:
        found = v1.get(controller)
        if found is not None and found not in chosen:
            chosen.append(found)
    return chosen
