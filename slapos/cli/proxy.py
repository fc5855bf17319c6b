"""`slapos proxy start` and `slapos proxy show`: the standalone SLAP master on one SQLite file."""
from __future__ import annotations

import argparse

from .command import Command, add_cfg_argument, add_format_argument


def _load_config(args: argparse.Namespace):
    from slapos.base.config import Config
    from slapos.base.errors import ConfigError

    try:
        return Config.load(args.cfg)
    except ConfigError:
        if args.cfg is None and getattr(args, "database_uri", None):
            return Config(text="")  # everything given on the command line
        raise


def _database_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser)
    parser.add_argument(
        "-u", "--database-uri", "--database_uri", dest="database_uri", metavar="FILE",
        help="SQLite database file (default: [slapproxy] database_uri)",
    )


def _start_arguments(parser: argparse.ArgumentParser) -> None:
    _database_arguments(parser)
    parser.add_argument("--host", help="address to listen on (default: [slapproxy] host, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: [slapproxy] port, else 8080; 0 = any)")
    parser.add_argument(
        "--allow-remote", action="store_true", default=None,
        help="allow listening on a non-loopback address (with [slapproxy] access = open the proxy has no authentication)",
    )
    parser.add_argument("--threads", type=int, help="worker threads (default: [slapproxy] threads, else 8)")
    parser.add_argument(
        "--local-software-release-root", "--local_software_release_root", dest="local_software_release_root",
        help="accepted for compatibility with the reference; software release paths are used as given",
    )


def start(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from slapos.proxy.config import ProxyConfig
    from slapos.proxy.server import serve

    cfg = _load_config(args)
    config = ProxyConfig.from_config(
        cfg,
        database=Path(args.database_uri).expanduser() if args.database_uri else None,
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
        threads=args.threads,
    )
    if args.local_software_release_root not in (None, "/"):
        logging.getLogger("slapos.proxy").warning(
            "--local-software-release-root ignored: software release paths are used as given"
        )
    if config.log_file and not getattr(args, "log_file", None):
        from slapos.base.logs import setup_logging

        setup_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0), str(config.log_file), args.debug)
    return serve(config)


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    _database_arguments(parser)
    add_format_argument(parser)
    sections = parser.add_argument_group("sections (default: all but usage)")
    for name, what in (
        ("computers", "formatted computers"),
        ("software", "software releases and their reported state"),
        ("partitions", "partitions: instance, state, requester, parameters, connection"),
        ("slaves", "shared instances"),
        ("tree", "the instance trees"),
        ("network", "partition addresses"),
        ("usage", "usage reports sent by nodes"),
    ):
        sections.add_argument(f"--{name}", action="store_true", help=f"show {what}")
    parser.add_argument("--params", action="store_true", help="show parameters in full (pretty-printed)")
    parser.add_argument(
        "--no-secrets", action="store_true", help="hide connection parameters (they often hold passwords)"
    )


def show(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from slapos.proxy import show as show_module

    if args.database_uri:
        database = Path(args.database_uri).expanduser()
    else:
        database = _load_config(args).get_path("slapproxy", "database_uri")
    sections = [
        name for name in show_module.SECTIONS if getattr(args, name, False)
    ] or list(show_module.DEFAULT_SECTIONS)
    data = show_module.collect(database, sections, secrets=not args.no_secrets)
    if args.format == "json":
        sys.stdout.write(show_module.render_json(data))
    else:
        from slapos.base.table import terminal_width

        sys.stdout.write(show_module.render_text(data, full_params=args.params, width=terminal_width(sys.stdout)))
    return 0


COMMANDS = [
    Command(
        path=("proxy", "start"),
        help="run the SLAP proxy (a master for one machine) in the foreground",
        description=(
            "Serve the SLAP protocol from one SQLite file ([slapproxy] database_uri) on 127.0.0.1:8080 by "
            "default, for `slapos node` and `slapos request` on this machine. Stop it with Ctrl-C or SIGTERM."
        ),
        run=start,
        arguments=_start_arguments,
    ),
    Command(
        path=("proxy", "show"),
        help="show what the proxy holds: computers, software, partitions, instance trees",
        description="Read the proxy database and print its content as tables (or JSON with --format json).",
        run=show,
        arguments=_show_arguments,
    ),
]
