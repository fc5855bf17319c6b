"""What `slapos node status --partitions` shows: each partition as the node last left it.

Read from the files the instance run keeps (`.slapgrid/state.json`, promise results) and, on a
node with cgroups, from each partition's cgroup (memory, processes and CPU used against the
limits): nothing is run and the master is not asked, so it is instant and works offline.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from slapos.base import statusdoc
from slapos.base.errors import SlapOSError

from .partition import Partition, PartitionError
from .promise import PromiseRunner


@dataclass
class PartitionStatus:
    partition_id: str
    requested_state: str | None
    status: str  # new | ok | error | promise-error | waiting
    software_release_url: str | None
    software_type: str | None
    reported_state: str | None  # last state told to the master
    last_error: str | None
    failures: int
    next_retry: float | None
    last_attempt: float | None
    last_success: float | None
    timestamp: str | None
    promises: list[dict] = field(default_factory=list)
    # its cgroup's usage against its limits (slapos.grid.cgroup.Usage as a dict); None without
    resources: dict | None = None

    @property
    def resource_summary(self) -> str:
        r = self.resources
        if not r:
            return "-"
        parts = []
        if r.get("memory_current") is not None:
            parts.append(f"mem {_size(r['memory_current'])}/{_size(r.get('memory_max'))}")
        if r.get("pids_current") is not None:
            parts.append(f"pids {r['pids_current']}/{r.get('pids_max') or 'max'}")
        if r.get("cpu_usage_seconds") is not None:
            quota = f"{r['cpu_quota']}%" if r.get("cpu_quota") else "max"
            parts.append(f"cpu {r['cpu_usage_seconds']:.1f}s/{quota}")
        return " ".join(parts) or "-"

    @property
    def promise_summary(self) -> str:
        if not self.promises:
            return "-"
        failed = sum(1 for p in self.promises if p["failed"])
        total = len(self.promises)
        return f"{total}/{total} ok" if not failed else f"{failed}/{total} failed"

    @property
    def backoff(self) -> str:
        if self.status != "waiting" or not self.next_retry:
            return "-"
        return f"until {time.strftime('%H:%M:%S', time.localtime(self.next_retry))} ({self.failures} failures)"

    def to_record(self, computer_id: str | None) -> dict[str, Any]:
        """This partition in the status vocabulary shared with the proxy (slapos/base/statusdoc.py)."""
        return statusdoc.partition_record(
            computer_id, self.partition_id,
            software_release=self.software_release_url,
            software_type=self.software_type,
            requested_state=self.requested_state,
            reported_state=self.reported_state,
            status=self.status,
            last_error=self.last_error,
            last_attempt=statusdoc.iso(self.last_attempt),
            last_success=statusdoc.iso(self.last_success),
            timestamp=self.timestamp,
            backoff={"failures": self.failures, "next_retry": statusdoc.iso(self.next_retry)},
            promises=self.promises,
            resources=self.resources,
        )


def status_document(computer_id: str | None, statuses: list[PartitionStatus]) -> dict[str, Any]:
    """`slapos node status --partitions --format json`, and what the node posts to the proxy."""
    return {
        "schema": statusdoc.SCHEMA,
        "source": "node",
        "computer": computer_id,
        "generated_at": statusdoc.iso(time.time()),
        "partitions": [s.to_record(computer_id) for s in statuses],
    }


def _size(value: int | None) -> str:
    if value is None:
        return "max"
    size: float = value
    for unit in ("", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "" else f"{size:.1f}{unit}"
        size /= 1024
    return str(size)


def partition_ids(settings) -> list[str]:
    """Partition directories of the instance root (formatted ones, or ones the node worked in)."""
    root = settings.instance_root
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path) and (
            os.path.exists(os.path.join(path, ".slapos-resource")) or os.path.isdir(os.path.join(path, ".slapgrid"))
        ):
            found.append(name)
    return sorted(found, key=lambda n: (len(n), n))


def partition_status(settings, partition_id: str, now: float | None = None, cgroups=None) -> PartitionStatus:
    partition = Partition(settings, partition_id)
    state = partition.load_state()
    timestamp, _ = partition.read_timestamp()
    now = time.time() if now is None else now
    status = state.status
    if status in ("error", "promise-error") and state.next_retry and state.next_retry > now:
        status = "waiting"
    elif status == "ok" and state.last_error:
        status = "promise-error"  # a periodic check failed since the last deployment
    results = PromiseRunner(settings, partition).stored_results()
    promises = [
        {"title": r.title, "failed": r.failed, "message": r.message,
         "date": statusdoc.iso(r.date) if r.date else None}
        for r in results
    ]
    return PartitionStatus(
        partition_id=partition_id,
        requested_state=state.requested_state,
        status=status,
        software_release_url=state.software_release_url,
        software_type=state.software_type,
        reported_state=state.reported,
        last_error=state.last_error,
        failures=state.failures,
        next_retry=state.next_retry,
        last_attempt=state.last_attempt,
        last_success=state.last_success,
        timestamp=timestamp,
        promises=promises,
        resources=_resources(cgroups, partition_id),
    )


def _resources(cgroups, partition_id: str) -> dict | None:
    """Read from the partition's cgroup files (a handful of small reads; nothing is created)."""
    cg = cgroups.partition(partition_id) if cgroups is not None else None
    if cg is None or not cg.exists():
        return None
    return cg.usage().to_dict()


def all_statuses(settings) -> list[PartitionStatus]:
    from .cgroup import NodeCgroups

    statuses = []
    now = time.time()
    try:
        cgroups = NodeCgroups(settings)
    except SlapOSError:  # a bad [slapos] partition_cgroup key: the rest of the status still shows
        cgroups = None
    for partition_id in partition_ids(settings):
        try:
            statuses.append(partition_status(settings, partition_id, now, cgroups))
        except PartitionError:
            continue
    return statuses


def format_table(statuses: list[PartitionStatus], width: int | None = None) -> str:
    """The partitions as a table (`slapos.base.table`); `width`: fit to that many columns."""
    from slapos.base.table import render

    if not statuses:
        return "no partition in this instance_root yet (run slapos node format, then slapos node instance)"
    headers = ("PARTITION", "REQUESTED", "STATUS", "PROMISES", "BACK-OFF", "RESOURCES (USED/LIMIT)", "LAST ERROR")
    rows = []
    for s in statuses:
        error = (s.last_error or "").strip().splitlines()
        first = error[0] if error else "-"
        if len(first) > 100:
            first = first[:97] + "..."
        rows.append((s.partition_id, s.requested_state or "-", s.status, s.promise_summary, s.backoff,
                     s.resource_summary, first))
    return render(headers, rows, width=width).rstrip("\n")
