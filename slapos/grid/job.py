"""What one `slapos node instance` run carries from step to step (docs/architecture-grid.md).

The steps (plan.py, build.py, activate.py, probe.py, record.py) share these types and nothing
else: the options of the run, what the master wants for one partition (`Desired`), one partition
on its way through a run (`Job`), the run's tally (`RunSummary`), and `RunContext` — settings,
options, clock, tally, supervisord and cgroups — so that `node instance` and a long-running loop
can drive the same steps, and a test can drive one step alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from slapos.base.errors import EXIT_FAILED, EXIT_OFFLINE, EXIT_OK, EXIT_PROMISE_FAILED, SlapOSError

from .partition import Partition, PartitionState

log = logging.getLogger("slapos.instance")

STARTED, STOPPED, DESTROYED = "started", "stopped", "destroyed"
SERVICE_START_WAIT = 5.0  # [slapos] service_start_wait: longest wait for programs to leave STARTING
PROMISE_RETRY_DELAY = 1.0  # [slapos] promise_retry_delay: before retrying a promise failing after a start


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

    def inputs(self, software_stamp: str = "", identity_stamp: str = "") -> str:
        """Digest of everything that, when changed, means the partition must be deployed again.
        `identity_stamp`: the node's own certificate (see Planner): a node registered again
        fetches each partition's certificate again and writes it into the profile."""
        data = [self.timestamp, self.software_release_url, self.software_type, self.requested_state,
                self.parameters, software_stamp]
        if self.master_url is not None:  # a new credential (upgraded proxy): write the profile again
            data.append(self.master_url)
        if identity_stamp:  # absent without a certificate: the digest of a plain node is unchanged
            data.append(identity_stamp)
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


class RunContext:
    """What every step of one run reads: the node's settings, the run's options and clock, the
    tally it adds to, and the node's supervisord and cgroups (made on first use)."""

    def __init__(self, settings, options: InstanceOptions | None = None, supervisor=None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.options = options or InstanceOptions()
        self._supervisor = supervisor
        self._cgroups = None
        self.clock = clock
        self.summary = RunSummary()
        config = getattr(settings, "config", None)
        self.start_wait = _seconds(config, "service_start_wait", SERVICE_START_WAIT)
        self.retry_delay = _seconds(config, "promise_retry_delay", PROMISE_RETRY_DELAY)

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
            if self._cgroups is None:
                from .cgroup import NodeCgroups

                self._cgroups = NodeCgroups(self.settings)
            cgroups = self._cgroups
        return cgroups


def is_offline_error(error: BaseException) -> bool:
    from slapos.slap.exceptions import ConnectionError as SlapConnectionError
    from slapos.slap.exceptions import ServerError

    return isinstance(error, (SlapConnectionError, ServerError))


def partition_log(job: Job, message: str, level: int = logging.INFO) -> None:
    """A line on the console and in the partition's own log."""
    log.log(level, "%s: %s", job.id, message)
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        job.partition.append_log(f"{stamp} {logging.getLevelName(level)} {message}\n")
    except (OSError, SlapOSError):
        pass


def fail(job: Job, error: BaseException | str) -> None:
    """The partition failed (the first error is the one kept and reported)."""
    if isinstance(error, BaseException) and is_offline_error(error) and job.error is None:
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
        partition_log(job, f"failed: {first}{where}", logging.ERROR)


class PartitionLog(logging.LoggerAdapter):
    """Log lines that name the partition."""

    def __init__(self, partition_id: str):
        super().__init__(log, {})
        self.partition_id = partition_id

    def process(self, msg, kwargs):
        return f"{self.partition_id}: {msg}", kwargs
