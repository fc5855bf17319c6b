"""Who is calling the proxy: the identity its read-only user endpoints (HATEOAS, computer
tokens) answer for.

* Behind a TLS front that authenticated a client certificate, that front puts the certificate's
  identity in the WSGI environ key `slapos.identity` (e.g. `cert:CN=COMP-1`); it wins.
* Over loopback TCP (the default: a proxy on one machine), the caller is the Unix user owning the
  client socket, asked from the kernel (netlink sock_diag, one exact lookup; the socket tables
  `/proc/net/tcp[6]` as a fallback): the kernel knows it, a client cannot forge it. Identity `uid:<n>`.
* Anything else (plain HTTP from another machine): no identity, so nothing is shown.

Looked up only by the endpoints that need it (about 50 µs; scanning /proc costs milliseconds),
never on the node's periodic calls.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

ESTABLISHED = "01"


def caller(environ: dict) -> str | None:
    given = environ.get("slapos.identity")
    if given:
        return str(given)
    uid = loopback_uid(environ.get("REMOTE_ADDR", ""), environ.get("REMOTE_PORT"), environ.get("SERVER_PORT"))
    return f"uid:{uid}" if uid is not None else None


def _hex_address(address: str) -> str | None:
    """An address as /proc/net/tcp[6] prints it (32-bit words in host byte order)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    packed = ip.packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words)


SOCK_DIAG_BY_FAMILY = 20
NETLINK_SOCK_DIAG = 4
NLMSG_ERROR = 2


def _diag_uid(ip, rport: int, sport: int) -> int | None:
    """Ask the kernel (netlink sock_diag, one exact lookup: ~50 µs where scanning /proc/net/tcp
    costs milliseconds) for the owner of the TCP socket ip:rport → ip:sport (a loopback client
    talks to the same address it comes from)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    address = ip.packed.ljust(16, b"\0")
    sockid = struct.pack("!HH16s16s", rport, sport, address, address) + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, 1, 1, 0)  # NLM_F_REQUEST
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(header + request)
            answer = nl.recv(8192)
    except OSError:
        return None
    if len(answer) < 16 + 72:
        return None
    _length, kind = struct.unpack_from("=IH", answer, 0)
    if kind == NLMSG_ERROR:
        return None
    return struct.unpack_from("=I", answer, 16 + 64)[0]  # inet_diag_msg.idiag_uid


def loopback_uid(remote_addr: str, remote_port, server_port) -> int | None:
    """The uid owning the loopback client socket `remote_addr:remote_port` connected to our
    `server_port`, or None (not loopback, not found)."""
    try:
        ip = ipaddress.ip_address(remote_addr.split("%")[0])
        rport, sport = int(remote_port), int(server_port)
    except (ValueError, TypeError):
        return None
    if not (ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped and ip.ipv4_mapped.is_loopback)):
        return None
    uid = _diag_uid(ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip, rport, sport)
    if uid is not None:
        return uid
    tables = ["/proc/net/tcp6", "/proc/net/tcp"] if ip.version == 6 else ["/proc/net/tcp", "/proc/net/tcp6"]
    candidates = {_hex_address(remote_addr)}
    if ip.version == 6 and ip.ipv4_mapped:
        candidates.add(_hex_address(str(ip.ipv4_mapped)))
    if ip.version == 4:  # a dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
        candidates.add(_hex_address(str(mapped)))
    local_port = f"{rport:04X}"
    peer_port = f"{sport:04X}"
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 8 or fields[3] != ESTABLISHED:
                        continue
                    local_addr, _, lport = fields[1].partition(":")
                    _raddr, _, rport_hex = fields[2].partition(":")
                    if lport == local_port and rport_hex == peer_port and local_addr in candidates:
                        return int(fields[7])
        except OSError:
            continue
    return None


def proxy_operators() -> set[str]:
    """Identities that also see records nobody owns (made before owners were recorded): root and
    the user running the proxy (who can read its database anyway)."""
    return {"uid:0", f"uid:{os.geteuid()}"}

