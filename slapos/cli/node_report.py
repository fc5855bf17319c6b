"""`slapos node report` (usage and destruction) and `slapos node bang` (bang the computer)."""
from __future__ import annotations

import argparse
import logging

from .command import Command, add_cfg_argument

log = logging.getLogger("slapos.report")


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser)
    parser.add_argument("--master-url", "--master_url", dest="master_url", metavar="URL",
                        help="SLAP master URL (default: [slapos] master_url)")
    parser.add_argument("--computer-id", "--computer_id", dest="computer_id", metavar="ID",
                        help="this node's computer id (default: [slapos] computer_id)")
    parser.add_argument("--key-file", "--key_file", dest="key_file", metavar="FILE",
                        help="node key for an https master (default: [slapos] key_file)")
    parser.add_argument("--cert-file", "--cert_file", dest="cert_file", metavar="FILE",
                        help="node certificate for an https master (default: [slapos] cert_file)")
    parser.add_argument("--master-ca-file", "--master_ca_file", dest="master_ca_file", metavar="FILE",
                        help="CA bundle to verify an https master (default: [slapos] master_ca_file)")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    _node_arguments(parser)
    parser.add_argument("--instance-root", dest="instance_root", metavar="DIR",
                        help="where the partitions are (default: [slapos] instance_root)")
    parser.add_argument("--software-root", dest="software_root", metavar="DIR",
                        help="where software releases are (default: [slapos] software_root)")
    parser.add_argument("--certificate-repository-path", "--certificate_repository_path",
                        dest="certificate_repository_path", metavar="DIR",
                        help="partition certificates (default: [slapos] certificate_repository_path)")
    parser.add_argument("--pidfile", metavar="FILE",
                        help="lock file of report runs (default: [slapos] pidfile_report)")
    parser.add_argument("--now", action="store_true", help="start at once, without the random delay")
    parser.add_argument("--maximal-delay", "--maximal_delay", dest="maximal_delay", type=int, metavar="SECONDS",
                        help="wait a random delay up to this before starting (default: [slapos] maximal_delay)")
    parser.add_argument("--partition-timeout", "--partition_timeout", dest="partition_timeout", type=float,
                        metavar="SECONDS",
                        help="time limit of an instance's sbin/destroy hook (default: [slapos] partition_timeout, "
                             "else 600)")
    compat = parser.add_argument_group("accepted for compatibility with other slapgrid commands (no effect here)")
    for option, takes_value in (
        (("--maximum-periodicity", "--maximum_periodicity"), True),
        (("--promise-timeout", "--promise_timeout"), True),
        (("--buildout",), True),
        (("--supervisord-socket", "--supervisord_socket"), True),
        (("--supervisord-configuration-path", "--supervisord_configuration_path"), True),
        (("--signature-private-key-file", "--signature_private_key_file"), True),
    ):
        compat.add_argument(*option, dest="_ignored_" + option[0].lstrip("-").replace("-", "_"),
                            metavar="VALUE" if takes_value else None, help=argparse.SUPPRESS)


def _settings(args: argparse.Namespace):
    from pathlib import Path

    from slapos.base.config import Config
    from slapos.base.settings import NodeSettings

    def path(value):
        return Path(value).expanduser() if value else None

    overrides = {
        "master_url": args.master_url,
        "computer_id": args.computer_id,
        "key_file": path(args.key_file),
        "cert_file": path(args.cert_file),
        "master_ca_file": path(args.master_ca_file),
    }
    for name in ("instance_root", "software_root", "certificate_repository_path"):
        if hasattr(args, name):
            overrides[name] = path(getattr(args, name))
    if getattr(args, "pidfile", None):
        overrides["pidfile_report"] = path(args.pidfile)
    if getattr(args, "maximal_delay", None) is not None:
        overrides["maximal_delay"] = args.maximal_delay
    if getattr(args, "partition_timeout", None) is not None:
        overrides["partition_timeout"] = args.partition_timeout
    settings = NodeSettings.from_config(Config.load(args.cfg), **overrides)
    settings.check_root()
    return settings


def report(args: argparse.Namespace) -> int:
    import random
    import time

    from slapos.grid.lock import RunLock
    from slapos.grid.report import ReportRun

    settings = _settings(args)
    if not args.now and settings.maximal_delay > 0:
        delay = random.uniform(0, settings.maximal_delay)
        log.info("waiting %.0f s before reporting (use --now to start at once)", delay)
        time.sleep(delay)
    with RunLock(settings.pidfile_report, "slapos node report"):
        return ReportRun(settings).run().exit_code


def bang(args: argparse.Namespace) -> int:
    settings = _settings(args)
    computer = settings.connect().registerComputer(settings.computer_id)
    computer.bang(args.message)
    log.info("banged computer %s: the master processes all its instances again", settings.computer_id)
    return 0


def _bang_arguments(parser: argparse.ArgumentParser) -> None:
    _node_arguments(parser)
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
