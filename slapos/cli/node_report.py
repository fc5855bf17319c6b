"""`slapos node report` (usage and destruction) and `slapos node bang` (bang the computer)."""
from __future__ import annotations

import argparse
import logging

from .command import Command, add_node_options, add_slapgrid_common, node_settings

log = logging.getLogger("slapos.report")


_NODE_KEYS = ("master_url", "computer_id", "key_file", "cert_file", "master_ca_file")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser, *_NODE_KEYS, "instance_root", "software_root", "certificate_repository_path")
    parser.add_argument("--pidfile", metavar="FILE",
                        help="lock file of report runs (default: [slapos] pidfile_report)")
    parser.add_argument("--now", action="store_true", help="start at once, without the random delay")
    parser.add_argument("--maximal-delay", "--maximal_delay", dest="maximal_delay", type=int, metavar="SECONDS",
                        help="wait a random delay up to this before starting (default: [slapos] maximal_delay)")
    parser.add_argument("--partition-timeout", "--partition_timeout", dest="partition_timeout", type=float,
                        metavar="SECONDS",
                        help="time limit of an instance's sbin/destroy hook (default: [slapos] partition_timeout, "
                             "else 600)")
    add_slapgrid_common(parser, no_effect=(("--maximum-periodicity", "--maximum_periodicity"),
                                           ("--promise-timeout", "--promise_timeout")))


def _settings(args: argparse.Namespace):
    _config, settings = node_settings(args, pidfile="pidfile_report")
    settings.check_root()
    return settings


def report(args: argparse.Namespace) -> int:
    import random
    import time

    from slapos.grid.node_runs import run_report

    settings = _settings(args)
    if not args.now and settings.maximal_delay > 0:
        delay = random.uniform(0, settings.maximal_delay)
        log.info("waiting %.0f s before reporting (use --now to start at once)", delay)
        time.sleep(delay)
    return run_report(settings)


def bang(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from slapos.slap import connect_as

    computer = connect_as(settings).registerComputer(settings.computer_id)
    computer.bang(args.message)
    log.info("banged computer %s: the master processes all its instances again", settings.computer_id)
    return 0


def _bang_arguments(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser, *_NODE_KEYS)
    parser.add_argument("-m", "--message", required=True, help="why (shown by the master)")


COMMANDS = [
    Command(
        path=("node", "report"),
        help="send partition usage to the master and destroy the partitions it wants destroyed",
        description=(
            "Ask the master once for this computer's partitions; measure the CPU, memory and disk used by "
            "each used partition and send one usage journal (useComputer); destroy every partition in state "
            "'destroyed' (stop its programs, honour its retention delay, run its sbin/destroy hook, empty "
            "it, report it destroyed so the master frees it). Exit code 0 when all went well, 1 otherwise, "
            "10 when another report run holds the lock."
        ),
        run=report,
        arguments=_report_arguments,
    ),
    Command(
        path=("node", "bang"),
        help="ask the master to process every instance of this computer again",
        description=(
            "POST computerBang: the master marks every instance of this computer as changed, so the next "
            "'slapos node instance' processes all of them (after a reboot, a restore, ...)."
        ),
        run=bang,
        arguments=_bang_arguments,
    ),
]
