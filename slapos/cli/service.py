"""`slapos service list|info` and `slapos computer list|info|token`: the reference's commands,
answered by the master's REST (HATEOAS) API — our proxy's (only the caller's own instances and
computers) or a SlapOS master's. `slapos list` / `slapos info` stay: they read the local record
of what this account requested and work with any master, even offline."""
from __future__ import annotations

import argparse
import logging

from .command import Command, add_cfg_argument, add_format_argument

log = logging.getLogger("slapos.client")


def _navigator(args: argparse.Namespace):
    from slapos.client.hateoas import HateoasError, Navigator
    from slapos.client.settings import ClientSettings

    settings = ClientSettings.load(args.cfg)
    rest = settings.config.get("slapconsole", "master_rest_url", None) or settings.config.get(
        "slapos", "master_rest_url", None)
    if not rest:
        connection = settings.connect()
        try:
            rest = connection.getHateoasUrl()
        finally:
            connection.close()
    if not rest:
        raise HateoasError(f"master {settings.master_url} has no REST (HATEOAS) API: set [slapos] master_rest_url "
                           f"in {settings.config.path} if it has one elsewhere")

    def text(path):
        return str(path) if path else None

    return Navigator(rest, text(settings.key_file), text(settings.cert_file), text(settings.master_ca_file))


def _common(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser, client=True)
    add_format_argument(parser)


def _reference(parser: argparse.ArgumentParser, what: str) -> None:
    _common(parser)
    parser.add_argument("reference", metavar="NAME" if what == "instance" else "ID", help=f"the {what}")


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    _reference(parser, "instance")
    parser.add_argument("--news", action="store_true",
                        help="add the instance's status (accepted for compatibility: always 'unsupported' here, "
                             "as the reference shows for a master without monitoring news)")


def run_service_list(args: argparse.Namespace) -> int:
    from slapos.client import output

    rows = _navigator(args).instance_trees()
    services = {str(r.get("title")): r.get("url_string") for r in rows}
    if args.format == "json":
        output.dump_json(services)
    elif not services:
        print("no instance on this master for you")
    else:
        output.table(["NAME", "SOFTWARE"], sorted(services.items()))
    return 0


def run_service_info(args: argparse.Namespace) -> int:
    from slapos.client import hateoas, output

    doc = _navigator(args).instance(args.reference)
    info = {
        "software-url": doc.get("url_string"),
        "software-type": doc.get("source_reference"),
        "shared": bool(doc.get("root_slave")),
        "requested-state": doc.get("slap_state"),
        "instance-parameters": hateoas.instance_parameters(doc.get("text_content")),
        "connection-parameters": hateoas.connection_parameters(doc.get("connection_parameter_list")),
    }
    if args.news:  # the reference's monitoring news: a SlapOS master's, which our proxy does not keep
        info["status"] = "unsupported"
    if args.format == "json":
        output.dump_json(info)
        return 0
    output.block([(key, value) for key, value in info.items() if not isinstance(value, dict)])
    for key in ("instance-parameters", "connection-parameters"):
        print(f"{key}:" if info[key] else f"{key}: none")
        if info[key]:
            output.block(sorted(info[key].items()), indent="  ")
    return 0


def run_computer_list(args: argparse.Namespace) -> int:
    from slapos.client import output

    rows = _navigator(args).computers()
    if args.format == "json":
        output.dump_json({str(r.get("reference")): r.get("title") for r in rows})
    elif not rows:
        print("no computer on this master for you")
    else:
        output.table(["REFERENCE", "TITLE"], sorted([r.get("reference"), r.get("title")] for r in rows))
    return 0


def run_computer_info(args: argparse.Namespace) -> int:
    from slapos.client import output

    doc = _navigator(args).computer(args.reference)
    doc.pop("portal_type", None)
    if args.format == "json":
        output.dump_json(doc)
    else:
        output.block(sorted(doc.items()))
    return 0


def token_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser, client=True)
    parser.add_argument("reference", nargs="?", metavar="ID",
                        help="the computer the token is for (our proxy binds the token to it; "
                             "without it, the computer registering with the token names itself)")


def run_computer_token(args: argparse.Namespace) -> int:
    token = _navigator(args).token(args.reference)
    print(token)
    log.info("one-time token%s: give it to `slapos node register`; it expires (proxy: in 1 hour)",
             f" for computer {args.reference}" if args.reference else "")
    return 0


_REST = ("Asks the master's REST (HATEOAS) API: [slapos] master_rest_url, else the URL the master gives "
         "(getHateoasUrl). Our proxy answers only with your own records: you are the Unix user of the "
         "connection on loopback, or your client certificate.")

COMMANDS = [
    Command(path=("service", "list"), help="list your instances as the master knows them (reference's name)",
            description="List your root instances and their software release, from the master. " + _REST,
            run=run_service_list, arguments=_common),
    Command(path=("service", "info"), help="show one of your instances as the master knows it",
            description="Software release, type, state, parameters and connection parameters of an "
                        "instance, from the master; exit 2 if there is no such instance of yours. " + _REST,
            run=run_service_info, arguments=_info_arguments),
    Command(path=("computer", "list"), help="list your computers", description="Your computers. " + _REST,
            run=run_computer_list, arguments=_common),
    Command(path=("computer", "info"), help="show one of your computers",
            description="A computer's reference, title and partitions; exit 2 if it is not yours. " + _REST,
            run=run_computer_info, arguments=lambda p: _reference(p, "computer")),
    Command(path=("computer", "token"), help="get a one-time token to register a computer (slapos node register)",
            description="Print a one-time, expiring token. Our proxy stores only its hash and refuses a "
                        "computer that is not yours. " + _REST,
            run=run_computer_token, arguments=token_arguments),
]
