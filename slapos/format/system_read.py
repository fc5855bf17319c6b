"""Reading the system without subprocesses: interfaces, addresses and routes (netifaces, /proc/net,
/sys/class/net) and the passwd/group databases, as slapformat compares them with what it wants.
Split from slapos.format.system, which re-exports these names.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("slapos.format")

IFF_UP = 0x1
RTF_LOCAL = 0x80000000
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08


@dataclass(frozen=True)
class InterfaceAddress:
    ifname: str
    addr: str
    prefixlen: int
    scope: int = 0  # IPv6 scope: 0 global, 0x10 host, 0x20 link
    flags: int = 0

    @property
    def version(self) -> int:
        return 6 if ":" in self.addr else 4

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def dadfailed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)


# Canonical text of addresses through the C functions of the socket module: the ipaddress module
# is ~20 times slower, which shows with hundreds of partitions on every no-change run.
def canonical_ip(addr: str) -> str:
    """RFC 5952 text of an address (`fd00:0::0:2` → `fd00::2`); scope suffixes dropped."""
    if ":" in addr:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, addr.split("%", 1)[0]))
    return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, addr))


def canonical_network(network: str) -> str:
    """`<address>/<prefixlen>` with the address part canonical (host bits are not cleared)."""
    addr, _, prefixlen = network.partition("/")
    addr = canonical_ip(addr)
    return f"{addr}/{prefixlen or (128 if ':' in addr else 32)}"


def _hex_ipv6(text: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(text))


def _hex_ipv4_le(text: str) -> str:
    return socket.inet_ntop(socket.AF_INET, bytes.fromhex(text)[::-1])


class NetworkState:
    """Interfaces, addresses, links and routes of the current network namespace, read lazily."""

    def __init__(self, sys_net: str = "/sys/class/net", proc_net: str = "/proc/net"):
        self.sys_net = Path(sys_net)
        self.proc_net = Path(proc_net)
        self._addresses: list[InterfaceAddress] | None = None
        self._index: dict[str, list[InterfaceAddress]] | None = None
        self._routes6: set[tuple[str, str, str, bool]] | None = None
        self._routes4: set[tuple[str, str]] | None = None

    def refresh(self) -> None:
        self._addresses = self._index = self._routes6 = self._routes4 = None

    # interfaces and addresses
    def interfaces(self) -> list[str]:
        import netifaces

        return list(netifaces.interfaces())

    def has_interface(self, name: str) -> bool:
        return (self.sys_net / name).exists()

    @property
    def addresses(self) -> list[InterfaceAddress]:
        if self._addresses is None:
            self._addresses = self._read_ipv4() + self._read_ipv6()
        return self._addresses

    def _read_ipv4(self) -> list[InterfaceAddress]:
        import netifaces

        from .model import prefixlen_of

        # one walk of the kernel's address list (netifaces-plus); ifaddresses() per interface
        # walks it again for each one, which is quadratic with hundreds of taps
        if hasattr(netifaces, "allifaddresses"):
            table = netifaces.allifaddresses()
        else:
            table = {name: netifaces.ifaddresses(name) for name in netifaces.interfaces()}
        found = []
        for name, families in table.items():
            for entry in families.get(netifaces.AF_INET, []):
                if entry.get("addr"):
                    found.append(InterfaceAddress(name, entry["addr"], prefixlen_of(entry.get("netmask") or "32")))
        return found

    def _read_ipv6(self) -> list[InterfaceAddress]:
        # /proc/net/if_inet6 has what netifaces lacks: scope and the tentative/dadfailed flags
        found = []
        try:
            lines = (self.proc_net / "if_inet6").read_text().splitlines()
        except FileNotFoundError:  # IPv6 disabled in this kernel
            return found
        for line in lines:
            parts = line.split()
            if len(parts) < 6:
                continue
            found.append(
                InterfaceAddress(parts[5], _hex_ipv6(parts[0]), int(parts[2], 16), int(parts[3], 16), int(parts[4], 16))
            )
        return found

    def addresses_of(self, ifname: str, version: int | None = None) -> list[InterfaceAddress]:
        return [a for a in self.addresses if a.ifname == ifname and (version is None or a.version == version)]

    def _holders(self, addr: str) -> list[InterfaceAddress]:
        if self._index is None:
            index: dict[str, list[InterfaceAddress]] = {}
            for a in self.addresses:
                index.setdefault(canonical_ip(a.addr), []).append(a)
            self._index = index
        return self._index.get(canonical_ip(addr), [])

    def owner_of_address(self, addr: str) -> str | None:
        """Name of the interface holding `addr`, if any."""
        holders = self._holders(addr)
        return holders[0].ifname if holders else None

    def address_on(self, ifname: str, addr: str) -> InterfaceAddress | None:
        for a in self._holders(addr):
            if a.ifname == ifname:
                return a
        return None

    # links
    def link_attr(self, name: str, attr: str) -> str | None:
        try:
            return (self.sys_net / name / attr).read_text().strip()
        except OSError:
            return None

    def is_tap(self, name: str) -> bool:
        return (self.sys_net / name / "tun_flags").exists()

    def is_bridge(self, name: str) -> bool:
        return (self.sys_net / name / "bridge").is_dir()

    def link_owner(self, name: str) -> int | None:
        value = self.link_attr(name, "owner")
        return int(value) if value not in (None, "") else None

    def link_up(self, name: str) -> bool:
        value = self.link_attr(name, "flags")
        return bool(value) and bool(int(value, 16) & IFF_UP)

    def link_master(self, name: str) -> str | None:
        try:
            return os.path.basename(os.readlink(self.sys_net / name / "master"))
        except OSError:
            return None

    # routes
    @property
    def routes6(self) -> set[tuple[str, str, str, bool]]:
        """(network, device, gateway or '', is_local) of every table (the file lists them all)."""
        if self._routes6 is None:
            routes = set()
            try:
                lines = (self.proc_net / "ipv6_route").read_text().splitlines()
            except FileNotFoundError:
                lines = []
            for line in lines:
                p = line.split()
                if len(p) < 10:
                    continue
                network = f"{_hex_ipv6(p[0])}/{int(p[1], 16)}"
                gateway = _hex_ipv6(p[4])
                routes.add((network, p[9], "" if gateway == "::" else gateway, bool(int(p[8], 16) & RTF_LOCAL)))
            self._routes6 = routes
        return self._routes6

    @property
    def routes4(self) -> set[tuple[str, str]]:
        """(network, device) of the main IPv4 table."""
        if self._routes4 is None:
            routes = set()
            try:
                lines = (self.proc_net / "route").read_text().splitlines()[1:]
            except FileNotFoundError:
                lines = []
            for line in lines:
                p = line.split()
                if len(p) < 8:
                    continue
                prefixlen = bin(int(p[7], 16)).count("1")
                routes.add((f"{_hex_ipv4_le(p[1])}/{prefixlen}", p[0]))
            self._routes4 = routes
        return self._routes4

    def has_route6(self, network: str, device: str, gateway: str = "", local: bool = False) -> bool:
        net = canonical_network(network)
        gw = canonical_ip(gateway) if gateway else ""
        return (net, device, gw, local) in self.routes6

    def has_route4(self, network: str, device: str) -> bool:
        return (canonical_network(network), device) in self.routes4

    def wait_dad(self, addresses: list[tuple[str, str]], timeout: float) -> list[str]:
        """Wait until the given (ifname, addr) IPv6 addresses leave the tentative state.

        Returns the ones that failed duplicate address detection (another host uses them)."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            pending, failed = [], []
            for ifname, addr in addresses:
                found = self.address_on(ifname, addr)
                if found is None:
                    continue
                if found.dadfailed:
                    failed.append(f"{addr} on {ifname}")
                elif found.tentative:
                    pending.append(f"{addr} on {ifname}")
            if failed or not pending or time.monotonic() > deadline:
                if pending and not failed:
                    log.warning(
                        "computer: IPv6 %s still tentative after %.0f s (link down?); continuing",
                        ", ".join(pending), timeout,
                    )
                return failed
            time.sleep(0.1)


class UserDatabase:
    """passwd/group entries read once per run (a lookup per partition would rescan the files)."""

    def __init__(self) -> None:
        self._users: dict[str, pwd.struct_passwd] | None = None
        self._groups: dict[str, grp.struct_group] | None = None

    def refresh(self) -> None:
        self._users = self._groups = None

    @property
    def users(self) -> dict[str, pwd.struct_passwd]:
        if self._users is None:
            self._users = {u.pw_name: u for u in pwd.getpwall()}
        return self._users

    @property
    def groups(self) -> dict[str, grp.struct_group]:
        if self._groups is None:
            self._groups = {g.gr_name: g for g in grp.getgrall()}
        return self._groups

    def user(self, name: str) -> pwd.struct_passwd | None:
        return self.users.get(name)

    def group(self, name: str) -> grp.struct_group | None:
        return self.groups.get(name)

    def group_name(self, gid: int) -> str | None:
        for g in self.groups.values():
            if g.gr_gid == gid:
                return g.gr_name
        return None

    def is_member(self, user: str, group: str) -> bool:
        entry = self.group(group)
        if entry is None:
            return False
        if user in entry.gr_mem:
            return True
        account = self.user(user)
        return account is not None and account.pw_gid == entry.gr_gid
