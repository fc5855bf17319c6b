"""`slapos.util`: the helper functions that recipes (slapos.cookbook), promise plugins
(slapos.toolbox) and instance tools of the SlapOS ecosystem import, with the behaviour they
expect. Used when a software release does not bring its own slapos.core (a release that does
gets its own module: see slapos/grid/release_first.py).

Provided: `mkdir_p`, `listifdir`, `chownDirectory`, `string_to_boolean`, `sqlite_connect`,
`bytes2str`, `str2bytes`, `unicode2str`, `binFromIpv6`, `ipv6FromBin`, `getPartitionIpv6Addr`,
`getPartitionIpv6Range`, `getTapIpv6Range`, `getTunIpv6Range`, `getIpv6RangeFirstAddr`,
`lenNetmaskIpv6`, `netmaskFromLenIPv6`, `dict2xml`, `xml2dict`, `calculate_dict_hash`, `rmtree`.
Not provided: the xml_marshaller-based `dumps`/`loads` (our wire format is in
`slapos.slap.wire`) and `SoftwareReleaseSchema` (instance parameters are validated by
`slapos request`).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Mapping

from slapos.slap.wire import dumps_instance_xml, loads_instance_xml


def mkdir_p(path: str, mode: int = 0o700) -> None:
    """Create `path` and its parents; an existing directory is left as it is (mode included)."""
    try:
        os.makedirs(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def listifdir(path: str):
    """`os.listdir(path)`, or an empty tuple when `path` does not exist."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return ()


def chownDirectory(path: str, uid: int, gid: int) -> None:  # noqa: N802
    """Give the tree at `path` to uid:gid (links themselves, never what they point to); a no-op
    when not root."""
    if os.getuid() != 0:
        return
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            st = os.lstat(name)
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(name, uid, gid)


def string_to_boolean(string: str) -> bool:
    """'true' → True, 'false' → False (any case); anything else is a ValueError."""
    value = str(string).strip().lower() if isinstance(string, str) else None
    if value == "true":
        return True
    if value == "false":
        return False
    raise ValueError(f"{string} is neither True nor False.")


def sqlite_connect(dburi: str, timeout: float | None = None, isolation_level: str | None = None):
    kwargs = {"isolation_level": isolation_level}
    if timeout is not None:
        kwargs["timeout"] = timeout
    connection = sqlite3.connect(dburi, **kwargs)
    connection.text_factory = str
    return connection


def bytes2str(value: bytes) -> str:
    return value.decode()


def str2bytes(value: str) -> bytes:
    return value.encode()


def unicode2str(value: str) -> str:
    return value


# -- IPv6 ranges, as bit strings (how partitions' addresses and ranges are carved) --------------------
def binFromIpv6(ip: str) -> str:  # noqa: N802
    """'2001:db8::' → its 128 bits as a string of '0' and '1'."""
    return format(int(ipaddress.IPv6Address(ip)), "0128b")


def ipv6FromBin(bits: str, suffix: str = "") -> str:  # noqa: N802
    """The address whose first bits are `bits`, the remaining ones `suffix` (right-aligned,
    zero-padded)."""
    missing = 128 - len(bits)
    if missing < 0:
        raise ValueError(f"prefix {bits} exceeds 128 bits by {-missing} bit(s)")
    if missing:
        bits += suffix[-missing:].rjust(missing, "0") if suffix else "0" * missing
    return str(ipaddress.IPv6Address(int(bits, 2)))


def getPartitionIpv6Addr(ipv6_range: Mapping, partition_index: int) -> dict:  # noqa: N802
    """Address number `partition_index + 2` of the range (1 is the router's); wraps around in
    ranges too small."""
    prefixlen = int(ipv6_range["prefixlen"])
    prefix = binFromIpv6(ipv6_range["addr"])[:prefixlen]
    host_bits = 128 - prefixlen
    number = partition_index + 2
    if number.bit_length() > host_bits:
        number = (partition_index % ((1 << host_bits) - 2)) + 2 if host_bits >= 2 else number % (1 << host_bits)
    return {"addr": ipv6FromBin(prefix + format(number, f"0{host_bits}b") if host_bits else prefix),
            "prefixlen": prefixlen}


def _range_factory(kind: int, fill: str) -> Callable[[Mapping, int, int], dict]:
    def carve(ipv6_range: Mapping, partition_index: int, prefixshift: int) -> dict:
        prefixlen = int(ipv6_range["prefixlen"])
        prefix = binFromIpv6(ipv6_range["addr"])[:prefixlen]
        new_len = prefixlen + prefixshift
        if new_len >= 128:
            raise ValueError(f"The IPv6 range has prefixlen {new_len} which is too big for generating "
                             "IPv6 range for partitions.")
        middle = format((kind << (prefixshift - 2)) + partition_index + 1, f"0{prefixshift}b")
        return {"addr": ipv6FromBin(prefix + middle + fill * (128 - new_len)), "prefixlen": new_len}

    return carve


getPartitionIpv6Range = _range_factory(1, "0")  # noqa: N816
getTapIpv6Range = _range_factory(2, "1")  # noqa: N816
getTunIpv6Range = _range_factory(3, "0")  # noqa: N816


def getIpv6RangeFirstAddr(addr: str, prefixlen: int) -> str:  # noqa: N802
    """The first host address (`::1`) of the range `addr/prefixlen`."""
    network = ipaddress.IPv6Network(f"{addr}/{prefixlen}", strict=False)
    return str(network.network_address + 1)


def lenNetmaskIpv6(netmask: str) -> int:  # noqa: N802
    """'ffff:ffff::' (or 'addr/len') → the prefix length."""
    if "/" in netmask:
        return ipaddress.IPv6Network(netmask, strict=False).prefixlen
    bits = binFromIpv6(netmask)
    ones = len(bits) - len(bits.lstrip("1"))
    if "1" in bits[ones:]:
        raise ValueError(f"{netmask} is not a netmask")
    return ones


def netmaskFromLenIPv6(netmask_len: int) -> str:  # noqa: N802
    return ipv6FromBin("1" * int(netmask_len))


# -- instance parameters ---------------------------------------------------------------------------------
def dict2xml(dictionary: Mapping) -> str:
    """Instance parameters as the `<instance><parameter id=...>` XML document."""
    return dumps_instance_xml({k if isinstance(k, str) else k.decode(): v if isinstance(v, str) else
                               (v.decode() if isinstance(v, bytes) else str(v)) for k, v in dictionary.items()})


def xml2dict(xml) -> dict:
    """The parameters of an `<instance>` XML document (bounded, no entity expansion)."""
    return dict(loads_instance_xml(xml)) if xml else {}


def calculate_dict_hash(d: Mapping) -> str:
    """A stable digest of a dictionary (sorted JSON)."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def rmtree(path: str) -> None:
    """Remove a tree, making read-only directories writable on the way (never following links)."""
    def retry(function, name, _exc):
        parent = os.path.dirname(name)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IWUSR | stat.S_IXUSR)
        function(name)

    shutil.rmtree(path, onerror=retry)
