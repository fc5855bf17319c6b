"""`slapos node instance`: make every partition of this computer what the master wants.

Run by cron every minute, on nodes with hundreds of partitions. One run, top to bottom:

1. take the instance lock (one run at a time, exit 10 otherwise);
2. ask the master once for the whole computer (unreachable: leave everything running, exit 3);
3. decide, for each partition, from local files only (kubelet-style reconcile of desired vs
   actual): *up to date* (the master asks what the last good run deployed and the maximum
   periodicity has not passed: only its promises are checked, when due), *waiting* (it keeps
   failing on the same inputs: exponential back-off), or *to process*;
4. process: partitions flow through a pipeline — their buildouts run side by side (`--jobs`,
   through a fork server that imports buildout once), supervisord takes their programs in
   batches (one reload for every partition ready at that moment), then, once the programs just
   (re)started have left STARTING (bounded by `[slapos] service_start_wait`), promises run (one
   that fails right after a start is tried once more, `promise_retry_delay` later) and the
   master is told `started` / `stopped` / the error;
5. up-to-date started partitions: when supervisord is not the one a previous run checked (it was
   started by `slapos node supervisord`, `configure local`, a reboot or a `reload`), start the
   programs it never started; then check the promises whose periodicity has come, side by side;
6. exit 0 (all fine), 1 (a partition failed), 2 (only promises failed), 3 (master unreachable).

A partition that fails never stops the others: its error is reported to the master, kept in
`<partition>/.slapgrid/state.json` and shown by `slapos node status --partitions`. Every file is
written atomically, so a run killed at any point leaves nothing the next run cannot finish.
The no-change path makes one request to the master, starts no process and does not talk to
supervisord (it reads supervisord's pidfile and /proc to know it is the one already checked).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from slapos.base import tenantfs
from slapos.base.errors import EXIT_FAILED, EXIT_OFFLINE, EXIT_OK, EXIT_PROMISE_FAILED, SlapOSError
from slapos.base.safetext import UnsafeValue, buildout_value

from . import backoff, observe
from .lock import RunLock
from .partition import Partition, PartitionError, PartitionState, software_directory, truncate

log = logging.getLogger("slapos.instance")

STARTED, STOPPED, DESTROYED = "started", "stopped", "destroyed"
FINISH_WORKERS = 8  # partitions whose promises and reports run at once
PROMISE_WORKERS = 16  # promise processes running at once
SERVICE_START_WAIT = 5.0  # [slapos] service_start_wait: longest wait for programs to leave STARTING
PROMISE_RETRY_DELAY = 1.0  # [slapos] promise_retry_delay: before retrying a promise failing after a start
START_POLL = 0.1  # seconds between two looks at programs still starting

# buildout.cfg = the software release's instance profile + this tail (SLAP-PROTOCOL §6.5)
PROFILE_LIMIT = 8 << 20  # bytes of a release's instance.cfg read into a partition's buildout.cfg


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


PROFILE_TAIL = """

# This is beginning of zc.buildout profile's tail added by slapgrid
[buildout]
# put buildout generated binaries in specific directory
bin-directory = ${{buildout:directory}}/sbin

# protect software and run parts offline
offline = true

[slap-connection]
computer-id = {computer_id}
partition-id = {partition_id}
server-url = {server_url}
software-release-url = {software_release_url}
key-file = {key_file}
cert-file = {cert_file}
master-ca-file = {master_ca_file}
shared-part-list =
  {shared_part_list}
build-time-part-list =
  {build_time_part_list}
requested-state = {requested_state}

[slap_connection]
# Kept for backward compatiblity
computer_id = {computer_id}
partition_id = {partition_id}
server_url = {server_url}
software_release_url = {software_release_url}
key_file = {key_file}
cert_file = {cert_file}
master_ca_file = {master_ca_file}

[storage-configuration]
storage-home = {storage_home}

[network-information]
global-ipv4-network = {ipv4_global_network}
# This is end of zc.buildout profile's tail added by slapgrid
"""


def partition_master_url(node_url: str, relative: str | None) -> str:
    """The master URL a partition gets in its [slap-connection]. With a proxy in `access =
    credentials` mode the node's own URL carries the node credential, which must never reach a
    partition: the partition gets the URL of its own credential (`relative` to the node's, from
    the computer document), or nothing at all (docs/security-proxy.md)."""
    from urllib.parse import urljoin

    from slapos.slap.connection import CREDENTIAL_RE, normalize_master_url, url_credential

    if url_credential(node_url) is None:
        return node_url  # a master without credentials in URLs (any SLAP master, an open proxy)
    if relative is None:
        raise PartitionError(
            "the master gave no credential for this partition, and the node's own master_url carries the node "
            "credential: refusing to hand it to the partition (is the proxy older than this node, or not in access = credentials mode?)"
        )
    parts = relative.split("/")
    if len(parts) != 3 or parts[0] != ".." or parts[2] != "" or not CREDENTIAL_RE.match(parts[1]):
        raise PartitionError(f"the master gave a malformed master URL for this partition: {relative[:80]!r}")
    return urljoin(normalize_master_url(node_url), relative)


class Step(Enum):
    PROCESS = "process"
    CHECK = "check"  # up to date and started: periodic promise check only
    SKIP = "skip"  # up to date, nothing to do
    WAIT = "wait"  # back-off


@dataclass
class InstanceOptions:
    only_cp: list[str] | None = None
    force: bool = False  # ignore timestamps and periodicity (also --develop, --all)
    force_stop: bool = False
    buildout_debug: bool = False
    jobs: int = 1
    now: bool = False  # no random start delay
    maximal_delay: int | None = None


@dataclass
class Desired:
    """What the master wants for one partition (decoded once from the full computer)."""

    partition_id: str
    requested_state: str | None
    software_release_url: str | None
    software_type: str | None
    parameters: dict
    timestamp: str | None
    retention_delay: float
    handle: Any  # slapos.slap.ComputerPartition, to report
    # the partition's own master URL relative to the node's (our proxy with access = credentials)
    master_url: str | None = None

    @classmethod
    def from_slap(cls, cp) -> Desired:
        parameters = dict(cp.getInstanceParameterDict() or {})
        release = cp.getSoftwareRelease()
        url = release.getURI() if release is not None else None
        timestamp = parameters.get("timestamp")
        filters = getattr(cp, "_filter_dict", None) or {}
        try:
            retention = float(filters.get("retention_delay") or 0)
        except (TypeError, ValueError):
            retention = 0.0
        return cls(
            partition_id=cp.getId(),
            requested_state=cp.getState(),
            software_release_url=url,
            software_type=parameters.get("slap_software_type"),
            parameters=parameters,
            timestamp=str(timestamp) if timestamp not in (None, "") else None,
            retention_delay=retention,
            handle=cp,
            master_url=getattr(cp, "_slapnode_master_url", None),
        )

    @property
    def is_free(self) -> bool:
        return self.requested_state == DESTROYED and not self.software_release_url

    def inputs(self, software_stamp: str = "") -> str:
        """Digest of everything that, when changed, means the partition must be deployed again."""
        data = [self.timestamp, self.software_release_url, self.software_type, self.requested_state,
                self.parameters, software_stamp]
        if self.master_url is not None:  # a new credential (upgraded proxy): write the profile again
            data.append(self.master_url)
        text = json.dumps(data, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


@dataclass
class Job:
    """One partition through one run."""

    desired: Desired
    partition: Partition
    state: PartitionState
    inputs: str
    step: Step = Step.PROCESS
    started_at: float = 0.0
    programs: list | None = None  # supervisor.Program list, once built
    error: str | None = None  # processing failed
    promise_error: str | None = None
    offline: bool = False  # the master could not be reached or told
    error_offline: bool = False  # ... and that is why it failed
    fatal: list[str] = field(default_factory=list)  # services supervisord gave up on
    built: bool = False
    starting: list[str] = field(default_factory=list)  # process names (re)started by this run

    @property
    def id(self) -> str:
        return self.partition.partition_id

    @property
    def state_name(self) -> str | None:
        return self.desired.requested_state


@dataclass
class RunSummary:
    processed: list[str] = field(default_factory=list)
    up_to_date: int = 0
    checked: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    promise_failed: dict[str, str] = field(default_factory=dict)
    offline: bool = False

    @property
    def exit_code(self) -> int:
        if self.failed:
            return EXIT_FAILED
        if self.promise_failed:
            return EXIT_PROMISE_FAILED
        if self.offline:
            return EXIT_OFFLINE
        return EXIT_OK


def _seconds(config, key: str, default: float) -> float:
    """A duration of [slapos] (0 or more seconds); the default without a configuration."""
    from slapos.base.errors import ConfigError

    if config is None:
        return default
    value = config.get_float("slapos", key, default)
    if value < 0:
        raise ConfigError(f"{key} in [slapos] must be 0 or more seconds, not {value:g}")
    return value


def _is_offline_error(error: BaseException) -> bool:
    from slapos.slap.exceptions import ConnectionError as SlapConnectionError
    from slapos.slap.exceptions import ServerError

    return isinstance(error, (SlapConnectionError, ServerError))


class InstanceRun:
    """One `slapos node instance` run."""

    def __init__(self, settings, options: InstanceOptions | None = None, supervisor=None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.options = options or InstanceOptions()
        self._supervisor = supervisor
        self.clock = clock
        self.summary = RunSummary()
        self._software_cache: dict[str, tuple[str, int | None]] = {}
        self._forkserver = None
        self._forkserver_lock = threading.Lock()
        config = getattr(settings, "config", None)
        self.start_wait = _seconds(config, "service_start_wait", SERVICE_START_WAIT)
        self.retry_delay = _seconds(config, "promise_retry_delay", PROMISE_RETRY_DELAY)
        # identities of the supervisord this run saw (see `revive`), and whether all is known well
        self._seen_supervisord: set[str] = set()
        self._supervisord_checked = True
        self._remembered: str | None = None  # the identity already in supervisord.checked
        self._run_began = time.monotonic()

    # -- the run, top to bottom --------------------------------------------------------------------
    def run(self) -> int:
        with RunLock(self.settings.pidfile_instance, "slapos node instance"):
            self.random_delay()
            try:
                desired = self.fetch()
            except Exception as e:
                if not _is_offline_error(e):
                    raise
                return self.observed(self.offline(e))
            jobs = self.plan(desired)
            try:
                self.process([j for j in jobs if j.step is Step.PROCESS])
                self.check_promises([j for j in jobs if j.step is Step.CHECK])
            finally:
                self.close()
            self.remember_supervisord()
            self.log_summary(jobs)
            return self.observed(self.summary.exit_code)

    def observed(self, exit_code: int) -> int:
        """Metrics and status for operators (grid/observe.py), still under the run lock."""
        s = self.summary
        changed = bool(s.processed or s.checked or s.failed or s.promise_failed)
        observe.after_instance_run(self.settings, time.monotonic() - self._run_began, exit_code, changed)
        return exit_code

    def random_delay(self) -> None:
        delay = self.options.maximal_delay
        if delay is None:
            delay = self.settings.maximal_delay
        if delay and not self.options.now:
            import random

            seconds = random.uniform(1, delay)
            log.info("sleeping %.0f s before starting (maximal_delay; --now skips it)", seconds)
            time.sleep(seconds)

    def fetch(self) -> list[Desired]:
        """The one request to the master: the full computer."""
        from slapos.slap import connect_as

        connection = connect_as(self.settings)
        computer = connection.registerComputer(self.settings.computer_id)
        desired = []
        for cp in computer.getComputerPartitionList():
            try:
                desired.append(Desired.from_slap(cp))
            except Exception as e:  # one odd partition must not stop the others
                if _is_offline_error(e):
                    raise
                name = getattr(cp, "_partition_id", "?")
                self.summary.failed[str(name)] = f"cannot read what the master wants: {e}"
                log.error("%s: cannot read what the master wants: %s", name, e)
        return desired

    @property
    def supervisor(self):
        if self._supervisor is None:
            from .supervisor import Supervisor

            self._supervisor = Supervisor(self.settings)
        return self._supervisor

    @property
    def cgroups(self):
        """The partitions' cgroups (slapos.grid.cgroup), shared with supervisord's launcher."""
        cgroups = getattr(self.supervisor, "cgroups", None)
        if cgroups is None:  # a supervisor of someone else's making (tests)
            from .cgroup import NodeCgroups

            cgroups = self.__dict__.setdefault("_cgroups", NodeCgroups(self.settings))
        return cgroups

    # -- 3. decide ----------------------------------------------------------------------------------
    def plan(self, desired: list[Desired]) -> list[Job]:
        wanted = set(self.options.only_cp or ())
        known = {d.partition_id for d in desired}
        for unknown in sorted(wanted - known):
            self.summary.failed[unknown] = "not a partition of this computer (--only-cp)"
            log.error("%s: --only-cp names a partition the master does not know on %s",
                      unknown, self.settings.computer_id)
        now = self.clock()
        jobs = []
        for d in desired:
            if wanted and d.partition_id not in wanted:
                continue
            if d.is_free:
                continue  # free partitions are `slapos node report`'s business
            try:
                partition = Partition(self.settings, d.partition_id)
                partition.check_is_partition()
            except PartitionError as e:
                self.summary.failed[str(d.partition_id)] = str(e)
                log.error("%s", e)
                self.report_error(d.handle, str(e))
                continue
            stamp = self.software_stamp(d.software_release_url)
            job = Job(d, partition, partition.load_state(), d.inputs(stamp))
            job.step = self.decide(job, now)
            if job.step is Step.WAIT:  # still failing: the run says so
                failures = self.summary.promise_failed if job.state.status == "promise-error" else self.summary.failed
                failures[job.id] = job.state.last_error or "failed"
            jobs.append(job)
        return jobs

    def decide(self, job: Job, now: float) -> Step:
        d, state = job.desired, job.state
        if self.options.force or (self.options.force_stop and d.requested_state == STARTED):
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
            self.summary.up_to_date += 1
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
        return self.settings.maximum_periodicity if value is None else value

    def _software(self, url: str | None) -> tuple[str, int | None]:
        if not url:
            return "", None
        if url not in self._software_cache:
            # the software user owns the release: nothing there is followed, nothing blocks us
            directory = software_directory(self.settings.software_root, url)
            fd = tenantfs.open_below(self.settings.software_root, directory.name, follow_base=True)
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

    # -- 4. process -----------------------------------------------------------------------------------
    def process(self, jobs: list[Job]) -> None:
        """Build side by side, hand ready partitions to supervisord in batches, then finish each."""
        if not jobs:
            return
        import queue
        from concurrent.futures import ThreadPoolExecutor

        if not self.options.buildout_debug:  # its start (~0.2 s) overlaps with what follows
            threading.Thread(target=self.forkserver, name="forkserver-start", daemon=True).start()
        self.supervisor.ensure_running()
        self.observe_supervisord(self.supervisor.identity())
        ready: queue.Queue[Job] = queue.Queue()
        # (the promise pool is left last: finishing partitions use it)
        with ThreadPoolExecutor(PROMISE_WORKERS, thread_name_prefix="promise") as promises, \
                ThreadPoolExecutor(FINISH_WORKERS, thread_name_prefix="finish") as finishers:
            activator = threading.Thread(target=self._activate_all, name="activate",
                                         args=(ready, len(jobs), finishers, promises))
            activator.start()
            with ThreadPoolExecutor(max(1, self.options.jobs), thread_name_prefix="build") as builders:
                for job in jobs:
                    builders.submit(self._build_guarded, job, ready)
            activator.join()

    def _build_guarded(self, job: Job, ready) -> None:
        job.started_at = self.clock()
        try:
            self.build(job)
        except BaseException as e:  # a crash of our own code is this partition's failure
            self.fail(job, e)
        finally:
            ready.put(job)

    def build(self, job: Job) -> None:
        """Everything before supervisord: software release, certificate, profile, buildout."""
        d, partition = job.desired, job.partition
        self.partition_log(job, f"processing (requested state: {d.requested_state})")
        partition.remove_request_transaction()
        partition.remove_error_log()
        if d.requested_state not in (STARTED, STOPPED, DESTROYED):
            raise PartitionError(f"unknown requested state {d.requested_state!r}")
        if d.requested_state == DESTROYED:
            return  # only stopped here; `slapos node report` destroys
        if not d.software_release_url:
            raise PartitionError("the master gave no software release for this partition")
        software = software_directory(self.settings.software_root, d.software_release_url)
        template = self.instance_profile(software, d.software_release_url)
        self.refresh_certificate(job)
        partition.link_software_release(software)
        partition.write_buildout_cfg(self.render_profile(job, template))
        self.run_buildout(job)
        job.built = True
        partition.write_retention_delay(d.retention_delay)  # once: `node report` reads it
        from .supervisor import collect_programs

        job.programs = collect_programs(partition.path, _PartitionLog(job.id))
        self.cgroups.ready(job.id, partition.path, deploy=True)  # limits the profile may have asked for

    def instance_profile(self, software: Path, url: str) -> str:
        """The text of the release's `instance.cfg` (or `template.cfg`). The software user owns
        the release: the file is read through a descriptor of its directory, as a regular file
        (a link to a file of root, a FIFO, a device are refused), of bounded size."""
        fd = tenantfs.open_below(self.settings.software_root, software.name, follow_base=True)
        try:
            if fd is None or not _exists(".completed", fd):
                raise PartitionError(
                    f"software release {url} is not installed on this node yet ({software} has no .completed): "
                    "it is built by 'slapos node software'"
                )
            builder = os.fstat(fd).st_uid  # a file of anyone else (root's, hard-linked) is refused
            for name in ("instance.cfg", "template.cfg"):
                try:
                    data = tenantfs.read_regular(name, PROFILE_LIMIT, dir_fd=fd, uid=builder)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise PartitionError(f"refusing {software / name}: {e.strerror or e}") from None
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    raise PartitionError(f"{software / name} is not UTF-8 text") from None
        finally:
            if fd is not None:
                os.close(fd)
        raise PartitionError(f"software release {url} has no instance.cfg (nor template.cfg) in {software}")

    def refresh_certificate(self, job: Job) -> None:
        if not self.settings.certificate_repository_path:
            return
        certificate = job.desired.handle.getCertificate() or {}
        if job.partition.write_certificate(certificate.get("certificate"), certificate.get("key")):
            self.partition_log(job, "certificate written")

    def render_profile(self, job: Job, template: str) -> str:
        s, d = self.settings, job.desired
        certs = job.partition.certificate_files()  # empty when the master gave none (reference)
        values = {
            "computer_id": s.computer_id,
            "partition_id": job.id,
            "server_url": partition_master_url(s.master_url, d.master_url),
            "software_release_url": d.software_release_url,
            "key_file": str(certs[1]) if certs else "",
            "cert_file": str(certs[0]) if certs else "",
            # the CA verifying the master (a proxy's own CA, docs/join.md): empty for the system CAs
            "master_ca_file": str(s.master_ca_file) if s.master_ca_file else "",
            "requested_state": d.requested_state,
            "storage_home": s.instance_storage_home or "",
            "ipv4_global_network": s.ipv4_global_network or "",
        }
        where = f"the instance profile of {job.id}"
        try:
            values = {key: buildout_value(key, value, where) for key, value in values.items()}
            for key, items in (("shared_part_list", s.shared_part_list), ("build_time_part_list", s.build_time_part_list)):
                values[key] = "\n  ".join(buildout_value(key, item, where) for item in items)
        except UnsafeValue as e:
            raise PartitionError(str(e)) from None
        return template + PROFILE_TAIL.format(**values)

    def run_buildout(self, job: Job) -> None:
        from . import process
        from .buildout import (
            RUNNER_MODULE,
            buildout_argv,
            buildout_environment,
            release_buildout,
            run_buildout,
        )

        path = job.partition.path
        identity = process.identity_for(path, f"the buildout of partition {job.id}")
        identity = self.cgroups.place(identity, job.id, path)
        env = buildout_environment(path, self.settings, SLAPGRID_INSTANCE_ROOT=str(self.settings.instance_root))
        timeout = self.settings.partition_timeout
        progress = _PartitionLog(job.id)

        def on_line(line: str) -> None:
            progress.debug("%s", line)

        self.partition_log(job, "running buildout")
        argv = buildout_argv(path)
        args = argv[argv.index(RUNNER_MODULE) + 1:]
        own = release_buildout(software_directory(self.settings.software_root, job.desired.software_release_url))
        if self.options.buildout_debug:
            result = run_buildout(path, self.settings, identity, timeout=timeout, debug=True, env=env)
        else:
            from .forkserver import ForkServerGone

            result = None
            with job.partition.open_log() as log_file:  # opened safely here, appended by the run
                if own is not None:
                    # the release brought its own buildout (as on the reference): it runs the profile
                    self.partition_log(job, f"running the software release's own {own}")
                    result = process.run([str(own), *args], cwd=path, env=env, identity=identity, umask=0o027,
                                         timeout=timeout, log_file=log_file, on_line=on_line)
                else:
                    server = self.forkserver()
                    if server is not None:
                        try:
                            result = server.run(args, cwd=path, env=env, identity=identity, timeout=timeout,
                                                log_file=log_file, on_line=on_line)
                        except ForkServerGone as e:
                            self.partition_log(job, f"{e}: running buildout as a process of its own",
                                               logging.WARNING)
                    if result is None:
                        result = run_buildout(path, self.settings, identity, timeout=timeout, log_file=log_file,
                                              on_line=on_line, env=env)
        if not result.ok:
            lines = [line.strip() for line in result.output.splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if line.startswith("Error:")), lines[-1] if lines else "")
            reason = reason.removeprefix("Error:").strip() or "no output"
            raise PartitionError(f"buildout failed: {reason} (exit {result.returncode})\n{result.tail(40)}")
        self.partition_log(job, f"buildout done in {result.duration:.2f} s")

    def forkserver(self):
        """The buildout fork server, started on first use; None if it cannot run (then each
        buildout is a process of its own)."""
        with self._forkserver_lock:
            if self._forkserver is None:
                from .forkserver import ForkServer

                server = ForkServer()
                try:
                    server.start()
                except SlapOSError as e:
                    log.warning("%s: running each buildout as a process of its own", e)
                    server = False
                self._forkserver = server
            return self._forkserver or None

    def close(self) -> None:
        if self._forkserver:
            self._forkserver.close()
        self._forkserver = None

    # -- supervisord, in batches --------------------------------------------------------------------
    def _activate_all(self, ready, total: int, finishers, promises) -> None:
        """Hand built partitions to supervisord as they come; a partition whose programs were
        just (re)started goes on to its promises once they have left STARTING (or after
        `service_start_wait`), all watched with one look at supervisord every START_POLL s."""
        import queue

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
                            self.fail(job, e)
            for job in batch:
                if job.error is None and job.starting and self.start_wait > 0 and self._has_promises(job):
                    waiting[job.id] = (job, time.monotonic() + self.start_wait)
                else:
                    finishers.submit(self._finish_guarded, job, promises)
            if waiting:
                for job in self._started(waiting):
                    finishers.submit(self._finish_guarded, job, promises)

    @staticmethod
    def _has_promises(job: Job) -> bool:
        from .promise import list_promises

        return bool(list_promises(job.partition.path))

    def _started(self, waiting: dict[str, tuple[Job, float]]) -> list[Job]:
        """The waiting partitions whose just-started programs have all left STARTING (or whose
        wait is over); they leave `waiting`."""
        names = [f"{job.id}:{n}" for job, _ in waiting.values() for n in job.starting]
        try:
            starting = self.supervisor.still_starting(names)
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
                self.partition_log(job, f"{', '.join(pending)} still starting after {self.start_wait:g} s "
                                   "(service_start_wait): checking the promises anyway")
            del waiting[job_id]
            released.append(job)
        return released

    def activate(self, batch: list[Job]) -> None:
        """Give supervisord the programs of every built partition of the batch (a few calls for
        the whole batch) and start the started ones; stops happen in `finish`, side by side."""
        sv = self.supervisor
        applied = [j for j in batch if j.error is None and j.built]
        if applied:
            begin = time.monotonic()
            outcomes = sv.apply_partitions({j.id: (j.programs or [], j.partition.path) for j in applied})
            log.debug("supervisord took %d partition(s) in %.3f s", len(applied), time.monotonic() - begin)
            for job in applied:
                outcome = outcomes.get(job.id)
                if isinstance(outcome, BaseException):
                    self.fail(job, outcome)
                elif outcome:
                    self.partition_log(job, f"supervisord: {outcome.describe()}")
        to_start = [j for j in batch if j.error is None and j.state_name == STARTED and not self.options.force_stop]
        if not to_start:
            return
        names = {j.id: [p.process_name for p in j.programs or ()] for j in to_start}
        infos = sv.process_infos([f"{j.id}:{n}" for j in to_start for n in names[j.id]])
        for job in to_start:
            # what is not RUNNING now is (re)started by this run: its promises wait for it
            job.starting = [n for n in names[job.id] if infos.get(f"{job.id}:{n}", {}).get("statename") != "RUNNING"]
            job.fatal = [n for n in names[job.id] if infos.get(f"{job.id}:{n}", {}).get("statename") == "FATAL"]
            if job.fatal:
                self.partition_log(job, f"restarting {', '.join(job.fatal)}: supervisord had given up (FATAL)",
                                   logging.WARNING)
        for job_id, error in sv.start_partitions(list(names), names).items():
            self.fail(next(j for j in to_start if j.id == job_id), error)

    # -- promises and reports ---------------------------------------------------------------------------
    def _finish_guarded(self, job: Job, promises) -> None:
        try:
            self.finish(job, promises)
        except BaseException as e:
            log.exception("%s: unexpected error while finishing", job.id)
            self.fail(job, e)
            self.record(job)

    def finish(self, job: Job, promises) -> None:
        d = job.desired
        stop = d.requested_state in (STOPPED, DESTROYED) or (d.requested_state == STARTED and self.options.force_stop)
        if stop:
            try:  # stopped even when buildout failed (what it ran before, and what it has now)
                known = set(job.state.programs) | {p.process_name for p in job.programs or ()}
                self.supervisor.stop_partition(job.id, names=sorted(known) if known else None)
            except Exception as e:
                self.fail(job, e)
        if job.error is None and d.requested_state == STARTED and not self.options.force_stop:
            self.run_promises(job, promises)
            if job.promise_error is None and job.fatal:
                job.promise_error = (f"service(s) {', '.join(job.fatal)} failed repeatedly (FATAL) and were "
                                     "restarted")
        self.report(job)
        self.record(job)

    def run_promises(self, job: Job, pool) -> None:
        from . import process
        from .promise import PromiseRunner, failure_message, first_failure

        identity = process.identity_for(job.partition.path, f"the promises of partition {job.id}")
        identity = self.cgroups.place(identity, job.id, job.partition.path)
        runner = PromiseRunner(self.settings, job.partition, identity=identity, clock=self.clock)
        results = runner.run(mode="test", force=True, pool=pool)
        if job.starting:  # a service may still be opening its port: one more chance
            results = runner.retry_failed(results, self.retry_delay, pool=pool,
                                          on_retry=lambda titles: self._log_retry(job, titles))
        failed = first_failure(results)
        if failed is not None:
            job.promise_error = failure_message(failed)
        job.state.next_promise_check = runner.next_check()
        if failed is not None:  # the one line saying why the run exits 2
            self.partition_log(job, job.promise_error, logging.ERROR)
        elif results:
            self.partition_log(job, f"{len(results)} promise(s): all fine")

    def _log_retry(self, job: Job, titles: list[str]) -> None:
        self.partition_log(job, f"promise(s) {', '.join(titles)} failed right after the services (re)started: "
                           f"trying again in {self.retry_delay:g} s")

    def report(self, job: Job) -> None:
        """Tell the master how it went (errors truncated, S12)."""
        d, cp = job.desired, job.desired.handle
        message = job.error or job.promise_error
        try:
            if message is not None:
                cp.error(truncate(message), logger=log)
                job.state.reported = "error"
            elif d.requested_state == STARTED and not self.options.force_stop:
                cp.started()
                job.state.reported = STARTED
            elif d.requested_state in (STOPPED, DESTROYED) or self.options.force_stop:
                cp.stopped()
                job.state.reported = STOPPED
        except Exception as e:
            if not _is_offline_error(e):
                raise
            job.offline = True
            self.partition_log(job, f"could not report to the master: {e}", logging.WARNING)

    def record(self, job: Job) -> None:
        """Remember the outcome (state.json, .timestamp, the error log) and count it."""
        state, d, partition = job.state, job.desired, job.partition
        state.requested_state = d.requested_state
        state.software_release_url = d.software_release_url
        state.software_type = d.software_type
        state.last_attempt = job.started_at
        if job.programs is not None:
            state.programs = [p.process_name for p in job.programs]
        message = job.error or job.promise_error
        if job.offline:  # the master could not be reached or told: the next run does it again
            self.summary.offline = True
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
                self.summary.failed[job.id] = message
            else:
                self.summary.promise_failed[job.id] = message
        elif not job.offline:
            state.status = "ok"
            state.last_error = None
            # after --force-stop the services are down on purpose: the next normal run deploys again
            state.inputs = None if self.options.force_stop else job.inputs
            state.last_success = self.clock()
            backoff.record_success(state)
        try:
            partition.save_state(state)
            if message is None and not job.offline and d.timestamp is not None and not self.options.force_stop:
                partition.write_timestamp(d.timestamp)
            elif message is not None or job.offline:
                partition.remove_timestamp()
        except OSError as e:
            log.error("%s: cannot record its state: %s", job.id, e)
            self.summary.failed.setdefault(job.id, f"cannot record its state: {e}")
        self.summary.processed.append(job.id)
        if message is None and not job.offline:
            self.partition_log(job, f"{d.requested_state}: done in {self.clock() - job.started_at:.2f} s")

    def fail(self, job: Job, error: BaseException | str) -> None:
        if isinstance(error, BaseException) and _is_offline_error(error) and job.error is None:
            job.offline = job.error_offline = True  # not the partition's fault: no back-off
        if isinstance(error, str):
            text = error
        elif isinstance(error, SlapOSError):
            text = str(error)
        else:
            log.debug("%s: traceback", job.id, exc_info=error)
            text = f"{type(error).__name__}: {error}"
        if job.error is None:
            job.error = text
            # one line on the console (a buildout failure carries its output's last 40 lines: they
            # are already in the partition's log, and go whole to the error log and the master)
            first, newline, _ = text.partition("\n")
            where = f"; the full error is in {job.partition.error_log_path}" if newline else ""
            self.partition_log(job, f"failed: {first}{where}", logging.ERROR)

    def report_error(self, cp, message: str) -> None:
        try:
            cp.error(truncate(message), logger=log)
        except Exception as e:  # best effort
            log.debug("cannot report an error: %s", e)

    # -- 5. up-to-date started partitions -----------------------------------------------------------
    def check_promises(self, jobs: list[Job]) -> None:
        """Up-to-date started partitions: their programs run (see `revive`), then the promises
        whose periodicity has come are checked (anomaly mode). Costs nothing when none is due:
        the next due time is kept in the partition's state."""
        if not jobs:
            return
        revived = self.revive([(j.partition, j.state) for j in jobs])
        for job in jobs:
            job.starting = revived.get(job.id, [])
        now = self.clock()
        due = [j for j in jobs if j.state.next_promise_check is not None and j.state.next_promise_check <= now]
        if not due:
            return
        from concurrent.futures import ThreadPoolExecutor

        from . import process
        from .promise import PromiseRunner, list_promises

        work = []
        for job in due:
            try:
                identity = process.identity_for(job.partition.path, f"the promises of partition {job.id}")
                identity = self.cgroups.place(identity, job.id, job.partition.path)
                runner = PromiseRunner(self.settings, job.partition, identity=identity, clock=self.clock)
                work.append((job, runner, list_promises(job.partition.path)))
            except SlapOSError as e:
                self.summary.failed[job.id] = str(e)
                log.error("%s: %s", job.id, e)
        self.wait_started([job for job, _, promises in work if promises])
        with ThreadPoolExecutor(PROMISE_WORKERS, thread_name_prefix="promise") as pool:
            futures = [(job, runner, promises, pool.submit(self._anomaly, job, runner, promises))
                       for job, runner, promises in work]
            outcomes = [(job, runner, promises, f.result()) for job, runner, promises, f in futures]
        for job, runner, promises, results in outcomes:
            self.record_check(job, runner, promises, results)

    def _anomaly(self, job: Job, runner, promises) -> list:
        results = runner.run("anomaly", False, None, promises)
        if job.starting:  # started by this run: a service may still be opening its port
            results = runner.retry_failed(results, self.retry_delay, mode="anomaly", promises=promises,
                                          on_retry=lambda titles: self._log_retry(job, titles))
        return results

    def record_check(self, job: Job, runner, promises, results) -> None:
        """Tell the master when the verdict changed, and remember it."""
        from .promise import failure_message, first_failure

        self.summary.checked.append(job.id)
        failed = first_failure(results)
        state = job.state
        state.next_promise_check = runner.next_check(promises)
        try:
            if failed is not None:
                message = failure_message(failed)
                self.summary.promise_failed[job.id] = message
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
            if not _is_offline_error(e):
                raise
            self.summary.offline = True
        job.partition.save_state(state)

    def wait_started(self, jobs: list[Job]) -> None:
        """Wait (at most `service_start_wait`) until the programs these partitions just started
        have left STARTING."""
        names = [f"{job.id}:{n}" for job in jobs for n in job.starting]
        if not names or self.start_wait <= 0:
            return
        deadline = time.monotonic() + self.start_wait
        try:
            while True:
                starting = self.supervisor.still_starting(names)
                if not starting:
                    return
                if time.monotonic() >= deadline:
                    log.info("%s still starting after %g s (service_start_wait): checking the promises anyway",
                             ", ".join(sorted(starting)), self.start_wait)
                    return
                time.sleep(START_POLL)
        except SlapOSError as e:  # cannot tell: the promises will say
            log.debug("cannot see which programs are still starting: %s", e)

    # -- supervisord started by someone else, or again ---------------------------------------------------
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
        sv = self.supervisor
        identity = sv.identity()
        if identity is not None and identity == sv.last_checked():
            self.observe_supervisord(identity)
            self._remembered = identity
            return {}  # the common path: nothing asked
        try:
            if identity is None:
                if self.settings.forbid_supervisord_automatic_launch:
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

        sv = self.supervisor
        groups: dict[str, list[dict]] = {}
        for info in sv.all_processes():
            groups.setdefault(info["group"], []).append(info)
        todo: dict[str, list[str]] = {}
        missing = {}
        for partition, _state in partitions:
            partition_id = partition.id
            if partition_id not in groups:  # its file was removed, or supervisord has another configuration
                try:
                    programs = collect_programs(partition.path, _PartitionLog(partition_id))
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
                self.cgroups.ready(partition_id, paths[partition_id])
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
        self.summary.failed[partition_id] = message
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
        if self.options.only_cp or not self._supervisord_checked or len(self._seen_supervisord) != 1:
            return
        identity = next(iter(self._seen_supervisord))
        if identity == self._remembered:
            return
        try:
            self.supervisor.remember_checked(identity)
        except OSError as e:
            log.warning("cannot record which supervisord was checked: %s", e)

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
                self.revive(started)
                self.remember_supervisord()
        except (OSError, SlapOSError) as e:
            log.error("offline mode: %s", e)
            return EXIT_FAILED
        return EXIT_FAILED if self.summary.failed else EXIT_OFFLINE

    # -- logs ----------------------------------------------------------------------------------------------
    def partition_log(self, job: Job, message: str, level: int = logging.INFO) -> None:
        log.log(level, "%s: %s", job.id, message)
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            job.partition.append_log(f"{stamp} {logging.getLevelName(level)} {message}\n")
        except (OSError, SlapOSError):
            pass

    def log_summary(self, jobs: list[Job]) -> None:
        s = self.summary
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


class _PartitionLog(logging.LoggerAdapter):
    """Log lines that name the partition."""

    def __init__(self, partition_id: str):
        super().__init__(log, {})
        self.partition_id = partition_id

    def process(self, msg, kwargs):
        return f"{self.partition_id}: {msg}", kwargs


def run_instance(settings, options: InstanceOptions | None = None) -> int:
    """Entry point used by the CLI."""
    return InstanceRun(settings, options).run()


def run_node_promise(settings, only_cp: list[str] | None = None) -> int:
    """`slapos node promise`: run every promise of the started partitions now; no report.
    Exit 0 when all pass, 2 when one fails (1 for a partition that cannot be checked)."""
    from concurrent.futures import ThreadPoolExecutor

    from . import process
    from .promise import PromiseRunner
    from .status import partition_ids

    with RunLock(settings.pidfile_instance, "slapos node instance"):
        run = InstanceRun(settings)
        cgroups = run.cgroups
        try:
            started = [d.partition_id for d in run.fetch() if d.requested_state == STARTED and d.software_release_url]
        except Exception as e:
            if not _is_offline_error(e):
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
