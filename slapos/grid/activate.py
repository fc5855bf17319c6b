"""Activate: hand the partitions' programs to supervisord and start them.

Built partitions reach supervisord in batches (one reload for every partition ready at that
moment); a partition whose programs were just (re)started goes on to its promises once they have
left STARTING (bounded by `[slapos] service_start_wait`), all watched with one look at
supervisord every START_POLL s. Up-to-date started partitions are *revived*: when supervisord is
not the one a previous run checked (started by `slapos node supervisord`, `configure local`, a
reboot or a `reload`), the programs it never started are started; otherwise supervisord is not
even asked (its identity is kept in `<instance_root>/var/run/supervisord.checked`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from slapos.base.errors import SlapOSError

from .job import STARTED, Job, PartitionLog, RunContext, fail, log, partition_log
from .partition import Partition, PartitionState

START_POLL = 0.1  # seconds between two looks at programs still starting


class Activator:
    """supervisord's side of one run; remembers which supervisord it saw."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        # identities of the supervisord this run saw (see `revive`), and whether all is known well
        self._seen_supervisord: set[str] = set()
        self._supervisord_checked = True
        self._remembered: str | None = None  # the identity already in supervisord.checked

    def start_supervisord(self) -> None:
        self.ctx.supervisor.ensure_running()
        self.observe_supervisord(self.ctx.supervisor.identity())

    # -- processed partitions, in batches ---------------------------------------------------------
    def pipeline(self, ready, total: int, on_started: Callable[[Job], object]) -> None:
        """Hand built partitions (from the queue `ready`, `total` of them) to supervisord as they
        come; pass each to `on_started` once the programs it just (re)started have left STARTING
        (or after `service_start_wait`)."""
        import queue

        start_wait = self.ctx.start_wait
        done = 0
        waiting: dict[str, tuple[Job, float]] = {}
        while done < total or waiting:
            batch = []
            try:
                batch.append(ready.get(timeout=START_POLL if waiting else None))
                while True:
                    batch.append(ready.get_nowait())
            except queue.Empty:
                pass
            done += len(batch)
            if batch:
                try:
                    self.activate(batch)
                except BaseException as e:
                    for job in batch:
                        if job.error is None:
                            fail(job, e)
            for job in batch:
                if job.error is None and job.starting and start_wait > 0 and self._has_promises(job):
                    waiting[job.id] = (job, time.monotonic() + start_wait)
                else:
                    on_started(job)
            if waiting:
                for job in self._started(waiting):
                    on_started(job)

    @staticmethod
    def _has_promises(job: Job) -> bool:
        from .promise import list_promises

        return bool(list_promises(job.partition.path))

    def _started(self, waiting: dict[str, tuple[Job, float]]) -> list[Job]:
        """The waiting partitions whose just-started programs have all left STARTING (or whose
        wait is over); they leave `waiting`."""
        names = [f"{job.id}:{n}" for job, _ in waiting.values() for n in job.starting]
        try:
            starting = self.ctx.supervisor.still_starting(names)
        except SlapOSError as e:  # cannot tell: the promises will say
            log.debug("cannot see which programs are still starting: %s", e)
            starting = set()
        now = time.monotonic()
        released = []
        for job_id, (job, deadline) in list(waiting.items()):
            pending = [n for n in job.starting if f"{job_id}:{n}" in starting]
            if pending and now < deadline:
                continue
            if pending:
                partition_log(job, f"{', '.join(pending)} still starting after {self.ctx.start_wait:g} s "
                              "(service_start_wait): checking the promises anyway")
            del waiting[job_id]
            released.append(job)
        return released

    def activate(self, batch: list[Job]) -> None:
        """Give supervisord the programs of every built partition of the batch (a few calls for
        the whole batch) and start the started ones; stops happen when each partition finishes,
        side by side."""
        sv, force_stop = self.ctx.supervisor, self.ctx.options.force_stop
        applied = [j for j in batch if j.error is None and j.built]
        if applied:
            begin = time.monotonic()
            outcomes = sv.apply_partitions({j.id: (j.programs or [], j.partition.path) for j in applied})
            log.debug("supervisord took %d partition(s) in %.3f s", len(applied), time.monotonic() - begin)
            for job in applied:
                outcome = outcomes.get(job.id)
                if isinstance(outcome, BaseException):
                    fail(job, outcome)
                elif outcome:
                    partition_log(job, f"supervisord: {outcome.describe()}")
        to_start = [j for j in batch if j.error is None and j.state_name == STARTED and not force_stop]
        if not to_start:
            return
        names = {j.id: [p.process_name for p in j.programs or ()] for j in to_start}
        infos = sv.process_infos([f"{j.id}:{n}" for j in to_start for n in names[j.id]])
        for job in to_start:
            # what is not RUNNING now is (re)started by this run: its promises wait for it
            job.starting = [n for n in names[job.id] if infos.get(f"{job.id}:{n}", {}).get("statename") != "RUNNING"]
            job.fatal = [n for n in names[job.id] if infos.get(f"{job.id}:{n}", {}).get("statename") == "FATAL"]
            if job.fatal:
                partition_log(job, f"restarting {', '.join(job.fatal)}: supervisord had given up (FATAL)",
                              logging.WARNING)
        for job_id, error in sv.start_partitions(list(names), names).items():
            fail(next(j for j in to_start if j.id == job_id), error)

    def wait_started(self, jobs: list[Job]) -> None:
        """Wait (at most `service_start_wait`) until the programs these partitions just started
        have left STARTING."""
        start_wait = self.ctx.start_wait
        names = [f"{job.id}:{n}" for job in jobs for n in job.starting]
        if not names or start_wait <= 0:
            return
        deadline = time.monotonic() + start_wait
        try:
            while True:
                starting = self.ctx.supervisor.still_starting(names)
                if not starting:
                    return
                if time.monotonic() >= deadline:
                    log.info("%s still starting after %g s (service_start_wait): checking the promises anyway",
                             ", ".join(sorted(starting)), start_wait)
                    return
                time.sleep(START_POLL)
        except SlapOSError as e:  # cannot tell: the promises will say
            log.debug("cannot see which programs are still starting: %s", e)

    # -- supervisord started by someone else, or again --------------------------------------------
    def revive(self, partitions: list[tuple[Partition, PartitionState]]) -> dict[str, list[str]]:
        """Start the programs of these started partitions that the running supervisord never
        started (its group is missing, or a program is STOPPED with no start time): supervisord
        was started by `slapos node supervisord`, `configure local`, a boot or a `reload`, and
        starts nothing by itself (autostart is off). Programs a user stopped (`slapos node stop`)
        were started before, so they stay stopped — until supervisord itself starts again.

        Costs no XML-RPC while supervisord is the one a previous run checked (its identity —
        pid, start time, pidfile date, boot — is kept in `<instance_root>/var/run/
        supervisord.checked`); otherwise one getAllProcessInfo. Returns the process names
        started, by partition id."""
        sv = self.ctx.supervisor
        identity = sv.identity()
        if identity is not None and identity == sv.last_checked():
            self.observe_supervisord(identity)
            self._remembered = identity
            return {}  # the common path: nothing asked
        try:
            if identity is None:
                if self.ctx.settings.forbid_supervisord_automatic_launch:
                    log.warning("supervisord is not running and forbid_supervisord_automatic_launch is set: the "
                                "services of %d started partition(s) are down; start it with "
                                "'slapos node supervisord'", len(partitions))
                    self._supervisord_checked = False
                    return {}
                sv.ensure_running()  # after a reboot: the services must run again
                identity = sv.identity()
            self.observe_supervisord(identity)
            return self._start_never_started(partitions)
        except SlapOSError as e:  # supervisord does not answer: the next run looks again
            self._revive_failed("supervisord", str(e))
            return {}

    def _start_never_started(self, partitions: list[tuple[Partition, PartitionState]]) -> dict[str, list[str]]:
        from .supervisor import EXITED, STOPPED, collect_programs

        sv = self.ctx.supervisor
        groups: dict[str, list[dict]] = {}
        for info in sv.all_processes():
            groups.setdefault(info["group"], []).append(info)
        todo: dict[str, list[str]] = {}
        missing = {}
        for partition, _state in partitions:
            partition_id = partition.id
            if partition_id not in groups:  # its file was removed, or supervisord has another configuration
                try:
                    programs = collect_programs(partition.path, PartitionLog(partition_id))
                except (OSError, SlapOSError) as e:
                    self._revive_failed(partition_id, f"cannot read its programs: {e}")
                    continue
                if programs:
                    missing[partition_id] = (programs, partition.path)
                    todo[partition_id] = [p.process_name for p in programs]
                continue
            names = [i["name"] for i in groups[partition_id] if i["state"] in (STOPPED, EXITED) and not i["start"]]
            if names:
                todo[partition_id] = names
        if missing:
            for partition_id, outcome in sv.apply_partitions(missing).items():
                if isinstance(outcome, BaseException):
                    todo.pop(partition_id, None)
                    self._revive_failed(partition_id, str(outcome))
        paths = {partition.id: partition.path for partition, _state in partitions}
        for partition_id in list(todo):
            try:  # after a reboot the cgroups are gone: the launcher needs them
                self.ctx.cgroups.ready(partition_id, paths[partition_id])
            except SlapOSError as e:
                todo.pop(partition_id)
                self._revive_failed(partition_id, str(e))
        for partition_id, names in todo.items():
            log.info("%s: starting %s (this supervisord had not started them)", partition_id, ", ".join(names))
        for partition_id, error in sv.start_partitions(list(todo), todo).items():
            todo.pop(partition_id, None)
            self._revive_failed(partition_id, str(error))
        return todo

    def _revive_failed(self, partition_id: str, message: str) -> None:
        log.error("%s: %s", partition_id, message)
        self.ctx.summary.failed[partition_id] = message
        self._supervisord_checked = False  # the next run tries again

    def observe_supervisord(self, identity: str | None) -> None:
        if identity is None:
            self._supervisord_checked = False
        else:
            self._seen_supervisord.add(identity)

    def remember_supervisord(self) -> None:
        """After a run that started (or found running) the programs of every started partition
        under one supervisord, remember it: the next runs need not ask it. Not after --only-cp
        (the other partitions were not looked at) nor when something could not be started."""
        if self.ctx.options.only_cp or not self._supervisord_checked or len(self._seen_supervisord) != 1:
            return
        identity = next(iter(self._seen_supervisord))
        if identity == self._remembered:
            return
        try:
            self.ctx.supervisor.remember_checked(identity)
        except OSError as e:
            log.warning("cannot record which supervisord was checked: %s", e)
