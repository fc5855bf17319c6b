"""The computer definition: what slapformat decided each partition owns.

These records are the single source of truth of a format run. They serialise to the reference's
computer dictionary (SLAP-PROTOCOL.md §7.4), which is what `slapos.xml` stores, what each
partition's `.slapos-resource` holds and what the master receives. A later run reloads them so
every partition keeps its user, tap and addresses.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

TAP_KEYS = (
    "ipv4_addr", "ipv4_netmask", "ipv4_gateway", "ipv4_network",
    "ipv6_addr", "ipv6_netmask", "ipv6_gateway", "ipv6_network",
)


@functools.lru_cache(maxsize=512)
def netmask_of(prefixlen: int, version: int) -> str:
    """Dotted (IPv4) or colon (IPv6) netmask for a prefix length, as the reference stores them."""
    network = ipaddress.ip_network(("::" if version == 6 else "0.0.0.0", prefixlen))
    return str(network.netmask)


@functools.lru_cache(maxsize=512)
def prefixlen_of(netmask: str) -> int:
    """Prefix length of a netmask written as a mask (`255.255.255.0`, `ffff::`) or a length (`64`)."""
    netmask = netmask.strip()
    if "/" in netmask:  # netifaces spelling: 'ffff:ffff:ffff:ffff::/64'
        return int(netmask.rsplit("/", 1)[1])
    if netmask.isdigit():
        return int(netmask)
    mask = ipaddress.ip_address(netmask)
    value, width = int(mask), mask.max_prefixlen
    prefixlen = bin(value).count("1")
    if value != ((1 << width) - 1) ^ ((1 << (width - prefixlen)) - 1):
        raise ValueError(f"{netmask} is not a contiguous netmask")
    return prefixlen


@dataclass(frozen=True)
class Address:
    addr: str
    netmask: str

    @property
    def version(self) -> int:
        return 6 if ":" in self.addr else 4

    @property
    def prefixlen(self) -> int:
        return prefixlen_of(self.netmask)

    @property
    def cidr(self) -> str:
        return f"{self.addr}/{self.prefixlen}"

    def to_dict(self) -> dict[str, str]:
        return {"addr": self.addr, "netmask": self.netmask}

    @classmethod
    def parse(cls, text: str) -> Address:
        """`<ip>/<netmask or prefixlen>` (definition-file spelling)."""
        addr, _, mask = text.strip().partition("/")
        ip = ipaddress.ip_address(addr)
        if not mask:
            mask = str(ip.max_prefixlen)
        return cls(str(ip), netmask_of(prefixlen_of(mask), ip.version))


@dataclass(frozen=True)
class IPv6Range:
    addr: str
    prefixlen: int

    @property
    def network(self) -> str:
        return f"{self.addr}/{self.prefixlen}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "addr": self.addr,
            "netmask": netmask_of(self.prefixlen, 6),
            "network": self.network,
            "prefixlen": self.prefixlen,
        }

    @classmethod
    def parse(cls, text: str) -> IPv6Range:
        net = ipaddress.ip_network(text.strip(), strict=False)
        return cls(str(net.network_address), net.prefixlen)


@dataclass
class Tap:
    """A tap (or tun) device of a partition; empty strings where nothing was assigned (reference shape)."""

    name: str
    ipv4_addr: str = ""
    ipv4_netmask: str = ""
    ipv4_gateway: str = ""
    ipv4_network: str = ""
    ipv6_addr: str = ""
    ipv6_netmask: str = ""
    ipv6_gateway: str = ""
    ipv6_network: str = ""

    def to_dict(self) -> dict[str, str]:
        data = {"name": self.name}
        data.update({key: getattr(self, key) for key in TAP_KEYS})
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> Tap | None:
        if not data:
            return None
        return cls(name=str(data.get("name") or ""), **{k: str(data.get(k) or "") for k in TAP_KEYS})


@dataclass
class User:
    name: str
    path: str
    shell: str = "/bin/sh"
    additional_group_list: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "additional_group_list": list(self.additional_group_list),
            "name": self.name,
            "path": self.path,
            "shell": self.shell,
        }

    @classmethod
    def from_dict(cls, data: dict) -> User:
        return cls(
            name=str(data["name"]),
            path=str(data.get("path") or ""),
            shell=str(data.get("shell") or "/bin/sh"),
            additional_group_list=[str(g) for g in data.get("additional_group_list") or []],
        )


@dataclass
class Partition:
    reference: str
    path: str
    user: User
    address_list: list[Address] = field(default_factory=list)
    ipv6_range: IPv6Range | None = None
    tap: Tap | None = None
    tun: Tap | None = None
    external_storage_list: list[str] = field(default_factory=list)
    capability_list: list[str] | None = None

    @property
    def index(self) -> int | None:
        """Trailing number of the reference (`slappart12` → 12), used for address arithmetic."""
        digits = ""
        for char in reversed(self.reference):
            if not char.isdigit():
                break
            digits = char + digits
        return int(digits) if digits else None

    def addresses(self, version: int) -> list[Address]:
        return [a for a in self.address_list if a.version == version]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "address_list": [a.to_dict() for a in self.address_list],
            "external_storage_list": list(self.external_storage_list),
            "ipv6_range": self.ipv6_range.to_dict() if self.ipv6_range else {},
            "path": self.path,
            "reference": self.reference,
            "tap": self.tap.to_dict() if self.tap else None,
            "tun": self.tun.to_dict() if self.tun else None,
            "user": self.user.to_dict(),
        }
        if self.capability_list is not None:
            data["capability_list"] = list(self.capability_list)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Partition:
        rng = data.get("ipv6_range") or {}
        ipv6_range = None
        if rng.get("addr"):
            prefixlen = rng.get("prefixlen")
            ipv6_range = IPv6Range(str(rng["addr"]), int(prefixlen) if prefixlen else prefixlen_of(rng["netmask"]))
        caps = data.get("capability_list")
        return cls(
            reference=str(data["reference"]),
            path=str(data.get("path") or ""),
            user=User.from_dict(data.get("user") or {"name": ""}),
            address_list=[Address(str(a["addr"]), str(a["netmask"])) for a in data.get("address_list") or []],
            ipv6_range=ipv6_range,
            tap=Tap.from_dict(data.get("tap")),
            tun=Tap.from_dict(data.get("tun")),
            external_storage_list=[str(s) for s in data.get("external_storage_list") or []],
            capability_list=[str(c) for c in caps] if caps is not None else None,
        )


@dataclass
class Interface:
    """The network side of the computer (present only when the network is managed)."""

    name: str
    ipv4_local_network: str
    ipv6_interface: str | None = None
    ipv6_prefixshift: int = 16

    def to_dict(self) -> dict[str, Any]:
        return {
            "ipv4_local_network": self.ipv4_local_network,
            "ipv6_interface": self.ipv6_interface,
            "ipv6_prefixshift": self.ipv6_prefixshift,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> Interface | None:
        if not data:
            return None
        return cls(
            name=str(data["name"]),
            ipv4_local_network=str(data.get("ipv4_local_network") or ""),
            ipv6_interface=data.get("ipv6_interface"),
            ipv6_prefixshift=int(data.get("ipv6_prefixshift") or 16),
        )


@dataclass
class Computer:
    reference: str
    software_root: str
    instance_root: str
    address: str | None = None
    netmask: str | None = None
    interface: Interface | None = None
    ipv6_interface: str | None = None
    partition_has_ipv6_range: bool = True
    software_user: str = "slapsoft"
    tap_gateway_interface: str = ""
    tap_ipv6: bool = True
    instance_storage_home: str | None = None
    public_ipv4_address: str | None = None
    os_type: str | None = None
    python_version: str | None = None
    slapos_version: str | None = None
    partition_list: list[Partition] = field(default_factory=list)

    def partition(self, reference: str) -> Partition | None:
        for partition in self.partition_list:
            if partition.reference == reference:
                return partition
        return None

    def to_dict(self) -> dict[str, Any]:
        """The reference's computer dictionary (§7.4); keys sorted by the marshaller anyway."""
        return {
            "address": self.address,
            "instance_root": self.instance_root,
            "instance_storage_home": self.instance_storage_home,
            "interface": self.interface.to_dict() if self.interface else None,
            "ipv6_interface": self.ipv6_interface,
            "netmask": self.netmask,
            "os_type": self.os_type,
            "partition_has_ipv6_range": self.partition_has_ipv6_range,
            "partition_list": [p.to_dict() for p in self.partition_list],
            "public_ipv4_address": self.public_ipv4_address,
            "python_version": self.python_version,
            "reference": self.reference,
            "slapos_version": self.slapos_version,
            "software_root": self.software_root,
            "software_user": self.software_user,
            "tap_gateway_interface": self.tap_gateway_interface,
            "tap_ipv6": self.tap_ipv6,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Computer:
        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            reference=str(data.get("reference") or ""),
            software_root=str(data.get("software_root") or ""),
            instance_root=str(data.get("instance_root") or ""),
            address=text("address"),
            netmask=text("netmask"),
            interface=Interface.from_dict(data.get("interface")),
            ipv6_interface=text("ipv6_interface"),
            partition_has_ipv6_range=bool(data.get("partition_has_ipv6_range", True)),
            software_user=str(data.get("software_user") or "slapsoft"),
            tap_gateway_interface=str(data.get("tap_gateway_interface") or ""),
            tap_ipv6=bool(data.get("tap_ipv6", True)),
            instance_storage_home=text("instance_storage_home"),
            public_ipv4_address=text("public_ipv4_address"),
            os_type=text("os_type"),
            python_version=text("python_version"),
            slapos_version=text("slapos_version"),
            partition_list=[Partition.from_dict(p) for p in data.get("partition_list") or []],
        )
