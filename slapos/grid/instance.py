"""`slapos node instance`: make every partition of this computer what the master wants.

Run by cron every minute, on nodes with hundreds of partitions. One run, top to bottom
(`InstanceRun.run`; the picture is in docs/architecture-grid.md):

1. take the instance lock (one run at a time, exit 10 otherwise);
2. ask the master once for the whole computer (unreachable: leave everything running, exit 3);
3. **plan** (grid/plan.py): decide, for each partition, from local files only: *up to date*
   (only its promises are checked, when due), *waiting* (back-off), or *to process*;
4. process: partitions flow through a pipeline — **build** (grid/build.py: their buildouts run
   side by side, `--jobs`, through a fork server that imports buildout once), **activate**
   (grid/activate.py: supervisord takes their programs in batches, then waits until the programs
   just (re)started have left STARTING, bounded by `[slapos] service_start_wait`), **probe**
   (grid/probe.py: promises run; one that fails right after a start is tried once more,
   `promise_retry_delay` later), **record** (grid/record.py: the master is told `started` /
   `stopped` / the error, the state is kept);
5. up-to-date started partitions: **activate** revives what a supervisord that is not the one a
   previous run checked never started; **probe** checks the promises whose periodicity has come,
   side by side; **record** tells the master when the verdict changed;
6. exit 0 (all fine), 1 (a partition failed), 2 (only promises failed), 3 (master unreachable).

A partition that fails never stops the others: its error is reported to the master, kept in
`<partition>/.slapgrid/state.json` and shown by `slapos node status --partitions`. Every file is
written atomically, so a run killed at any point leaves nothing the next run cannot finish.
The no-change path makes one request to the master, starts no process and does not talk to
supervisord (it reads supervisord's pidfile and /proc to know it is the one already checked).

The steps share one `RunContext` (grid/job.py) and nothing else, so a long-running loop can
drive them as this run does. The names other modules import from here stay importable here.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from slapos.base.errors import EXIT_FAILED, EXIT_OFFLINE, SlapOSError

from . import probe, record
from .activate import START_POLL, Activator
from .build import PROFILE_LIMIT, PROFILE_TAIL, Builder, partition_master_url
from .job import (
    DESTROYED,
    PROMISE_RETRY_DELAY,
    SERVICE_START_WAIT,
    STARTED,
    STOPPED,
    Desired,
    InstanceOptions,
    Job,
    RunContext,
    RunSummary,
    Step,
    fail,
    is_offline_error,
    log,
)
from .lock import RunLock
from .partition import Partition, PartitionError
from .plan import Planner, fetch
from .probe import PROMISE_WORKERS, run_node_promise

__all__ = [
    "DESTROYED", "FINISH_WORKERS", "PROFILE_LIMIT", "PROFILE_TAIL", "PROMISE_RETRY_DELAY", "PROMISE_WORKERS",
    "SERVICE_START_WAIT", "STARTED", "START_POLL", "STOPPED", "Desired", "InstanceOptions", "InstanceRun", "Job",
    "RunSummary", "Step", "partition_master_url", "run_instance", "run_node_promise",
]

FINISH_WORKERS = 8  # partitions whose promises and reports run at once


class InstanceRun:
    """One `slapos node instance` run: the steps of grid/plan, build, activate, probe and record,
    in order."""

    def __init__(self, settings, options: InstanceOptions | None = None, supervisor=None,
                 clock: Callable[[], float] = time.time):
        self.ctx = RunContext(settings, options, supervisor, clock)
        self.planner = Planner(self.ctx)
        self.builder = Builder(self.ctx)
        self.activator = Activator(self.ctx)
        self._run_began = time.monotonic()

    settings = property(lambda self: self.ctx.settings)
    options = property(lambda self: self.ctx.options)
    summary = property(lambda self: self.ctx.summary)
    supervisor = property(lambda self: self.ctx.supervisor)
    cgroups = property(lambda self: self.ctx.cgroups)

    # -- the run, top to bottom --------------------------------------------------------------------
    def run(self) -> int:
        with RunLock(self.settings.pidfile_instance, "slapos node instance"):
            self.random_delay()
            try:
                desired = self.fetch()
            except Exception as e:
                if not is_offline_error(e):
                    raise
                return self.observed(self.offline(e))
            jobs = self.plan(desired)
            try:
                self.process([j for j in jobs if j.step is Step.PROCESS])
                self.check_promises([j for j in jobs if j.step is Step.CHECK])
            finally:
                self.builder.close()
            self.activator.remember_supervisord()
            record.log_summary(self.ctx, jobs)
            return self.observed(self.summary.exit_code)

    def fetch(self) -> list[Desired]:
        return fetch(self.ctx)

    def plan(self, desired: list[Desired]) -> list[Job]:
        return self.planner.plan(desired)

    def observed(self, exit_code: int) -> int:
        return record.observed(self.ctx, time.monotonic() - self._run_began, exit_code)

    def random_delay(self) -> None:
        delay = self.options.maximal_delay
        if delay is None:
            delay = self.settings.maximal_delay
        if delay and not self.options.now:
            import random

            seconds = random.uniform(1, delay)
            log.info("sleeping %.0f s before starting (maximal_delay; --now skips it)", seconds)
            time.sleep(seconds)

    # -- 4. partitions to process: build → activate → probe → record, as a pipeline ----------------
    def process(self, jobs: list[Job]) -> None:
        """Build side by side, hand ready partitions to supervisord in batches, then finish each."""
        if not jobs:
            return
        import queue
        from concurrent.futures import ThreadPoolExecutor

        if not self.options.buildout_debug:  # its start (~0.2 s) overlaps with what follows
            threading.Thread(target=self.builder.forkserver, name="forkserver-start", daemon=True).start()
        self.activator.start_supervisord()
        ready: queue.Queue[Job] = queue.Queue()
        # (the promise pool is left last: finishing partitions use it)
        with ThreadPoolExecutor(PROMISE_WORKERS, thread_name_prefix="promise") as promises, \
                ThreadPoolExecutor(FINISH_WORKERS, thread_name_prefix="finish") as finishers:
            activator = threading.Thread(
                target=self.activator.pipeline, name="activate",
                args=(ready, len(jobs), lambda job: finishers.submit(self._finish_guarded, job, promises)))
            activator.start()
            with ThreadPoolExecutor(max(1, self.options.jobs), thread_name_prefix="build") as builders:
                for job in jobs:
                    builders.submit(self._build_guarded, job, ready)
            activator.join()

    def _build_guarded(self, job: Job, ready) -> None:
        job.started_at = self.ctx.clock()
        try:
            self.builder.build(job)
        except BaseException as e:  # a crash of our own code is this partition's failure
            fail(job, e)
        finally:
            ready.put(job)

    def _finish_guarded(self, job: Job, promises) -> None:
        try:
            self.finish(job, promises)
        except BaseException as e:
            log.exception("%s: unexpected error while finishing", job.id)
            fail(job, e)
            record.record(self.ctx, job)

    def finish(self, job: Job, promises) -> None:
        """After supervisord: stop what must stop, probe what runs, report and record."""
        d, force_stop = job.desired, self.options.force_stop
        stop = d.requested_state in (STOPPED, DESTROYED) or (d.requested_state == STARTED and force_stop)
        if stop:
            try:  # stopped even when buildout failed (what it ran before, and what it has now)
                known = set(job.state.programs) | {p.process_name for p in job.programs or ()}
                self.supervisor.stop_partition(job.id, names=sorted(known) if known else None)
                # a stopped partition runs nothing: what double-forked away from supervisord (or
                # its buildout started) would otherwise keep running, and using the node, for ever
                from .destroy import end_processes  # late: ~6 ms the no-change run must not pay

                end_processes(self.cgroups, job.id, job.partition.path)
            except Exception as e:
                fail(job, e)
        if job.error is None and d.requested_state == STARTED and not force_stop:
            probe.run_promises(self.ctx, job, promises)
            if job.promise_error is None and job.fatal:
                job.promise_error = (f"service(s) {', '.join(job.fatal)} failed repeatedly (FATAL) and were "
                                     "restarted")
        record.report(self.ctx, job)
        record.record(self.ctx, job)

    # -- 5. up-to-date started partitions: activate (revive) → probe (when due) → record -------------
    def check_promises(self, jobs: list[Job]) -> None:
        """Their programs run (see `Activator.revive`), then the promises whose periodicity has
        come are checked (anomaly mode). Costs nothing when none is due."""
        if not jobs:
            return
        revived = self.activator.revive([(j.partition, j.state) for j in jobs])
        for job in jobs:
            job.starting = revived.get(job.id, [])
        due = probe.due(self.ctx, jobs)
        if not due:
            return
        work = probe.prepare_checks(self.ctx, due)
        self.activator.wait_started([job for job, _, promises in work if promises])
        for job, runner, promises, results in probe.check(self.ctx, work):
            record.record_check(self.ctx, job, runner, promises, results)

    # -- master unreachable ------------------------------------------------------------------------------
    def offline(self, error: BaseException) -> int:
        """Keep what runs running; after a reboot (or a supervisord started again), start what
        was last deployed as started. Exit 3."""
        log.error("%s", error)
        log.warning("master unreachable: running services are left as they are (offline mode)")
        self.summary.offline = True
        try:
            started = []
            for entry in sorted(os.listdir(self.settings.instance_root)):
                try:
                    partition = Partition(self.settings, entry)
                    partition.check_is_partition()
                except PartitionError:
                    continue
                state = partition.load_state()
                if state.requested_state == STARTED and (not self.options.only_cp or entry in self.options.only_cp):
                    started.append((partition, state))
            if started:
                self.activator.revive(started)
                self.activator.remember_supervisord()
        except (OSError, SlapOSError) as e:
            log.error("offline mode: %s", e)
            return EXIT_FAILED
        return EXIT_FAILED if self.summary.failed else EXIT_OFFLINE


def run_instance(settings, options: InstanceOptions | None = None) -> int:
    """Entry point used by the CLI."""
    return InstanceRun(settings, options).run()
