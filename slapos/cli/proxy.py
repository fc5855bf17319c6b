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


def _database(args: argparse.Namespace):
    from pathlib import Path

    from slapos.proxy.db import Database

    if args.database_uri:
        path = Path(args.database_uri).expanduser()
    else:
        path = _load_config(args).get_path("slapproxy", "database_uri")
    return Database.open(path, create=False)


def _token_arguments(parser: argparse.ArgumentParser) -> None:
    _database_arguments(parser)
    parser.add_argument("computer", nargs="?", metavar="COMPUTER",
                        help="the computer the token is for (without it, the node registering names itself)")
    parser.add_argument("--user", metavar="NAME",
                        help="a token for a user certificate instead (slapos configure client --token): NAME is "
                             "the user; that certificate requests and supplies as NAME, never as a node")
    parser.add_argument("--lifetime", type=float, default=3600.0, metavar="SECONDS",
                        help="seconds the token stays valid (default: 3600)")


def token(args: argparse.Namespace) -> int:
    """A one-time token from the proxy's own database: for the proxy's operator (who can read it)."""
    import os

    from slapos.base.errors import UsageError
    from slapos.proxy import ca, ownership

    if args.lifetime <= 0:
        raise UsageError("--lifetime must be a positive number of seconds")
    if args.computer is not None and not ca.COMPUTER_ID.match(args.computer):
        raise UsageError(f"computer {args.computer!r}: letters, digits, '.', '_', '-' and '@' only")
    if args.user is not None:
        if args.computer is not None:
            raise UsageError("a token is for a computer or for a user (--user NAME), not both")
        if not ca.COMPUTER_ID.match(args.user):
            raise UsageError(f"user {args.user!r}: letters, digits, '.', '_', '-' and '@' only (at most 128)")
    db = _database(args)
    try:
        with db.write(documents=False) as conn:
            ownership.ensure_tables(conn)
            value = ownership.issue_token(conn, f"uid:{os.geteuid()}", args.computer, args.lifetime, user=args.user)
    finally:
        db.close()
    print(value)
    return 0


def _certificates_arguments(parser: argparse.ArgumentParser) -> None:
    _database_arguments(parser)
    add_format_argument(parser)
    parser.add_argument("--all", action="store_true", help="also revoked and expired certificates")
    parser.add_argument("--user", metavar="NAME", help="only the certificates of user NAME")


def certificates(args: argparse.Namespace) -> int:
    import time

    from slapos.client import output
    from slapos.proxy import ca

    db = _database(args)
    try:
        with db.write(documents=False) as conn:
            rows = ca.listing(conn)
    finally:
        db.close()
    now = time.time()
    for row in rows:
        row["state"] = "revoked" if row["revoked"] else ("expired" if row["expires"] < now else "active")
    if not args.all:
        rows = [r for r in rows if r["state"] == "active"]
    if args.user is not None:
        rows = [r for r in rows if r["user"] == args.user]
    if args.format == "json":
        output.dump_json(rows)
        return 0

    def day(t):
        return time.strftime("%Y-%m-%d", time.gmtime(t))

    output.table(["SERIAL", "KIND", "COMPUTER", "PARTITION", "USER", "ISSUED", "EXPIRES", "STATE"],
                 [[r["serial"], r["kind"], r["computer"] or "", r["partition"] or "", r["user"] or "",
                   day(r["issued"]), day(r["expires"]), r["state"]] for r in rows])
    return 0


def _revoke_arguments(parser: argparse.ArgumentParser) -> None:
    _database_arguments(parser)
    parser.add_argument("what", metavar="SERIAL|COMPUTER", nargs="?",
                        help="a certificate's serial (slapos proxy certificates), or a computer: all its certificates")
    parser.add_argument("--user", metavar="NAME", help="revoke every certificate of user NAME instead")


def revoke(args: argparse.Namespace) -> int:
    from slapos.base.errors import SlapOSError, UsageError
    from slapos.proxy import ca

    if (args.what is None) == (args.user is None):
        raise UsageError("give a serial or a computer, or --user NAME (one of them)")
    db = _database(args)
    try:
        with db.write(documents=False) as conn:
            serials = ca.revoke(conn, args.user, user=True) if args.user is not None else ca.revoke(conn, args.what)
    finally:
        db.close()
    if not serials:
        what = f"of user {args.user!r}" if args.user is not None else f"with serial or computer {args.what!r}"
        raise SlapOSError(f"no active certificate {what}: see slapos proxy certificates")
    print("revoked " + ", ".join(serials))
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
    Command(
        path=("proxy", "token"),
        help="issue a one-time token a node (or, with --user, a person) exchanges for a certificate",
        description="Print a one-time, expiring token, stored hashed in the proxy database. Give it to "
                    "`slapos node register NAME --token TOKEN --master-url <proxy URL>`, or with --user NAME "
                    "to `slapos configure client --token TOKEN --master-url <proxy URL>` (docs/join.md).",
        run=token,
        arguments=_token_arguments,
    ),
    Command(
        path=("proxy", "certificates"),
        help="list the certificates the proxy's CA issued",
        description="Serial, kind (computer, partition, user), computer, partition, user, dates and state of each "
                    "certificate (active ones unless --all).",
        run=certificates,
        arguments=_certificates_arguments,
    ),
    Command(
        path=("proxy", "revoke"),
        help="revoke a certificate (by serial), every certificate of a computer, or of a user (--user)",
        description="A revoked certificate is refused at once by the running proxy (it checks every request).",
        run=revoke,
        arguments=_revoke_arguments,
    ),
]
