"""Helpers shared by `slapos configure local` and `slapos node boot` for a standalone node (a node
whose master is the local proxy): its layout and configuration, the local proxy kept running, and
other `slapos` commands run in-process. Imported only when those commands run.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from slapos.base.config import Config
from slapos.base.errors import SlapOSError, UsageError

from .layout import (
    CLIENT_CONFIG,
    DEFAULT_BUILDOUT_DIRECTORY,
    DEFAULT_CONFIGURATION_DIRECTORY,
    DEFAULT_STANDALONE_ROOT,
)

log = logging.getLogger("slapos.standalone")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def run_slapos(*argv: str) -> int:
    """Run another `slapos` command in this process (same code, no interpreter start). That
    command sets up logging for itself; the caller's logging is given back afterwards."""
    from .main import main

    log.debug("running: slapos %s", " ".join(argv))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return main(list(argv))
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def command_available(*path: str) -> bool:
    from .legacy import find_subparser
    from .main import build_parser, load_commands

    return find_subparser(build_parser(load_commands()), path) is not None


# --------------------------------------------------------------------------------------------
# the local proxy


@dataclass
class LocalProxy:
    config_path: Path
    host: str
    port: int
    pidfile: Path
    log_file: Path

    @classmethod
    def from_config(cls, config: Config) -> LocalProxy | None:
        """The proxy this node's master_url points to, when it is configured here ([slapproxy])."""
        if not config.parser.has_section("slapproxy"):
            return None
        master = urlsplit(config.get("slapos", "master_url"))
        host = config.get("slapproxy", "host", "127.0.0.1")
        port = config.get_int("slapproxy", "port", 8080)
        if master.port != port or (master.hostname or "") not in (LOOPBACK_HOSTS | {host.strip("[]")}):
            return None
        run_dir = Path(config.get_path("slapproxy", "database_uri")).parent
        return cls(
            config_path=Path(config.path),
            host=host,
            port=port,
            pidfile=config.get_path("slapproxy", "pidfile", None) or run_dir / "slapos-proxy.pid",
            log_file=config.get_path("slapproxy", "log_file", None) or run_dir / "slapos-proxy.log",
        )

    def answers(self, timeout: float = 1.0) -> bool:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host.strip("[]")
        try:
            with socket.create_connection((host, self.port), timeout=timeout):
                return True
        except OSError:
            return False

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 30.0) -> int | None:
        """Start the proxy in the background unless something already answers on its port.
        Returns the pid of the started proxy, None when it was already running."""
        if self.answers():
            log.info("proxy on %s:%s is already running", self.host, self.port)
            return None
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--cfg", str(self.config_path)]
        # the proxy writes its own log_file; its console output (start-up errors included) goes here
        output = self.output_file
        with open(output, "ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        self.pidfile.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SlapOSError(
                    f"the proxy stopped at once (exit {process.returncode}): {_tail(output)} "
                    f"(output: {output})"
                )
            if self.answers(timeout=0.5):
                log.info("proxy started on %s:%s (pid %d, log %s)", self.host, self.port, process.pid, self.log_file)
                return process.pid
            time.sleep(0.1)
        raise SlapOSError(f"the proxy did not answer on {self.host}:{self.port} within {timeout:.0f} s "
                          f"(log: {self.log_file})")

    @property
    def output_file(self) -> Path:
        return self.pidfile.with_suffix(".out")

    def command(self) -> str:
        return f"slapos proxy start --cfg {self.config_path}"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text[-lines:]) or "empty log"


# --------------------------------------------------------------------------------------------
# layout and configuration


@dataclass
class Layout:
    standalone: bool
    config_path: Path
    software_root: Path
    instance_root: Path
    state_dir: Path  # pid files, proxy database, computer definition
    log_dir: Path
    computer_id: str
    listen_ip: str
    listen_port: int
    interface_name: str
    partition_number: int
    ipv4_local_network: str

    @property
    def master_url(self) -> str:
        host = f"[{self.listen_ip}]" if ":" in self.listen_ip else self.listen_ip
        return f"http://{host}:{self.listen_port}/"

    @classmethod
    def from_args(cls, args: argparse.Namespace, euid: int | None = None) -> Layout:
        euid = os.geteuid() if euid is None else euid
        standalone = args.root is not None or euid != 0
        common = dict(
            computer_id=args.computer_id,
            listen_ip=args.daemon_listen_ip,
            listen_port=args.daemon_listen_port,
            interface_name=args.interface_name,
            partition_number=args.partition_number,
            ipv4_local_network=args.ipv4_local_network,
        )
        software = _path(getattr(args, "slapos_software_root", None))
        instance = _path(getattr(args, "slapos_instance_root", None))
        if standalone:
            root = Path(os.path.expanduser(args.root or DEFAULT_STANDALONE_ROOT)).resolve()
            config_dir = _path(args.slapos_configuration_directory) or root / "etc"
            state = _path(args.slapos_buildout_directory) or root / "var"
            return cls(True, config_dir / "slapos.cfg", software or root / "software", instance or root / "instance",
                       state, root / "log", **common)
        config_dir = _path(args.slapos_configuration_directory) or Path(DEFAULT_CONFIGURATION_DIRECTORY)
        state = _path(args.slapos_buildout_directory) or Path(DEFAULT_BUILDOUT_DIRECTORY)
        return cls(False, config_dir / "slapos.cfg", software or Path("/opt/slapgrid"),
                   instance or Path("/srv/slapgrid"), state, state / "log", **common)


def _path(value: str | None) -> Path | None:
    return Path(os.path.expanduser(value)).resolve() if value else None


def render_node_config(layout: Layout) -> str:
    """slapos.cfg of a standalone node (node + proxy + client in one file).

    The system layout gives each partition its own user: the proxy then runs with `access =
    credentials` (docs/security-proxy.md), so a tenant cannot act for another partition through it;
    the node credential is in `master_url`, and the file is written 0600 (`config_mode`)."""
    privileged = "false" if layout.standalone else "true"
    master_url = layout.master_url
    if not layout.standalone:
        from slapos.proxy.access import new_credential

        master_url += f"c/{new_credential()}/"
    lines = [
        "# Written by `slapos configure local`. See slapos.cfg.example for every key.",
        "[slapos]",
        f"computer_id = {layout.computer_id}",
        "# the local proxy is the master of this node"
        + ("" if layout.standalone else "; the path carries the node credential: keep this file 0600"),
        f"master_url = {master_url}",
        f"software_root = {layout.software_root}",
        f"instance_root = {layout.instance_root}",
        f"pidfile_software = {layout.state_dir / 'slapgrid-sr.pid'}",
        f"pidfile_instance = {layout.state_dir / 'slapgrid-cp.pid'}",
        f"pidfile_report = {layout.state_dir / 'slapgrid-ur.pid'}",
    ]
    if layout.standalone:
        lines += ["# an ordinary user runs this node: do not require root", "root_check = false"]
    lines += [
        "",
        "[slapformat]",
        f"interface_name = {layout.interface_name}",
        f"partition_amount = {layout.partition_number}",
        "partition_base_name = slappart",
        "user_base_name = slapuser",
        "tap_base_name = slaptap",
        f"computer_xml = {layout.state_dir / 'slapos.xml'}",
        f"log_file = {layout.log_dir / 'slapformat.log'}",
    ]
    if layout.standalone:
        lines += ["# unprivileged: partitions are directories of this user, sharing the loopback addresses"]
    else:
        lines += [f"ipv4_local_network = {layout.ipv4_local_network}"]
    lines += [
        f"alter_user = {privileged}",
        f"alter_network = {privileged}",
        "create_tap = false",
        "create_tun = false",
        "",
        "[slapproxy]",
        f"host = {layout.listen_ip}",
        f"port = {layout.listen_port}",
        f"database_uri = {layout.state_dir / 'proxy.db'}",
        f"log_file = {layout.log_dir / 'slapos-proxy.log'}",
        f"pidfile = {layout.state_dir / 'slapos-proxy.pid'}",
        *([] if layout.standalone else [
            "# partitions run as their own users: every call carries a credential (docs/security-proxy.md)",
            "access = credentials",
        ]),
        "# software_product_list =",
        "#   <product> <software release url>",
        "",
    ]
    return "\n".join(lines)


def config_mode(layout: Layout) -> int:
    """The system layout's configuration holds the node credential: root's only."""
    return 0o644 if layout.standalone else 0o600


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` atomically. The temporary file has a fresh random name (O_EXCL: nothing
    planted beside it is followed or reused) and is 0600 until written, so a key is never
    readable by others, whatever the umask."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def link_client_config(node_config: Path) -> str:
    """~/.slapos/slapos-client.cfg → the node configuration, so `slapos request` finds the proxy."""
    client = Path(os.path.expanduser(CLIENT_CONFIG))
    if client.is_symlink() and Path(os.readlink(client)) == node_config:
        return f"{client} already points to {node_config}"
    if client.exists() or client.is_symlink():
        return (f"{client} exists and was left alone; client commands need --cfg {node_config} "
                f"(or SLAPOS_CLIENT_CONFIGURATION={node_config})")
    client.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    client.symlink_to(node_config)
    return f"{client} → {node_config}"


def give_to(owner: str, layout: Layout) -> None:
    """As root in the standalone layout: buildout never runs as uid 0, so the software and
    partition directories must belong to an ordinary user."""
    import grp
    import pwd

    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        raise UsageError(f"--owner {owner}: no such user") from None
    if user.pw_uid == 0:
        raise UsageError("--owner must be an ordinary user: buildout never runs as root")
    gid = user.pw_gid
    group = grp.getgrgid(gid).gr_name
    paths = [layout.software_root, *sorted(layout.instance_root.glob("slappart*"))]
    for path in paths:
        if path.is_dir():
            os.chown(path, user.pw_uid, gid)
    log.info("software and partition directories given to %s:%s", owner, group)


def print_summary(layout: Layout, config, client_note: str, env_line: str, steps: list[str],
                  cron_installed: bool = False) -> None:
    cfg = layout.config_path
    out = sys.stdout
    out.write(f"Standalone node '{layout.computer_id}' configured ({'standalone' if layout.standalone else 'system'} layout)\n")
    out.write(f"  configuration  {cfg}\n")
    out.write(f"  master         {layout.master_url} (local proxy, database {config.get('slapproxy', 'database_uri')})\n")
    out.write(f"  software       {layout.software_root}\n")
    out.write(f"  partitions     {layout.partition_number} in {layout.instance_root}\n")
    out.write(f"  client config  {client_note}\n")
    if steps:
        out.write("\nStart it:\n")
        for step in steps:
            out.write(f"  {step}\n")
    out.write("\nNext:\n")
    if env_line:
        out.write(f"  {env_line}\n")
    out.write("  slapos supply SOFTWARE_URL            # install a software release on this node\n")
    out.write("  slapos node software --now            # build it\n")
    out.write("  slapos request NAME SOFTWARE_URL      # ask for an instance\n")
    out.write("  slapos node instance --now            # deploy it; slapos info NAME shows it\n")
    if cron_installed:
        return
    out.write("\nPeriodic runs (add them with `crontab -e`, or rerun with --install-cron):\n")
    for line in crontab_lines(cfg, layout.log_dir):
        out.write(f"  {line}\n")


def slapos_executable() -> str:
    """Full path of the `slapos` command (cron's PATH is minimal)."""
    candidate = Path(sys.executable).parent / "slapos"
    return str(candidate) if candidate.exists() else "slapos"


def crontab_lines(cfg: Path, log_dir: Path) -> list[str]:
    slapos = slapos_executable()
    return [
        f"SLAPOS_CONFIGURATION={cfg}",
        f"* * * * *     {slapos} node software --now >> {log_dir}/slapos-node-software.log 2>&1",
        f"* * * * *     {slapos} node instance --now >> {log_dir}/slapos-node-instance.log 2>&1",
        f"* * * * *     {slapos} node collect >> {log_dir}/slapos-node-collect.log 2>&1",
        f"*/10 * * * *  {slapos} node report --now >> {log_dir}/slapos-node-report.log 2>&1",
        f"0 * * * *     {slapos} node format >> {log_dir}/slapos-node-format.log 2>&1",
        f"@reboot       {slapos} node boot >> {log_dir}/slapos-node-boot.log 2>&1",
    ]
