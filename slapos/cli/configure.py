"""`slapos configure local` (a standalone node: this machine, or a user's home, is its own master)
and `slapos configure client` (a configuration for `slapos request`, `supply`, `console`, ...).

Two layouts (both documented in slapos.cfg.example):

* root, without --root: the reference's layout — /etc/opt/slapos/slapos.cfg, software in
  /opt/slapgrid, partitions in /srv/slapgrid, state in /opt/slapos; format creates partition
  users and adds the partition addresses (alter_user / alter_network).
* standalone (--root DIR, the default for a non-root user: ~/slapos): everything below DIR
  (etc/slapos.cfg, software/, instance/, var/, run/, log/), no users and no network changes.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from slapos.base.errors import ConfigError, SlapOSError, UsageError

from .command import Command
from .layout import (
    CLIENT_CONFIG,
    DEFAULT_BUILDOUT_DIRECTORY,
    DEFAULT_CONFIGURATION_DIRECTORY,
    DEFAULT_STANDALONE_ROOT,
)

log = logging.getLogger("slapos.configure")


def local_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", metavar="DIR",
        help=f"standalone layout: everything below DIR, no users or network changes (default for a "
        f"non-root user: {DEFAULT_STANDALONE_ROOT}; root without --root gets the system layout)",
    )
    parser.add_argument(
        "--slapos-configuration-directory", "--slapos_configuration_directory",
        dest="slapos_configuration_directory", metavar="DIR",
        help=f"where slapos.cfg goes (default: {DEFAULT_CONFIGURATION_DIRECTORY}, or ROOT/etc)",
    )
    parser.add_argument(
        "--slapos-buildout-directory", "--slapos_buildout_directory", dest="slapos_buildout_directory",
        metavar="DIR", help=f"state: pid files, proxy database (default: {DEFAULT_BUILDOUT_DIRECTORY}, or ROOT/var)",
    )
    parser.add_argument(
        "--slapos-instance-root", "--slapos_instance_root", dest="slapos_instance_root", metavar="DIR",
        help="where the partitions go (default: /srv/slapgrid, or ROOT/instance)",
    )
    parser.add_argument(
        "--slapos-software-root", "--slapos_software_root", dest="slapos_software_root", metavar="DIR",
        help="where the software releases go (default: /opt/slapgrid, or ROOT/software)",
    )
    parser.add_argument(
        "--install-cron", "--install_cron", dest="install_cron", action="store_true",
        help="install the periodic runs: /etc/cron.d/slapos-node as root, your crontab otherwise "
             "(idempotent; other lines are kept)",
    )
    parser.add_argument(
        "--install-daemon", "--install_daemon", dest="install_daemon", action="store_true",
        help="as root: run the node as `slapos node run` under systemd (/etc/systemd/system/slapos-node.service) "
             "instead of cron; the cron block keeps only its @reboot line (docs/daemon.md)",
    )
    parser.add_argument("--enable-shacache-proxy", "--enable_shacache_proxy", dest="_ignored_shacache",
                        action="store_true",
                        help="accepted for compatibility, no effect: the local proxy always serves a binary cache")
    parser.add_argument("--computer-id", default="local_computer", help="computer reference (default: local_computer)")
    parser.add_argument("--partition-number", type=int, default=10, metavar="N", help="partitions (default: 10)")
    parser.add_argument("--interface-name", default="lo", help="interface of the partition addresses (default: lo)")
    parser.add_argument(
        "--ipv4-local-network", default="10.0.0.0/16", metavar="CIDR",
        help="partition IPv4 network of the system layout (default: 10.0.0.0/16)",
    )
    parser.add_argument("--daemon-listen-ip", default="127.0.0.1", metavar="IP",
                        help="address of the local proxy (default: 127.0.0.1)")
    parser.add_argument("--daemon-listen-port", type=int, default=8080, metavar="PORT",
                        help="port of the local proxy (default: 8080)")
    parser.add_argument("--owner", metavar="USER",
                        help="as root with --root: give software and partitions to USER (buildout never runs as root)")
    parser.add_argument("--force", action="store_true", help="rewrite an existing slapos.cfg")
    parser.add_argument(
        "--no-start", action="store_true",
        help="only write the configuration; print the commands that format and start the node",
    )


def run_local(args: argparse.Namespace) -> int:
    from slapos.base.config import Config

    from .standalone import (
        Layout,
        LocalProxy,
        command_available,
        config_mode,
        give_to,
        link_client_config,
        print_summary,
        render_node_config,
        run_slapos,
        write_file,
    )

    if args.partition_number < 1:
        raise UsageError("--partition-number must be at least 1")
    if not 0 < args.daemon_listen_port < 65536:
        raise UsageError("--daemon-listen-port must be a TCP port (1-65535)")
    if args.install_cron and args.install_daemon:
        raise UsageError("--install-cron and --install-daemon exclude each other: the node runs by cron or as a daemon")
    if args.install_daemon and os.geteuid() != 0:
        raise UsageError("--install-daemon installs a systemd unit and needs root; as a user, run `slapos node run` "
                         "under your own supervisor (`slapos node run --print-supervisord-program`)")
    layout = Layout.from_args(args)
    if args.owner and not (layout.standalone and os.geteuid() == 0):
        raise UsageError("--owner only applies when root uses the standalone layout (--root)")
    cfg = layout.config_path
    if cfg.exists() and not args.force:
        log.info("keeping the existing %s (use --force to rewrite it)", cfg)
    else:
        write_file(cfg, render_node_config(layout), config_mode(layout))
        log.info("wrote %s", cfg)
    config = Config(cfg)
    for directory in (layout.state_dir, layout.log_dir, layout.software_root, layout.instance_root):
        directory.mkdir(parents=True, exist_ok=True)
    client_note = link_client_config(cfg)
    proxy = LocalProxy.from_config(config)
    env_line = "" if cfg == Path(DEFAULT_CONFIGURATION_DIRECTORY) / "slapos.cfg" else f"export SLAPOS_CONFIGURATION={cfg}"
    steps: list[str] = []
    if args.no_start:
        steps = [
            f"{proxy.command()} &" if proxy else "# start the master",
            f"slapos node format --cfg {cfg} --now",
            f"slapos node supervisord --cfg {cfg}",
        ]
    else:
        if proxy is not None:
            proxy.start()
        code = run_slapos("node", "format", "--cfg", str(cfg), "--now", *(["--debug"] if args.debug else []))
        if code != 0:
            raise SlapOSError(f"formatting failed (exit {code}); fix the cause above, then run "
                              f"`slapos node format --cfg {cfg} --now`", exit_code=code)
        if layout.standalone and os.geteuid() == 0:
            if args.owner:
                give_to(args.owner, layout)
            else:
                log.warning("running as root with --root: software and partitions belong to root, and buildout "
                            "never runs as root; rerun with --owner USER")
        if command_available("node", "supervisord"):
            code = run_slapos("node", "supervisord", "--cfg", str(cfg))
            if code != 0:
                log.warning("supervisord did not start (exit %d): run `slapos node supervisord --cfg %s`", code, cfg)
        else:
            steps.append(f"slapos node supervisord --cfg {cfg}")
    print_summary(layout, config, client_note, env_line, steps,
                  cron_installed=args.install_cron or args.install_daemon)
    if args.install_cron:
        from . import cron
        from .standalone import crontab_lines

        where = cron.install(crontab_lines(cfg, layout.log_dir))
        print(f"\nperiodic runs installed in {where}")
    if args.install_daemon:
        from .service_files import install_daemon

        for line in install_daemon(cfg, layout.log_dir, start=not args.no_start):
            print(line)
    return 0


# --------------------------------------------------------------------------------------------
# configure client


def client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--master-url", "--master_url", dest="master_url", required=True, metavar="URL",
                        help="SLAP URL of the master (e.g. https://slap.example.com/)")
    parser.add_argument("--master-url-web", "--master_url_web", dest="master_url_web", metavar="URL",
                        help="web site of the master, to fetch your certificate with --token (default: "
                             "--master-url, which is right for a slapnode proxy)")
    parser.add_argument("--master-ca-file", "--master_ca_file", dest="master_ca_file", metavar="FILE",
                        help="CA certificate that verifies the master (a slapnode proxy's ca.crt); used for the "
                             "token exchange and written as master_ca_file")
    parser.add_argument("--token", help="one-time token from the master's web site (fetches your certificate)")
    parser.add_argument("--cert-file", "--cert_file", dest="cert_file", metavar="FILE", help="your user certificate")
    parser.add_argument("--key-file", "--key_file", dest="key_file", metavar="FILE", help="your user key")
    parser.add_argument("--computer-id", metavar="ID", help="default computer for slapos supply/remove")
    parser.add_argument("--output", "-o", default=CLIENT_CONFIG, metavar="FILE",
                        help=f"where to write it (default: {CLIENT_CONFIG})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def fetch_certificate(master_url_web: str, token: str, timeout: float = 30.0,
                      ca_file: str | None = None) -> tuple[str, str]:
    """Ask the master's web site for the user's certificate and key (`Person_getCertificate`,
    authenticated by the `X-Access-Token` header; a SlapOS Master's and our TLS proxy's answer
    alike); returns (certificate, key) as PEM text."""
    from .token_exchange import exchange

    url = master_url_web.rstrip("/") + "/Person_getCertificate"
    return exchange(url, token, lambda status, said, body: (
        f"{url} refused the token (HTTP {status}): ask the master for a new one"
        + (f" (master: {said})" if said else "")),
        timeout=timeout, ca_file=ca_file)


def run_client(args: argparse.Namespace) -> int:
    from slapos.slap.connection import normalize_master_url

    from .standalone import write_file

    output = Path(os.path.expanduser(args.output))
    if output.exists() and not args.force:
        raise UsageError(f"{output} exists: use --force to overwrite it")
    master_url = normalize_master_url(args.master_url)
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    if args.token and (args.cert_file or args.key_file):
        raise UsageError("give either --token or --cert-file/--key-file, not both")
    cert_file = Path(args.cert_file).expanduser().resolve() if args.cert_file else None
    key_file = Path(args.key_file).expanduser().resolve() if args.key_file else None
    ca_file = Path(args.master_ca_file).expanduser().resolve() if args.master_ca_file else None
    for path in (cert_file, key_file, ca_file):
        if path is not None and not path.is_file():
            raise UsageError(f"{path} does not exist")
    if args.token:
        cert_file = output.parent / "client.crt"
        key_file = output.parent / "client.key"
        for path in (cert_file, key_file):  # checked before the token is spent
            if path.exists() and not args.force:
                raise UsageError(f"{path} exists: use --force to overwrite it (or -o elsewhere)")
        certificate, key = fetch_certificate(args.master_url_web or args.master_url, args.token,
                                             ca_file=str(ca_file) if ca_file else None)
        if not output.parent.exists():  # it will hold your key: nobody else lists it
            output.parent.mkdir(mode=0o700, parents=True)
        write_file(key_file, key, 0o600)  # 0600 from its creation (standalone.write_file)
        write_file(cert_file, certificate, 0o600)
        log.info("wrote your certificate %s and key %s", cert_file, key_file)
    if master_url.startswith("https:") and cert_file is None:
        raise UsageError("an https master needs your certificate: --token (with --master-url-web) "
                         "or --cert-file and --key-file")
    lines = ["# Written by `slapos configure client`.", "[slapos]", f"master_url = {master_url}"]
    if args.computer_id:
        lines.append(f"computer_id = {args.computer_id}")
    if ca_file:
        lines.append(f"master_ca_file = {ca_file}")
    lines += ["", "[slapconsole]"]
    if cert_file:
        lines += [f"cert_file = {cert_file}", f"key_file = {key_file}"]
    lines += ["# software_product_list =", "#   <product> <software release url>", ""]
    write_file(output, "\n".join(lines), 0o600)
    try:
        from slapos.base.config import Config
        from slapos.client.settings import ClientSettings

        ClientSettings.from_config(Config(output))
    except ConfigError as e:  # should not happen: we wrote it; say what is wrong rather than leave it
        raise SlapOSError(f"wrote {output} but it does not load: {e}") from None
    print(f"wrote {output}")
    if output != Path(os.path.expanduser(CLIENT_CONFIG)):
        print(f"use it with --cfg {output}, or export SLAPOS_CLIENT_CONFIGURATION={output}")
    return 0


COMMANDS = [
    Command(
        path=("configure", "local"),
        help="make this machine (or your home, when not root) a standalone node with its own master",
        run=run_local,
        arguments=local_arguments,
        description=(
            "Write slapos.cfg (node, local proxy and client in one file), start the proxy, format the "
            "partitions, start supervisord, and print the next commands. As an ordinary user (or with "
            "--root DIR) everything lives below one directory and nothing needs root."
        ),
    ),
    Command(
        path=("configure", "client"),
        help="write a client configuration (~/.slapos/slapos-client.cfg) for a master",
        run=run_client,
        arguments=client_arguments,
        description=(
            "Write the configuration of slapos request, supply, service and console. With --token, fetch "
            "your certificate first (Person_getCertificate, at a SlapOS Master's web site or at a slapnode "
            "TLS proxy; the token of `slapos proxy token --user NAME`) and keep it beside the configuration, "
            "the key 0600 from its creation. Nothing existing is overwritten without --force."
        ),
    ),
]
