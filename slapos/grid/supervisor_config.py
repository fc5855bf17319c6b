"""The files the node gives supervisord: `etc/supervisord.conf` (with the watchdog event
listener) and one `etc/supervisord.conf.d/<id>.conf` per partition, every value checked
(slapos/base/safetext.py); the programs of a partition (`collect_programs`) and the digest of
what each runs; the programs' logs, in a root-owned tree. A part of
`slapos.grid.supervisor.Supervisor` (see that module), kept apart so that each file reads in one
sitting.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base import tenantfs

from .partition import PartitionError, atomic_write, check_partition_id, open_dir
from .supervisor_client import STOP_WAIT_SECONDS, SupervisorError

logger = logging.getLogger("slapos.grid.supervisor")  # one logger for the three files

SERVICE_START_SECONDS = 1  # a service must stay up this long to count as started
SERVICE_START_RETRIES = 5  # restarts 1 s, 2 s, ... 5 s apart, then FATAL (and the watchdog bangs)
EVENT_BUFFER = 10000
DIGEST_READ_LIMIT = 1 << 20
_PROGRAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")


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


class SupervisorFiles:
    """The configuration half of `Supervisor` (a mixin: `Supervisor.__init__` sets the paths)."""

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
