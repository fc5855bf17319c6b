"""`slapos node run`: the node's periodic runs in one long-running process (docs/daemon.md)."""
from __future__ import annotations

import argparse

from .command import Command, add_node_options

DESCRIPTION = """\
Run the node as one long-running process instead of the cron block: software, instance, report,
collect and format passes, each on its own period ([slapos] run_*_period), and at once when the
master (our proxy) says something changed for this computer: only the partitions or releases that
changed are processed. A master that cannot push is polled every [slapos] run_poll_period.
Each pass takes the lock of its command, so `slapos node instance` typed by hand exits 10 while
the daemon runs an instance pass, and the daemon retries a pass whose lock a hand-run command holds.
Status: `slapos node status --daemon` (JSON and metrics on the unix socket [slapos]
run_status_socket). SIGTERM/SIGINT: stop cleanly (exit 0); SIGHUP: re-read slapos.cfg.
Do not keep the cron block installed as well (docs/daemon.md: switching from cron and back).
Exit codes: 0 stopped cleanly, 1 failed to start, 5 usage or not root, 10 another `slapos node run`
holds its lock."""


def arguments(parser: argparse.ArgumentParser) -> None:
    # --cfg only: the software and format passes are child commands reading the same file
    add_node_options(parser)
    parser.add_argument("--poll", action="store_true",
                        help="do not ask the master to push changes: poll it every run_poll_period")
    parser.add_argument("--print-systemd-unit", dest="print_unit", action="store_true",
                        help="print the systemd unit that runs this command, then exit")
    parser.add_argument("--print-supervisord-program", dest="print_program", action="store_true",
                        help="print a supervisord [program:slapos-node] section, then exit")


def _cfg_path(args: argparse.Namespace):
    from slapos.base.config import find_config

    return find_config(args.cfg).resolve()


def run(args: argparse.Namespace) -> int:
    if args.print_unit or args.print_program:
        from slapos.base.errors import UsageError

        from .service_files import service_text

        try:
            cfg = _cfg_path(args)
        except Exception as e:
            raise UsageError(str(e)) from None
        print(service_text("systemd" if args.print_unit else "supervisord", cfg), end="")
        return 0
    import os

    from slapos.grid.daemon import Daemon, DaemonConfig

    from .command import node_settings

    config, settings = node_settings(args)
    settings.check_root()
    if getattr(args, "log_format", None):  # the child passes (software, format) write the same lines
        os.environ["SLAPNODE_LOG_FORMAT"] = args.log_format
    daemon = Daemon(settings, DaemonConfig.from_config(config, settings), config.path, watch=not args.poll)
    code = daemon.run()
    if daemon.abandoned:
        # the interpreter would wait at exit for the abandoned pass's worker threads (buildouts
        # of a minute): leave now; our lock and socket are released, the fork server ends its
        # buildouts when our end of its socket closes
        import logging
        import sys

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def status_arguments(parser: argparse.ArgumentParser) -> None:
    """Options `slapos node status` gains (cli/node_instance.py declares the command)."""
    parser.add_argument("--daemon", action="store_true",
                        help="the view of `slapos node run`: runs per kind, queue, master connection, partitions")


def show_daemon_status(args: argparse.Namespace) -> int:
    import json
    import sys

    from slapos.base.errors import SlapOSError
    from slapos.grid.daemon import DaemonConfig
    from slapos.grid.daemon_status import DaemonNotRunning, query

    from .command import node_settings

    config, settings = node_settings(args)
    path = DaemonConfig.from_config(config, settings).status_socket
    try:
        doc = json.loads(query(path))
    except DaemonNotRunning as e:
        raise SlapOSError(str(e)) from None
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return 0
    from slapos.base.table import terminal_width

    from .daemon_table import daemon_table

    print(daemon_table(doc, terminal_width(sys.stdout)))
    return 0


COMMANDS = [
    Command(path=("node", "run"), help="run the node as one long-running process (instead of cron)",
            description=DESCRIPTION, run=run, arguments=arguments),
]
