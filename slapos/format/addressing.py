"""Address arithmetic: which IPv6/IPv4 address or range each partition and tap gets.

Follows SLAP-PROTOCOL.md §7.3 so a node formatted by the reference keeps its addresses:
with P the interface prefix (length L) and n = ipv6_prefixshift,
* partition address i = P + (i + 2)            (host part; 0 and 1 are reserved),
* partition range i    = P + ((1 << (n-2)) + i + 1) on n bits, prefix length L + n,
* tap range i          = P + ((2 << (n-2)) + i + 1) on n bits; its last address (host bits all 1)
                         is the tap's address, its first is the gateway.
Where the reference falls back to random values when a candidate is taken, we take the next free
one in a fixed order: a re-run computes the same thing, and the definition file keeps it anyway.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from slapos.base.errors import SlapOSError

from .system import InterfaceAddress, canonical_ip

# IPv6 scopes as /proc/net/if_inet6 writes them
SCOPE_GLOBAL = 0x00
SCOPE_HOST = 0x10


def pick_computer_ipv6(
    candidates: list[InterfaceAddress], stored: str | None, exclude: Iterable[str] = (), allow_host: bool = False
) -> InterfaceAddress | None:
    """The computer's IPv6: the stored one if still there, else the global one with the shortest
    prefix (then the lowest), ignoring addresses we gave to partitions. `allow_host` lets the
    unprivileged mode use ::1 when there is nothing else (loopback nodes)."""
    excluded = {canonical_ip(a) for a in exclude}
    usable = [
        a for a in candidates
        if a.version == 6 and not a.dadfailed and canonical_ip(a.addr) not in excluded
        and (a.scope == SCOPE_GLOBAL or (allow_host and a.scope == SCOPE_HOST))
    ]
    if stored:
        wanted = canonical_ip(stored)
        for a in usable:
            if canonical_ip(a.addr) == wanted:
                return a
    if not usable:
        return None
    usable.sort(key=lambda a: (a.scope != SCOPE_GLOBAL, a.prefixlen, int(ipaddress.ip_address(a.addr))))
    return usable[0]


def prefix_network(address: InterfaceAddress) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"{address.addr}/{address.prefixlen}", strict=False)


def partition_ipv6(prefix: ipaddress.IPv6Network, index: int, taken: set[ipaddress.IPv6Address]) -> str:
    """P + (index + 2); when taken, step by 2**16 then scan, always skipping host parts 0 and 1."""
    space = prefix.num_addresses
    if space <= 2:
        raise SlapOSError(f"the prefix {prefix} has no room for partition addresses: use a shorter prefix")
    base = int(prefix.network_address)

    def usable(host: int) -> ipaddress.IPv6Address | None:
        host %= space
        if host < 2:
            return None
        candidate = ipaddress.IPv6Address(base + host)
        return None if candidate in taken else candidate

    host = index + 2
    for step in range(64):  # a few stable alternatives before a linear scan
        found = usable(host + step * 0x10000)
        if found is not None:
            return str(found)
    for offset in range(min(space, 1 << 20)):
        found = usable(host + offset)
        if found is not None:
            return str(found)
    raise SlapOSError(f"no free IPv6 address left in {prefix} for partition {index}")


def check_prefixshift(prefix: ipaddress.IPv6Network, shift: int, partition_amount: int) -> None:
    if prefix.prefixlen + shift > 128:
        raise SlapOSError(
            f"the prefix {prefix} is too long for ranges of {shift} more bits (ipv6_prefixshift): "
            "lower ipv6_prefixshift or set partition_has_ipv6_range = false and tap_ipv6 = false"
        )
    if (1 << shift) < 4 * partition_amount:
        raise SlapOSError(
            f"ipv6_prefixshift = {shift} gives room for {(1 << shift) // 4} partitions, not {partition_amount}: "
            "raise ipv6_prefixshift"
        )


def _range(prefix: ipaddress.IPv6Network, shift: int, flavour: int, index: int) -> ipaddress.IPv6Network:
    value = (flavour << (shift - 2)) + index + 1
    host_bits = 128 - prefix.prefixlen - shift
    network = int(prefix.network_address) | (value << host_bits)
    return ipaddress.IPv6Network((network, prefix.prefixlen + shift))


def partition_range(prefix: ipaddress.IPv6Network, shift: int, index: int) -> ipaddress.IPv6Network:
    return _range(prefix, shift, 1, index)


def tap_range(prefix: ipaddress.IPv6Network, shift: int, index: int) -> ipaddress.IPv6Network:
    return _range(prefix, shift, 2, index)


def tap_ipv6(prefix: ipaddress.IPv6Network, shift: int, index: int) -> dict[str, str]:
    """Tap IPv6 fields: the range, its last address for the guest and its first as the gateway."""
    network = tap_range(prefix, shift, index)
    return {
        "ipv6_addr": str(network.broadcast_address),
        "ipv6_netmask": str(network.netmask),
        "ipv6_gateway": str(network.network_address + 1),
        "ipv6_network": str(network),
    }


def next_ipv4(network: ipaddress.IPv4Network, taken: set[ipaddress.IPv4Address], start: int = 0) -> str:
    """The first host address of `network` (from `start`) that nobody uses."""
    hosts = network.hosts() if network.prefixlen < 31 else iter(network)
    for position, candidate in enumerate(hosts):
        if position < start:
            continue
        if candidate not in taken:
            return str(candidate)
    raise SlapOSError(f"no free IPv4 address left in {network}: widen ipv4_local_network")
