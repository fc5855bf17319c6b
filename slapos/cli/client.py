"""`slapos request|supply|remove|list|info`: what a user types to get software and instances.

Kept cheap to import (scripts call `slapos request` in loops): everything beyond argparse is
imported inside the run functions.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from slapos.base.errors import SlapOSError, UsageError

from .command import Command, add_cfg_argument, add_format_argument

log = logging.getLogger("slapos.client")

STATES = ("started", "stopped", "destroyed")


class _Session:
    """Client settings plus a connection opened on first use (product lookups may not need one)."""

    def __init__(self, args: argparse.Namespace):
        from slapos.client.settings import ClientSettings

        self.settings = ClientSettings.load(args.cfg)
        self._connection = None

    def connect(self):
        if self._connection is None:
            self._connection = self.settings.connect()
        return self._connection

    def software_url(self, url: str) -> str:
        from slapos.client.product import resolve_software_url

        where = f"[slapos]/[slapconsole] of {self.settings.config.path}"
        return resolve_software_url(url, self.settings.product_list, self.connect, where)


# --------------------------------------------------------------------------------------------
# printing an instance


def print_instance(status, output_format: str, details: bool = False) -> None:
    from slapos.client import output

    if output_format == "json":
        output.dump_json(status.as_dict())
        return
    pairs: list[tuple[str, Any]] = [
        ("instance", status.name),
        ("requested state", status.requested_state),
        ("software release", status.software_url),
        ("software type", status.software_type),
        ("shared", status.shared),
        ("partition", status.partition),
    ]
    if details:
        addresses = ", ".join(address for _iface, address in (tuple(i)[-2:] for i in status.ip_list)) or None
        pairs.append(("addresses", addresses))
        pairs.append(("source", status.source))
    output.block(pairs)
    if details:
        parameters = output.display_parameters(status.parameters)
        if parameters:
            print("parameters:")
            output.block(sorted(parameters.items()), indent="  ")
        else:
            print("parameters: none")
    connection = output.display_parameters(status.connection_parameters)
    if connection:
        print("connection parameters:")
        output.block(sorted(connection.items()), indent="  ")
    else:
        print("connection parameters: none published yet (run the command again later, or use --wait)")
    if details and status.errors:
        print("errors:")
        for error in status.errors:
            print(f"  {error}")


# --------------------------------------------------------------------------------------------
# slapos request


def request_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser, client=True)
    parser.add_argument("name", metavar="NAME", help="instance title (unique for your account)")
    parser.add_argument(
        "software_url", metavar="SOFTWARE_URL",
        help="software release URL or path, or a product alias (product.<name>, or a name from "
        "software_product_list)",
    )
    parser.add_argument("--type", dest="software_type", metavar="TYPE", help="software type (default: default)")
    parser.add_argument("--state", choices=STATES, help="requested state (default: keep the current one, started for a new instance)")
    parser.add_argument("--slave", "--shared", dest="shared", action="store_true", help="request a shared (slave) instance")
    parser.add_argument(
        "--node", nargs="+", metavar="KEY=VALUE",
        help="where to allocate it, e.g. computer_guid=COMP-1 (SLA filter)",
    )
    parameters = parser.add_mutually_exclusive_group()
    parameters.add_argument("--parameters", nargs="+", metavar="KEY=VALUE", help="instance parameters")
    parameters.add_argument(
        "--parameters-file", "--parameters_file", dest="parameters_file", metavar="FILE",
        help="instance parameters from a JSON, YAML (with PyYAML) or instance XML file",
    )
    parser.add_argument(
        "--force-serialisation", "--force_serialisation", dest="force_serialisation",
        choices=("xml", "json-in-xml"),
        help="how to send a parameters file when the software release does not say (<url>.json)",
    )
    parser.add_argument(
        "--wait", action="store_true",
        help="wait until the instance publishes its connection parameters (see --timeout)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="how long --wait waits (default: 600)"
    )
    add_format_argument(parser)


def run_request(args: argparse.Namespace) -> int:
    from slapos.client.instance import (
        NotReady,
        ProgressLine,
        RequestSpec,
        record_request,
        request_instance,
        wait_for_connection,
    )
    from slapos.client.parameters import build_parameters, parse_key_values
    from slapos.client.registry import InstanceRegistry

    if args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    session = _Session(args)
    software_url = session.software_url(args.software_url)
    spec = RequestSpec(
        name=args.name,
        software_url=software_url,
        software_type=args.software_type,
        state=args.state,
        shared=args.shared,
        filter_kw=parse_key_values(args.node, "--node"),
        parameters=build_parameters(
            args.parameters, args.parameters_file, software_url, args.software_type, args.force_serialisation
        ),
    )
    registry = InstanceRegistry()
    master_url = session.settings.master_url
    try:
        if args.wait:
            status = wait_for_connection(
                lambda: request_instance(session.connect(), spec), args.timeout, progress=ProgressLine()
            )
        else:
            status = request_instance(session.connect(), spec)
    except NotReady as e:
        record_request(registry, master_url, spec, None, error=str(e))
        raise
    except SlapOSError as e:
        # keep the error for `slapos info`, but never invent an entry for a request that failed
        message = str(e)
        registry.update(master_url, spec.name, lambda old: None if old is None else {**old, "last_error": message})
        raise
    record_request(registry, master_url, spec, status)
    print_instance(status, args.format)
    return 0


# --------------------------------------------------------------------------------------------
# slapos supply / remove


def supply_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser, client=True)
    parser.add_argument("software_url", metavar="SOFTWARE_URL", help="software release URL, path or product alias")
    parser.add_argument(
        "node", metavar="COMPUTER_ID", nargs="?",
        help="computer to act on (default: computer_id of [slapos] in the configuration)",
    )


def _supply(args: argparse.Namespace, state: str) -> int:
    session = _Session(args)
    computer = args.node or session.settings.computer_id
    if not computer:
        raise UsageError(
            f"give the computer: slapos {'supply' if state == 'available' else 'remove'} SOFTWARE_URL COMPUTER_ID "
            f"(or set computer_id in [slapos] of {session.settings.config.path})"
        )
    software_url = session.software_url(args.software_url)
    session.connect().registerSupply().supply(software_url, computer_guid=computer, state=state)
    if state == "available":
        print(f"requested installation of {software_url} on {computer}")
    else:
        print(f"requested removal of {software_url} from {computer}")
    return 0


def run_supply(args: argparse.Namespace) -> int:
    return _supply(args, "available")


def run_remove(args: argparse.Namespace) -> int:
    return _supply(args, "destroyed")


# --------------------------------------------------------------------------------------------
# slapos list / info


def list_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser, client=True)
    parser.add_argument("--all", action="store_true", help="also show instances requested as destroyed")
    add_format_argument(parser)


def run_list(args: argparse.Namespace) -> int:
    from slapos.client import output
    from slapos.client.registry import InstanceRegistry
    from slapos.client.settings import ClientSettings

    settings = ClientSettings.load(args.cfg)
    entries = InstanceRegistry().instances(settings.master_url)
    shown = [
        entries[name] for name in sorted(entries)
        if args.all or entries[name].get("requested_state") != "destroyed"
    ]
    if args.format == "json":
        output.dump_json(shown)
        return 0
    if not shown:
        print(f"no instance requested from this account for {settings.master_url} yet (see slapos request --help)")
        return 0
    rows = []
    for entry in shown:
        partition = entry.get("partition_id")
        if partition and entry.get("computer_id"):
            partition = f"{entry['computer_id']}/{partition}"
        rows.append([
            entry.get("name"), entry.get("requested_state"), entry.get("software_type"), bool(entry.get("shared")),
            partition, "yes" if entry.get("connection_parameters") else "no",
            "error" if entry.get("last_error") else "ok", entry.get("software_url"),
        ])
    output.table(["NAME", "STATE", "TYPE", "SHARED", "PARTITION", "CONNECTION", "LAST REQUEST", "SOFTWARE"], rows)
    return 0


def info_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser, client=True)
    parser.add_argument("name", metavar="NAME", help="instance title, as given to slapos request")
    add_format_argument(parser)


def run_info(args: argparse.Namespace) -> int:
    from slapos.base.errors import EXIT_PROMISE_FAILED
    from slapos.client.instance import instance_info
    from slapos.client.registry import InstanceRegistry
    from slapos.client.settings import ClientSettings

    settings = ClientSettings.load(args.cfg)
    registry = InstanceRegistry()
    entry = registry.get(settings.master_url, args.name)
    if entry is None:
        raise SlapOSError(
            f"unknown instance '{args.name}': it was not requested from this account for "
            f"{settings.master_url} (slapos list shows the known ones)",
            exit_code=EXIT_PROMISE_FAILED,
        )
    status = instance_info(settings.connect, entry)
    if status.source == "master":
        registry.remember(
            settings.master_url, args.name, requested_state=status.requested_state,
            connection_parameters=status.connection_parameters,
        )
    print_instance(status, args.format, details=True)
    return 0


COMMANDS = [
    Command(
        path=("request",),
        help="request (or update) an instance and print its status and connection parameters",
        run=run_request,
        arguments=request_arguments,
        description=(
            "Request an instance of a software release, or change an existing one (same NAME). "
            "Returns at once with the allocated partition and the connection parameters published so "
            "far; --wait waits for them. Exit 2 when the master has not allocated it yet."
        ),
    ),
    Command(
        path=("supply",),
        help="ask a computer to install a software release",
        run=run_supply,
        arguments=supply_arguments,
    ),
    Command(
        path=("remove",),
        help="ask a computer to remove a software release",
        run=run_remove,
        arguments=supply_arguments,
    ),
    Command(
        path=("list",),
        help="list the instances requested from this account",
        run=run_list,
        arguments=list_arguments,
        description=(
            "List the instances requested with `slapos request` (or the console) from this account, "
            "as recorded in ~/.slapos/instances.json. Works with any master; no network access."
        ),
    ),
    Command(
        path=("info",),
        help="show an instance: state, partition, parameters, connection parameters, errors",
        run=run_info,
        arguments=info_arguments,
        description=(
            "Show a requested instance, refreshed from the master when it answers (the local record "
            "otherwise). Exit 2 for an unknown instance."
        ),
    ),
]

