"""How a command module declares its commands.

A command module (listed in `slapos.cli.main.COMMAND_MODULES`) exposes `COMMANDS`, a list of
`Command`. Modules must stay cheap to import: import heavy things inside `run`, because
`slapos request` is called in loops by scripts and pays the start-up every time.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Command:
    path: tuple[str, ...]  # e.g. ("node", "format")
    help: str
    run: Callable[[argparse.Namespace], int | None]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # pass the remaining command line through untouched (e.g. `node supervisorctl ...`)
    passthrough: bool = False


def add_cfg_argument(parser: argparse.ArgumentParser, client: bool = False) -> None:
    env = "SLAPOS_CLIENT_CONFIGURATION" if client else "SLAPOS_CONFIGURATION"
    default = "~/.slapos/slapos-client.cfg" if client else "/etc/opt/slapos/slapos.cfg"
    parser.add_argument(
        "--cfg", metavar="FILE", help=f"configuration file (default: ${env}, then {default})"
    )


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format (default: table)"
    )
