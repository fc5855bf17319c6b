"""Record and report: tell the master how each partition went, remember it on the partition
(`.slapgrid/state.json`, `.timestamp`, the error log; every file written atomically), count it
in the run's tally, and log the run's one-line summary. Errors sent to the master are truncated
(S12); a master that cannot be told is not the partition's fault (no back-off, the next run
tells it again)."""
from __future__ import annotations

import logging
import time

from . import backoff, observe
from .job import DESTROYED, STARTED, STOPPED, Job, RunContext, Step, is_offline_error, log, partition_log
from .partition import truncate


def report(ctx: RunContext, job: Job) -> None:
    """Tell the master how it went (errors truncated, S12)."""
    d, cp = job.desired, job.desired.handle
    force_stop = ctx.options.force_stop
    message = job.error or job.promise_error
    try:
        if message is not None:
            cp.error(truncate(message), logger=log)
            job.state.reported = "error"
        elif d.requested_state == STARTED and not force_stop:
            cp.started()
            job.state.reported = STARTED
        elif d.requested_state in (STOPPED, DESTROYED) or force_stop:
            cp.stopped()
            job.state.reported = STOPPED
    except Exception as e:
        if not is_offline_error(e):
            raise
        job.offline = True
        partition_log(job, f"could not report to the master: {e}", logging.WARNING)


def record(ctx: RunContext, job: Job) -> None:
    """Remember the outcome (state.json, .timestamp, the error log) and count it."""
    state, d, partition, summary = job.state, job.desired, job.partition, ctx.summary
    force_stop = ctx.options.force_stop
    state.requested_state = d.requested_state
    state.software_release_url = d.software_release_url
    state.software_type = d.software_type
    state.last_attempt = job.started_at
    if job.programs is not None:
        state.programs = [p.process_name for p in job.programs]
    message = job.error or job.promise_error
    if job.offline:  # the master could not be reached or told: the next run does it again
        summary.offline = True
        state.inputs = None
    if job.error_offline:
        message = None
    elif message is not None:
        state.status = "error" if job.error else "promise-error"
        state.last_error = truncate(message)
        backoff.record_failure(state, job.inputs, job.started_at)
        try:
            partition.write_error_log(message)
        except OSError as e:
            log.warning("%s: cannot write its error log: %s", job.id, e)
        if job.error:
            summary.failed[job.id] = message
        else:
            summary.promise_failed[job.id] = message
    elif not job.offline:
        state.status = "ok"
        state.last_error = None
        # after --force-stop the services are down on purpose: the next normal run deploys again
        state.inputs = None if force_stop else job.inputs
        state.last_success = ctx.clock()
        backoff.record_success(state)
    try:
        partition.save_state(state)
        if message is None and not job.offline and d.timestamp is not None and not force_stop:
            partition.write_timestamp(d.timestamp)
        elif message is not None or job.offline:
            partition.remove_timestamp()
    except OSError as e:
        log.error("%s: cannot record its state: %s", job.id, e)
        summary.failed.setdefault(job.id, f"cannot record its state: {e}")
    summary.processed.append(job.id)
    if message is None and not job.offline:
        partition_log(job, f"{d.requested_state}: done in {ctx.clock() - job.started_at:.2f} s")


def record_check(ctx: RunContext, job: Job, runner, promises, results) -> None:
    """After a periodic promise check: tell the master when the verdict changed, and remember it."""
    from .promise import failure_message, first_failure

    ctx.summary.checked.append(job.id)
    failed = first_failure(results)
    state = job.state
    state.next_promise_check = runner.next_check(promises)
    try:
        if failed is not None:
            message = failure_message(failed)
            ctx.summary.promise_failed[job.id] = message
            state.last_error = truncate(message)
            log.error("%s: %s", job.id, message)  # once (the master is told below)
            if state.reported != "error":
                job.desired.handle.error(truncate(message), logger=log)
                state.reported = "error"
        else:
            state.last_error = None
            if state.reported != STARTED:
                job.desired.handle.started()
                state.reported = STARTED
    except Exception as e:
        if not is_offline_error(e):
            raise
        ctx.summary.offline = True
    job.partition.save_state(state)


def report_error(cp, message: str) -> None:
    try:
        cp.error(truncate(message), logger=log)
    except Exception as e:  # best effort
        log.debug("cannot report an error: %s", e)


def log_summary(ctx: RunContext, jobs: list[Job]) -> None:
    s = ctx.summary
    for job in jobs:
        if job.step is Step.WAIT:
            s.waiting.append(job.id)
            when = time.strftime("%H:%M:%S", time.localtime(job.state.next_retry or 0))
            lines = [line for line in (job.state.last_error or "").splitlines() if line.strip()]
            log.info("%s: waiting until %s before trying again (back-off after %d failure(s)): %s",
                     job.id, when, job.state.failures, lines[-1] if lines else "unknown error")
    parts = []
    if s.processed:
        parts.append(f"{len(s.processed)} processed")
    if s.up_to_date:
        parts.append(f"{s.up_to_date} up to date")
    if s.checked:
        parts.append(f"{len(s.checked)} checked")
    if s.waiting:
        parts.append(f"{len(s.waiting)} waiting")
    failures = len(set(s.failed) | set(s.promise_failed)) - len(s.waiting)
    if failures:
        parts.append(f"{failures} failed")
    level = logging.INFO if (s.processed or failures or s.waiting) else logging.DEBUG
    log.log(level, "partitions: %s", ", ".join(parts) or "none")


def observed(ctx: RunContext, seconds: float, exit_code: int) -> int:
    """Metrics and status for operators (grid/observe.py), still under the run lock."""
    s = ctx.summary
    changed = bool(s.processed or s.checked or s.failed or s.promise_failed)
    observe.after_instance_run(ctx.settings, seconds, exit_code, changed)
    return exit_code
