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


# Options of the slapgrid commands (node software, instance, promise, report, bang) overriding the
# [slapos] key of the same name; each is spelled `--software-root` and, like the reference,
# `--software_root`. `node_settings` reads them (and the numeric ones each command declares) back.
_NODE_OPTION_METAVARS = {
    "software_root": "DIR",
    "instance_root": "DIR",
    "certificate_repository_path": "DIR",
    "master_url": "URL",
    "computer_id": "ID",
    "key_file": "FILE",
    "cert_file": "FILE",
    "master_ca_file": "FILE",
    "signature_private_key_file": "FILE",
}
_PATH_OVERRIDES = ("software_root", "instance_root", "certificate_repository_path", "key_file", "cert_file",
                   "master_ca_file")
# The reference's common slapgrid options (SLAP-PROTOCOL §9 note 1): every node run command takes all
# of them, so a crontab line written for one works for the others. (option spellings, dest, metavar)
_SLAPGRID_COMMON = (
    (("--instance-root", "--instance_root"), "instance_root", "DIR"),
    (("--software-root", "--software_root"), "software_root", "DIR"),
    (("--master-url", "--master_url"), "master_url", "URL"),
    (("--computer-id", "--computer_id"), "computer_id", "ID"),
    (("--key-file", "--key_file"), "key_file", "FILE"),
    (("--cert-file", "--cert_file"), "cert_file", "FILE"),
    (("--master-ca-file", "--master_ca_file"), "master_ca_file", "FILE"),
    (("--certificate-repository-path", "--certificate_repository_path"), "certificate_repository_path", "DIR"),
    (("--signature-private-key-file", "--signature_private_key_file"), "signature_private_key_file", "FILE"),
    (("--pidfile",), "pidfile", "FILE"),
    (("--maximal-delay", "--maximal_delay"), "maximal_delay", "SECONDS"),
)
# Accepted so that reference command lines keep working; they change nothing here (the reference
# ignores the first two as well; buildout runs from the node's own zc.buildout, see grid/buildout.py).
COMPAT_NO_EFFECT = (
    ("--supervisord-socket", "--supervisord_socket"),
    ("--supervisord-configuration-path", "--supervisord_configuration_path"),
    ("--buildout",),
)
_VALUE_OVERRIDES = ("master_url", "computer_id", "promise_timeout", "maximum_periodicity", "partition_timeout",
                    "buildout_timeout", "maximal_delay")


def add_node_options(parser: argparse.ArgumentParser, *keys: str) -> None:
    """`--cfg` and `--<key>` overriding [slapos] <key> for each key (see _NODE_OPTION_METAVARS)."""
    add_cfg_argument(parser)
    for key in keys:
        parser.add_argument(f"--{key.replace('_', '-')}", f"--{key}", dest=key, metavar=_NODE_OPTION_METAVARS[key],
                            help=f"override [slapos] {key}")


def add_slapgrid_common(parser: argparse.ArgumentParser, no_effect: tuple[tuple[str, ...], ...] = ()) -> None:
    """The reference's common slapgrid options a command did not declare itself, plus
    `--now`; those without meaning here go in a group the help marks as such. `no_effect`: more
    options accepted for compatibility that this command ignores (e.g. --promise-timeout for
    `node software`)."""
    known = parser._option_string_actions
    if "--cfg" not in known:
        add_cfg_argument(parser)
    for spellings, dest, metavar in _SLAPGRID_COMMON:
        if not any(s in known for s in spellings):
            kind = int if dest == "maximal_delay" else None
            helps = {"pidfile": "the run's lock file",
                     "signature_private_key_file": "override [networkcache] signature-private-key-file "
                                                   "(signs binary-cache uploads)"}
            parser.add_argument(*spellings, dest=dest, metavar=metavar, type=kind,
                                help=helps.get(dest, f"override [slapos] {dest}"))
    if "--now" not in known:
        parser.add_argument("--now", action="store_true", help="start at once, without the random delay")
    compat = parser.add_argument_group(
        "accepted for compatibility with the reference's command lines (no effect here)")
    for spellings in (*COMPAT_NO_EFFECT, *no_effect):
        if any(s in known for s in spellings):
            continue
        compat.add_argument(*spellings, dest="_ignored_" + spellings[0].lstrip("-").replace("-", "_"),
                            metavar="VALUE", help="accepted, no effect")


def node_settings(args: argparse.Namespace, pidfile: str | None = None):
    """(Config, NodeSettings) of `--cfg` with the command-line overrides present in `args`;
    `--pidfile` overrides [slapos] `pidfile` (e.g. "pidfile_instance")."""
    from pathlib import Path

    from slapos.base.config import Config
    from slapos.base.settings import NodeSettings

    overrides = {}
    for key in _PATH_OVERRIDES:
        value = getattr(args, key, None)
        overrides[key] = Path(value).expanduser() if value else None
    for key in _VALUE_OVERRIDES:
        overrides[key] = getattr(args, key, None)
    if pidfile and getattr(args, "pidfile", None):
        overrides[pidfile] = Path(args.pidfile).expanduser()
    config = Config.load(args.cfg)
    settings = NodeSettings.from_config(config, **overrides)
    signature = getattr(args, "signature_private_key_file", None)
    if signature:  # the key binary-cache uploads are signed with ([networkcache])
        settings.networkcache = {**settings.networkcache,
                                 "signature-private-key-file": str(Path(signature).expanduser())}
    return config, settings


def comma_list(values: list[str] | None) -> list[str]:
    """`["a,b", " c "]` → `["a", "b", "c"]`: repeatable, comma-separated options (--only-sr, --only-cp)."""
    return [item.strip() for value in (values or []) for item in value.split(",") if item.strip()]
