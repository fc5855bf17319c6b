"""`slapos node format`: prepare users, directories and addresses of the partitions, tell the master."""
from __future__ import annotations

import argparse

from .command import Command, add_cfg_argument


def _bool(value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, not {value!r}")


def arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser)
    parser.add_argument("-x", "--computer_xml", "--computer-xml", dest="computer_xml", metavar="FILE",
                        help="state file keeping the computer definition between runs ([slapformat] computer_xml)")
    parser.add_argument("--computer_json", "--computer-json", dest="computer_json", metavar="FILE",
                        help="also write the definition as JSON")
    parser.add_argument("-i", "--input_definition_file", "--input-definition-file", dest="input_definition_file",
                        metavar="FILE", help="INI file fixing each partition's path, user and addresses")
    parser.add_argument("-o", "--output_definition_file", "--output-definition-file",
                        dest="output_definition_file", metavar="FILE",
                        help="write an INI definition file of the formatted computer")
    parser.add_argument("--alter_user", "--alter-user", dest="alter_user", type=_bool, metavar="True|False",
                        help="create partition users (needs root)")
    parser.add_argument("--alter_network", "--alter-network", dest="alter_network", type=_bool,
                        metavar="True|False", help="add addresses, routes and taps (needs root)")
    parser.add_argument("--now", action="store_true",
                        help="start at once (without it, wait a random delay up to [slapformat] random_delay, "
                             "default 3600 s, like the reference under cron)")
    parser.add_argument("--delay", type=int, metavar="SECONDS",
                        help="maximal random delay before starting (overrides random_delay)")
    parser.add_argument("-n", "--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print every action that would be taken; change nothing, tell nobody")


def run(args: argparse.Namespace) -> int:
    import logging
    import random
    import time
    from pathlib import Path

    from slapos.base.config import Config
    from slapos.base.logs import setup_logging
    from slapos.base.settings import NodeSettings
    from slapos.format.formatter import run_format
    from slapos.format.options import FormatOptions

    config = Config.load(args.cfg)
    overrides = {
        key: Path(getattr(args, key)) if getattr(args, key) else None
        for key in ("computer_xml", "computer_json", "input_definition_file", "output_definition_file")
    }
    options = FormatOptions.from_config(
        config, alter_user=args.alter_user, alter_network=args.alter_network, random_delay=args.delay, **overrides
    )
    if options.root_check:
        NodeSettings.from_config(config).check_root()
    options.resolve_privileges()
    if options.log_file and not getattr(args, "log_file", None):
        # [slapformat] log_file: keep the console as configured, add the detailed file log
        verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
        setup_logging(verbosity, str(options.log_file), args.debug)
    log = logging.getLogger("slapos.format")
    if not args.now and not args.dry_run and options.random_delay > 0:
        delay = random.uniform(0, options.random_delay)
        log.info("computer %s: waiting %.0f s before formatting (use --now to skip)", options.computer_id, delay)
        time.sleep(delay)
    result = run_format(options, dry_run=args.dry_run)
    if not args.dry_run:
        changes = len(result.actions)
        log.info(
            "computer %s: %d partitions, %s, definition %s, master %s",
            options.computer_id, len(result.computer.partition_list),
            f"{changes} changes" if changes else "nothing to change",
            "updated" if result.definition_changed else "unchanged",
            "told" if result.reported else "NOT told",
        )
    return result.exit_code


COMMANDS = [
    Command(
        path=("node", "format"),
        help="prepare the partitions (users, directories, addresses) and describe them to the master",
        description=(
            "Create or update the computer's partitions: a directory (0750) per partition, with its own user, "
            "IPv6/IPv4 addresses and tap when run as root; save the definition so re-runs keep them; report the "
            "computer to the master. Exit codes: 0 done, 1 failed (nothing half-done), 2 prepared but the master "
            "was not told."
        ),
        run=run,
        arguments=arguments,
    )
]
