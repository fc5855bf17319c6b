"""`/metrics` of the proxy, in the Prometheus text format (see slapos/base/promtext.py for why by hand).

* requests by endpoint and status, and a latency histogram per endpoint: counted in-process by
  `RequestMetrics.observe` (a lock and a few dict updates: ~1 µs on the SLAP path);
* partitions by state, software releases by state, node status reports: read from the database
  at scrape time.
"""
from __future__ import annotations

import bisect
import sqlite3
import threading
import time
from collections.abc import Callable

from slapos.base.promtext import Family, render

# seconds; the SLAP calls answer in well under a millisecond, a full computer document in a few
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Counters of served requests. Endpoints are the proxy's known route names (or `other`),
    so a client cannot grow the label set without bound."""

    def __init__(self, endpoints: set[str], worker: int | None = None):
        self.endpoints = endpoints
        self.worker = worker
        self.started = time.time()
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        # endpoint → [bucket counts..., +Inf count], sum of seconds
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        # more in-process families rendered with these (the watches of slapos/proxy/watch.py)
        self.extra: list[Callable[[], list[Family]]] = []

    def label(self, endpoint: str) -> str:
        if endpoint == "":
            return "index"
        return endpoint if endpoint in self.endpoints else "other"

    def observe(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        name = self.label(endpoint)
        key = (name, method if method in ("GET", "POST", "HEAD") else "other", status[:3])
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            buckets = self._buckets.get(name)
            if buckets is None:
                buckets = self._buckets[name] = [0] * (len(BUCKETS) + 1)
                self._sums[name] = 0.0
            buckets[index] += 1
            self._sums[name] += seconds

    def families(self) -> list[Family]:
        extra = {} if self.worker is None else {"worker": self.worker}
        requests = Family("slapproxy_requests_total", "counter",
                          "Requests served, by endpoint (SLAP call name, dashboard, metrics...), method and status code")
        latency = Family("slapproxy_request_duration_seconds", "histogram",
                         "Time from receiving a request to having its answer, by endpoint")
        with self._lock:
            counts = sorted(self._counts.items())
            histograms = sorted((k, list(v), self._sums[k]) for k, v in self._buckets.items())
        for (endpoint, method, status), value in counts:
            requests.add(value, endpoint=endpoint, method=method, code=status, **extra)
        for endpoint, buckets, total in histograms:
            cumulative = 0
            for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                latency.add(cumulative, "_bucket", endpoint=endpoint, le=le, **extra)
            latency.add(total, "_sum", endpoint=endpoint, **extra)
            latency.add(cumulative, "_count", endpoint=endpoint, **extra)
        start = Family("slapproxy_start_time_seconds", "gauge", "When this proxy process started (Unix time)")
        start.add(self.started, **extra)
        return [requests, latency, start, *(family for source in self.extra for family in source())]


# what the node said last: 'error' when its last error is newer than its last state report
_REPORTED = ("CASE WHEN error_at IS NOT NULL AND (reported_at IS NULL OR error_at >= reported_at) THEN 'error' "
             "ELSE coalesce(reported_state, 'none') END")


def _by_state(conn: sqlite3.Connection, table: str, column: str):
    """(computer, `column`, reported state, count) rows of `table` (partition or software)."""
    return conn.execute(
        f"SELECT computer_reference, {column}, {_REPORTED}, count(*) FROM {table} "  # noqa: S608 - fixed names
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()


def database_families(conn: sqlite3.Connection) -> list[Family]:
    """Gauges of what the database holds, computed at scrape time."""
    partitions = Family("slapproxy_partitions", "gauge",
                        "Partitions by computer, slap state (free/busy) and state reported by the node "
                        "(started, stopped, error, none = not reported yet)")
    for computer, slap_state, reported, n in _by_state(conn, "partition", "slap_state"):
        partitions.add(n, computer=computer, slap_state=slap_state, reported_state=reported)
    software = Family("slapproxy_software_releases", "gauge",
                      "Software releases by computer, requested state and state reported by the node "
                      "(building, available, error, destroyed, none)")
    for computer, requested, reported, n in _by_state(conn, "software", "requested_state"):
        software.add(n, computer=computer, requested_state=requested, reported_state=reported)
    shared = Family("slapproxy_shared_instances", "gauge", "Shared instances by requested state and whether a partition hosts them")
    for row in conn.execute(
        "SELECT requested_state, hosted_by IS NOT NULL AS hosted, count(*) AS n FROM slave GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        shared.add(row["n"], requested_state=row["requested_state"], hosted="yes" if row["hosted"] else "no")
    families = [partitions, software, shared]
    reports = Family("slapproxy_node_status_report_time_seconds", "gauge",
                     "When each computer last posted its partition status (Unix time)")
    node_partitions = Family("slapproxy_node_partitions", "gauge",
                             "Partitions by computer and node status (ok, error, promise-error, waiting, new), "
                             "from the node's last status report")
    promise_failures = Family("slapproxy_node_promise_failures", "gauge",
                              "Failing promises by computer and partition, from the node's last status report")
    from .nodestatus import latest_reports

    for report in latest_reports(conn):
        reports.add(report.received_at, computer=report.computer)
        counts: dict[str, int] = {}
        for partition in report.partitions:
            counts[partition.get("status") or "none"] = counts.get(partition.get("status") or "none", 0) + 1
            failed = sum(1 for p in partition.get("promises") or [] if p.get("failed"))
            promise_failures.add(failed, computer=report.computer, partition=partition.get("partition", "?"))
        for status, n in sorted(counts.items()):
            node_partitions.add(n, computer=report.computer, status=status)
    families += [reports, node_partitions, promise_failures]
    return families


def render_metrics(requests: RequestMetrics, conn: sqlite3.Connection) -> str:
    return render(requests.families() + database_families(conn))
