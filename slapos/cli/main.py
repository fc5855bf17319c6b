"""Entry point of the `slapos` command: builds the parser from the command modules and turns
errors into one clear line and an exit code (a traceback only with --debug)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from slapos.base.errors import EXIT_FAILED, EXIT_USAGE, SlapOSError
from slapos.base.logs import FORMATS as LOG_FORMATS
from slapos.base.logs import set_command_step, setup_logging

from .command import Command

COMMAND_MODULES = (
    "slapos.cli.proxy",
    "slapos.cli.node_format",
    "slapos.cli.node_software",
    "slapos.cli.node_instance",
    "slapos.cli.node_report",
    "slapos.cli.node_boot",
    "slapos.cli.node_collect",
    "slapos.cli.node_run",
    "slapos.cli.node_prune",
    "slapos.cli.node_register",
    "slapos.cli.client",
    "slapos.cli.service",
    "slapos.cli.cachelookup",
    "slapos.cli.console",
    "slapos.cli.configure",
    "slapos.cli.complete",
    "slapos.cli.help",
)

log = logging.getLogger("slapos")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("slapnode")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not the whole usage) and exits 5 like the reference."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


class _VersionAction(argparse.Action):
    """--version, computed only when asked: importlib.metadata costs ~10 ms on every start."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"slapos (slapnode) {_version()}")
        parser.exit()


def _common_options() -> argparse.ArgumentParser:
    """Options accepted both before and after the command name."""
    common = argparse.ArgumentParser(add_help=False)
    sup = argparse.SUPPRESS
    common.add_argument("--debug", action="store_true", default=sup, help="show tracebacks and debug logs")
    common.add_argument("-v", "--verbose", action="count", default=sup, help="more output")
    common.add_argument("-q", "--quiet", action="count", default=sup, help="less output")
    common.add_argument(
        "--log-file", "--logfile", "--log_file", dest="log_file", metavar="FILE", default=sup,
        help="also write a detailed log to FILE",
    )
    common.add_argument("--log-time", "--log_time", dest="log_time", action="store_true", default=sup,
                        help="start every console line with the time")
    common.add_argument("--log-color", "--log_color", dest="log_color", action="store_true", default=sup,
                        help="show warnings and errors in colour on the console")
    common.add_argument(
        "--log-format", dest="log_format", choices=LOG_FORMATS, default=sup,
        help="auto (default: plain on a terminal, text elsewhere), plain (messages only), text (time, level, "
             "step, partition), json (one object per line); also SLAPNODE_LOG_FORMAT",
    )
    return common


def load_commands() -> list[Command]:
    commands: list[Command] = []
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command group is not built in this tree
                continue
            raise
        commands.extend(module.COMMANDS)
    return commands


_VALUE_OPTIONS = {"--log-file", "--logfile", "--log_file", "--log-format"}


def select_command(commands: list[Command], argv: list[str]) -> Command | None:
    """The command argv names (longest match, aliases included), found without building any
    parser: `main` then builds the options of that one command only. Every periodic node run
    pays the start-up, and the options of all the other commands are ~8 ms of it."""
    words: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token.startswith("-"):
            skip = token in _VALUE_OPTIONS
        else:
            words.append(token)
    best: Command | None = None
    for command in commands:
        n = len(command.path)
        if len(words) < n or tuple(words[: n - 1]) != command.path[:-1]:
            continue
        if words[n - 1] in (command.path[-1], *command.aliases) and (best is None or n > len(best.path)):
            best = command
    return best


def build_parser(commands: list[Command], only: Command | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, the other commands are listed but get no options."""
    common = _common_options()
    parser = _Parser(
        prog="slapos",
        parents=[common],
        description="SlapOS-compatible node stack: run a node, a standalone master, and request software.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {}
    groups[()] = parser.add_subparsers(dest="command", metavar="COMMAND")
    group_parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    for command in sorted(commands, key=lambda c: c.path):
        for depth in range(1, len(command.path)):
            prefix = command.path[:depth]
            if prefix not in groups:
                parent = groups[prefix[:-1]]
                sub = parent.add_parser(prefix[-1], parents=[common], help=f"{prefix[-1]} commands")
                sub.set_defaults(_group_parser=sub)
                group_parsers[prefix] = sub
                groups[prefix] = sub.add_subparsers(dest="_sub_" + "_".join(prefix), metavar="COMMAND")
        parent = groups[command.path[:-1]]
        sub = parent.add_parser(
            command.path[-1],
            parents=[common],
            help=command.help,
            description=command.description or command.help,
            aliases=list(command.aliases),
        )
        if command.arguments and (only is None or command is only):
            command.arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = load_commands()
    parser = build_parser(commands, only=select_command(commands, argv))
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # argparse: --help prints and exits 0, errors exit 2 -> reference uses 5
        code = e.code if isinstance(e.code, int) else EXIT_USAGE
        return EXIT_USAGE if code == 2 else code
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        group = getattr(args, "_group_parser", parser)
        group.print_help()
        return 0
    if extra and not command.passthrough:
        print(f"slapos: error: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return EXIT_USAGE
    args.extra = extra
    debug = getattr(args, "debug", False)
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    log_format = getattr(args, "log_format", None) or os.environ.get("SLAPNODE_LOG_FORMAT") or "auto"
    if log_format not in LOG_FORMATS:
        print(f"slapos: error: SLAPNODE_LOG_FORMAT={log_format!r} is not one of {', '.join(LOG_FORMATS)}",
              file=sys.stderr)
        return EXIT_USAGE
    set_command_step(command.path[-1])
    setup_logging(verbosity, getattr(args, "log_file", None), debug, log_format,
                  time=getattr(args, "log_time", False), color=getattr(args, "log_color", False))
    args.debug = debug
    try:
        code = command.run(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except SlapOSError as e:
        if debug:
            log.exception("%s", e)
        else:
            log.error("%s", e)
        return e.exit_code
    except Exception as e:  # a bug or an unexpected failure: still one line unless --debug
        if debug:
            log.exception("unexpected error")
        else:
            log.error("%s: %s (run again with --debug for the traceback)", type(e).__name__, e)
        return EXIT_FAILED
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
