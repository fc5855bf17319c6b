"""The pre-`slapos` commands, for scripts and crontabs written for older versions.

Each maps onto a `slapos` command run in-process through `slapos.cli.main.main`:

    slapgrid-sr  → slapos node software      slapformat  → slapos node format
    slapgrid-cp  → slapos node instance      slapproxy   → slapos proxy start
    slapgrid-ur  → slapos node report        slapconsole → slapos console
    bang         → slapos node bang

Old spellings keep working: the configuration file given as a positional argument becomes
`--cfg FILE`, `--option_name` becomes `--option-name` when that is what the command knows, and
options that no longer mean anything (`-c/--console`: logs always go to the console) are dropped
with a debug note. Anything else is passed through untouched, so a real typo still fails with
the command's own usage error.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("slapos.legacy")


@dataclass(frozen=True)
class Legacy:
    name: str
    path: tuple[str, ...]
    # old option → new option, used when the target command does not know the old one
    renames: dict[str, str] = field(default_factory=dict)
    # options without meaning today: (option, takes_value)
    obsolete: dict[str, bool] = field(default_factory=dict)
    # True: the first positional argument is the configuration file
    positional_cfg: bool = True


# --supervisord-socket, --buildout, ... are passed through: the commands accept them (no effect)
_SLAPGRID_OBSOLETE = {"-c": False, "--console": False}
_SLAPGRID_RENAMES = {"--develop": "--force", "--all": "--force", "--only": "--only-sr"}

LEGACY = {
    "slapgrid-sr": Legacy("slapgrid-sr", ("node", "software"), _SLAPGRID_RENAMES, _SLAPGRID_OBSOLETE),
    "slapgrid-cp": Legacy(
        "slapgrid-cp", ("node", "instance"), {**_SLAPGRID_RENAMES, "--only": "--only-cp"}, _SLAPGRID_OBSOLETE
    ),
    "slapgrid-ur": Legacy("slapgrid-ur", ("node", "report"), {}, _SLAPGRID_OBSOLETE),
    "slapformat": Legacy("slapformat", ("node", "format"), {"-l": "--log-file"}, {"-c": False, "--console": False}),
    "slapproxy": Legacy("slapproxy", ("proxy", "start"), {"-l": "--log-file"}),
    "slapconsole": Legacy(
        "slapconsole", ("console",), {}, positional_cfg=False
    ),
    "bang": Legacy("bang", ("node", "bang"), {}, {"-c": False, "--console": False}),
}


def find_subparser(parser: argparse.ArgumentParser, path: Sequence[str]) -> argparse.ArgumentParser | None:
    for name in path:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or name not in subparsers[0].choices:
            return None
        parser = subparsers[0].choices[name]
    return parser


def _looks_like_config(argument: str) -> bool:
    if argument.endswith(".cfg"):
        return True
    try:
        with open(os.path.expanduser(argument), encoding="utf-8", errors="replace") as f:
            return any(line.strip() == "[slapos]" for line in f.read(65536).splitlines())
    except OSError:
        return False


def translate(legacy: Legacy, argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """The `slapos` arguments (after the command path) equivalent to an old command line."""
    known = parser._option_string_actions
    options: list[str] = []
    positionals: list[str] = []
    cfg_given = False
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            positionals.extend(args[i:])
            break
        if not token.startswith("-") or token == "-":
            positionals.append(token)
            continue
        name, eq, value = token.partition("=")
        if name not in known:
            if name in legacy.obsolete:
                if legacy.obsolete[name] and not eq and i < len(args):
                    i += 1  # drop its value too
                log.debug("%s: ignoring obsolete option %s", legacy.name, name)
                continue
            dashed = "--" + name[2:].replace("_", "-") if name.startswith("--") else name
            if dashed in known:
                name = dashed
            elif legacy.renames.get(name) in known:
                name = legacy.renames[name]
        if name == "--cfg":
            cfg_given = True
        options.append(name + eq + value)
        action = known.get(name)
        takes_value = action is not None and action.nargs != 0
        if takes_value and not eq and i < len(args):
            nargs = action.nargs
            if nargs in (None, 1):
                options.append(args[i])
                i += 1
            else:  # "+", "*", "?" or a number: take values up to the next option
                while i < len(args) and not args[i].startswith("-"):
                    options.append(args[i])
                    i += 1
                    if nargs == "?":
                        break
    if not cfg_given and positionals and "--cfg" in known:
        if legacy.positional_cfg:
            options[:0] = ["--cfg", positionals.pop(0)]
        else:
            for index, argument in enumerate(positionals):
                if _looks_like_config(argument):
                    options[:0] = ["--cfg", positionals.pop(index)]
                    break
    return [*options, *positionals]


def run_legacy(name: str, argv: Sequence[str] | None = None) -> int:
    from slapos.base.errors import EXIT_USAGE

    from .main import build_parser, load_commands, main

    legacy = LEGACY[name]
    argv = list(sys.argv[1:] if argv is None else argv)
    target = find_subparser(build_parser(load_commands()), legacy.path)
    if target is None:
        print(f"{name}: error: `slapos {' '.join(legacy.path)}` is not available in this installation",
              file=sys.stderr)
        return EXIT_USAGE
    translated = translate(legacy, argv, target)
    log.debug("%s → slapos %s", name, " ".join([*legacy.path, *translated]))
    return main([*legacy.path, *translated])


def slapgrid_sr() -> int:
    return run_legacy("slapgrid-sr")


def slapgrid_cp() -> int:
    return run_legacy("slapgrid-cp")


def slapgrid_ur() -> int:
    return run_legacy("slapgrid-ur")


def slapformat() -> int:
    return run_legacy("slapformat")


def slapproxy() -> int:
    return run_legacy("slapproxy")


def slapconsole() -> int:
    return run_legacy("slapconsole")


def bang() -> int:
    return run_legacy("bang")
