"""Probe: run the partitions' promises, as the partition's user in its cgroup, side by side.

After a partition was processed every promise runs (test mode); one that fails right after its
services (re)started is tried once more, `promise_retry_delay` later (a service may still be
opening its port). Up-to-date started partitions run only the promises whose periodicity has
come (anomaly mode): nothing at all when none is due, the next due time being kept in the
partition's state. Also `slapos node promise` (every promise now, no report).
"""
from __future__ import annotations

import logging

from slapos.base.errors import EXIT_FAILED, EXIT_OK, EXIT_PROMISE_FAILED, SlapOSError

from .job import STARTED, Job, RunContext, is_offline_error, log, partition_log
from .lock import RunLock
from .partition import Partition, PartitionError

PROMISE_WORKERS = 16  # promise processes running at once


def promise_runner(ctx: RunContext, job: Job):
    """A PromiseRunner for this partition, its promises run as its user in its cgroup, its
    plugins given the partition's own master URL (what its [slap-connection] holds)."""
    from . import process
    from .build import partition_master_url
    from .promise import PromiseRunner

    partition = job.partition
    identity = process.identity_for(partition.path, f"the promises of partition {partition.partition_id}")
    identity = ctx.cgroups.place(identity, partition.partition_id, partition.path)
    try:
        master_url: str | None = partition_master_url(ctx.settings.master_url, job.desired.master_url)
    except PartitionError:  # no credential of its own: plugins get the URL without any
        master_url = None
    return PromiseRunner(ctx.settings, partition, identity=identity, clock=ctx.clock, master_url=master_url)


def run_promises(ctx: RunContext, job: Job, pool) -> None:
    """Every promise of a partition just processed; the first failure is `job.promise_error`."""
    from .promise import failure_message, first_failure

    runner = promise_runner(ctx, job)
    results = runner.run(mode="test", force=True, pool=pool)
    if job.starting:  # a service may still be opening its port: one more chance
        results = runner.retry_failed(results, ctx.retry_delay, pool=pool,
                                      on_retry=lambda titles: _log_retry(ctx, job, titles))
    failed = first_failure(results)
    message = failure_message(failed) if failed is not None else None
    if message is not None:
        job.promise_error = message
    job.state.next_promise_check = runner.next_check()
    if message is not None:  # the one line saying why the run exits 2
        partition_log(job, message, logging.ERROR)
    elif results:
        partition_log(job, f"{len(results)} promise(s): all fine")


def _log_retry(ctx: RunContext, job: Job, titles: list[str]) -> None:
    partition_log(job, f"promise(s) {', '.join(titles)} failed right after the services (re)started: "
                  f"trying again in {ctx.retry_delay:g} s")


def due(ctx: RunContext, jobs: list[Job]) -> list[Job]:
    """The up-to-date partitions with a promise due now (read from their state: no file opened)."""
    now = ctx.clock()
    return [j for j in jobs if j.state.next_promise_check is not None and j.state.next_promise_check <= now]


def prepare_checks(ctx: RunContext, jobs: list[Job]) -> list[tuple[Job, object, list]]:
    """(job, runner, promises) for each partition whose promises can be run; the others fail."""
    from .promise import list_promises

    work = []
    for job in jobs:
        try:
            work.append((job, promise_runner(ctx, job), list_promises(job.partition.path)))
        except SlapOSError as e:
            ctx.summary.failed[job.id] = str(e)
            log.error("%s: %s", job.id, e)
    return work


def check(ctx: RunContext, work: list[tuple[Job, object, list]]) -> list[tuple[Job, object, list, list]]:
    """Run the due promises of every partition side by side (anomaly mode); the results, in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(PROMISE_WORKERS, thread_name_prefix="promise") as pool:
        futures = [(job, runner, promises, pool.submit(_anomaly, ctx, job, runner, promises))
                   for job, runner, promises in work]
        return [(job, runner, promises, f.result()) for job, runner, promises, f in futures]


def _anomaly(ctx: RunContext, job: Job, runner, promises) -> list:
    results = runner.run("anomaly", False, None, promises)
    if job.starting:  # started by this run: a service may still be opening its port
        results = runner.retry_failed(results, ctx.retry_delay, mode="anomaly", promises=promises,
                                      on_retry=lambda titles: _log_retry(ctx, job, titles))
    return results


def run_node_promise(settings, only_cp: list[str] | None = None) -> int:
    """`slapos node promise`: run every promise of the started partitions now; no report.
    Exit 0 when all pass, 2 when one fails (1 for a partition that cannot be checked)."""
    from concurrent.futures import ThreadPoolExecutor

    from . import process
    from .plan import fetch
    from .promise import PromiseRunner
    from .status import partition_ids

    with RunLock(settings.pidfile_instance, "slapos node instance"):
        ctx = RunContext(settings)
        cgroups = ctx.cgroups
        try:
            started = [d.partition_id for d in fetch(ctx) if d.requested_state == STARTED and d.software_release_url]
        except Exception as e:
            if not is_offline_error(e):
                raise
            log.warning("%s; checking the partitions last deployed as started", e)
            started = []
            for partition_id in partition_ids(settings):
                try:
                    if Partition(settings, partition_id).load_state().requested_state == STARTED:
                        started.append(partition_id)
                except PartitionError:
                    continue
        code = EXIT_OK
        if only_cp:
            for unknown in sorted(set(only_cp) - set(started)):
                log.error("%s: not a started partition of this computer", unknown)
                code = EXIT_FAILED
            started = [p for p in started if p in only_cp]
        failed = False
        with ThreadPoolExecutor(PROMISE_WORKERS, thread_name_prefix="promise") as pool:
            for partition_id in started:
                try:
                    partition = Partition(settings, partition_id)
                    partition.check_is_partition()
                    identity = process.identity_for(partition.path, f"the promises of partition {partition_id}")
                    identity = cgroups.place(identity, partition_id, partition.path)
                except SlapOSError as e:
                    log.error("%s", e)
                    code = EXIT_FAILED
                    continue
                results = PromiseRunner(settings, partition, identity=identity).run("test", True, pool)
                for result in results:
                    if result.failed:
                        failed = True
                        log.error("%s: promise %s failed: %s", partition_id, result.title, result.message)
                    else:
                        log.info("%s: promise %s: OK%s", partition_id, result.title,
                                 f" ({result.message})" if result.message else "")
        if code == EXIT_OK and failed:
            code = EXIT_PROMISE_FAILED
        return code
