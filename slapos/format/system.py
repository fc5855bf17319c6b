"""The machine as slapformat sees and changes it: one small class per resource.

Each resource compares what it should be with what the system has (read without subprocesses:
netifaces, /proc/net, /sys/class/net, the passwd/group databases, stat) and returns the actions
needed to get there — none when all is well, which is what keeps a no-change re-run fast.
Actions are data (an `ip`/`useradd` argument list or a small file-system function) so a run can
be planned, validated, printed (`--dry-run`), applied and, on failure, undone.

This module holds the resources; actions and their executor are in system_actions, reading the
system in system_read (their names stay importable from here).
"""
from __future__ import annotations

import errno
import grp
import json
import logging
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

from .system_actions import Action, CommandFailed, Executor  # noqa: F401 - part of our API
from .system_read import (  # noqa: F401 - part of our API
    IFA_F_DADFAILED,
    IFA_F_TENTATIVE,
    IFF_UP,
    RTF_LOCAL,
    InterfaceAddress,
    NetworkState,
    UserDatabase,
    canonical_ip,
    canonical_network,
)

log = logging.getLogger("slapos.format")


# -- resources -------------------------------------------------------------------------------------
@dataclass
class Directory:
    """A directory with an exact mode and, optionally, an owner (user and group names)."""

    subject: str
    path: Path
    mode: int
    user: str | None = None
    group: str | None = None

    def plan(self, users: UserDatabase) -> list[Action]:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        actions: list[Action] = []
        if st is None:
            actions.append(Action(
                self.subject, f"create directory {self.path} (mode {self.mode:04o})",
                func=self._create, undo_func=lambda: _rmdir_quiet(self.path),
            ))
        elif not os.path.isdir(self.path):
            raise SlapOSError(f"{self.subject}: {self.path} exists but is not a directory: move it away")
        elif (st.st_mode & 0o7777) != self.mode:
            actions.append(Action(
                self.subject, f"set mode {self.mode:04o} on {self.path}",
                func=lambda: os.chmod(self.path, self.mode),
            ))
        if self.user is not None:
            account = users.user(self.user)
            if self.group is not None:
                entry = users.group(self.group)
                gid = entry.gr_gid if entry else None
            else:  # the user's primary group
                gid = account.pw_gid if account else None
            if st is None or account is None or gid is None or (st.st_uid, st.st_gid) != (account.pw_uid, gid):
                owner = f"{self.user}:{self.group}" if self.group else self.user
                actions.append(Action(
                    self.subject, f"give {self.path} to {owner}", func=self._chown, needs_root=True,
                ))
        return actions

    def _chown(self) -> None:
        # looked up when applied: the user may have been created by an earlier action of the run
        account = pwd.getpwnam(self.user)
        gid = grp.getgrnam(self.group).gr_gid if self.group else account.pw_gid
        os.chown(self.path, account.pw_uid, gid)

    def _create(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        os.chmod(self.path, self.mode)  # exact mode, whatever the umask


@dataclass
class ConfigAccess:
    """The configuration directory and file readable by `group` (the software group every
    partition user and the software user belong to): `slapos` commands run by them read it.

    Only the group is widened, never "others"; a directory or file others can already read is
    left alone (e.g. /etc), and so is every other file of the directory (keys stay 0600)."""

    subject: str
    config: Path
    group: str
    # False: only the directory (the file holds a secret, e.g. the node credential of the proxy)
    file_too: bool = True

    def plan(self, users: UserDatabase) -> list[Action]:
        actions: list[Action] = []
        targets = [(self.config.parent, 0o050)] + ([(self.config, 0o040)] if self.file_too else [])
        for path, bits in targets:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) or st.st_mode & (bits >> 3) == bits >> 3:
                continue  # a link is not ours to change; others already read it
            entry = users.group(self.group)
            if entry is not None and st.st_gid == entry.gr_gid and st.st_mode & bits == bits:
                continue
            actions.append(Action(
                self.subject, f"let group {self.group} read {path}",
                func=lambda path=path, bits=bits: self._apply(path, bits), needs_root=True,
            ))
        return actions

    def _apply(self, path: Path, bits: int) -> None:
        gid = grp.getgrnam(self.group).gr_gid  # looked up now: an earlier action may have created it
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if st.st_gid not in (0, gid):
                # a group the operator chose is theirs: never replaced
                log.info("%s: %s belongs to group %d, left as it is", self.subject, path, st.st_gid)
                return
            os.fchown(fd, -1, gid)
            os.fchmod(fd, (st.st_mode & 0o7777) | bits)
        finally:
            os.close(fd)


def _rmdir_quiet(path: Path) -> None:
    """Undo of a directory creation: only an empty directory goes."""
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


@dataclass
class JsonFile:
    """A small JSON file with exact data and mode (`.slapos-resource`).

    Compared by content (the C JSON parser is fast), rendered only when it must be written: the
    indented rendering goes through the pure-Python encoder, too slow to do for every partition
    of every no-change run."""

    subject: str
    path: str
    data: dict
    mode: int = 0o644

    def plan(self) -> list[Action]:
        current, mode = None, None
        try:
            # the partition user owns the directory: a link, FIFO or huge file at this name is
            # not followed, does not block us, and is replaced; so is a copy of that user's
            mode = os.lstat(self.path).st_mode & 0o7777
            current = json.loads(tenantfs.read_regular(self.path, 1 << 20, uid=os.geteuid()))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except (OSError, ValueError):
            current = {}  # unreadable, damaged or not ours: rewrite it
        if current == self.data and mode == self.mode:
            return []
        verb = "write" if mode is None else "update"
        return [Action(self.subject, f"{verb} {self.path}", func=self._write)]

    def _write(self) -> None:
        write_atomic(Path(self.path), json.dumps(self.data, indent=4, sort_keys=True), self.mode)


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file; the
    directory may be a tenant's (a partition) while we are root, so never follow its links."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    tenantfs.write_small(path, data, mode)


@dataclass
class SystemUser:
    """A system user with its own group, a home, a shell and supplementary groups."""

    subject: str
    name: str
    home: str
    shell: str = "/bin/sh"
    groups: list[str] = field(default_factory=list)
    # False for the software user: an account that already exists (e.g. `nobody`) is used as it
    # is, never modified
    modify_existing: bool = True

    def plan(self, users: UserDatabase) -> list[Action]:
        actions: list[Action] = []
        if not self.modify_existing and users.user(self.name) is not None:
            return actions
        if users.group(self.name) is None:
            actions.append(Action(
                self.subject, f"create group {self.name}",
                commands=[["groupadd", "-r", self.name]],
                # userdel may already have removed it (USERGROUPS_ENAB): delete only if still there
                undo_func=lambda: _groupdel_if_present(self.name), needs_root=True,
            ))
        account = users.user(self.name)
        extra = ",".join(self.groups)
        if account is None:
            argv = ["useradd", "-r", "-M", "-d", self.home, "-g", self.name, "-s", self.shell]
            if extra:
                argv += ["-G", extra]
            actions.append(Action(
                self.subject, f"create user {self.name} (home {self.home})",
                commands=[argv + [self.name], ["passwd", "-l", self.name]],
                undo_commands=[["userdel", self.name]], needs_root=True,
            ))
            return actions
        group = users.group(self.name)
        wrong_gid = group is None or account.pw_gid != group.gr_gid
        missing = [g for g in self.groups if not users.is_member(self.name, g)]
        # the shell is only given to new users: one an operator set by hand is theirs to keep
        if account.pw_dir != self.home or wrong_gid or missing:
            argv = ["usermod", "-d", self.home, "-g", self.name]
            if extra:
                argv += ["-aG", extra]
            actions.append(Action(
                self.subject, f"update user {self.name} (home {self.home}, groups {self.name} {extra})".rstrip(),
                commands=[argv + [self.name], ["passwd", "-l", self.name]], needs_root=True,
            ))
        return actions

    def remove(self, users: UserDatabase) -> list[Action]:
        actions = []
        if users.user(self.name) is not None:
            actions.append(Action(self.subject, f"delete user {self.name}",
                                  commands=[["userdel", self.name]], needs_root=True))
        # userdel removes the user's own group when nobody else uses it; drop a leftover one
        if users.group(self.name) is not None:
            actions.append(Action(self.subject, f"delete group {self.name}",
                                  func=lambda: _groupdel_if_present(self.name), needs_root=True))
        return actions


def _groupdel_if_present(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        return
    import subprocess

    subprocess.run(["groupdel", name], stdin=subprocess.DEVNULL, capture_output=True, check=False)


@dataclass
class TapDevice:
    """A tap owned by the partition user, up, and attached to a bridge when there is one."""

    subject: str
    name: str
    owner: str
    bridge: str | None = None

    def plan(self, net: NetworkState, users: UserDatabase) -> list[Action]:
        actions: list[Action] = []
        if not net.has_interface(self.name):
            actions.append(Action(
                self.subject, f"create tap {self.name} owned by {self.owner}",
                commands=[["ip", "tuntap", "add", "dev", self.name, "mode", "tap", "user", self.owner]],
                undo_commands=[["ip", "link", "del", self.name]], needs_root=True,
            ))
            exists = False
        else:
            exists = True
            if not net.is_tap(self.name):
                raise SlapOSError(f"{self.subject}: interface {self.name} exists but is not a tap: remove or rename it")
            account = users.user(self.owner)
            owner = net.link_owner(self.name)
            if account is not None and owner not in (None, -1, account.pw_uid):
                log.warning("%s: tap %s is owned by uid %s, not %s; left alone", self.subject, self.name, owner,
                            self.owner)
        if not exists or not net.link_up(self.name):
            actions.append(Action(self.subject, f"bring {self.name} up",
                                  commands=[["ip", "link", "set", "dev", self.name, "up"]], needs_root=True))
        if self.bridge and (not exists or net.link_master(self.name) != self.bridge):
            actions.append(Action(self.subject, f"attach {self.name} to bridge {self.bridge}",
                                  commands=[["ip", "link", "set", "dev", self.name, "master", self.bridge]],
                                  needs_root=True))
        return actions

    def remove(self, net: NetworkState) -> list[Action]:
        if not net.has_interface(self.name):
            return []
        return [Action(self.subject, f"delete tap {self.name}",
                       commands=[["ip", "link", "del", self.name]], needs_root=True)]


@dataclass
class IPAddress:
    """An address on an interface (IPv6 ones optionally without duplicate address detection)."""

    subject: str
    ifname: str
    addr: str
    prefixlen: int
    nodad: bool = False

    @property
    def version(self) -> int:
        return 6 if ":" in self.addr else 4

    def plan(self, net: NetworkState) -> list[Action]:
        present = net.address_on(self.ifname, self.addr)
        if present is not None and not present.dadfailed:
            return []
        elsewhere = net.owner_of_address(self.addr)
        if elsewhere is not None and elsewhere != self.ifname:
            raise SlapOSError(
                f"{self.subject}: address {self.addr} is already used on {elsewhere}; free it or change the "
                "definition/ipv4_local_network"
            )
        family = "-6" if self.version == 6 else "-4"
        argv = ["ip", family, "addr", "add", f"{self.addr}/{self.prefixlen}", "dev", self.ifname]
        if self.nodad and self.version == 6:
            argv.append("nodad")
        commands = [argv]
        if present is not None:  # duplicate detected before: re-add to run detection again
            commands.insert(0, ["ip", family, "addr", "del", f"{self.addr}/{self.prefixlen}", "dev", self.ifname])
        return [Action(
            self.subject, f"add {self.addr}/{self.prefixlen} to {self.ifname}", commands=commands,
            undo_commands=[["ip", family, "addr", "del", f"{self.addr}/{self.prefixlen}", "dev", self.ifname]],
            needs_root=True,
        )]

    def remove(self, net: NetworkState) -> list[Action]:
        if net.address_on(self.ifname, self.addr) is None:
            return []
        family = "-6" if self.version == 6 else "-4"
        return [Action(self.subject, f"remove {self.addr} from {self.ifname}",
                       commands=[["ip", family, "addr", "del", f"{self.addr}/{self.prefixlen}", "dev", self.ifname]],
                       needs_root=True)]


@dataclass
class Route:
    """A route: IPv4 host route to a tap, IPv6 route (optionally via a gateway), or a local IPv6 range."""

    subject: str
    network: str
    device: str
    gateway: str = ""
    local: bool = False

    @property
    def version(self) -> int:
        return 6 if ":" in self.network else 4

    def _exists(self, net: NetworkState) -> bool:
        if self.version == 4:
            return net.has_route4(self.network, self.device)
        return net.has_route6(self.network, self.device, self.gateway, self.local)

    def _argv(self, verb: str) -> list[str]:
        argv = ["ip", "-6" if self.version == 6 else "-4", "route", verb]
        if self.local:
            argv.append("local")
        argv += [self.network, "dev", self.device]
        if self.gateway:
            argv += ["via", self.gateway]
        return argv

    def plan(self, net: NetworkState) -> list[Action]:
        if self._exists(net):
            return []
        kind = "local route" if self.local else "route"
        via = f" via {self.gateway}" if self.gateway else ""
        # `replace` is idempotent: a half-matching route (other gateway) is corrected, not an error
        return [Action(self.subject, f"add {kind} {self.network} dev {self.device}{via}",
                       commands=[self._argv("replace")], undo_commands=[self._argv("del")], needs_root=True)]

    def remove(self, net: NetworkState) -> list[Action]:
        if not self._exists(net):
            return []
        return [Action(self.subject, f"remove route {self.network} dev {self.device}",
                       commands=[self._argv("del")], needs_root=True)]


@dataclass
class Sysctl:
    """A kernel setting under /proc/sys, written directly (no sysctl subprocess)."""

    subject: str
    key: str  # dotted, e.g. net.ipv6.ip_nonlocal_bind
    value: str

    @property
    def path(self) -> Path:
        return Path("/proc/sys") / self.key.replace(".", "/")

    def plan(self) -> list[Action]:
        try:
            current = self.path.read_text().strip()
        except OSError:
            current = None
        if current == self.value:
            return []
        return [Action(self.subject, f"set {self.key} = {self.value}",
                       func=lambda: self.path.write_text(self.value + "\n"), needs_root=True)]
