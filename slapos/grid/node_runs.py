"""`slapos node report` and `slapos node collect` as functions: one run each, with the lock and
the metrics of the command. The CLI commands and the daemon (grid/daemon.py) both call these, so
a pass of the daemon is the cron command's run, not a copy of it.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("slapos.collect")


def run_report(settings) -> int:
    """One `slapos node report` run under [slapos] pidfile_report (LockedError when held)."""
    from . import observe
    from .lock import RunLock
    from .report import ReportRun

    with RunLock(settings.pidfile_report, "slapos node report"):
        started = time.monotonic()
        result = ReportRun(settings).run()
        observe.after_report_run(settings, time.monotonic() - started, result.exit_code, result.journal)
        return result.exit_code


def run_collect(settings, keep_days: float | None = None) -> int:
    """One `slapos node collect` run: sample every partition into the local database."""
    from slapos.base.errors import ConfigError

    from . import collect, usage
    from .report import supervised_pids
    from .status import partition_ids
    from .supervisor import Supervisor

    if not settings.instance_root.is_dir():
        raise ConfigError(f"instance_root {settings.instance_root} does not exist: run slapos node format first")
    pids = supervised_pids(Supervisor(settings))
    refs = [usage.PartitionRef(pid, settings.instance_root / pid, pids.get(pid, []))
            for pid in partition_ids(settings)]
    result = collect.collect(settings, refs, keep_days=keep_days)
    for sample in result.samples:
        log.debug("%s: cpu %.2fs (%s%%) memory %dB processes %d disk %s", sample.partition_id,
                  sample.cpu_seconds, sample.cpu_percent if sample.cpu_percent is not None else "-",
                  sample.memory_bytes, sample.process_count,
                  sample.disk_bytes if sample.disk_bytes is not None else "-")
    log.info("collect: %d partition(s) sampled into %s%s", len(result.samples), result.database,
             f", {result.pruned} old row(s) deleted" if result.pruned else "")
    return 0
