"""`slapos console`: a Python shell connected to the master, or a script run with the same names.

Names available: `slap` (a connected `slapos.slap.slap`), `request(...)` (OpenOrder.request, also
recorded for `slapos list`), `supply(...)`, `product` (`product.<name>` → URL of a software
release), `master_url` and `computer_id`. The plain shell has readline completion and a history
file (`~/.slapos/console_history`); IPython or bpython are used when installed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from slapos.base.errors import SlapOSError, UsageError

from .command import Command, add_cfg_argument

HISTORY_FILE = "~/.slapos/console_history"
SHELLS = ("ipython", "bpython", "python")


def console_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_argument(parser, client=True)
    parser.add_argument(
        "-u", "--master-url", "--master_url", dest="master_url", metavar="URL",
        help="master to use instead of master_url of the configuration",
    )
    parser.add_argument("-k", "--key-file", "--key_file", dest="key_file", metavar="FILE",
                        help="your user key (default: [slapconsole] key_file)")
    parser.add_argument("-c", "--cert-file", "--cert_file", dest="cert_file", metavar="FILE",
                        help="your user certificate (default: [slapconsole] cert_file)")
    shell = parser.add_mutually_exclusive_group()
    shell.add_argument("-i", "--ipython", dest="shell", action="store_const", const="ipython", help="use IPython")
    shell.add_argument("-b", "--bpython", dest="shell", action="store_const", const="bpython", help="use bpython")
    shell.add_argument(
        "-p", "--python", dest="shell", action="store_const", const="python",
        help="use the plain Python shell (default when neither IPython nor bpython is installed)",
    )
    parser.add_argument("script", nargs="?", metavar="SCRIPT", help="run this Python file instead of a shell")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARG", help="arguments given to SCRIPT")


def make_namespace(settings) -> dict[str, Any]:
    """The names a console session or script sees."""
    from slapos.client.instance import RequestSpec, record_request, status_from_partition
    from slapos.client.product import ProductCollection, resolve_software_url
    from slapos.client.registry import InstanceRegistry

    connection = settings.connect()
    where = f"[slapos]/[slapconsole] of {settings.config.path}"

    def _url(software_release: str) -> str:
        return resolve_software_url(software_release, settings.product_list, lambda: connection, where)

    def request(software_release, partition_reference, partition_parameter_kw=None, software_type=None,
                filter_kw=None, state=None, shared=False):
        """Request (or update) an instance; returns its ComputerPartition. Same arguments as
        OpenOrder.request; software_release may be a product alias."""
        url = _url(software_release)
        partition = connection.registerOpenOrder().request(
            url, partition_reference, partition_parameter_kw=partition_parameter_kw,
            software_type=software_type, filter_kw=filter_kw, state=state, shared=shared,
        )
        spec = RequestSpec(partition_reference, url, software_type, state, bool(shared),
                           dict(filter_kw or {}), dict(partition_parameter_kw or {}))
        try:
            status = status_from_partition(partition, spec)
        except SlapOSError:  # not allocated yet: recorded without a partition
            status = None
        record_request(InstanceRegistry(), settings.master_url, spec, status)
        return partition

    def supply(software_release, computer_guid=None, state="available"):
        """Ask a computer (default: computer_id of the configuration) to install or remove a release."""
        computer = computer_guid or settings.computer_id
        if not computer:
            raise UsageError("supply() needs computer_guid (no computer_id in the configuration)")
        return connection.registerSupply().supply(_url(software_release), computer_guid=computer, state=state)

    return {
        "__name__": "__console__",
        "__doc__": None,
        "slap": connection,
        "request": request,
        "supply": supply,
        "product": ProductCollection(settings.product_list, lambda: connection, where),
        "master_url": settings.master_url,
        "computer_id": settings.computer_id,
    }


def banner(settings) -> str:
    return (
        f"slapos console, master {settings.master_url}\n"
        "names: slap, request(), supply(), product, master_url, computer_id  (Ctrl-D to quit)"
    )


def run_script(path: str, script_args: list[str], namespace: dict[str, Any]) -> int:
    import runpy

    script = Path(os.path.expanduser(path))
    if not script.is_file():
        raise UsageError(f"script {script} not found")
    saved_argv = sys.argv
    sys.argv = [str(script), *script_args]
    try:
        runpy.run_path(str(script), init_globals={k: v for k, v in namespace.items() if k != "__name__"},
                       run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
    return 0


def _setup_readline(namespace: dict[str, Any]) -> Path | None:
    """Tab completion on the console's names and a persistent history; None when unavailable."""
    try:
        import readline
        import rlcompleter
    except ImportError:
        return None
    readline.set_completer(rlcompleter.Completer(namespace).complete)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    history = Path(os.path.expanduser(HISTORY_FILE))
    # first session, or unreadable: start with an empty history
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(1000)
    return history


def _save_history(history: Path | None) -> None:
    if history is None:
        return
    import readline

    # a read-only home must not turn a clean exit into an error
    with contextlib.suppress(OSError):
        history.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        readline.write_history_file(history)
        os.chmod(history, 0o600)


def interact(shell: str | None, namespace: dict[str, Any], text: str) -> int:
    if shell is None:
        shell = next(
            (name for name in ("ipython", "bpython") if importlib.util.find_spec(
                "IPython" if name == "ipython" else name) is not None),
            "python",
        )
    if shell == "ipython":
        try:
            from IPython import start_ipython
        except ImportError:
            raise SlapOSError("IPython is not installed: pip install ipython, or use -p for the plain shell") from None
        print(text)
        start_ipython(argv=["--no-banner"], user_ns=namespace)
        return 0
    if shell == "bpython":
        try:
            import bpython
        except ImportError:
            raise SlapOSError("bpython is not installed: pip install bpython, or use -p for the plain shell") from None
        bpython.embed(locals_=namespace, banner=text)
        return 0
    import code

    history = _setup_readline(namespace)
    try:
        code.InteractiveConsole(namespace).interact(banner=text, exitmsg="")
    finally:
        _save_history(history)
    return 0


def run_console(args: argparse.Namespace) -> int:
    from slapos.client.settings import ClientSettings

    settings = ClientSettings.load(args.cfg, master_url=args.master_url, key_file=args.key_file,
                                   cert_file=args.cert_file)
    namespace = make_namespace(settings)
    if args.script:
        return run_script(args.script, args.script_args, namespace)
    return interact(args.shell, namespace, banner(settings))


COMMANDS = [
    Command(
        path=("console",),
        help="Python console (or script) connected to the master, with slap, request, supply, product",
        run=run_console,
        arguments=console_arguments,
        description=(
            "Interactive Python console with `slap` (connected), `request()`, `supply()` and `product` "
            "(product.<name> is the URL of a software release). With SCRIPT, run that file with the "
            "same names and exit with its status."
        ),
    ),
]
