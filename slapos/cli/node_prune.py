"""`slapos node prune`: remove the software releases and shared parts nothing uses any more."""
from __future__ import annotations

import argparse

from .command import Command, add_format_argument, add_node_options, add_slapgrid_common, node_settings

DESCRIPTION = """\
Find the software releases (software_root/<md5>) and shared parts ([slapos] shared_part_list)
that neither the master (supplied releases, releases of the partitions) nor any partition nor any
kept release or shared part references any more (profiles and .installed.cfg are followed; a
running process's executable or working directory keeps its tree), show them with the space they
take, and remove them. Removal holds the software and instance run locks and never follows a
link. Exit codes: 0 done, 1 failed, 3 master unreachable (nothing removed), 5 not root,
10 a software or instance run holds its lock."""


def arguments(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser, "software_root", "instance_root", "master_url", "computer_id")
    parser.add_argument("-n", "--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="only show what would be removed")
    parser.add_argument("--additional-software-directory", "--additional_software_directory",
                        dest="additional", action="append", default=[], metavar="DIR",
                        help="a software root of another node (e.g. a slapos inside a partition) whose "
                             "releases keep the shared parts they use (repeatable)")
    add_format_argument(parser)
    add_slapgrid_common(parser, no_effect=(("--maximum-periodicity", "--maximum_periodicity"),
                                           ("--promise-timeout", "--promise_timeout"),
                                           ("--partition-timeout", "--partition_timeout")))


def show(result, dry_run: bool, output_format: str) -> None:
    from slapos.client import output
    from slapos.grid.prune import human_size

    if output_format == "json":
        output.dump_json({
            "dry_run": dry_run,
            "removed" if not dry_run else "would_remove": [
                {"kind": c.kind, "path": str(c.path), "bytes": c.size} for c in result.remove],
            "bytes": result.size,
            "kept": [{"kind": c.kind, "path": str(c.path), "because": c.kept_because} for c in result.kept],
        })
        return
    verb = "would remove" if dry_run else "removed"
    if not result.remove:
        print(f"nothing to prune ({len(result.kept)} software release(s) and shared part(s) in use)")
        return
    output.table(["KIND", "PATH", "SIZE"], [[c.kind, str(c.path), human_size(c.size)] for c in result.remove])
    print(f"{verb} {len(result.remove)} directories, {human_size(result.size)} freed"
          f"{' (dry run: nothing removed)' if dry_run else ''}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slapos.grid.prune import prune
    from slapos.grid.status import partition_ids

    _config, settings = node_settings(args, pidfile="pidfile_software")
    settings.check_root()
    result = prune(settings, dry_run=args.dry_run, additional=[Path(d) for d in args.additional],
                   local_partitions=partition_ids(settings))
    show(result, args.dry_run, args.format)
    return 0


COMMANDS = [
    Command(path=("node", "prune"), help="remove software releases and shared parts nothing uses any more",
            description=DESCRIPTION, run=run, arguments=arguments),
]
