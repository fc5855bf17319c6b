"""Plan: ask the master once, then decide for each partition, from local files only, what this
run does with it (kubelet-style reconcile of desired vs actual state).

*up to date* (the master asks what the last good run deployed and the maximum periodicity has not
passed): `Step.CHECK` when started (only its promises, when due), `Step.SKIP` otherwise;
*waiting* (it keeps failing on the same inputs: exponential back-off, grid/backoff.py):
`Step.WAIT`; otherwise `Step.PROCESS`. Nothing here starts a process or writes a file.
"""
from __future__ import annotations

import contextlib
import os

from slapos.base import tenantfs

from . import backoff
from .job import STARTED, Desired, Job, RunContext, Step, is_offline_error, log
from .node_identity import identity_stamp
from .partition import Partition, PartitionError, software_directory
from .record import report_error


def fetch(ctx: RunContext) -> list[Desired]:
    """The one request to the master: the full computer."""
    from slapos.slap import connect_as

    connection = connect_as(ctx.settings)
    computer = connection.registerComputer(ctx.settings.computer_id)
    desired = []
    for cp in computer.getComputerPartitionList():
        try:
            desired.append(Desired.from_slap(cp))
        except Exception as e:  # one odd partition must not stop the others
            if is_offline_error(e):
                raise
            name = getattr(cp, "_partition_id", "?")
            ctx.summary.failed[str(name)] = f"cannot read what the master wants: {e}"
            log.error("%s: cannot read what the master wants: %s", name, e)
    return desired


class Planner:
    """Decides each partition's step; reads each software release's stamp and periodicity once."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._software_cache: dict[str, tuple[str, int | None]] = {}
        self.identity_stamp = identity_stamp(getattr(ctx.settings, "cert_file", None))

    def plan(self, desired: list[Desired]) -> list[Job]:
        ctx = self.ctx
        summary, options = ctx.summary, ctx.options
        wanted = set(options.only_cp or ())
        known = {d.partition_id for d in desired}
        for unknown in sorted(wanted - known):
            summary.failed[unknown] = "not a partition of this computer (--only-cp)"
            log.error("%s: --only-cp names a partition the master does not know on %s",
                      unknown, ctx.settings.computer_id)
        now = ctx.clock()
        jobs = []
        for d in desired:
            if wanted and d.partition_id not in wanted:
                continue
            if d.is_free:
                continue  # free partitions are `slapos node report`'s business
            try:
                partition = Partition(ctx.settings, d.partition_id)
                partition.check_is_partition()
            except PartitionError as e:
                summary.failed[str(d.partition_id)] = str(e)
                log.error("%s", e)
                report_error(d.handle, str(e))
                continue
            stamp = self.software_stamp(d.software_release_url)
            job = Job(d, partition, partition.load_state(), d.inputs(stamp, self.identity_stamp))
            job.step = self.decide(job, now)
            if job.step is Step.WAIT:  # still failing: the run says so
                failures = summary.promise_failed if job.state.status == "promise-error" else summary.failed
                failures[job.id] = job.state.last_error or "failed"
            jobs.append(job)
        return jobs

    def decide(self, job: Job, now: float) -> Step:
        d, state, options = job.desired, job.state, self.ctx.options
        if options.force or (options.force_stop and d.requested_state == STARTED):
            return Step.PROCESS
        periodicity = self.periodicity(d.software_release_url)
        timestamp, written = job.partition.read_timestamp()
        up_to_date = (
            d.timestamp is not None
            and periodicity != 0
            and timestamp == d.timestamp
            and state.inputs == job.inputs
            and state.status == "ok"
            and (periodicity < 0 or (written is not None and now <= written + periodicity))
        )
        if up_to_date:
            self.ctx.summary.up_to_date += 1
            return Step.CHECK if d.requested_state == STARTED else Step.SKIP
        verdict = backoff.check(state, job.inputs, now)
        if verdict.wait:
            return Step.WAIT
        return Step.PROCESS

    def software_stamp(self, url: str | None) -> str:
        """When the software release was (re)built: a rebuilt release redeploys its partitions."""
        return self._software(url)[0]

    def periodicity(self, url: str | None) -> int:
        """`[slapos] maximum_periodicity`, unless the software release ships a `periodicity` file."""
        value = self._software(url)[1]
        return self.ctx.settings.maximum_periodicity if value is None else value

    def _software(self, url: str | None) -> tuple[str, int | None]:
        if not url:
            return "", None
        if url not in self._software_cache:
            # the software user owns the release: nothing there is followed, nothing blocks us
            software_root = self.ctx.settings.software_root
            directory = software_directory(software_root, url)
            fd = tenantfs.open_below(software_root, directory.name, follow_base=True)
            stamp, periodicity = "missing", None
            if fd is not None:
                try:
                    with contextlib.suppress(OSError):
                        stamp = str(os.stat(".completed", dir_fd=fd, follow_symlinks=False).st_mtime_ns)
                    try:
                        periodicity = int(tenantfs.read_regular("periodicity", 64, dir_fd=fd).strip())
                    except FileNotFoundError:
                        pass
                    except (OSError, ValueError):
                        log.warning("ignoring %s/periodicity: it must be a small file holding a number of seconds",
                                    directory)
                finally:
                    os.close(fd)
            self._software_cache[url] = (stamp, periodicity)
        return self._software_cache[url]
