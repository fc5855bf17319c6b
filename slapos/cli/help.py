"""`slapos help [COMMAND...]`: the help of the whole tool or of one command (as the reference,
whose scripts and documentation use it)."""
from __future__ import annotations

import argparse

from .command import Command


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="*", metavar="COMMAND", help="a command, e.g. `node software`")


def run(args: argparse.Namespace) -> int:
    import sys

    from slapos.base.errors import EXIT_USAGE

    from .main import load_commands, main, select_command

    words = list(args.words)
    commands = load_commands()
    # a group name (`slapos help node`) has its own help too
    is_group = any(len(c.path) > len(words) and list(c.path[: len(words)]) == words for c in commands)
    if words and select_command(commands, words) is None and not is_group:
        print(f"slapos help: unknown command '{' '.join(words)}' (see slapos --help)", file=sys.stderr)
        return EXIT_USAGE
    return main([*words, "--help"])


COMMANDS = [
    Command(path=("help",), help="show the help of slapos or of a command: slapos help node software",
            run=run, arguments=arguments),
]
