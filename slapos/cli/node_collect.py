"""`slapos node collect`: sample the partitions' resource use into the local collect database."""
from __future__ import annotations

import argparse

from .command import Command, add_node_options, add_slapgrid_common, node_settings

DESCRIPTION = """\
Sample, for every partition of this node, the CPU time, CPU share, memory and number of its
processes (and, every 10 minutes, its disk use) into <instance_root>/var/data-log/collect.db
(SQLite, 0600), with the machine's CPU, memory and load. Rows older than [slapos] collect_cache
days (default 15) are deleted at each run. No master is contacted: the standard crontab runs it
every minute, and `slapos node report` sends the master the mean memory of its period from it.
Exit codes: 0 done, 1 the database could not be written, 5 not root."""


def arguments(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser, "instance_root")
    parser.add_argument("--keep-days", type=float, metavar="DAYS",
                        help="history kept ([slapos] collect_cache, default 15)")
    add_slapgrid_common(parser, no_effect=(("--maximum-periodicity", "--maximum_periodicity"),
                                           ("--promise-timeout", "--promise_timeout"),
                                           ("--partition-timeout", "--partition_timeout")))


def run(args: argparse.Namespace) -> int:
    from slapos.grid.node_runs import run_collect

    _config, settings = node_settings(args)
    settings.check_root()
    return run_collect(settings, keep_days=args.keep_days)


COMMANDS = [
    Command(path=("node", "collect"), help="sample the partitions' CPU, memory, disk and processes locally",
            description=DESCRIPTION, run=run, arguments=arguments),
]
