"""`slapos node run`: the node's periodic runs in one long-running reconcile loop.

The cron block runs five commands (software, instance, report, collect, format) on their own
periods; the daemon runs the same five, each on its own period and in its own worker thread,
and runs a pass at once when the master says something changed (grid/daemon_watch.py):

* **instance** runs in-process (`InstanceRun`, the steps `slapos node instance` runs, over the
  same `RunContext`): no interpreter start, no imports, and a pass can be restricted to the
  partitions that changed (`InstanceOptions.only_cp`). Changes arriving close together
  (`COALESCE`) make one pass.
* **software** and **format** run as child commands (`slapos node software --now`, `slapos node
  format --now`): a build is long, may use much memory and may crash; in a child it leaves the
  daemon small, and a SIGKILL of the daemon mid-build converges exactly as for the cron command
  (the next run kills the orphaned build and starts again).
* **report** and **collect** run in-process (grid/node_runs.py, what the commands call).

Each pass takes its kind's lock (pidfile_instance, pidfile_software, pidfile_report) only while
it runs, so the cron commands typed by hand still work: they exit 10 while the daemon runs that
kind, and a pass finding the lock held by a hand-run command is put back and retried
`BUSY_RETRY` seconds later. Scheduling uses `time.monotonic`: a clock jump moves no deadline.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base.errors import EXIT_FAILED, EXIT_LOCKED, ConfigError, LockedError

from .daemon_support import KeptForkServer, completed_stamps, die_with_parent

log = logging.getLogger("slapos.daemon")

KINDS = ("software", "instance", "report", "collect", "format")
# the cron block's schedule (slapos configure local --install-cron): seconds between full passes
DEFAULT_PERIODS = {"software": 60.0, "instance": 60.0, "report": 600.0, "collect": 60.0, "format": 3600.0}
DEFAULT_POLL_PERIOD = 60.0  # masters that cannot push: ask for changes this often
DEFAULT_STOP_TIMEOUT = 60.0  # SIGTERM: longest wait for the running passes
BUSY_RETRY = 5.0  # a kind's lock held by a hand-run command: try again this soon
COALESCE = 0.05  # changes arriving this close together make one pass (a watch answer batches more)
CHILD_KINDS = ("software", "format")


@dataclass
class DaemonConfig:
    """The `[slapos] run_*` keys (slapos.cfg.example documents each)."""

    periods: dict[str, float]
    poll_period: float = DEFAULT_POLL_PERIOD
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    status_socket: Path = Path("/opt/slapos/slapos-node-run.sock")
    pidfile: Path = Path("/opt/slapos/slapos-node-run.pid")
    instance_jobs: int = 1
    log_directory: Path | None = None  # run_log_directory: one file per command, as under cron

    @classmethod
    def from_config(cls, config, settings) -> DaemonConfig:
        def seconds(key: str, default: float, positive: bool = False) -> float:
            value = config.get_float("slapos", key, default)
            if value < 0 or (positive and value == 0):
                raise ConfigError(f"{key} in [slapos] must be {'more than' if positive else 'at least'} 0 "
                                  f"seconds, not {value:g}")
            return value

        run_dir = Path(settings.pidfile_instance).parent
        return cls(
            periods={kind: seconds(f"run_{kind}_period", DEFAULT_PERIODS[kind]) for kind in KINDS},
            poll_period=seconds("run_poll_period", DEFAULT_POLL_PERIOD, positive=True),
            stop_timeout=seconds("run_stop_timeout", DEFAULT_STOP_TIMEOUT),
            status_socket=config.get_path("slapos", "run_status_socket", None) or run_dir / "slapos-node-run.sock",
            pidfile=config.get_path("slapos", "pidfile_run", None) or run_dir / "slapos-node-run.pid",
            instance_jobs=max(1, config.get_int("slapos", "instance_jobs", 1)),
            log_directory=config.get_path("slapos", "run_log_directory", None),
        )


@dataclass
class Pass:
    """What one pass works on: everything (`full`), or some partitions / release URLs."""

    full: bool
    items: tuple[str, ...] = ()

    def describe(self) -> str:
        return "full pass" if self.full else ", ".join(self.items)


@dataclass
class RunRecord:
    started: float  # epoch
    duration: float
    exit_code: int
    scope: str


@dataclass
class Kind:
    """One kind of run: its schedule, its queue and its last runs (read by the status)."""

    name: str
    period: float
    last_full: float | None = None  # monotonic start of the last full pass (None: never)
    full: bool = False  # a full pass asked for (master reset, start, SIGHUP)
    items: set[str] = field(default_factory=set)
    changed_at: float | None = None  # monotonic, first pending item
    retry_at: float | None = None  # the lock was busy
    running: Pass | None = None
    running_since: float | None = None  # epoch
    last: RunRecord | None = None
    runs: int = 0
    failed_runs: int = 0
    busy: int = 0  # passes skipped because a hand-run command held the lock


class Daemon:
    """The loop. `run()` blocks until SIGTERM/SIGINT (or `request_stop()`), then returns 0."""

    def __init__(self, settings, config: DaemonConfig, config_path: Path | None, watch: bool = True):
        self.settings = settings
        self.config = config
        self.config_path = config_path
        self.cond = threading.Condition()
        self.stopping = False
        self.abandoned = False  # a pass was still running at exit: the caller must not wait for it
        self.started = time.time()
        self.kinds = {k: Kind(k, config.periods[k]) for k in KINDS}
        self.children: dict[str, subprocess.Popen] = {}
        self._threads: dict[str, threading.Thread] = {}
        # signals arrive as bytes on this pipe (signal.set_wakeup_fd): the kernel may deliver them
        # to any thread, and the main thread's read wakes whichever it was
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        from .daemon_watch import Watcher

        self.watcher = Watcher(self, enabled=watch)
        self.forkservers = KeptForkServer()

    # -- asked by the watcher, the status endpoint, signals ------------------------------------------
    def wake(self, kind: str, items: set[str] | None = None) -> None:
        """A pass of `kind` soon: a full one (`items` None) or over these partitions/releases."""
        with self.cond:
            k = self.kinds[kind]
            if items is None:
                k.full = True
            elif items:
                if not k.items:
                    k.changed_at = time.monotonic()
                k.items |= items
            self.cond.notify_all()

    def period(self, kind: Kind) -> float:
        """Seconds between full passes; 0 = never. Without push, instance passes are how changes
        are found: at least every run_poll_period (software keeps its period: a build takes minutes)."""
        if kind.name == "instance" and self.watcher.mode != "push" and kind.period:
            return min(kind.period, self.config.poll_period)
        return kind.period

    def request_stop(self) -> None:
        os.write(self._wake_write, bytes([signal.SIGTERM]))

    # -- the main thread ------------------------------------------------------------------------------
    def run(self) -> int:
        from .daemon_logs import close_command_logs, open_command_logs
        from .daemon_status import StatusServer
        from .lock import RunLock

        lock = RunLock(self.config.pidfile, "slapos node run").acquire()  # LockedError: exit 10
        server = None
        logs = []
        try:
            if self.config.log_directory is not None:
                logs = open_command_logs(self.config.log_directory)
            server = StatusServer(self, self.config.status_socket)
            server.start()
            self._install_signals()
            log.info("slapos node run: started (pid %d); status on %s", os.getpid(), self.config.status_socket)
            for kind in KINDS:
                thread = threading.Thread(target=self._worker, args=(self.kinds[kind],), name=f"run-{kind}",
                                          daemon=True)
                self._threads[kind] = thread
                thread.start()
            self.watcher.start()
            while True:
                for signum in os.read(self._wake_read, 64):  # blocks until a signal
                    if signum == signal.SIGHUP:
                        self.reload()
                    elif signum in (signal.SIGTERM, signal.SIGINT):
                        self.shutdown()
                        return 0
        finally:
            if server is not None:
                server.stop()
            close_command_logs(logs)
            lock.release()

    def _install_signals(self) -> None:
        def handler(_signum, _frame):  # the wakeup fd carries the signal: the main thread acts on it
            pass

        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, handler)

    def shutdown(self) -> None:
        """Take no more work; let the in-process passes finish (bounded), stop child builds."""
        log.info("stopping: no new pass; waiting up to %.0f s for the running ones", self.config.stop_timeout)
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.watcher.stop()
        for kind, child in list(self.children.items()):
            if child.poll() is None:
                log.info("stopping the running `slapos node %s` (pid %d)", kind, child.pid)
                child.terminate()  # it stops its builds (grid/software_processes.py) and exits
        deadline = time.monotonic() + self.config.stop_timeout
        for kind in KINDS:
            thread = self._threads.get(kind)
            if thread is None:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.abandoned = True
                log.warning("the %s pass did not finish within run_stop_timeout: abandoned (every state file is "
                            "written atomically; the next start converges)", kind)
        for child in self.children.values():
            if child.poll() is None:
                child.kill()
        if not self._threads["instance"].is_alive():  # (an abandoned pass may still use it)
            self.forkservers.close()
        log.info("slapos node run: stopped")

    def reload(self) -> None:
        """SIGHUP: read slapos.cfg again (settings and periods; the socket and pidfile keep their path)."""
        from slapos.base.config import Config
        from slapos.base.settings import NodeSettings

        try:
            config = Config.load(str(self.config_path) if self.config_path else None)
            settings = NodeSettings.from_config(config)
            new = DaemonConfig.from_config(config, settings)
        except Exception as e:  # a broken file keeps the running configuration
            log.error("SIGHUP: configuration not reloaded: %s", e)
            return
        new.status_socket, new.pidfile = self.config.status_socket, self.config.pidfile
        with self.cond:
            self.settings, self.config = settings, new
            for kind in self.kinds.values():
                kind.period = new.periods[kind.name]
                kind.full = True
            self.cond.notify_all()
        self.watcher.reconnect()
        log.info("SIGHUP: configuration reloaded; full passes follow")

    # -- the workers -----------------------------------------------------------------------------------
    def _next(self, kind: Kind, now: float) -> Pass | float:
        """The pass to run now, or how long to wait (called with the condition held)."""
        if kind.retry_at is not None and now < kind.retry_at:
            return kind.retry_at - now
        kind.retry_at = None
        period = self.period(kind)
        due = now if kind.last_full is None else kind.last_full + period
        if kind.full or (period and now >= due):
            kind.full = False
            kind.items.clear()
            kind.last_full = now
            return Pass(True)
        if kind.items:
            ready = (kind.changed_at or now) + COALESCE
            if now < ready:
                return ready - now
            items = tuple(sorted(kind.items))
            kind.items.clear()
            return Pass(False, items)
        return due - now if period else 3600.0

    def _worker(self, kind: Kind) -> None:
        while True:
            with self.cond:
                while True:
                    if self.stopping:
                        return
                    todo = self._next(kind, time.monotonic())
                    if isinstance(todo, Pass):
                        break
                    self.cond.wait(max(0.01, todo))
                kind.running, kind.running_since = todo, time.time()
            began, wall = time.monotonic(), time.time()
            try:
                code = self._run(kind.name, todo)
            except LockedError as e:
                code = EXIT_LOCKED
                log.info("%s pass skipped (%s); retrying in %.0f s", kind.name, e, BUSY_RETRY)
            except Exception as e:  # our bug or an unexpected failure: logged, the loop goes on
                code = EXIT_FAILED
                log.error("%s pass failed: %s: %s", kind.name, type(e).__name__, e, exc_info=log.isEnabledFor(10))
            with self.cond:
                kind.running = kind.running_since = None
                if code == EXIT_LOCKED:  # put the work back
                    kind.busy += 1
                    kind.retry_at = time.monotonic() + BUSY_RETRY
                    if todo.full:
                        kind.full = True
                    elif todo.items:
                        kind.items |= set(todo.items)
                        kind.changed_at = kind.changed_at or time.monotonic()
                    continue
                kind.runs += 1
                kind.failed_runs += code != 0
                kind.last = RunRecord(wall, time.monotonic() - began, code, todo.describe())
            # a periodic pass that changed nothing already said so in its own summary line
            log.log(logging.DEBUG if todo.full and code == 0 else logging.INFO,
                    "%s pass (%s) done in %.1f s, exit %d", kind.name, todo.describe(), time.monotonic() - began, code)

    def _run(self, kind: str, todo: Pass) -> int:
        if kind == "instance":
            return self._instance(todo)
        if kind == "software":
            before = completed_stamps(self.settings.software_root)
            code = self._child(kind, todo)
            if completed_stamps(self.settings.software_root) != before:
                # a release was (re)built: its partitions, failed or waiting for it, deploy now
                self.wake("instance")
            return code
        if kind in CHILD_KINDS:
            return self._child(kind, todo)
        from . import node_runs

        if kind == "report":
            return node_runs.run_report(self.settings)
        return node_runs.run_collect(self.settings)

    def _instance(self, todo: Pass) -> int:
        from .instance import InstanceOptions, InstanceRun

        options = InstanceOptions(only_cp=None if todo.full else list(todo.items), now=True,
                                  jobs=self.config.instance_jobs)
        run = InstanceRun(self.settings, options)
        run.builder = self.forkservers.builder(run.ctx)
        code = run.run()
        self._after_instance(run.summary.processed)
        return code

    def _after_instance(self, processed: list[str]) -> None:
        """A partition the master wants destroyed is freed by the report run: run it now."""
        from .partition import Partition, PartitionError

        for partition_id in processed:
            try:
                state = Partition(self.settings, partition_id).load_state()
            except (PartitionError, OSError):
                continue
            if state.requested_state == "destroyed":
                self.wake("report")
                return

    def _child(self, kind: str, todo: Pass) -> int:
        """`slapos node software|format --now` as a child: its lock, its logs, its exit code."""
        argv = [sys.executable, "-m", "slapos.cli.main", "node", kind, "--now"]
        if self.config_path is not None:
            argv += ["--cfg", str(self.config_path)]
        if kind == "software" and not todo.full:
            argv += ["--only-sr", ",".join(todo.items)]
        with self.cond:
            if self.stopping:
                return EXIT_LOCKED
            # its output goes where ours goes; it gets SIGTERM if we die (kill -9 included): it then
            # stops its builds and exits as on `systemctl stop`, instead of building on unseen
            output = None  # ours, unless run_log_directory: its file, as cron's `>> file 2>&1`
            if self.config.log_directory is not None:
                from .daemon_logs import log_path

                output = open(log_path(self.config.log_directory, kind), "ab")
            try:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                         stderr=subprocess.STDOUT if output else None,
                                         preexec_fn=die_with_parent())
            finally:
                if output is not None:
                    output.close()
            self.children[kind] = child
        try:
            code = child.wait()
        finally:
            with self.cond:
                self.children.pop(kind, None)
        if code == EXIT_LOCKED:
            raise LockedError(f"another slapos node {kind} holds its lock")
        return code

    # -- read by the status endpoint -------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The daemon's own state (grid/daemon_status.py turns it into the status document)."""
        now = time.monotonic()
        with self.cond:
            kinds = {}
            for k in self.kinds.values():
                period = self.period(k)
                kinds[k.name] = {
                    "period": period,
                    "running": None if k.running is None else {"since": k.running_since,
                                                               "scope": k.running.describe()},
                    "last": None if k.last is None else vars(k.last).copy(),
                    "runs": k.runs,
                    "failed_runs": k.failed_runs,
                    "busy_skips": k.busy,
                    "next_full_in": (max(0.0, k.last_full + period - now) if k.last_full is not None else 0.0)
                    if period else None,
                    "pending": sorted(k.items),
                    "pending_full": k.full,
                    "retry_in": max(0.0, k.retry_at - now) if k.retry_at else None,
                }
            return {"pid": os.getpid(), "started": self.started, "stopping": self.stopping, "kinds": kinds,
                    "master": self.watcher.snapshot()}
