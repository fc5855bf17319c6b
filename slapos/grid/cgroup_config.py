"""What a partition's cgroup may use: the node's caps (`[slapos] partition_*` keys of slapos.cfg),
what a release asks for in `<partition>/.slapos-cgroup`, and the rule between them (the node's cap
always wins). Parsing only: slapos.grid.cgroup writes the kernel files."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base import tenantfs
from slapos.base.errors import ConfigError

REQUEST_FILE = ".slapos-cgroup"  # what a release may ask for, written by its instance profile
REQUEST_LIMIT = 4096
NAME_RE = re.compile(r"[^A-Za-z0-9._-]")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


# -- limits ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """None is unlimited. cpu_quota: percent of one CPU (150 = one and a half CPUs)."""

    memory: int | None = None
    cpu_quota: int | None = None
    pids: int | None = None

    def capped(self, cap: Limits) -> Limits:
        """The stricter of each limit: a release asks, the node's cap always wins."""
        def low(a, b):
            return b if a is None else a if b is None else min(a, b)
        return Limits(low(self.memory, cap.memory), low(self.cpu_quota, cap.cpu_quota), low(self.pids, cap.pids))


def parse_size(text: str) -> int | None:
    """Bytes from `512M`, `2G`, `1073741824`; None for `` / `max` / `unlimited`."""
    value = text.strip().lower()
    if value in ("", "max", "unlimited", "none"):
        return None
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 512M, 2G)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 4 << 20:
        raise ValueError(f"{text!r} is below the 4M a partition needs to start anything")
    return size


def parse_count(text: str, minimum: int, what: str) -> int | None:
    value = text.strip().lower()
    if value in ("", "max", "unlimited", "none"):
        return None
    if not value.isdigit() or len(value) > 12:
        raise ValueError(f"{text!r} is not a {what}")
    number = int(value)
    if number < minimum:
        raise ValueError(f"{text!r}: a {what} of at least {minimum} is needed")
    return number


def _limits_from(values: dict[str, str]) -> Limits:
    return Limits(
        memory=parse_size(values.get("memory_limit", "")),
        cpu_quota=parse_count(values.get("cpu_quota", ""), 1, "CPU percentage"),
        pids=parse_count(values.get("pids_limit", ""), 8, "number of processes"),
    )


def read_requested(partition_path: Path) -> tuple[Limits, str | None]:
    """What the partition's release asks for in `.slapos-cgroup` (`key = value` lines:
    memory_limit, cpu_quota, pids_limit), read without following links and bounded; a bad file
    is ignored as a whole (the node's caps apply) with the reason."""
    data = tenantfs.read_small(partition_path / REQUEST_FILE, REQUEST_LIMIT + 1)
    if data is None:
        return Limits(), None
    if len(data) > REQUEST_LIMIT:
        return Limits(), f"{REQUEST_FILE} is larger than {REQUEST_LIMIT} bytes: ignored"
    values: dict[str, str] = {}
    try:
        for line in data.decode("ascii").splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, sep, value = line.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in ("memory_limit", "cpu_quota", "pids_limit"):
                return Limits(), f"{REQUEST_FILE}: unknown line {line[:60]!r}: ignored"
            values[key] = value
        return _limits_from(values), None
    except (UnicodeDecodeError, ValueError) as e:
        return Limits(), f"{REQUEST_FILE}: {e}: ignored"


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CgroupConfig:
    mode: str = "auto"  # auto | v1 | v2 | off
    root: str = "slapnode"
    caps: Limits = field(default_factory=Limits)

    @classmethod
    def from_config(cls, config) -> CgroupConfig:
        s = "slapos"
        get = (lambda key, default: config.get(s, key, default)) if config is not None else (lambda k, d: d)
        mode = get("partition_cgroup", "auto").lower()
        if mode not in ("auto", "v1", "v2", "off"):
            raise ConfigError(f"[slapos] partition_cgroup must be auto, v1, v2 or off, not {mode!r}")
        root = get("partition_cgroup_root", "slapnode").strip("/")
        if not root or any(p in ("", ".", "..") or NAME_RE.search(p) for p in root.split("/")):
            raise ConfigError(f"[slapos] partition_cgroup_root {root!r}: names of letters, digits and ._- only")
        try:
            caps = _limits_from({"memory_limit": get("partition_memory_limit", ""),
                                 "cpu_quota": get("partition_cpu_quota", ""),
                                 "pids_limit": get("partition_pids_limit", "")})
        except ValueError as e:
            raise ConfigError(f"[slapos] partition limits: {e}") from None
        return cls(mode, root, caps)
