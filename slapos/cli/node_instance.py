"""`slapos node instance | promise | supervisord | supervisorctl | status | start | stop | restart | tail`."""
from __future__ import annotations

import argparse

from .command import (
    Command,
    add_cfg_argument,
    add_format_argument,
    add_node_options,
    add_slapgrid_common,
    comma_list,
    node_settings,
)

INSTANCE_DESCRIPTION = """\
Ask the master what each partition of this computer must run, then deploy it: instance buildout as
the partition user, programs of etc/run and etc/service under supervisord, promises (once the
programs just started are up: [slapos] service_start_wait, promise_retry_delay), report.
A partition the master asks nothing new of costs a few file reads (its promises are checked when
their periodicity has come; its programs are started when supervisord was started anew); one that
keeps failing on the same inputs is retried with an exponential back-off (1 min to 1 h; --force or
new inputs retry at once).
Exit codes: 0 all fine, 1 a partition failed, 2 only promises failed, 3 master unreachable
(running services are left alone), 5 not root, 10 another run holds the lock."""


def _common(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser, "instance_root", "software_root", "master_url", "computer_id",
                     "certificate_repository_path")
    parser.add_argument("--pidfile", metavar="FILE", help="override [slapos] pidfile_instance (the run lock)")
    parser.add_argument("--promise-timeout", "--promise_timeout", dest="promise_timeout", type=float,
                        metavar="SECONDS", help="time limit of each promise ([slapos] promise_timeout, default 20)")
    parser.add_argument("--only-cp", "--only_cp", "--only", dest="only_cp", action="append", metavar="ID[,ID...]",
                        help="work on these partitions only (comma-separated, repeatable); does not force")


def instance_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--force", "--all", "--develop", dest="force", action="store_true",
                        help="process every partition, ignoring timestamps, periodicity and back-off "
                             "(--all and --develop are aliases)")
    parser.add_argument("-j", "--jobs", type=int, metavar="N",
                        help="run up to N partition buildouts side by side (default 1, [slapos] instance_jobs)")
    parser.add_argument("--force-stop", "--force_stop", dest="force_stop", action="store_true",
                        help="deploy started partitions but leave their services stopped (no promise, no report)")
    parser.add_argument("--buildout-debug", "--buildout_debug", dest="buildout_debug", action="store_true",
                        help="run buildout with -D, its output on the terminal")
    parser.add_argument("--now", action="store_true", help="start at once, without the random delay")
    parser.add_argument("--maximal-delay", "--maximal_delay", dest="maximal_delay", type=int, metavar="SECONDS",
                        help="sleep a random 1..SECONDS before starting, unless --now ([slapos] maximal_delay)")
    parser.add_argument("--maximum-periodicity", "--maximum_periodicity", dest="maximum_periodicity", type=int,
                        metavar="SECONDS",
                        help="redeploy an unchanged partition after this long ([slapos] maximum_periodicity, "
                             "default 86400; 0 = every run; negative = never)")
    parser.add_argument("--partition-timeout", "--partition_timeout", dest="partition_timeout", type=float,
                        metavar="SECONDS", help="kill an instance buildout running longer ([slapos] partition_timeout)")
    add_slapgrid_common(parser)


def promise_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    add_slapgrid_common(parser, no_effect=(("--maximum-periodicity", "--maximum_periodicity"),
                                           ("--partition-timeout", "--partition_timeout")))


def run_instance(args: argparse.Namespace) -> int:
    from slapos.base.errors import UsageError
    from slapos.grid.instance import InstanceOptions, InstanceRun

    config, settings = node_settings(args, pidfile="pidfile_instance")
    settings.check_root()
    jobs = args.jobs if args.jobs is not None else config.get_int("slapos", "instance_jobs", 1)
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    only = comma_list(args.only_cp) or comma_list([config.get("slapos", "only_cp", config.get("slapos", "only-cp", ""))])
    options = InstanceOptions(
        only_cp=only or None,
        force=args.force or config.get_bool("slapos", "develop", False),
        force_stop=args.force_stop or config.get_bool("slapos", "force_stop", False),
        buildout_debug=args.buildout_debug or config.get_bool("slapos", "buildout_debug", False),
        jobs=jobs,
        now=args.now,
        maximal_delay=args.maximal_delay,
    )
    return InstanceRun(settings, options).run()


def run_promise(args: argparse.Namespace) -> int:
    from slapos.grid.instance import run_node_promise

    _config, settings = node_settings(args, pidfile="pidfile_instance")
    settings.check_root()
    return run_node_promise(settings, comma_list(args.only_cp) or None)


def _supervisor(args: argparse.Namespace):
    from slapos.grid.supervisor import Supervisor

    _config, settings = node_settings(args, pidfile="pidfile_instance")
    settings.check_root()
    return Supervisor(settings)


def supervisord_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser)
    parser.add_argument("-n", "--nodaemon", action="store_true", help="stay in the foreground")


def run_supervisord(args: argparse.Namespace) -> int:
    import logging

    sv = _supervisor(args)
    if sv.is_running():
        sv.write_config()
        logging.getLogger("slapos").info("supervisord already runs for %s (socket %s)", sv.instance_root,
                                         sv.socket_path)
        return 0
    sv.start(nodaemon=args.nodaemon)
    logging.getLogger("slapos").info("supervisord started for %s (socket %s)", sv.instance_root, sv.socket_path)
    return 0


def ctl_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser)


def _ctl(args: argparse.Namespace, verb: list[str]) -> int:
    import logging

    sv = _supervisor(args)
    words = [*verb, *getattr(args, "extra", [])]
    if words and words[0] == "shutdown":  # every process stopped at once, then supervisord
        if sv.shutdown():
            logging.getLogger("slapos").info("supervisord stopped")
        else:
            logging.getLogger("slapos").info("supervisord was not running")
        return 0
    sv.ensure_running()
    return sv.supervisorctl(words)


def run_supervisorctl(args: argparse.Namespace) -> int:
    return _ctl(args, [])


def status_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser)
    parser.add_argument("--partitions", action="store_true",
                        help="one line per partition: requested state, status, promises, back-off, last error")
    from .node_run import status_arguments as daemon_status_arguments

    daemon_status_arguments(parser)
    add_format_argument(parser)


def run_status(args: argparse.Namespace) -> int:
    if args.daemon:
        from .node_run import show_daemon_status

        return show_daemon_status(args)
    if not args.partitions:
        if args.format == "json":
            import json

            sv = _supervisor(args)
            sv.ensure_running()
            print(json.dumps(sv.all_processes(), indent=2, sort_keys=True))
            return 0
        return _ctl(args, ["status"])
    import json

    from slapos.grid.status import all_statuses, format_table, status_document

    _config, settings = node_settings(args, pidfile="pidfile_instance")
    statuses = all_statuses(settings)
    if args.format == "json":  # the status vocabulary, as the proxy's /status.json (docs/dashboard.md)
        print(json.dumps(status_document(settings.computer_id, statuses), indent=2))
    else:
        import sys

        from slapos.base.table import terminal_width

        print(format_table(statuses, width=terminal_width(sys.stdout)))
    return 0


def run_metrics(args: argparse.Namespace) -> int:
    from slapos.base.errors import SlapOSError
    from slapos.grid.observe import read_metrics

    _config, settings = node_settings(args, pidfile="pidfile_instance")
    try:
        print(read_metrics(settings), end="")
    except FileNotFoundError as e:
        raise SlapOSError(str(e)) from None
    return 0


def _verb(name: str):
    def run(args: argparse.Namespace) -> int:
        return _ctl(args, [name])

    return run


COMMANDS = [
    Command(path=("node", "instance"), help="deploy the partitions the master assigns to this computer",
            description=INSTANCE_DESCRIPTION, run=run_instance, arguments=instance_arguments),
    Command(path=("node", "promise"), help="run the promises of the started partitions (no report; exit 0 or 2)",
            description="Run every promise of the started partitions now and show the results. Nothing is "
                        "reported to the master. Exit 0 when all pass, 2 when one fails.",
            run=run_promise, arguments=promise_arguments),
    Command(path=("node", "supervisord"), help="start the node's supervisord (unless it runs)",
            run=run_supervisord, arguments=supervisord_arguments),
    Command(path=("node", "supervisorctl"), help="supervisorctl on the node's supervisord (arguments passed on)",
            description="Run supervisorctl against the node's supervisord, e.g. 'slapos node supervisorctl "
                        "status'. 'shutdown' stops every process at once, then supervisord.",
            run=run_supervisorctl, arguments=ctl_arguments, passthrough=True),
    Command(path=("node", "status"), help="process status (supervisorctl format), or --partitions",
            description="Without options: supervisorctl's status lines '<partition>:<program>  STATE  ...'. "
                        "With --partitions: the node's view of each partition (table or --format json). "
                        "With --daemon: the view of `slapos node run` (its runs, queue, master connection and "
                        "partitions; 'daemon not running', exit 1, when its socket does not answer).",
            run=run_status, arguments=status_arguments, passthrough=True),
    Command(path=("node", "metrics"), help="print the node's Prometheus metrics (written after each run)",
            description="Print the metrics the last `slapos node instance`, `software` and `report` runs wrote "
                        "to [slapos] metrics_directory (default <instance_root>/../var/metrics), in the "
                        "Prometheus text format: point node_exporter's textfile collector at that directory "
                        "(docs/dashboard.md).",
            run=run_metrics, arguments=ctl_arguments),
    Command(path=("node", "start"), help="start programs: 'slapos node start slappart0:*' (supervisorctl start)",
            run=_verb("start"), arguments=ctl_arguments, passthrough=True),
    Command(path=("node", "stop"), help="stop programs: 'slapos node stop all' (supervisorctl stop)",
            run=_verb("stop"), arguments=ctl_arguments, passthrough=True),
    Command(path=("node", "restart"), help="restart programs (supervisorctl restart)",
            run=_verb("restart"), arguments=ctl_arguments, passthrough=True),
    Command(path=("node", "tail"), help="show a program's output (supervisorctl tail)",
            run=_verb("tail"), arguments=ctl_arguments, passthrough=True),
]
