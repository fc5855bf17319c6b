"""The node's supervisord: one per instance root, driven through its XML-RPC interface.

Layout (SLAP-PROTOCOL §6.6): `<instance_root>/etc/supervisord.conf` includes one file per
partition, `etc/supervisord.conf.d/<id>.conf`, holding `[group:<id>]` and one
`[program:<id>_<name>]` per executable of the partition's `etc/run/` and `etc/service/` (services
get the `-on-watch` process name the watchdog looks for). The socket is `<instance_root>/sv.sock`,
mode 0700, no password: only root (the node) talks to it.

Configuration is data: we write the files, then bring supervisord in line with them. A program
is *changed* when its section or the content of its command file changed (a digest of the file
travels in the program's environment), and only changed programs are restarted, through the
small `slapnode` XML-RPC extension (`slapos.grid.supervisor_rpc`) loaded into supervisord. The
extension also reads one partition's file alone: `reloadConfig` re-reads every partition's file
(about 1 ms each), which made deploying N partitions cost O(N²). Without the extension (a
supervisord started by someone else) we fall back to `reloadConfig` and whole-group
replacement, shared by concurrent callers (a group commit).

Stopping is parallel: a group's processes get their signal at once, and `shutdown()` signals
every process before asking supervisord to exit (supervisord alone stops one group per turn of
its loop, which takes minutes on a node with hundreds of partitions).

The class is cut in three files: `supervisor_config.py` (the files supervisord reads),
`supervisor_client.py` (its XML-RPC interface) and this one (is it running, start it, and bring
its groups in line with the partitions).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from slapos.base.errors import SlapOSError

from .partition import PartitionError, atomic_write, check_partition_id

if TYPE_CHECKING:  # pragma: no cover
    from slapos.base.settings import NodeSettings

from .supervisor_client import (
    _FAULTS,
    ALREADY_ADDED,
    ALREADY_STARTED,
    BACKOFF,
    BAD_NAME,
    EXITED,
    FATAL,
    INCORRECT_PARAMETERS,
    RUNNING,
    STARTING,
    STOP_WAIT_SECONDS,
    STOPPED,
    STOPPED_STATES,
    UNKNOWN_METHOD,
    SupervisorClient,
    SupervisorError,
    _NoExtension,
)
from .supervisor_config import (
    GroupChange,
    Program,
    SupervisorFiles,
    collect_programs,
    command_digest,
)

# what other modules import from here, whichever of the three files defines it
__all__ = ["EXITED", "FATAL", "RUNNING", "STARTING", "STOPPED", "GroupChange", "Program", "Supervisor",
           "SupervisorError", "collect_programs", "command_digest"]

logger = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie left for a reaper that does not reap does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class Supervisor(SupervisorFiles, SupervisorClient):
    """The supervisord of one instance root."""

    def __init__(self, settings: NodeSettings):
        self.settings = settings
        root = Path(settings.instance_root)
        self.instance_root = root
        self.conf_path = root / "etc" / "supervisord.conf"
        self.conf_dir = root / "etc" / "supervisord.conf.d"
        legacy = root / "supervisord.socket"
        self.socket_path = legacy if legacy.exists() else root / "sv.sock"
        self.pidfile = root / "var" / "run" / "supervisord.pid"
        self.log_path = root / "var" / "log" / "supervisord.log"
        # programs' output: supervisord (root) opens, appends to and rotates these files, so they
        # live in a root-owned tree, never in the partition (see `program_log_dir`)
        self.program_log_root = root / "var" / "program-log"
        self._lock = threading.RLock()
        self._proxy = None
        self._cgroups = None  # slapos.grid.cgroup.NodeCgroups, on first use
        # group commit of apply_partition
        self._cond = threading.Condition()
        self._wanted = 0
        self._syncing = False
        self._outcomes: dict[int, tuple[dict[str, GroupChange], BaseException | None]] = {}

    # -- is it there? -------------------------------------------------------------------------
    def pid(self) -> int | None:
        """supervisord's pid when it is alive (no XML-RPC: a pidfile read and a /proc lookup)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"supervisord" not in f.read():
                    return None
        except (OSError, ValueError):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None and self.socket_path.exists()

    def identity(self) -> str | None:
        """Which supervisord runs, without XML-RPC: the boot, its pid and start time, and the
        date of its pidfile (rewritten by a `supervisorctl reload`, which stops every program in
        the same process). A different identity means its programs may all be stopped."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                started = f.read().rsplit(b")", 1)[1].split()[19].decode()  # field 22: starttime
            written = os.stat(self.pidfile).st_mtime_ns
        except (OSError, IndexError, UnicodeDecodeError):
            return None
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                boot = f.read().strip().decode()
        except (OSError, UnicodeDecodeError):  # pid, start time and pidfile date still tell
            boot = ""
        return f"{boot}:{pid}:{started}:{written}"

    @property
    def checked_path(self) -> Path:
        return self.instance_root / "var" / "run" / "supervisord.checked"

    def last_checked(self) -> str | None:
        """The identity of the supervisord whose programs a run last checked (`remember_checked`)."""
        try:
            return self.checked_path.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def remember_checked(self, identity: str) -> None:
        """Record that every started partition's programs were started under this supervisord:
        later runs need not ask it again while it is the same."""
        if identity == self.last_checked():
            return
        directory = self.checked_path.parent
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        atomic_write(self.checked_path, identity + "\n", 0o600)

    def ensure_running(self) -> bool:
        """Start supervisord for this instance root unless it runs. True when we started it."""
        with self._lock:
            changed = self.write_config()
            if self.is_running():
                if changed:  # e.g. the watchdog's command: supervisord re-reads everything once
                    logger.info("supervisord configuration changed: reloading it")
                    self._sync()
                return False
            if self.settings.forbid_supervisord_automatic_launch:
                raise SupervisorError(
                    "supervisord is not running and forbid_supervisord_automatic_launch is set in [slapos]: "
                    "start it with 'slapos node supervisord'"
                )
            self.start()
            return True

    def start(self, nodaemon: bool = False) -> None:
        """Launch supervisord (daemonised) and wait until it answers."""
        import subprocess

        self.write_config()
        argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf_path)]
        from .process import clean_environment

        # the programs inherit it: the agent's own environment (tokens, agent sockets, cloud
        # credentials) must not reach them
        env = clean_environment(self.instance_root, tmpdir="/tmp")
        if nodaemon:
            os.execve(sys.executable, [*argv, "--nodaemon"], env)
        logger.info("starting supervisord for %s", self.instance_root)
        proc = subprocess.Popen(argv, env=env, cwd=str(self.instance_root), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
        try:
            output, _ = proc.communicate(timeout=30)  # the daemonising parent exits at once
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        deadline = time.monotonic() + 20
        self._proxy = None
        while time.monotonic() < deadline:
            if self.pid() is not None:
                try:
                    if self.call("supervisor.getState")["statename"] == "RUNNING":
                        return
                except (OSError, SupervisorError):
                    pass
            elif proc.returncode not in (0, None):
                break
            time.sleep(0.02)
        text = (output or b"").decode("utf-8", "replace").strip().splitlines()
        raise SupervisorError(
            f"supervisord did not start (exit {proc.returncode}): {text[-1] if text else 'no output'}; "
            f"see {self.log_path}"
        )

    # -- partitions -----------------------------------------------------------------------------
    def apply_partition(self, partition_id: str, programs: list[Program],
                        partition_path: Path | None = None) -> GroupChange:
        """Write the partition's program file and make supervisord match it.

        Programs whose definition (section or command file) changed are stopped and get their new
        definition; the others keep running. Nothing is started here: see `start_partition`.
        """
        outcome = self.apply_partitions({partition_id: (programs, partition_path)})[partition_id]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def apply_partitions(self, partitions: dict[str, tuple[list[Program], Path | None]]
                         ) -> dict[str, GroupChange | SlapOSError]:
        """`apply_partition` for several partitions at once. A partition whose file cannot be
        written, or that supervisord refuses, gets its error; the others are applied."""
        outcomes: dict[str, GroupChange | SlapOSError] = {}
        written = []
        for partition_id, (programs, partition_path) in partitions.items():
            try:
                self._write_partition(partition_id, programs, partition_path)
                written.append(partition_id)
            except (OSError, SlapOSError) as e:
                outcomes[partition_id] = e if isinstance(e, SlapOSError) else PartitionError(
                    f"{partition_id}: cannot write its supervisord configuration: {e}")
        if written:
            try:
                changes = self.load_groups(written)
            except _NoExtension:  # a supervisord without our extension: the stock, global way
                changes = self._sync()
            for partition_id in written:
                outcomes[partition_id] = changes.get(partition_id, GroupChange())
        return outcomes

    def load_groups(self, partition_ids: list[str]) -> dict[str, GroupChange | SlapOSError]:
        """Bring the groups of these partitions in line with their files, reading only those
        files (a reloadConfig re-reads every partition's file: O(partitions) each time)."""
        with self._lock:
            loads = self.multicall([("slapnode.loadProcessGroupFile", (p, str(self.partition_conf_path(p))))
                                    for p in partition_ids])
            plans: dict[str, dict] = {}
            result: dict[str, GroupChange | SlapOSError] = {}
            for partition_id, answer in zip(partition_ids, loads, strict=True):
                if isinstance(answer, dict) and "faultCode" in answer:
                    if answer["faultCode"] == UNKNOWN_METHOD:
                        raise _NoExtension()
                    result[partition_id] = PartitionError(
                        f"supervisord refused its configuration: {answer.get('faultString')}")
                else:
                    plans[partition_id] = answer
            replace = [p for p, plan in plans.items() if plan["state"] in ("replaced", "removed")]
            active: dict[str, list[str]] = {}
            if replace:
                for info in self.all_processes():
                    active.setdefault(info["group"], []).append(info["name"])
            to_stop = []
            for partition_id, plan in plans.items():
                names = active.get(partition_id, []) if partition_id in replace else plan["changed"] + plan["removed"]
                to_stop += [f"{partition_id}:{n}" for n in names]
            self.stop_processes(to_stop)
            calls = []
            for partition_id, plan in plans.items():
                state = plan["state"]
                if state in ("replaced", "removed"):
                    calls.append(("supervisor.removeProcessGroup", (partition_id,)))
                if state in ("replaced", "added"):
                    calls.append(("supervisor.addProcessGroup", (partition_id,)))
                if state == "changed":
                    calls.append(("slapnode.refreshProcessGroup", (partition_id,)))
                if state == "removed":
                    result[partition_id] = GroupChange(removed=list(active.get(partition_id, [])))
                elif state in ("replaced", "added"):
                    result[partition_id] = GroupChange(replaced=True)
                else:
                    result[partition_id] = GroupChange(plan["added"], plan["changed"], plan["removed"])
            for (method, args), answer in zip(calls, self.multicall(calls), strict=True):
                if isinstance(answer, dict) and answer.get("faultCode") not in (None, BAD_NAME, ALREADY_ADDED):
                    result[args[0]] = PartitionError(f"supervisord: {method} failed: {answer.get('faultString')}")
            return result

    def _write_partition(self, partition_id: str, programs: list[Program], partition_path: Path | None) -> None:
        conf = self.partition_conf_path(partition_id)
        if not programs:
            with contextlib.suppress(FileNotFoundError):
                conf.unlink()
            return
        path = partition_path or Path(self.settings.instance_root) / partition_id
        if os.geteuid() == 0:  # the launcher joins the cgroup the file names: it must exist (first)
            self.cgroups.ready(partition_id, path)
        text = self.render_partition(partition_id, path, programs)
        self._prepare_program_logs(partition_id, path, programs)
        try:
            current = conf.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            atomic_write(conf, text, 0o600)

    def _sync(self) -> dict[str, GroupChange]:
        """Group commit: one reloadConfig covers every file written before it started."""
        with self._cond:
            self._wanted += 1
            ticket = self._wanted
            while True:
                done = [t for t in self._outcomes if t >= ticket]
                if done:
                    changes, error = self._outcomes[min(done)]
                    if error is not None:
                        raise error
                    return changes
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = self._wanted
                self._cond.release()
                error: BaseException | None = None
                changes: dict[str, GroupChange] = {}
                try:
                    changes = self.reconcile()
                except BaseException as e:  # handed to every waiter of this batch
                    error = e
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._outcomes[target] = (changes, error)
                    for old in sorted(self._outcomes)[:-32]:
                        del self._outcomes[old]
                    self._cond.notify_all()

    def reconcile(self) -> dict[str, GroupChange]:
        """Re-read the files and bring supervisord's groups in line, restarting only what changed."""
        with self._lock:
            added, changed, removed = self.call("supervisor.reloadConfig")[0]
            result: dict[str, GroupChange] = {}
            active = {}
            if changed or removed:
                for info in self.all_processes():
                    active.setdefault(info["group"], []).append(info["name"])
            to_stop: list[str] = []
            for group in removed:
                to_stop += [f"{group}:{n}" for n in active.get(group, [])]
                result[group] = GroupChange(removed=list(active.get(group, [])))
            diffs: dict[str, dict | None] = {}
            for group in changed:
                try:
                    diff = self.call("slapnode.diffProcessGroup", group)
                except SupervisorError as e:
                    if getattr(e, "fault_code", None) not in (UNKNOWN_METHOD, INCORRECT_PARAMETERS):
                        raise
                    diff = None
                diffs[group] = diff
                if diff is None:
                    to_stop += [f"{group}:{n}" for n in active.get(group, [])]
                    result[group] = GroupChange(replaced=True)
                else:
                    to_stop += [f"{group}:{n}" for n in diff["changed"] + diff["removed"]]
                    result[group] = GroupChange(diff["added"], diff["changed"], diff["removed"])
            self.stop_processes(to_stop)
            for group in removed:
                self._call_ok("supervisor.removeProcessGroup", group, ignore=(BAD_NAME,))
            for group in changed:
                if diffs[group] is None:
                    self._call_ok("supervisor.removeProcessGroup", group, ignore=(BAD_NAME,))
                    self._call_ok("supervisor.addProcessGroup", group, ignore=(ALREADY_ADDED,))
                else:
                    self.call("slapnode.refreshProcessGroup", group)
            for group in added:
                self._call_ok("supervisor.addProcessGroup", group, ignore=(ALREADY_ADDED,))
                result[group] = GroupChange(replaced=True)
            for group, change in result.items():
                if change:
                    logger.debug("supervisord: %s %s", group, change)
            return result

    def start_partition(self, partition_id: str) -> None:
        """Start the partition's programs that are not running (running ones are left alone)."""
        error = self.start_partitions([partition_id]).get(partition_id)
        if error is not None:
            raise error

    def process_infos(self, names: list[str]) -> dict[str, dict]:
        """getProcessInfo of each `group:name` in one multicall (unknown names are left out)."""
        answers = self.multicall([("supervisor.getProcessInfo", (n,)) for n in names])
        return {n: a for n, a in zip(names, answers, strict=True) if isinstance(a, dict) and "faultCode" not in a}

    def still_starting(self, names: list[str]) -> set[str]:
        """The `group:name` programs among `names` that supervisord still has in STARTING (not
        up for their `startsecs` yet). Unknown names are not starting."""
        return {n for n, info in self.process_infos(names).items() if info.get("state") == STARTING}

    def start_partitions(self, partition_ids: list[str],
                         names: dict[str, list[str]] | None = None) -> dict[str, PartitionError]:
        """Start the programs of several partitions that are not running; the errors, by partition.

        `names` (partition id -> process names), when the caller knows them, spares a look at
        every process of the node. Process by process (`startProcess`, no wait) in one multicall:
        supervisord answers group calls (`startProcessGroup`) late, on a later turn of its loop.
        """
        ids = {check_partition_id(p) for p in partition_ids}
        if not ids:
            return {}
        if names is None:
            infos = [i for i in self.all_processes() if i["group"] in ids]
        else:
            wanted = [f"{p}:{n}" for p in ids for n in names.get(p, [])]
            infos = list(self.process_infos(wanted).values())
        todo = [f"{i['group']}:{i['name']}" for i in infos if i["state"] not in (STARTING, RUNNING, BACKOFF)]
        results = self.multicall([("supervisor.startProcess", (n, False)) for n in todo])
        failed: dict[str, list[str]] = {}
        for name, result in zip(todo, results, strict=True):
            if isinstance(result, dict) and result.get("faultCode") not in (ALREADY_STARTED,):
                group, _, program = name.partition(":")
                reason = _FAULTS.get(result.get("faultCode"), result.get("faultString"))
                failed.setdefault(group, []).append(f"{program}: {reason}")
        return {group: PartitionError("cannot start " + "; ".join(lines)) for group, lines in failed.items()}

    def stop_partition(self, partition_id: str, wait: bool = True, names: list[str] | None = None) -> None:
        """Stop every program of the partition (all signalled at once). `names`: its process
        names when the caller knows them (spares a look at every process of the node)."""
        check_partition_id(partition_id)
        if names is None:
            infos = self.partition_processes(partition_id)
        else:
            infos = list(self.process_infos([f"{partition_id}:{n}" for n in names]).values())
        running = [f"{partition_id}:{i['name']}" for i in infos if i["state"] not in STOPPED_STATES]
        if wait:
            self.stop_processes(running)
        elif running:
            self.multicall([("supervisor.stopProcess", (n, False)) for n in running])

    def remove_partition(self, partition_id: str) -> None:
        """Stop the partition's programs, remove its group and delete its file."""
        conf = self.partition_conf_path(partition_id)
        with contextlib.suppress(FileNotFoundError):
            conf.unlink()  # first: a reload meanwhile must not bring the group back
        if self.is_running():
            self.stop_partition(partition_id)
            self._call_ok("supervisor.removeProcessGroup", partition_id, ignore=(BAD_NAME,))
        self.remove_program_logs(partition_id)  # the next tenant must not read this one's output

    def shutdown(self, timeout: float = STOP_WAIT_SECONDS + 10) -> bool:
        """Stop every process in parallel, then supervisord itself. False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        with self._lock:
            try:
                self.stop_processes([f"{i['group']}:{i['name']}" for i in self.all_processes()
                                     if i["state"] not in STOPPED_STATES], timeout)
                self.call("supervisor.shutdown")
            except SupervisorError as e:
                if self.pid() is None:
                    return True
                logger.warning("%s", e)
                os.kill(pid, signal.SIGTERM)
            self._proxy = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.02)
        raise SupervisorError(f"supervisord (pid {pid}) did not stop within {timeout:g} s")

    def supervisorctl(self, args: list[str]) -> int:
        """Run supervisorctl (in this process) against our supervisord; its exit code."""
        from supervisor import supervisorctl

        try:
            supervisorctl.main(args=["-c", str(self.conf_path), *args])
        except SystemExit as e:
            return int(e.code or 0) if not isinstance(e.code, str) else 1
        return 0
