"""`slapos-watchdog`: a supervisord event listener that bangs partitions whose services crash.

supervisord runs it as `[eventlistener:watchdog]` (written by the instance code in
`<instance_root>/etc/supervisord.conf`), subscribed to PROCESS_STATE_EXITED,
PROCESS_STATE_FATAL and PROCESS_STATE_RUNNING. Only programs whose process name carries the
`-on-watch` marker (the partition's `etc/service/*`) are watched; their group is the
partition id.

* EXITED unexpectedly (`expected:0`) or FATAL → POST `softwareInstanceBang` for the partition,
  with the partition's certificate when a certificate repository is configured, so the master
  reprocesses the instance tree;
* at most once: the bang is remembered in `<partition>/.slapos_latest_bang_timestamp` (the
  deployment timestamp it happened under). No other bang for that partition until a newer
  deployment wrote a newer `.timestamp` (the reference's rule, float timestamps accepted), or
  until a watched program of it is running again: a RUNNING event, followed by at least
  `--stable-after` seconds (default 60) of running, resets the state when that program next
  stops. The delay matters because supervisord restarts crashed services by itself
  (`autorestart`): a service that crashes a second after each restart is one problem, worth one
  bang, not one bang per restart. With `--stable-after 0` any RUNNING resets.

The listener must never stall: bangs use a short HTTP timeout, a failed bang is logged and
not remembered (the next crash tries again), and nothing a tenant put in its partition
(symlinks, FIFOs, garbage) can block or redirect what we read and write there.

The event buffer of the listener is sized in supervisord.conf (`buffer_size`), not here:
supervisord's default of 10 drops events when many partitions crash at once.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from slapos.base import tenantfs

log = logging.getLogger("slapos.watchdog")

WATCH_MARKER = "-on-watch"
BANG_STATE_FILE = ".slapos_latest_bang_timestamp"
TIMESTAMP_FILE = ".timestamp"
SUBSCRIBED_EVENTS = ("PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL", "PROCESS_STATE_RUNNING")
# What supervisord.conf should say for us (the instance code writes the section).
RECOMMENDED_BUFFER_SIZE = 10000
DEFAULT_BANG_TIMEOUT = 15.0
DEFAULT_STABLE_AFTER = 60.0

def parse_tokens(line: str) -> dict[str, str]:
    """`key:value key:value` (supervisord headers and PROCESS_STATE payloads)."""
    fields = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep:
            fields[key] = value
    return fields


@dataclass
class Watchdog:
    master_url: str
    computer_id: str
    instance_root: Path
    certificate_repository_path: Path | None = None
    master_ca_file: str | None = None
    timeout: float = DEFAULT_BANG_TIMEOUT
    stable_after: float = DEFAULT_STABLE_AFTER
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.instance_root = Path(self.instance_root)
        # (group, process name) -> when supervisord said it was RUNNING (this listener's lifetime)
        self.running_since: dict[tuple[str, str], float] = {}

    # -- events ---------------------------------------------------------------------------

    def handle(self, event: str, payload: str) -> str | None:
        """Act on one event; returns what was done (for logs and tests) or None."""
        if event not in SUBSCRIBED_EVENTS:
            return None
        fields = parse_tokens(payload.split("\n", 1)[0])
        process = fields.get("processname", "")
        group = fields.get("groupname", "")
        if WATCH_MARKER not in process:
            return None
        partition = self.partition_path(group)
        if partition is None:
            log.warning("%s: group %r is not a partition of %s: event ignored", process, group, self.instance_root)
            return None
        key = (group, process)
        if event == "PROCESS_STATE_RUNNING":
            self.running_since[key] = self.clock()
            return None
        since = self.running_since.pop(key, None)
        if event == "PROCESS_STATE_EXITED" and fields.get("expected") == "1":
            return None
        state = "FATAL" if event == "PROCESS_STATE_FATAL" else "EXITED"
        if since is not None and self.clock() - since >= self.stable_after:
            if tenantfs.remove_file(partition / BANG_STATE_FILE):
                log.info("%s: %s had been running again since the last bang: new problem", group, process)
        if self.already_banged(partition):
            log.info("%s: %s %s, partition already banged since its last deployment", group, process, state)
            return "skipped"
        message = f"{process} process in partition {group} encountered a problem"
        try:
            self.bang(group, message)
        except Exception as e:  # the listener must survive a master that is down
            log.error("%s: %s %s, bang failed: %s", group, process, state, e)
            return "failed"
        self.remember_bang(partition)
        log.info("%s: %s %s: banged the master", group, process, state)
        return "banged"

    def partition_path(self, group: str) -> Path | None:
        """The partition directory named by a supervisord group, only if it really is one of
        ours: the check node instance and node report make (a plain id, not one of the node's
        own directories, a real directory under instance_root, not root's when we are root)."""
        from .partition import Partition, PartitionError, check_is_partition

        try:
            partition = Partition(self, group)  # it reads only `instance_root` of its settings
            check_is_partition(partition)
        except (PartitionError, OSError):
            return None
        return partition.path

    # -- bang state ------------------------------------------------------------------------

    @staticmethod
    def already_banged(partition: Path) -> bool:
        last = tenantfs.read_float(partition / BANG_STATE_FILE)
        if last is None:
            return False
        deployed = tenantfs.read_float(partition / TIMESTAMP_FILE)
        return deployed is None or deployed <= last

    @staticmethod
    def remember_bang(partition: Path) -> None:
        deployed = tenantfs.read_float(partition / TIMESTAMP_FILE)
        text = repr(deployed) if deployed is not None else "0"
        try:
            st = os.lstat(partition)
            tenantfs.write_small(partition / BANG_STATE_FILE, f"{text}\n".encode(), 0o644, (st.st_uid, st.st_gid))
        except OSError as e:
            log.warning("%s: cannot record the bang in %s: %s", partition.name, BANG_STATE_FILE, e)

    # -- master ----------------------------------------------------------------------------

    def credentials(self, partition_id: str) -> tuple[str | None, str | None]:
        if self.certificate_repository_path is None:
            return None, None
        key = self.certificate_repository_path / f"{partition_id}.key"
        cert = self.certificate_repository_path / f"{partition_id}.crt"
        if key.is_file() and cert.is_file():
            return str(key), str(cert)
        log.warning("%s: no certificate in %s: banging without partition credentials",
                    partition_id, self.certificate_repository_path)
        return None, None

    def bang(self, partition_id: str, message: str) -> None:
        from slapos.slap import slap

        key, cert = self.credentials(partition_id)
        connection = slap()
        connection.initializeConnection(
            self.master_url, key_file=key, cert_file=cert, master_ca_file=self.master_ca_file, timeout=self.timeout
        )
        try:
            connection.registerComputerPartition(self.computer_id, partition_id).bang(message)
        finally:
            connection.close()


# -- supervisord event listener protocol ------------------------------------------------------

def serve(stdin: BinaryIO, stdout: BinaryIO, watchdog: Watchdog) -> None:
    """READY → header line → payload of `len` bytes → RESULT 2\\nOK, until stdin closes."""
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return  # supervisord closed our stdin: it is shutting down
        headers = parse_tokens(line.decode("utf-8", "replace"))
        try:
            length = int(headers["len"])
        except (KeyError, ValueError):
            raise SystemExit(f"slapos-watchdog: not a supervisord event header: {line[:200]!r}") from None
        payload = stdin.read(length).decode("utf-8", "replace") if length else ""
        try:
            watchdog.handle(headers.get("eventname", ""), payload)
        except Exception:  # a bug must not make supervisord restart us and lose the buffer
            log.exception("unexpected error while handling %s", headers.get("eventname"))
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slapos-watchdog",
        description="supervisord event listener: bang the master when a watched service "
        "(process name containing '-on-watch') of a partition exits unexpectedly or goes FATAL.",
    )
    parser.add_argument(
        "--master-url", default=os.environ.get("SLAPOS_WATCHDOG_MASTER_URL"),
        help="SLAP master URL (default: $SLAPOS_WATCHDOG_MASTER_URL, how the node passes a URL holding a "
        "credential: a command line is readable by every local user)",
    )
    parser.add_argument("--computer-id", required=True, help="this node's computer id")
    parser.add_argument(
        "--instance-root-path", "--instance-root", dest="instance_root", required=True, metavar="DIR",
        help="instance root holding the partition directories",
    )
    parser.add_argument(
        "--certificate-repository-path", metavar="DIR",
        help="directory of partition certificates <id>.crt/<id>.key (bangs use them when present)",
    )
    parser.add_argument("--master-ca-file", metavar="FILE", help="CA bundle to verify an https master")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_BANG_TIMEOUT,
        help=f"seconds to wait for the master per bang (default {DEFAULT_BANG_TIMEOUT:g})",
    )
    parser.add_argument(
        "--stable-after", type=float, default=DEFAULT_STABLE_AFTER, metavar="SECONDS",
        help="a program that crashes after running this long since its last start is a new problem "
        f"and bangs again (default {DEFAULT_STABLE_AFTER:g}; 0: any restart re-arms the bang)",
    )
    parser.add_argument("--log-file", metavar="FILE", help="also log to FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.master_url:
        parser.error("--master-url (or SLAPOS_WATCHDOG_MASTER_URL) is required")
    # stdout is the protocol channel: logs go to stderr (supervisord's log) and --log-file
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s slapos-watchdog[%(process)d] %(levelname)s %(message)s")
    for noisy in ("urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    watchdog = Watchdog(
        master_url=args.master_url,
        computer_id=args.computer_id,
        instance_root=Path(args.instance_root),
        certificate_repository_path=Path(args.certificate_repository_path) if args.certificate_repository_path else None,
        master_ca_file=args.master_ca_file,
        timeout=args.timeout,
        stable_after=args.stable_after,
    )
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer, watchdog)
    except KeyboardInterrupt:
        pass
    return 0
