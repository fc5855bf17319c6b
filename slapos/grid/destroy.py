"""Destruction of a partition the master wants destroyed (`slapos node report`, §6.9).

Steps, each safe to repeat (a run that fails or is killed half-way is finished by the next):

1. only a partition this computer has: a plain id naming a real directory under instance_root;
2. stop its supervisord programs, then end every other process of the partition: its cgroup is
   frozen and each member SIGKILLed (slapos.grid.cgroup), then every process of its user when
   that user owns only this partition (the only way on a node without cgroups); tell the master
   it is stopped;
3. wait while a process named in `.slapos-report-wait-service-list` is still running;
4. retention: with a positive `.slapos-retention-lock-delay` (days, written at deployment from
   the request's `retention_delay`), the first attempt writes `.slapos-retention-lock-date`
   (now + delay) and the partition is kept, untouched and reported as retained, until then;
5. the instance's own hook `sbin/destroy`, run as the partition user in the partition's cgroup,
   then step 2's killing again (what the hook started);
6. its certificate files, its data directories under `instance_storage_home`, then everything
   inside the partition directory: never following a symlink, never entering another
   filesystem; the directory itself stays, through a handle on it: no ACL nor extended
   attribute, owned by the partition user and its group, mode 0750;
7. its supervisord group and configuration are removed, then its (empty) cgroup;
8. POST `destroyedComputerPartition`: the master frees it (a root instance with children is
   freed by a later run, once they are gone).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

from .partition import Partition, check_is_partition

if TYPE_CHECKING:  # pragma: no cover
    from slapos.base.settings import NodeSettings

log = logging.getLogger("slapos.grid.destroy")

RETENTION_DELAY_FILE = ".slapos-retention-lock-delay"
RETENTION_DATE_FILE = ".slapos-retention-lock-date"
WAIT_LIST_FILE = ".slapos-report-wait-service-list"
RESOURCE_FILE = ".slapos-resource"  # written by `slapos node format`, read by recipes: kept
PARTITION_MODE = 0o750
MAX_RETENTION_DAYS = 90.0  # default of [slapos] max_retention_delay
WAIT_LIST_MAX = 100  # lines of the wait list looked at
DESTROY_HOOK_TIMEOUT = 600.0
_ACTIVE_STATES = {"RUNNING", "STARTING", "BACKOFF", "STOPPING"}

# outcomes
DESTROYED = "destroyed"  # wiped and freed by the master
KEPT_BY_MASTER = "kept by master"  # wiped; the master frees it later (children first)
RETAINED = "retained"
WAITING = "waiting"
FAILED = "failed"


class DestroyError(SlapOSError):
    """One step of a destruction failed; the next run starts again from the top."""


@dataclass
class DestroyOutcome:
    partition_id: str
    status: str
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAILED


class Destroyer:
    """Destroys partitions for one report run. `supervisor` returns the node's Supervisor; it
    is asked only when something has to be destroyed, and never started: when supervisord is
    not running, nothing it supervises runs either."""

    def __init__(self, settings: NodeSettings, supervisor: Callable[[], object],
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self._supervisor = supervisor
        self.clock = clock
        self._cgroups = None

    @property
    def supervisor(self):
        return self._supervisor()

    @property
    def cgroups(self):
        """The node's partition cgroups (slapos.grid.cgroup.NodeCgroups)."""
        if self._cgroups is None:
            from .cgroup import NodeCgroups

            self._cgroups = NodeCgroups(self.settings)
        return self._cgroups

    def destroy(self, computer_partition) -> DestroyOutcome:
        """Destroy one partition (a `slapos.slap.ComputerPartition` in state destroyed)."""
        partition_id = computer_partition.getId()
        try:
            return self._destroy(computer_partition, partition_id)
        except Exception as e:  # one partition's failure must not stop the others
            message = str(e) if isinstance(e, SlapOSError) else f"{type(e).__name__}: {e}"
            log.error("%s: destruction failed: %s", partition_id, message)
            try:
                computer_partition.error(f"destruction failed: {message}", logger=log)
            except Exception:  # error() never raises by contract; be safe anyway
                pass
            return DestroyOutcome(partition_id, FAILED, message)

    def _destroy(self, cp, partition_id: str) -> DestroyOutcome:
        partition = Partition(self.settings, partition_id)
        check_is_partition(partition)
        path = partition.path
        log.info("%s: destroying", partition_id)

        if self.supervisor.is_running():
            self.supervisor.stop_partition(partition_id)
        end_processes(self.cgroups, partition_id, path)
        try:
            cp.stopped()
        except Exception as e:  # the reference ignores it too: destruction goes on
            log.warning("%s: could not report 'stopped' to the master: %s", partition_id, e)

        busy = self.busy_services(path)
        if busy:
            message = f"waiting for {', '.join(busy)} to finish before destroying"
            log.info("%s: %s", partition_id, message)
            return DestroyOutcome(partition_id, WAITING, message)

        until = self.retained_until(path)
        if until is not None:
            message = f"kept until {_date(until)} (retention delay asked by the instance)"
            log.info("%s: %s", partition_id, message)
            return DestroyOutcome(partition_id, RETAINED, message)

        try:
            run_destroy_hook(self.settings, partition_id, path, self.cgroups)
        finally:
            end_processes(self.cgroups, partition_id, path)  # what the hook started, even if it failed
        partition.remove_certificate()
        self.wipe_storage(partition_id)
        wipe_partition(partition_id, path)
        tenantfs.remove_file(_retention_record(path))  # the next tenant starts without a date
        self.supervisor.remove_partition(partition_id)
        cg = self.cgroups.partition(partition_id)
        if cg is not None:
            try:
                cg.remove()  # empty: the next tenant gets a fresh one, with its own limits
            except SlapOSError as e:
                raise DestroyError(f"{e}; the next run tries again") from None
        return self.report_destroyed(cp, partition_id)

    # -- steps -------------------------------------------------------------------------------

    def busy_services(self, path: Path) -> list[str]:
        """Processes listed in `.slapos-report-wait-service-list` (`group:name` per line)
        that are still active. The tenant writes that file: only its own group counts (naming
        another partition's program must not keep this one alive while the other runs), and
        only its first WAIT_LIST_MAX lines."""
        data = tenantfs.read_small(path / WAIT_LIST_FILE, 64 * 1024)
        if not data or not self.supervisor.is_running():
            return []
        busy = []
        for line in data.decode("utf-8", "replace").splitlines()[:WAIT_LIST_MAX]:
            name = line.strip()
            if not name or ":" not in name:
                continue
            group, _, process = name.partition(":")
            if group != path.name:
                log.warning("%s: ignoring %s in %s: a partition only waits for its own programs",
                            path.name, name[:100], WAIT_LIST_FILE)
                continue
            try:
                infos = self.supervisor.partition_processes(group)
            except Exception:
                continue  # an unknown group has nothing running
            for info in infos:
                if info.get("name") == process and info.get("statename") in _ACTIVE_STATES:
                    busy.append(name)
        return busy

    def retained_until(self, path: Path) -> float | None:
        """The date until which the partition is kept, or None when it can go now.

        The delay file is in the tenant's directory, so it is capped by `[slapos]
        max_retention_delay` (days); the date, once fixed, is kept by root in
        `<instance_root>/var/retention/<id>` (the copy in the partition is for the tenant to
        read: changing it changes nothing)."""
        delay = tenantfs.read_float(path / RETENTION_DELAY_FILE)
        if delay is None or not delay > 0:
            return None
        delay = min(delay, float(getattr(self.settings, "max_retention_delay", MAX_RETENTION_DAYS)))
        now = self.clock()
        kept = _retention_record(path)
        date = tenantfs.read_float(kept)
        if date is None or not math.isfinite(date):
            date = now + delay * 86400
            directory = kept.parent
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tenantfs.write_small(kept, f"{date!r}\n".encode(), 0o600)
            st = os.lstat(path)
            tenantfs.write_small(path / RETENTION_DATE_FILE, f"{date!r}\n".encode(), 0o644, (st.st_uid, st.st_gid))
        return date if now < date else None

    def wipe_storage(self, partition_id: str) -> None:
        """`<instance_storage_home>/<dataN>/<id>`: the partition's data disks (emptied)."""
        home = self.settings.instance_storage_home
        if not home:
            return
        try:
            disks = sorted(os.scandir(home), key=lambda e: e.name)
        except OSError:
            return
        for disk in disks:
            if not disk.is_dir(follow_symlinks=False):
                continue
            target = Path(disk.path) / partition_id
            if not target.is_dir() or target.is_symlink():
                continue
            result = tenantfs.wipe_content(target)
            if not result.ok:
                raise DestroyError(f"{partition_id}: could not empty {target}: " + "; ".join(result.errors[:5]))

    def report_destroyed(self, cp, partition_id: str) -> DestroyOutcome:
        from slapos.slap.exceptions import NotFoundError, ServerError

        try:
            answer = (cp.destroyed() or "").strip()
        except (NotFoundError, ServerError) as e:
            # the reference ignores these: the partition is clean, the master will catch up
            log.warning("%s: destroyed locally; the master answered: %s", partition_id, e)
            return DestroyOutcome(partition_id, DESTROYED, "destroyed locally")
        if answer and answer != "OK":
            log.info("%s: destroyed locally; the master keeps it for now: %s", partition_id, answer)
            return DestroyOutcome(partition_id, KEPT_BY_MASTER, answer)
        log.info("%s: destroyed, the master freed it", partition_id)
        return DestroyOutcome(partition_id, DESTROYED)


def _retention_record(path: Path) -> Path:
    """Root's record of a partition's retention date (outside the tenant's tree)."""
    return path.parent / "var" / "retention" / path.name


def _date(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return "further notice (the retention date is beyond the calendar)"


# -- helpers also used by tests -------------------------------------------------------------

def wipe_partition(partition_id: str, path: Path) -> None:
    """Empty the partition directory and keep it as the node made it: owned by the partition
    user and its group, mode 0750, without any ACL or extended attribute the tenant set."""
    result = tenantfs.wipe_content(path, keep=_kept_files(path))
    if not result.ok:
        shown = "; ".join(result.errors[:5])
        more = f" (and {len(result.errors) - 5} more)" if len(result.errors) > 5 else ""
        raise DestroyError(f"{partition_id}: could not empty {path}: {shown}{more}; the next run tries again")
    reset_directory(partition_id, path)
    log.info("%s: emptied %s (%d entries removed)", partition_id, path, result.removed)


# kept: the security label belongs to the system's policy, not to the tenant
KEPT_XATTRS = frozenset({"security.selinux"})


def reset_directory(partition_id: str, path: Path) -> None:
    """Through a handle on the directory itself (never a link): drop every extended attribute
    (`system.posix_acl_access` / `_default` are the ACLs, `user.*`, `trusted.*`), give it back to
    the partition user and its primary group, mode 0750."""
    import pwd

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        try:
            names = os.listxattr(fd)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise DestroyError(f"{partition_id}: cannot list the attributes of {path}: {e.strerror}") from None
            names = []
        for name in names:
            if name in KEPT_XATTRS:
                continue
            try:
                os.removexattr(fd, name)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise DestroyError(f"{partition_id}: cannot remove {name} from {path}: {e.strerror}") from None
        if os.geteuid() == 0:
            try:
                gid = pwd.getpwuid(st.st_uid).pw_gid
            except KeyError:
                gid = st.st_gid
            if st.st_uid == 0:
                raise DestroyError(f"{partition_id}: {path} is owned by root: refusing to reset it")
            os.fchown(fd, st.st_uid, gid)
        os.fchmod(fd, PARTITION_MODE)
        left = [n for n in os.listxattr(fd) if n not in KEPT_XATTRS] if names else []
        if left:
            raise DestroyError(f"{partition_id}: {path} still carries {', '.join(left)}")
    finally:
        os.close(fd)


def _kept_files(path: Path) -> set[str]:
    """`.slapos-resource` is kept only when the node wrote it (a regular file of ours): a
    tenant's version of it must not survive to the next tenant."""
    try:
        st = os.lstat(path / RESOURCE_FILE)
    except OSError:
        return set()
    return {RESOURCE_FILE} if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() else set()


def run_destroy_hook(settings: NodeSettings, partition_id: str, path: Path, cgroups=None) -> None:
    """`sbin/destroy` of the instance, as the partition user, in the partition (reference §6.9),
    in the partition's cgroup (what it leaves running is killed with the rest)."""
    hook = path / "sbin" / "destroy"
    try:
        st = os.lstat(hook)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        return
    from .process import clean_environment, identity_for, run

    identity = identity_for(path, f"the destroy hook of {partition_id}")
    if cgroups is not None:
        identity = cgroups.place(identity, partition_id, path)
    home = identity.home if identity else os.environ.get("HOME", str(path))
    log.info("%s: running sbin/destroy", partition_id)
    timeout = settings.partition_timeout or DESTROY_HOOK_TIMEOUT
    result = run(
        [str(hook)], cwd=path, env=clean_environment(home, settings.extra_path, user=identity.name if identity else None,
                                     tmpdir=path / "tmp"), identity=identity,
        timeout=timeout,
        on_line=lambda line: log.debug("%s: sbin/destroy: %s", partition_id, line),
    )
    if not result.ok:
        raise DestroyError(
            f"{partition_id}: sbin/destroy exited with code {result.returncode}: {result.tail(10)}"
        )


def end_processes(cgroups, partition_id: str, path: Path) -> None:
    """No process of the partition may be left: every member of its cgroup (frozen, then
    SIGKILLed: what double-forked away from supervisord, what `sbin/destroy` started), then, belt
    and braces, every process of its dedicated user. DestroyError when one survives."""
    cg = cgroups.partition(partition_id) if cgroups is not None else None
    if cg is not None:
        try:
            killed = cg.kill()
        except SlapOSError as e:
            raise DestroyError(f"{e}; the next run tries again") from None
        if killed:
            log.info("%s: killed %d process(es) of its cgroup", partition_id, killed)
    elif cgroups is not None:
        log.warning("%s: no cgroup (%s): ending the processes of its user found by a /proc scan",
                    partition_id, cgroups.reason)
    kill_leftover_processes(partition_id, path, grace=0 if cg is not None else 5.0)


def kill_leftover_processes(partition_id: str, path: Path, grace: float = 5.0) -> int:
    """End the processes of the partition's user (found by uid in /proc): SIGTERM, `grace`
    seconds, then SIGKILL sent *as that user* to every process it may signal (`kill(-1)`,
    repeated until none is left: a fork loop cannot outrun it for long). Only when that user is
    exclusive to this partition: never root, never ourselves, never a user shared with other
    partitions. Returns how many processes were found; DestroyError if some survive."""
    from .usage import dedicated_uid

    uid = dedicated_uid(path)
    if uid is None or _uid_owns_other_partitions(uid, path):
        return 0
    import psutil

    found = _processes_of(uid)
    if not found:
        return 0
    log.info("%s: ending %d leftover process(es) of uid %d", partition_id, len(found), uid)
    victims = []
    for pid in found:
        try:
            victims.append(psutil.Process(pid))
        except psutil.Error:
            continue
    if grace > 0:
        for p in victims:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        psutil.wait_procs(victims, timeout=grace)
    deadline = time.monotonic() + 10
    while True:
        _kill_all_as(uid)
        psutil.wait_procs(victims, timeout=0.2)  # reaps the ones that are our children
        left = _processes_of(uid)
        if not left:
            return len(found)
        if time.monotonic() > deadline:
            raise DestroyError(f"{partition_id}: processes {sorted(left)[:10]} of uid {uid} survive SIGKILL; "
                               "the next run tries again")


def _kill_all_as(uid: int) -> None:
    """kill(-1, SIGKILL) from a child switched to `uid`: the kernel signals every process of
    that user at once (and none of anyone else's)."""
    pid = os.fork()
    if pid == 0:  # only system calls until _exit (the parent may have threads)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:
            os._exit(1)
        os._exit(0)
    os.waitpid(pid, 0)


def _processes_of(uid: int) -> set[int]:
    """Living processes whose real uid is `uid` (zombies left to a parent are dead already)."""
    me = os.getpid()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read(2048)
        except OSError:
            continue
        state = uid_line = None
        for line in status.splitlines():
            if line.startswith(b"State:"):
                state = line.split()[1:2]
            elif line.startswith(b"Uid:"):
                uid_line = line.split()
                break
        if uid_line and len(uid_line) > 1 and uid_line[1] == str(uid).encode() and state != [b"Z"]:
            found.add(int(name))
    return found


def _uid_owns_other_partitions(uid: int, path: Path) -> bool:
    try:
        siblings = list(os.scandir(path.parent))
    except OSError:
        return True
    for entry in siblings:
        if entry.name == path.name:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            return True
    return False
