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
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

from .partition import PartitionError, atomic_write, check_partition_id, open_dir

if TYPE_CHECKING:  # pragma: no cover
    from slapos.base.settings import NodeSettings

logger = logging.getLogger(__name__)

# supervisor.states.ProcessStates, without importing supervisor on the cheap paths
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = 0, 10, 20, 30, 40, 100, 200, 1000
STOPPED_STATES = (STOPPED, EXITED, FATAL, UNKNOWN)
# supervisor.xmlrpc.Faults
UNKNOWN_METHOD, INCORRECT_PARAMETERS, BAD_NAME = 1, 2, 10
NOT_RUNNING, ALREADY_STARTED, SUCCESS, ALREADY_ADDED, STILL_RUNNING = 70, 60, 80, 90, 91

STOP_WAIT_SECONDS = 20  # per process, before SIGKILL (reference: 60, one group after the other)
SERVICE_START_SECONDS = 1  # a service must stay up this long to count as started
SERVICE_START_RETRIES = 5  # restarts 1 s, 2 s, ... 5 s apart, then FATAL (and the watchdog bangs)
EVENT_BUFFER = 10000
DIGEST_READ_LIMIT = 1 << 20

_FAULTS = {20: "no such file", 21: "file is not executable", 50: "spawn error", 30: "failed"}
_PROGRAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")


class SupervisorError(SlapOSError):
    """supervisord could not be started or refused a command."""


class _NoExtension(Exception):
    """The supervisord we talk to was started without the slapnode XML-RPC extension."""


@dataclass(frozen=True)
class Program:
    """One supervised program of a partition: a file of `etc/run/` or `etc/service/`."""

    name: str
    command: Path
    watched: bool = False  # etc/service: restarted locally, watched by the watchdog
    digest: str = ""

    @property
    def process_name(self) -> str:
        return f"{self.name}-on-watch" if self.watched else self.name


@dataclass
class GroupChange:
    """What a reload did to one partition's group (program names)."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: bool = False  # the whole group was replaced (no slapnode extension)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.replaced)

    def describe(self) -> str:
        if self.replaced:
            return "programs (re)loaded"
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("added", self.added), ("restarting changed", self.changed), ("removed", self.removed)) if names]
        return "; ".join(parts)


def command_digest(path: Path, owner: int | None = None) -> str:
    """A short digest of what a program runs: a changed script means a changed program.

    Only the content of a regular file of the partition user is read (never through a link,
    never a FIFO, never a file of someone else: the digest ends up in the program's environment,
    it must not become an oracle on files the user cannot read); otherwise the link target,
    size and date stand for the content.
    """
    h = hashlib.sha256()
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode())
            st = os.stat(path)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            return h.hexdigest()[:16]
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size <= DIGEST_READ_LIMIT and owner in (None, st.st_uid):
                h.update(os.read(fd, DIGEST_READ_LIMIT))
            else:  # large binaries, files of someone else: size and date are enough
                h.update(f"{st.st_uid}:{st.st_size}:{st.st_mtime_ns}".encode())
        finally:
            os.close(fd)
    except OSError as e:
        h.update(f"error:{e.errno}".encode())
    return h.hexdigest()[:16]


def collect_programs(partition_path: Path, log: logging.Logger | logging.LoggerAdapter = logger) -> list[Program]:
    """The programs a partition's profile produced, sorted, run ones then watched services."""
    programs: dict[str, Program] = {}
    owner = os.stat(partition_path).st_uid if os.geteuid() == 0 else None
    for sub, watched in (("run", False), ("service", True)):
        directory = partition_path / "etc" / sub
        fd = tenantfs.open_below(partition_path, "etc", sub)  # `etc` a link elsewhere: no programs
        if fd is None:
            continue
        try:
            with os.scandir(fd) as entries:
                found = sorted((e.name, e.is_file()) for e in entries)
        except OSError:
            found = []
        finally:
            os.close(fd)
        for name, is_file in found:
            path = directory / name
            if name.startswith(".") or not is_file:
                continue
            if not _PROGRAM_RE.match(name):
                log.warning("ignoring etc/%s/%s: program names may only hold letters, digits and ._@+-", sub, name)
                continue
            if name in programs:
                raise PartitionError(f"program {name!r} is both in etc/run and etc/service: keep one")
            programs[name] = Program(name, path, watched, command_digest(path, owner))
    return sorted(programs.values(), key=lambda p: (p.watched, p.name))


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie left for a reaper that does not reap does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _value(text: str, key: str = "a setting") -> str:
    """One line (no control character at all: slapos/base/safetext.py), `%` doubled
    (supervisord expands %(...)s in values)."""
    from slapos.base.safetext import UnsafeValue, supervisor_value

    try:
        return supervisor_value(key, text)
    except UnsafeValue as e:
        raise PartitionError(str(e)) from None


def _env_value(text: str) -> str:
    return '"' + _value(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Supervisor:
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

    # -- configuration files ----------------------------------------------------------------
    def _watchdog_command(self) -> str | None:
        import shlex

        s = self.settings
        command = s.watchdog_command
        if not command:
            script = Path(sys.executable).parent / "slapos-watchdog"
            import importlib.util

            if not script.exists() or importlib.util.find_spec("slapos.grid.watchdog") is None:
                return None
            command = str(script)
        from slapos.slap.connection import url_credential

        # a master URL with a credential goes through the environment (`_watchdog_environment`):
        # any local user can read a command line in /proc
        args = [command] if url_credential(s.master_url) else [command, "--master-url", s.master_url]
        args += ["--computer-id", s.computer_id, "--instance-root", str(self.instance_root)]
        if s.certificate_repository_path:
            args += ["--certificate-repository-path", str(s.certificate_repository_path)]
        if s.master_ca_file:
            args += ["--master-ca-file", str(s.master_ca_file)]
        return " ".join(shlex.quote(a) for a in args)

    def render_config(self) -> str:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = hard if hard != resource.RLIM_INFINITY else 65536
        minfds = max(min(16384, limit), min(soft, 1024))
        root = self.instance_root
        lines = [
            "# Written by slapos node instance: edits are overwritten.",
            "[unix_http_server]",
            f"file = {_value(str(self.socket_path))}",
            "chmod = 0700",
            "",
            "[supervisord]",
            f"logfile = {_value(str(self.log_path))}",
            "logfile_maxbytes = 50MB",
            "logfile_backups = 10",
            "loglevel = info",
            f"pidfile = {_value(str(self.pidfile))}",
            f"childlogdir = {_value(str(root / 'var' / 'log'))}",
            f"directory = {_value(str(root))}",
            f"minfds = {minfds}",
            "nodaemon = false",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[rpcinterface:slapnode]",
            "supervisor.rpcinterface_factory = slapos.grid.supervisor_rpc:make_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl = unix://{_value(str(self.socket_path))}",
            "",
            "[include]",
            f"files = {_value(str(self.conf_dir))}/*.conf",
            "",
        ]
        watchdog = self._watchdog_command()
        if watchdog:
            try:
                from .watchdog import RECOMMENDED_BUFFER_SIZE, SUBSCRIBED_EVENTS
            except ImportError:  # pragma: no cover - the watchdog module ships with us
                RECOMMENDED_BUFFER_SIZE, SUBSCRIBED_EVENTS = EVENT_BUFFER, ("PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL")
            log = _value(str(root / "var" / "log" / "watchdog.log"))
            from slapos.slap.connection import url_credential

            environment = []
            if url_credential(self.settings.master_url):
                environment = [f"environment = SLAPOS_WATCHDOG_MASTER_URL={_env_value(self.settings.master_url)}"]
            lines += [
                "[eventlistener:watchdog]",
                f"command = {_value(watchdog)}",
                *environment,
                f"events = {', '.join(SUBSCRIBED_EVENTS)}",
                f"buffer_size = {max(RECOMMENDED_BUFFER_SIZE, EVENT_BUFFER)}",
                "autorestart = true",
                f"stderr_logfile = {log}",
                "stderr_logfile_maxbytes = 1MB",
                "stderr_logfile_backups = 1",
                "",
            ]
        return "\n".join(lines)

    def write_config(self) -> bool:
        """Create the directories and write supervisord.conf when it differs (0600). True if changed."""
        root = self.instance_root
        for directory, mode in ((root / "etc", 0o700), (self.conf_dir, 0o700), (root / "var", 0o755),
                                (root / "var" / "log", 0o700), (root / "var" / "run", 0o700)):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                os.chmod(directory, mode)
        if len(str(self.socket_path).encode()) > 100:
            raise SupervisorError(
                f"the supervisord socket path {self.socket_path} is too long for a unix socket "
                "(100 bytes at most): use a shorter instance_root"
            )
        text = self.render_config()
        try:
            if self.conf_path.read_text(encoding="utf-8") == text:
                return False
        except OSError:
            pass
        atomic_write(self.conf_path, text, 0o600)
        return True

    def program_log_dir(self, partition_id: str) -> Path:
        """`<instance_root>/var/program-log/<id>/`: root-owned, 0750, group of the partition, so
        its user reads its programs' output but cannot put a link or FIFO where supervisord
        writes."""
        return self.program_log_root / check_partition_id(partition_id)

    def program_log_path(self, partition_id: str, program: str) -> Path:
        return self.program_log_dir(partition_id) / f"{program}.log"

    def _prepare_program_logs(self, partition_id: str, partition_path: Path, programs: list[Program]) -> None:
        """The root-owned log directory of a partition, and for its user the links
        `<partition>/.<id>_<program>.log` where the reference layout has the files (a link the
        tenant replaces changes nothing for root: supervisord never opens it)."""
        st = os.stat(partition_path)
        gid = st.st_gid if os.geteuid() == 0 else -1
        fd = tenantfs.open_dir(self.instance_root, "var", "program-log", create=True, mode=0o711, follow_base=True)
        try:
            try:
                os.mkdir(partition_id, 0o750, dir_fd=fd)
            except FileExistsError:
                pass
            lfd = os.open(partition_id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                if os.fstat(lfd).st_uid != os.geteuid():
                    raise PartitionError(f"{self.program_log_dir(partition_id)} is not the node's: refusing it")
                if gid != -1:
                    os.fchown(lfd, -1, gid)
                os.fchmod(lfd, 0o750)
            finally:
                os.close(lfd)
        finally:
            os.close(fd)
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        with open_dir(partition_path) as pfd:
            for p in programs:
                name = f".{partition_id}_{p.name}.log"
                target = str(self.program_log_path(partition_id, p.name))
                try:
                    if os.readlink(name, dir_fd=pfd) == target:
                        continue
                except OSError:
                    pass
                tmp = f".{name}.{os.urandom(4).hex()}.tmp"
                os.symlink(target, tmp, dir_fd=pfd)
                try:
                    if owner:
                        os.chown(tmp, *owner, dir_fd=pfd, follow_symlinks=False)
                    os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                except OSError:  # a directory of the tenant by that name: its business
                    os.unlink(tmp, dir_fd=pfd)

    def remove_program_logs(self, partition_id: str) -> None:
        """Delete a partition's program logs (root-owned: no link of the tenant is followed)."""
        directory = self.program_log_dir(partition_id)
        if not os.path.lexists(directory):
            return
        result = tenantfs.wipe_content(directory)
        if result.ok:
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def partition_conf_path(self, partition_id: str) -> Path:
        return self.conf_dir / f"{check_partition_id(partition_id)}.conf"

    def render_partition(self, partition_id: str, partition_path: Path, programs: list[Program]) -> str:
        uid = None
        home = str(partition_path)
        user = None
        st = os.stat(partition_path)
        gid = st.st_gid
        try:
            pw = pwd.getpwuid(st.st_uid)
            user, home, gid = pw.pw_name, pw.pw_dir, pw.pw_gid
        except KeyError:
            user = str(st.st_uid)
        if os.geteuid() == 0:
            if st.st_uid == 0:
                raise PartitionError(
                    f"refusing to run the programs of {partition_id} as root: {partition_path} is owned by root; "
                    "give the partition to its user (slapos node format does)"
                )
            uid = st.st_uid
        import shlex

        # as root, programs start through the launcher: it joins the partition's cgroup before it
        # drops to the partition user (supervisord's own `user =` would drop before we could)
        cgroup = self.cgroups.partition(partition_id) if uid is not None else None
        local_restart = self.settings.local_restart
        names = ",".join(f"{partition_id}_{p.name}" for p in programs)
        out = ["# Written by slapos node instance: edits are overwritten.", f"[group:{partition_id}]",
               f"programs = {names}", ""]
        for p in programs:
            log = str(self.program_log_path(partition_id, p.name))
            restart = p.watched and local_restart
            env = {"USER": user, "LOGNAME": user, "HOME": home, "SLAPOS_PROGRAM_DIGEST": p.digest}
            out += [
                f"[program:{partition_id}_{p.name}]",
                f"directory = {_value(str(partition_path))}",
                f"command = {_value(shlex.join(self._command(cgroup, (uid, gid), p.command)))}",
                f"process_name = {p.process_name}",
                "autostart = false",
                f"autorestart = {'true' if restart else 'false'}",
                f"startsecs = {SERVICE_START_SECONDS if restart else 0}",
                f"startretries = {SERVICE_START_RETRIES if restart else 0}",
                "exitcodes = 0",
                "stopsignal = TERM",
                f"stopwaitsecs = {STOP_WAIT_SECONDS}",
                "stopasgroup = true",
                "killasgroup = true",
            ]
            if uid is not None and cgroup is None:
                out.append(f"user = {uid}")
            out += [
                "serverurl = AUTO",
                "redirect_stderr = true",
                f"stdout_logfile = {_value(log)}",
                "stdout_logfile_maxbytes = 100KB",
                "stdout_logfile_backups = 1",
                "environment = " + ",".join(f"{k}={_env_value(v)}" for k, v in env.items()),
                "",
            ]
        return "\n".join(out)

    @property
    def cgroups(self):
        if self._cgroups is None:
            from .cgroup import NodeCgroups

            self._cgroups = NodeCgroups(self.settings)
        return self._cgroups

    @staticmethod
    def _command(cgroup, owner: tuple[int, int], command: Path) -> list[str]:
        if cgroup is None:
            return [str(command)]
        from .cgroup import launcher_argv

        return launcher_argv(cgroup, owner, [str(command)])

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

    # -- XML-RPC ------------------------------------------------------------------------------
    def _server(self):
        if self._proxy is None:
            import xmlrpc.client

            from supervisor.xmlrpc import SupervisorTransport

            transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
            self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport, allow_none=True)
        return self._proxy

    def call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call; faults become SupervisorError with `.fault_code`."""
        import xmlrpc.client

        with self._lock:
            target = self._server()
            for part in method.split("."):
                target = getattr(target, part)
            try:
                return target(*args)
            except xmlrpc.client.Fault as fault:
                error = SupervisorError(f"supervisord: {method}{args!r} failed: {fault.faultString}")
                error.fault_code = fault.faultCode  # type: ignore[attr-defined]
                raise error from None
            except (OSError, xmlrpc.client.ProtocolError) as e:
                self._proxy = None
                raise SupervisorError(
                    f"cannot talk to supervisord on {self.socket_path}: {e}; is it running? "
                    "('slapos node supervisord' starts it)"
                ) from None

    def _call_ok(self, method: str, *args: Any, ignore: tuple[int, ...] = ()) -> Any:
        try:
            return self.call(method, *args)
        except SupervisorError as e:
            if getattr(e, "fault_code", None) in ignore:
                return None
            raise

    def multicall(self, calls: list[tuple[str, tuple]]) -> list[Any]:
        if not calls:
            return []
        return self.call("system.multicall", [{"methodName": m, "params": list(a)} for m, a in calls])

    def all_processes(self) -> list[dict]:
        return self.call("supervisor.getAllProcessInfo")

    def partition_processes(self, partition_id: str) -> list[dict]:
        """supervisord's getProcessInfo dicts of one partition's programs."""
        return [info for info in self.all_processes() if info["group"] == partition_id]

    def wait_stopped(self, names: set[str], timeout: float | None = None) -> None:
        """Poll until every `group:process` in names is in a stopped state."""
        limit = timeout if timeout is not None else STOP_WAIT_SECONDS + 10
        begin = time.monotonic()
        pending = set(names)
        resent: set[str] = set()
        while pending:
            infos = {f"{i['group']}:{i['name']}": i for i in self.all_processes()}
            pending = {n for n in pending if n in infos and infos[n]["state"] not in STOPPED_STATES}
            if not pending:
                return
            elapsed = time.monotonic() - begin
            if elapsed > limit:
                raise SupervisorError(f"processes still running after {limit:g} s: " + ", ".join(sorted(pending)))
            if elapsed > 0.3:
                for name in pending - resent:
                    info = infos[name]
                    # A TERM that reaches a child between supervisord's fork and its exec is
                    # swallowed by supervisord's own handler, still installed in the child: a
                    # process stopped right after its start then waits for SIGKILL. Signal again.
                    if info["state"] == STOPPING and info["pid"] and info["now"] - info["start"] <= 3:
                        with contextlib.suppress(OSError):
                            os.killpg(info["pid"], signal.SIGTERM)
                        resent.add(name)
            time.sleep(0.05)

    def stop_processes(self, names: list[str], timeout: float | None = None) -> None:
        """Signal every process at once (`stopProcess`, no wait, in one multicall), then wait."""
        if not names:
            return
        results = self.multicall([("supervisor.stopProcess", (n, False)) for n in names])
        for name, result in zip(names, results, strict=True):
            if isinstance(result, dict) and result.get("faultCode") not in (None, NOT_RUNNING, BAD_NAME):
                raise SupervisorError(f"cannot stop {name}: {result.get('faultString')}")
        self.wait_stopped(set(names), timeout)

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
