"""What the node tells operators after each run: Prometheus metrics and its partition status.

* Metrics: `<metrics_directory>/slapos-node-<kind>.prom` (kind = instance, software, report),
  written whole after each run (node_exporter's textfile collector reads `*.prom` there) and
  printed by `slapos node metrics`. `[slapos] metrics_directory` (default
  `<instance_root>/../var/metrics`; `off`: no file).
* Status: after `slapos node instance`, the partition status document (slapos/base/statusdoc.py)
  is posted to the master's `reportNodeStatus` when it changed since the last post
  (`[slapos] report_status = auto`, the default; `yes` posts every run, `no` never). A master
  that does not serve the call (404: any other SLAP master) is not asked again for a day.

Nothing here may fail a run: a problem is one warning line. A run that processed and checked
nothing (the cron steady state) reuses the partition part of the last metrics (`.partitions.prom`,
recomputed at least every FULL_REFRESH seconds) and posts nothing: one small read and one write,
instead of reading every partition's status (~17 ms of CPU for 100 partitions, bench/observe.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from slapos.base.errors import EXIT_OFFLINE
from slapos.base.promtext import Family, render, write_atomic

log = logging.getLogger("slapos.observe")

KINDS = ("instance", "software", "report")
FILE_PREFIX = "slapos-node-"
POSTED = ".status-posted.json"  # digest of the last document the master took, or when it refused
BUILDS = ".software-builds.json"  # last build duration per software release (kept across runs)
UNSUPPORTED_RETRY = 86400.0
PARTITIONS_CACHE = ".partitions.prom"  # the partition families of the last full observation
FULL_REFRESH = 600.0  # seconds: even with nothing processed, look at every partition this often


def metrics_directory(settings) -> Path | None:
    config = getattr(settings, "config", None)
    default = Path(settings.instance_root).parent / "var" / "metrics"
    if config is None:
        return default
    value = config.get("slapos", "metrics_directory", None)
    if value is None:
        return default
    return None if value.lower() in ("off", "no", "none", "false") else Path(value).expanduser()


def _run_families(kind: str, seconds: float, exit_code: int) -> list[Family]:
    duration = Family("slapos_node_run_duration_seconds", "gauge", "Wall time of the last run of each node command")
    duration.add(round(seconds, 3), kind=kind)
    code = Family("slapos_node_run_exit_code", "gauge",
                  "Exit code of the last run (0 ok, 1 failed, 2 promise failed, 3 master unreachable)")
    code.add(exit_code, kind=kind)
    ended = Family("slapos_node_run_end_time_seconds", "gauge", "When the last run of each node command ended (Unix time)")
    ended.add(round(time.time(), 3), kind=kind)
    return [duration, code, ended]


def partition_families(statuses: list) -> list[Family]:
    """Partitions by status, and per partition: its status, promises, failing promises, back-off."""
    by_status = Family("slapos_node_partitions", "gauge",
                       "Partitions of this node by status (new, ok, error, promise-error, waiting)")
    counts = Counter(s.status for s in statuses)
    for status in ("new", "ok", "error", "promise-error", "waiting"):
        by_status.add(counts.get(status, 0), status=status)
    state = Family("slapos_node_partition_status", "gauge", "1 for the current status of each partition")
    promises = Family("slapos_node_partition_promises", "gauge", "Promises of each partition (last results)")
    failing = Family("slapos_node_partition_promise_failures", "gauge", "Failing promises of each partition")
    failures = Family("slapos_node_partition_backoff_failures", "gauge",
                      "Consecutive failed deployments of each partition (drives its back-off)")
    retry = Family("slapos_node_partition_backoff_retry_time_seconds", "gauge",
                   "When a backed-off partition is retried (Unix time); absent when not waiting")
    for s in statuses:
        state.add(1, partition=s.partition_id, status=s.status)
        promises.add(len(s.promises), partition=s.partition_id)
        failing.add(sum(1 for p in s.promises if p["failed"]), partition=s.partition_id)
        failures.add(s.failures, partition=s.partition_id)
        if s.status == "waiting" and s.next_retry:
            retry.add(round(s.next_retry, 3), partition=s.partition_id)
    return [by_status, state, promises, failing, failures, retry]


def write_metrics(settings, kind: str, families: list[Family]) -> Path | None:
    directory = metrics_directory(settings)
    if directory is None:
        return None
    path = directory / f"{FILE_PREFIX}{kind}.prom"
    write_atomic(path, render(families))
    return path


def _fresh_partitions(directory: Path) -> str | None:
    """The partitions' metrics of the last full observation, unless older than FULL_REFRESH or
    missing (then the caller observes again). The directory is root's, not a tenant's."""
    cache = directory / PARTITIONS_CACHE
    try:
        if time.time() - cache.stat().st_mtime >= FULL_REFRESH:
            return None
        return cache.read_text(encoding="utf-8")
    except OSError:
        return None


# -- after each run (one call from each command) ------------------------------------------------
def after_instance_run(settings, seconds: float, exit_code: int, changed: bool = True) -> None:
    """`changed`: the run processed or checked a partition (else nothing a status shows moved)."""
    try:
        directory = metrics_directory(settings)
        run = render(_run_families("instance", seconds, exit_code))
        if not changed and directory is not None:
            cached = _fresh_partitions(directory)
            if cached is not None:  # nothing moved: the run's figures + the partitions' as last observed
                write_atomic(directory / f"{FILE_PREFIX}instance.prom", run + cached)
                return
        from .status import all_statuses, status_document

        statuses = all_statuses(settings)
        partitions = render(partition_families(statuses))
        if directory is not None:
            write_atomic(directory / PARTITIONS_CACHE, partitions)
            write_atomic(directory / f"{FILE_PREFIX}instance.prom", run + partitions)
        if exit_code != EXIT_OFFLINE:  # the run already said the master cannot be reached
            post_status(settings, status_document(settings.computer_id, statuses))
    except Exception as e:  # never fail a run for what only operators read
        log.warning("could not write the node's metrics or status: %s", e)


def after_software_run(settings, seconds: float, exit_code: int, outcomes: list) -> None:
    try:
        directory = metrics_directory(settings)
        if directory is None:
            return
        builds = _load_json(directory / BUILDS)
        for outcome in outcomes:
            if outcome.status in ("built", "fetched", "failed") and outcome.seconds:
                builds[outcome.url] = {"seconds": round(outcome.seconds, 3), "status": outcome.status}
            elif outcome.status == "destroyed":
                builds.pop(outcome.url, None)
        write_atomic(directory / BUILDS, json.dumps(builds, sort_keys=True))
        states = Family("slapos_node_software_releases", "gauge",
                        "Software releases of the last run by outcome (up-to-date, built, fetched, failed...)")
        for status, n in sorted(Counter(o.status for o in outcomes).items()):
            states.add(n, status=status)
        duration = Family("slapos_node_software_build_duration_seconds", "gauge",
                          "Duration of the last build (or binary-cache fetch) of each software release")
        for url, build in sorted(builds.items()):
            duration.add(build["seconds"], url=url, status=build["status"])
        write_metrics(settings, "software", _run_families("software", seconds, exit_code) + [states, duration])
    except Exception as e:
        log.warning("could not write the node's software metrics: %s", e)


def after_report_run(settings, seconds: float, exit_code: int, journal: bytes | None) -> None:
    try:
        families = _run_families("report", seconds, exit_code)
        if journal:
            from .usage import partition_movement_totals

            usage = Family("slapos_node_partition_usage", "gauge",
                           "Resources used by each partition in the last usage report (CPU seconds, bytes...)")
            for (partition, resource), quantity in sorted(partition_movement_totals(journal).items()):
                usage.add(quantity, partition=partition, resource=resource)
            families.append(usage)
        write_metrics(settings, "report", families)
    except Exception as e:
        log.warning("could not write the node's report metrics: %s", e)


# -- status report to the master ----------------------------------------------------------------
def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def post_status(settings, document: dict[str, Any]) -> bool:
    """POST the document to the master when it changed (or always with report_status = yes)."""
    config = getattr(settings, "config", None)
    mode = (config.get("slapos", "report_status", "auto") if config is not None else "auto").strip().lower()
    if mode in ("no", "false", "0", "off"):
        return False
    body = json.dumps({k: v for k, v in document.items() if k != "generated_at"}, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()
    directory = metrics_directory(settings)
    memo_path = directory / POSTED if directory is not None else None  # none: post every run
    memo = _load_json(memo_path) if memo_path else {}
    if mode == "auto":
        if memo.get("digest") == digest:
            return False
        if memo.get("unsupported_at", 0) > time.time() - UNSUPPORTED_RETRY:
            return False
    from slapos.slap.connection import Connection
    from slapos.slap.exceptions import NotFoundError

    connection = Connection(settings.master_url, key_file=settings.key_file, cert_file=settings.cert_file,
                            master_ca_file=settings.master_ca_file, timeout=10)
    try:
        connection.post("reportNodeStatus", {"computer_id": settings.computer_id,
                                             "status_json": json.dumps(document)})
    except NotFoundError:
        log.info("the master does not take node status reports (reportNodeStatus): not asked again today")
        memo = {"unsupported_at": time.time()}
    else:
        memo = {"digest": digest}
    finally:
        connection.close()
    if memo_path is not None:
        write_atomic(memo_path, json.dumps(memo))
    return "digest" in memo


def read_metrics(settings) -> str:
    """`slapos node metrics`: the files the last runs wrote, concatenated."""
    directory = metrics_directory(settings)
    if directory is None:
        raise FileNotFoundError("metrics are off ([slapos] metrics_directory = off)")
    parts = []
    for kind in KINDS:
        try:
            parts.append((directory / f"{FILE_PREFIX}{kind}.prom").read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
    if not parts:
        raise FileNotFoundError(f"no metrics in {directory} yet: they are written after each slapos node instance, "
                                "software and report run")
    return "".join(parts)
