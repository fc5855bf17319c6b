"""Sphinx extension: the reference pages generated from the code, at every build, so they cannot
drift from it.

* the commands and options, from the argparse parsers `slapos.cli.main.build_parser` builds:
  `slapos` (global options and the top-level commands) and one page per command group
  (`slapos node`, `slapos proxy`, `slapos configure`), which are also the man pages;
* every slapos.cfg key with its default (`slapos_config_keys`);
* the exit codes (`slapos.base.errors`).

The pages are written as Markdown into `docs/reference/generated/` (not in git) before Sphinx reads
the sources; a file is rewritten only when its text changes. `tests/docs` uses the same functions.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import slapos_config_keys  # noqa: E402

GENERATED = "reference/generated"
# one-line descriptions of the command groups (man page NAME lines); a group not listed here still
# gets its page and man page, described by its first word
DESCRIPTIONS = {
    (): "a SlapOS-compatible node stack: run a node, a standalone master, request software",
    ("node",): "run a SlapOS node: format, build software, deploy instances, report",
    ("proxy",): "a SLAP master for one machine on one SQLite file",
    ("configure",): "write the configuration of a standalone node or of a client",
}


def groups() -> list[tuple[str, tuple[str, ...], str]]:
    """(man page name, group path, description) of `slapos` and of every command group."""
    _parser, commands = full_parser()
    paths = sorted({c.path[:-1] for c in commands} | {()})
    return [("-".join(("slapos", *path)), path, DESCRIPTIONS.get(path, f"the slapos {' '.join(path)} commands"))
            for path in paths]


@dataclass
class CommandDoc:
    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str
    aliases: tuple[str, ...] = ()
    passthrough: bool = False


def full_parser() -> tuple[argparse.ArgumentParser, list[CommandDoc]]:
    """The `slapos` parser with every command's options, and the commands in order."""
    from slapos.cli.main import build_parser, load_commands

    commands = load_commands()
    parser = build_parser(commands)
    found: list[CommandDoc] = []

    def walk(p: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in p._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                path = (*prefix, name)
                command = sub._defaults.get("_command")
                if command is not None:
                    found.append(CommandDoc(path, sub, helps.get(name) or command.help,
                                            tuple(command.aliases), command.passthrough))
                walk(sub, path)

    walk(parser, ())
    return parser, found


def _common_dests() -> set[str]:
    return {"help", "debug", "verbose", "quiet", "log_file"}


def documented_actions(parser: argparse.ArgumentParser, skip_common: bool = True) -> list[argparse.Action]:
    """The options and arguments a page documents (the global ones are on slapos(1) only)."""
    actions = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if skip_common and action.dest in _common_dests():
            continue
        actions.append(action)
    return actions


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")


def _action_name(action: argparse.Action) -> str:
    if action.option_strings:
        metavar = ""
        if action.nargs != 0:
            metavar = " " + (action.metavar or action.dest.upper()) if not isinstance(action.metavar, tuple) \
                else " " + " ".join(action.metavar)
        return ", ".join(f"{o}{metavar}" for o in action.option_strings)
    return action.metavar or action.dest


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS, False) or action.nargs == 0:
        return ""
    return "" if "default" in (action.help or "") else f" (default: `{action.default}`)"


def _option_lines(actions: list[argparse.Action]) -> list[str]:
    lines = []
    for action in actions:
        text = action.help or ""
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            choices = ", ".join(f"`{c}`" for c in action.choices)
            text += f" (one of {choices})"
        lines.append(f"`{_action_name(action)}`")
        lines.append(f": {_escape(text % {'default': action.default} if '%(' in text else text)}{_default(action)}")
        lines.append("")
    return lines


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line without the global options (slapos(1) has them), wrapped at 88 columns."""
    import textwrap

    text = " ".join(parser.format_usage().replace("usage:", "").split())
    for common in ("[-h] ", "[--debug] ", "[-v] ", "[-q] ", "[--log-file FILE] "):
        text = text.replace(common, "", 1) if "COMMAND" not in text else text
    return "\n".join(textwrap.wrap(text, 88, subsequent_indent="    ", break_on_hyphens=False))


def render_group(name: str, group: tuple[str, ...], description: str) -> str:
    parser, commands = full_parser()
    title = " ".join(("slapos", *group))
    out = [f"# {title}", "", f"{description[0].upper()}{description[1:]}.", ""]
    if not group:
        out += ["## Synopsis", "", "```text", _usage(parser), "```", "",
                "## Global options", "",
                "Accepted before or after the command name.", ""]
        out += _option_lines(documented_actions(parser, skip_common=False))
        out += ["## Command groups", ""]
        for name, path, _description in groups():
            if path:
                out.append(f"- `slapos {' '.join(path)} COMMAND`: see [slapos {' '.join(path)}]({name}.md)")
        out.append("")
    mine = [c for c in commands if c.path[:-1] == group]
    out += ["## Commands", ""]
    for command in mine:
        full = " ".join(("slapos", *command.path))
        out += [f"### {full}", "", f"{_escape(command.help[0].upper() + command.help[1:])}.", ""]
        if command.parser.description and command.parser.description != command.help:
            out += [_escape(command.parser.description), ""]
        out += ["```text", _usage(command.parser), "```", ""]
        if command.aliases:
            out += [f"Also spelled: {', '.join(f'`{a}`' for a in command.aliases)}.", ""]
        if command.passthrough:
            out += ["Arguments it does not know are passed on unchanged.", ""]
        actions = documented_actions(command.parser)
        if actions:
            out += _option_lines(actions)
    if group:
        out += ["## See also", "", "[slapos](slapos.md) for the global options and the exit codes.", ""]
    else:
        out += ["## Exit status", "", *exit_code_lines(), "",
                "## Files and environment", "",
                "`/etc/opt/slapos/slapos.cfg` (or `$SLAPOS_CONFIGURATION`, or `--cfg`): the node's "
                "configuration; `~/.slapos/slapos-client.cfg` (or `$SLAPOS_CLIENT_CONFIGURATION`): the "
                "client's. Every key is in the [configuration reference](configuration.md).", ""]
    return "\n".join(out)


EXIT_MEANINGS = {
    "EXIT_OK": "success",
    "EXIT_FAILED": "failed: a step, a partition or a build failed (one `error:` line says which)",
    "EXIT_PROMISE_FAILED": "deployed, but a promise failed",
    "EXIT_OFFLINE": "the master cannot be reached",
    "EXIT_USAGE": "usage error: a bad option or argument, or a node command run without root",
    "EXIT_LOCKED": "another run holds the lock (`pidfile_software`, `pidfile_instance`, `pidfile_report`)",
}


def exit_codes() -> list[tuple[int, str, str]]:
    from slapos.base import errors

    codes = [(getattr(errors, name), name, EXIT_MEANINGS.get(name, ""))
             for name in dir(errors) if name.startswith("EXIT_")]
    return sorted(codes)


def exit_code_lines() -> list[str]:
    lines = []
    for code, name, meaning in exit_codes():
        lines += [f"`{code}` ({name})", f": {meaning}", ""]
    lines += ["`130`", ": interrupted (Ctrl-C)", ""]
    return lines


def render_configuration() -> str:
    out = ["# Configuration keys", "",
           "Every key of `slapos.cfg` the code reads, with its default, generated at each build from the "
           "code's lookups (the default) and from [`slapos.cfg.example`](https://example.invalid/) "
           "(the meaning and an example value). `(required)`: the command stops with one line naming "
           "the key and the section when it is missing; `(unset)`: no value, the feature is off or "
           "derived from another key.", ""]
    out[2] = out[2].replace("[`slapos.cfg.example`](https://example.invalid/)", "`slapos.cfg.example`")
    section = None
    for key in slapos_config_keys.all_keys():
        if key.section != section:
            section = key.section
            out += [f"## [{section}]", ""]
        example = f" Example: `{key.example}`." if key.example and key.example != key.default else ""
        meaning = _escape(key.description)
        if meaning and not meaning.endswith("."):
            meaning += "."
        out += [f"`{key.name}` (default: {_escape(key.default)})", f": {meaning}{example}", ""]
    return "\n".join(out)


def render_exit_codes() -> str:
    return "\n".join(["# Exit codes", "",
                      "Every `slapos` command ends with one of these (from `slapos.base.errors`):", "",
                      *exit_code_lines()])


def pages() -> dict[str, str]:
    """file name (in GENERATED) → Markdown text."""
    result = {f"{name}.md": render_group(name, group, description) for name, group, description in groups()}
    result["configuration.md"] = render_configuration()
    result["exit-codes.md"] = render_exit_codes()
    return result


def write_pages(srcdir: Path) -> list[Path]:
    target = srcdir / GENERATED
    target.mkdir(parents=True, exist_ok=True)
    written = []
    current = pages()
    for stale in target.glob("*.md"):  # a group that no longer exists
        if stale.name not in current:
            stale.unlink()
    for name, text in current.items():
        path = target / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            # atomically: two builds (html and man, in parallel tests) may write the same page
            partial = path.with_name(f".{name}.{os.getpid()}")
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, path)
        written.append(path)
    return written


def _generate(app) -> None:
    write_pages(Path(app.srcdir))


def setup(app):
    app.connect("builder-inited", _generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
