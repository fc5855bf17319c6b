"""`slapos node collect`: sample the partitions' resource use into the local collect database."""
from __future__ import annotations

import argparse
import logging

from .command import Command, add_node_options, add_slapgrid_common, node_settings

log = logging.getLogger("slapos.collect")

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
    from slapos.grid import collect, usage
    from slapos.grid.report import supervised_pids
    from slapos.grid.status import partition_ids
    from slapos.grid.supervisor import Supervisor

    _config, settings = node_settings(args)
    settings.check_root()
    if not settings.instance_root.is_dir():
        from slapos.base.errors import ConfigError

        raise ConfigError(f"instance_root {settings.instance_root} does not exist: run slapos node format first")
    pids = supervised_pids(Supervisor(settings))
    refs = [usage.PartitionRef(pid, settings.instance_root / pid, pids.get(pid, []))
            for pid in partition_ids(settings)]
    result = collect.collect(settings, refs, keep_days=args.keep_days)
    for sample in result.samples:
        log.debug("%s: cpu %.2fs (%s%%) memory %dB processes %d disk %s", sample.partition_id,
                  sample.cpu_seconds, sample.cpu_percent if sample.cpu_percent is not None else "-",
                  sample.memory_bytes, sample.process_count,
                  sample.disk_bytes if sample.disk_bytes is not None else "-")
    log.info("collect: %d partition(s) sampled into %s%s", len(result.samples), result.database,
             f", {result.pruned} old row(s) deleted" if result.pruned else "")
    return 0


COMMANDS = [
    Command(path=("node", "collect"), help="sample the partitions' CPU, memory, disk and processes locally",
            description=DESCRIPTION, run=run, arguments=arguments),
]
