"""`slapos node software`: build the software releases the master wants on this computer."""
from __future__ import annotations

import argparse

from .command import Command, add_node_options, add_slapgrid_common, comma_list, node_settings

DESCRIPTION = """\
Ask the master which software releases this computer must hold, then build each missing one
once in software_root/<md5 of its URL>/ with zc.buildout (or fetch it from the binary cache),
and report building / available / error / destroyed. A release already built (.completed
present) costs nothing. Exit codes: 0 all fine, 1 a release failed or the master is unreachable,
5 not root (see [slapos] root_check), 10 another run holds the lock."""


def arguments(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser, "software_root", "instance_root", "master_url", "computer_id")
    parser.add_argument("--only-sr", "--only_sr", "--only", dest="only", action="append", metavar="URL|MD5[,...]",
                        help="process only these software releases (URL or md5; comma-separated, repeatable); "
                             "does not force a rebuild")
    parser.add_argument("--develop", "--force", "--all", dest="develop", action="store_true",
                        help="rebuild even releases marked complete, and let buildout look for newer versions "
                             "(--force and --all are aliases)")
    parser.add_argument("--garbage-collect", "--garbage_collect", dest="garbage_collect", action="store_true",
                        help="afterwards remove the releases and shared parts nothing uses any more "
                             "(as `slapos node prune`)")
    parser.add_argument("--buildout-debug", "--buildout_debug", dest="buildout_debug", action="store_true",
                        help="run buildout with -D, its output on the terminal (one build at a time)")
    parser.add_argument("-j", "--jobs", type=int, metavar="N",
                        help="build up to N software releases side by side (default 1)")
    parser.add_argument("--now", action="store_true", help="start at once, without the random delay")
    parser.add_argument("--maximal-delay", "--maximal_delay", dest="maximal_delay", type=int, metavar="SECONDS",
                        help="sleep a random 1..SECONDS before starting, unless --now ([slapos] maximal_delay)")
    parser.add_argument("--buildout-timeout", "--buildout_timeout", dest="buildout_timeout", type=float,
                        metavar="SECONDS", help="kill a build running longer ([slapos] buildout_timeout; default none)")
    parser.add_argument("--pidfile", metavar="FILE", help="override [slapos] pidfile_software (the run lock)")
    add_slapgrid_common(parser, no_effect=(("--maximum-periodicity", "--maximum_periodicity"),
                                           ("--promise-timeout", "--promise_timeout"),
                                           ("--partition-timeout", "--partition_timeout")))


def run(args: argparse.Namespace) -> int:
    from slapos.base.errors import UsageError
    from slapos.grid.software import SoftwareOptions, run_software

    config, settings = node_settings(args, pidfile="pidfile_software")
    settings.check_root()
    jobs = args.jobs if args.jobs is not None else config.get_int("slapos", "software_jobs", 1)
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    only = comma_list(args.only) or comma_list([config.get("slapos", "only_sr", config.get("slapos", "only-sr", ""))])
    options = SoftwareOptions(
        only=only,
        # a real boolean (the reference enables it for any non-empty value, even "false")
        develop=args.develop or config.get_bool("slapos", "develop", False),
        jobs=jobs,
        buildout_debug=args.buildout_debug or config.get_bool("slapos", "buildout_debug", False),
        now=args.now,
        maximal_delay=settings.maximal_delay,
    )
    code = run_software(settings, options)
    if args.garbage_collect:
        from slapos.grid.prune import prune
        from slapos.grid.status import partition_ids

        from .node_prune import show

        show(prune(settings, local_partitions=partition_ids(settings)), False, "table")
    return code


COMMANDS = [
    Command(
        path=("node", "software"),
        help="build the software releases the master wants on this computer",
        description=DESCRIPTION,
        run=run,
        arguments=arguments,
    )
]
