"""Address arithmetic of SLAP-PROTOCOL.md §7.3 and the choice of the computer address."""
from __future__ import annotations

import ipaddress

import pytest

from slapos.base.errors import SlapOSError
from slapos.format import addressing
from slapos.format.system import InterfaceAddress

PREFIX = ipaddress.IPv6Network("fd00:1:2:3::/64")


def test_partition_address_is_prefix_plus_index_plus_two():
    assert addressing.partition_ipv6(PREFIX, 0, set()) == "fd00:1:2:3::2"
    assert addressing.partition_ipv6(PREFIX, 9, set()) == "fd00:1:2:3::b"


def test_taken_partition_address_moves_to_a_stable_alternative():
    taken = {ipaddress.IPv6Address("fd00:1:2:3::2")}
    first = addressing.partition_ipv6(PREFIX, 0, taken)
    assert first != "fd00:1:2:3::2"
    assert ipaddress.IPv6Address(first) in PREFIX
    assert addressing.partition_ipv6(PREFIX, 0, taken) == first  # same input, same answer


def test_partition_address_skips_reserved_host_parts_when_wrapping():
    small = ipaddress.IPv6Network("fd00::/126")  # 4 addresses: ::0 ::1 reserved, ::2 ::3 usable
    assert addressing.partition_ipv6(small, 0, set()) == "fd00::2"
    assert addressing.partition_ipv6(small, 1, set()) == "fd00::3"
    assert addressing.partition_ipv6(small, 2, set()) == "fd00::2"  # wraps, never ::0/::1
    full = {ipaddress.IPv6Address("fd00::2"), ipaddress.IPv6Address("fd00::3")}
    with pytest.raises(SlapOSError, match="no free IPv6"):
        addressing.partition_ipv6(small, 0, full)


def test_ranges_follow_the_reference_formula():
    # n = 16 on a /64: partition range i = P + ((1 << 14) + i + 1) << 48, /80
    assert str(addressing.partition_range(PREFIX, 16, 0)) == "fd00:1:2:3:4001::/80"
    assert str(addressing.partition_range(PREFIX, 16, 5)) == "fd00:1:2:3:4006::/80"
    tap = addressing.tap_ipv6(PREFIX, 16, 0)
    assert tap["ipv6_network"] == "fd00:1:2:3:8001::/80"
    assert tap["ipv6_gateway"] == "fd00:1:2:3:8001::1"
    assert tap["ipv6_addr"] == "fd00:1:2:3:8001:ffff:ffff:ffff"  # remaining bits set to 1
    assert tap["ipv6_netmask"] == "ffff:ffff:ffff:ffff:ffff::"


def test_prefixshift_sanity():
    addressing.check_prefixshift(PREFIX, 16, 100)
    with pytest.raises(SlapOSError, match="raise ipv6_prefixshift"):
        addressing.check_prefixshift(PREFIX, 4, 5)  # 2**4 < 4 * 5
    with pytest.raises(SlapOSError, match="too long"):
        addressing.check_prefixshift(ipaddress.IPv6Network("fd00::/120"), 16, 1)


def test_next_ipv4_skips_taken_and_network_address():
    net = ipaddress.IPv4Network("10.0.0.0/29")
    assert addressing.next_ipv4(net, set()) == "10.0.0.1"
    taken = {ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2")}
    assert addressing.next_ipv4(net, taken) == "10.0.0.3"
    with pytest.raises(SlapOSError, match="widen ipv4_local_network"):
        addressing.next_ipv4(net, {ipaddress.IPv4Address(f"10.0.0.{i}") for i in range(1, 7)})


def _v6(addr, plen, scope=0, flags=0, ifname="eth0"):
    return InterfaceAddress(ifname, addr, plen, scope, flags)


def test_computer_address_prefers_stored_then_shortest_prefix_then_lowest():
    candidates = [_v6("fd00::9", 64), _v6("fd00::5", 64), _v6("2001:db8::1", 48), _v6("fe80::1", 64, scope=0x20)]
    assert addressing.pick_computer_ipv6(candidates, None).addr == "2001:db8::1"
    assert addressing.pick_computer_ipv6(candidates, "fd00::9").addr == "fd00::9"
    # partition addresses we added earlier are not candidates
    assert addressing.pick_computer_ipv6(candidates[:2], None, exclude=["fd00::5"]).addr == "fd00::9"


def test_loopback_only_in_unprivileged_mode():
    loopback = [_v6("::1", 128, scope=0x10, ifname="lo")]
    assert addressing.pick_computer_ipv6(loopback, None) is None
    assert addressing.pick_computer_ipv6(loopback, None, allow_host=True).addr == "::1"


def test_duplicate_address_is_never_chosen():
    assert addressing.pick_computer_ipv6([_v6("fd00::5", 64, flags=0x08)], None) is None
