"""`slapos node boot`: what a machine runs at boot (cron `@reboot`, or a systemd unit).

In order: start the local proxy when this node is its own master (standalone node), wait for the
network (the partition interface has an address and the master accepts connections) with a
timeout, format until it succeeds, tell the master the node rebooted (`node bang -m Reboot`,
as the reference does), delete every partition's `.timestamp` so the next instance run
reprocesses them all (their processes died with the machine), start supervisord, and run the
instance step once.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from slapos.base.errors import EXIT_OFFLINE, SlapOSError

from .command import Command, add_cfg_argument

log = logging.getLogger("slapos.boot")

RETRY_INTERVAL = 15.0


def arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser)
    parser.add_argument("-m", "--message", default="Reboot", help="message of the bang sent to the master (default: Reboot)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS",
        help="give up waiting for the network, or retrying format and bang, after this long (default: 600)",
    )
    parser.add_argument("--no-instance", action="store_true", help="do not run `slapos node instance` at the end")


def interface_has_address(name: str) -> bool:
    import netifaces

    try:
        addresses = netifaces.ifaddresses(name)
    except ValueError:  # no such interface (yet)
        return False
    return any(addresses.get(family) for family in (netifaces.AF_INET, netifaces.AF_INET6))


def master_reachable(master_url: str, timeout: float = 3.0) -> bool:
    import socket

    parts = urlsplit(master_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(what: str, check: Callable[[], bool], deadline: float, interval: float = 1.0) -> None:
    started = time.monotonic()
    last_note = started
    while not check():
        now = time.monotonic()
        if now >= deadline:
            raise SlapOSError(f"boot: {what} after {now - started:.0f} s; check the network, then run "
                              "`slapos node boot` again", exit_code=EXIT_OFFLINE)
        if now - last_note >= 10:
            log.info("boot: still waiting: %s", what)
            last_note = now
        time.sleep(min(interval, max(0.0, deadline - now)))


def retry(what: str, step: Callable[[], int], deadline: float) -> int:
    """Run `step` until it returns 0 or the deadline passes; the last exit code otherwise."""
    while True:
        code = step()
        if code == 0:
            return 0
        if time.monotonic() + RETRY_INTERVAL > deadline:
            log.error("boot: %s failed (exit %d), giving up", what, code)
            return code
        log.warning("boot: %s failed (exit %d), retrying in %.0f s", what, code, RETRY_INTERVAL)
        time.sleep(RETRY_INTERVAL)


def remove_timestamps(instance_root: Path, base_name: str) -> list[Path]:
    removed = []
    for partition in sorted(instance_root.glob(f"{base_name}*")):
        timestamp = partition / ".timestamp"
        if partition.is_dir() and not partition.is_symlink() and timestamp.is_file():
            timestamp.unlink()
            removed.append(timestamp)
    return removed


def run(args: argparse.Namespace) -> int:
    from slapos.base.config import Config
    from slapos.base.settings import NodeSettings

    from .standalone import LocalProxy, command_available, run_slapos

    config = Config.load(args.cfg)
    settings = NodeSettings.from_config(config)
    settings.check_root()
    cfg = str(config.path)
    common = ["--debug"] if args.debug else []

    def slapos(*argv: str) -> int:
        return run_slapos(*argv, *common)

    deadline = time.monotonic() + args.timeout
    proxy = LocalProxy.from_config(config)
    if proxy is not None:
        proxy.start()
    interface = config.get("slapformat", "ipv6_interface", None) or config.get("slapformat", "interface_name", None)
    if interface:
        wait_until(f"interface {interface} has no address", lambda: interface_has_address(interface), deadline)
    wait_until(f"master {settings.master_url} does not answer",
               lambda: master_reachable(settings.master_url), deadline)
    log.info("boot: network ready (master %s reachable)", settings.master_url)

    code = retry("node format", lambda: slapos("node", "format", "--cfg", cfg, "--now"), deadline)
    if code != 0:
        return code
    code = retry("node bang", lambda: slapos("node", "bang", "--cfg", cfg, "-m", args.message), deadline)
    if code != 0:
        return code
    base_name = config.get("slapformat", "partition_base_name", "slappart")
    removed = remove_timestamps(settings.instance_root, base_name)
    log.info("boot: %d partition(s) will be reprocessed (.timestamp removed)", len(removed))
    if command_available("node", "supervisord"):
        code = slapos("node", "supervisord", "--cfg", cfg)
        if code != 0:
            return code
    else:
        log.warning("boot: `slapos node supervisord` is not available in this installation; skipped")
    if args.no_instance:
        return 0
    return slapos("node", "instance", "--cfg", cfg, "--now")


COMMANDS = [
    Command(
        path=("node", "boot"),
        help="bring the node up after a reboot: network, format, bang, supervisord, instances",
        run=run,
        arguments=arguments,
        description=(
            "Run at boot (crontab: @reboot slapos node boot). Starts the local proxy of a standalone node, "
            "waits for the network (--timeout), formats, sends `bang -m Reboot` to the master, removes "
            "partition .timestamp files so every partition is reprocessed, starts supervisord and runs "
            "`slapos node instance` once. Exit 3 when the network never came up."
        ),
    ),
]
