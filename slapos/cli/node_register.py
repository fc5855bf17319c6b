"""`slapos node register NAME --token TOKEN`: join a master with a one-time token (docs/join.md).

The exchange is the reference's: POST `title=NAME` to `<master-url-web>/Person_requestComputer`
with the token in an `X-Access-Token` header; the master answers JSON `{"certificate": PEM,
"key": PEM}`. The computer id is read from the parsed certificate (its subject's common name).

Where the reference is careless we are not: the key is created 0600 (never readable, not even
for a moment), no existing directory's mode is changed, a former configuration is kept under a
timestamped name, every path written follows the options, and `--dry-run` asks nothing of the
master and writes nothing.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from slapos.base.errors import ConfigError, SlapOSError, UsageError

from .command import Command

log = logging.getLogger("slapos")

DEFAULT_CFG = "/etc/opt/slapos/slapos.cfg"
DEFAULT_MASTER_URL = "https://slap.vifib.com"
DEFAULT_MASTER_URL_WEB = "https://panel.rapid.space"
# path prefixes of slapos.cfg.example, and the option each follows
TEMPLATE_CONFIG_DIR = "/etc/opt/slapos"
TEMPLATE_STATE_DIR = "/opt/slapos"
TEMPLATE_SOFTWARE_ROOT = "/opt/slapgrid"
TEMPLATE_INSTANCE_ROOT = "/srv/slapgrid"
_KEY_LINE = re.compile(r"^#?\s*([A-Za-z0-9_.-]+)\s*=")
_SECTION = re.compile(r"^\[([^\]]+)\]\s*$")


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node_name", metavar="NAME", help="the name of this computer at the master")
    parser.add_argument("--token", help="one-time token from the master (`slapos computer token`, or its web site)")
    parser.add_argument("--cfg", metavar="FILE", default=None,
                        help=f"configuration file to write (default: $SLAPOS_CONFIGURATION, then {DEFAULT_CFG}); "
                             "the certificate and key go to ssl/ beside it")
    parser.add_argument("--master-url", "--master_url", dest="master_url", default=DEFAULT_MASTER_URL, metavar="URL",
                        help=f"SLAP URL of the master, written into slapos.cfg (default: {DEFAULT_MASTER_URL})")
    parser.add_argument("--master-url-web", "--master_url_web", dest="master_url_web", default=None,
                        metavar="URL", help="web URL of the master, where the token is exchanged for the "
                                            "computer's certificate (default: --master-url when it is given, "
                                            f"else {DEFAULT_MASTER_URL_WEB})")
    parser.add_argument("--master-ca-file", "--master_ca_file", dest="master_ca_file", metavar="FILE",
                        help="CA certificate verifying the master (written into slapos.cfg; default: the system CAs)")
    parser.add_argument("--interface-name", "--interface_name", dest="interface_name", default="lo",
                        help="interface receiving the partition addresses (default: lo)")
    parser.add_argument("--partition-number", "--partition_number", dest="partition_number", type=int, default=10,
                        metavar="N", help="number of partitions (default: 10)")
    parser.add_argument("--ipv4-local-network", "--ipv4_local_network", dest="ipv4_local_network",
                        default="10.0.0.0/16", metavar="CIDR",
                        help="private IPv4 network of the partitions (default: 10.0.0.0/16)")
    parser.add_argument("--software-root", "--software_root", dest="software_root", default=TEMPLATE_SOFTWARE_ROOT,
                        metavar="DIR", help=f"where software releases are built (default: {TEMPLATE_SOFTWARE_ROOT})")
    parser.add_argument("--instance-root", "--instance_root", dest="instance_root", default=TEMPLATE_INSTANCE_ROOT,
                        metavar="DIR", help=f"where partitions live (default: {TEMPLATE_INSTANCE_ROOT})")
    parser.add_argument("--state-dir", "--state_dir", dest="state_dir", default=TEMPLATE_STATE_DIR, metavar="DIR",
                        help=f"lock files, logs and the computer definition (default: {TEMPLATE_STATE_DIR})")
    parser.add_argument("--create-tap", "-t", "--create_tap", dest="create_tap", action="store_true",
                        help="a tap interface per partition (virtual machines; the interface must be a bridge)")
    parser.add_argument("--dry-run", "-n", "--dry_run", dest="dry_run", action="store_true",
                        help="say what would be done: ask nothing of the master, write nothing")


@dataclass
class Plan:
    """Where everything goes, from the options."""

    config: Path
    ssl_dir: Path
    key_file: Path
    cert_file: Path
    partition_pki: Path
    state_dir: Path
    settings: dict[tuple[str, str], str]
    prefixes: list[tuple[str, str]]


def make_plan(args: argparse.Namespace) -> Plan:
    cfg = args.cfg or os.environ.get("SLAPOS_CONFIGURATION") or DEFAULT_CFG
    config = Path(os.path.abspath(os.path.expanduser(cfg)))
    ssl_dir = config.parent / "ssl"
    software_root = Path(os.path.abspath(os.path.expanduser(args.software_root)))
    instance_root = Path(os.path.abspath(os.path.expanduser(args.instance_root)))
    state_dir = Path(os.path.abspath(os.path.expanduser(args.state_dir)))
    if args.partition_number < 1:
        raise UsageError("--partition-number must be at least 1")
    import ipaddress

    try:
        ipaddress.ip_network(args.ipv4_local_network, strict=False)
    except ValueError:
        raise UsageError(f"--ipv4-local-network {args.ipv4_local_network!r} is not a network (e.g. 10.0.0.0/16)") \
            from None
    if args.master_url_web is None:
        # a token meant for the master the user named must never travel to the public one
        args.master_url_web = DEFAULT_MASTER_URL_WEB if args.master_url == DEFAULT_MASTER_URL else args.master_url
    for name, value in (("--master-url", args.master_url), ("--master-url-web", args.master_url_web)):
        if not re.match(r"^https?://[^\s/]", value or ""):
            raise UsageError(f"{name} {value!r} is not an http(s) URL")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@ -]{0,127}$", args.node_name):
        raise UsageError(f"node name {args.node_name!r}: letters, digits, space, '.', '_', '-' and '@' only "
                         "(at most 128 characters)")
    plan = Plan(
        config=config, ssl_dir=ssl_dir, key_file=ssl_dir / "computer.key", cert_file=ssl_dir / "computer.crt",
        partition_pki=ssl_dir / "partition_pki", state_dir=state_dir, settings={}, prefixes=[])
    s = "slapos"
    plan.settings = {
        (s, "master_url"): args.master_url,
        (s, "key_file"): str(plan.key_file),
        (s, "cert_file"): str(plan.cert_file),
        (s, "certificate_repository_path"): str(plan.partition_pki),
        (s, "software_root"): str(software_root),
        (s, "instance_root"): str(instance_root),
        ("slapformat", "interface_name"): args.interface_name,
        ("slapformat", "partition_amount"): str(args.partition_number),
        ("slapformat", "ipv4_local_network"): args.ipv4_local_network,
        ("slapformat", "create_tap"): "true" if args.create_tap else "false",
    }
    if args.master_ca_file:
        plan.settings[(s, "master_ca_file")] = str(Path(os.path.expanduser(args.master_ca_file)).resolve())
    # longest first: /opt/slapos must not catch /opt/slapgrid and the like
    plan.prefixes = sorted([(TEMPLATE_CONFIG_DIR, str(config.parent)), (TEMPLATE_STATE_DIR, str(state_dir)),
                            (TEMPLATE_SOFTWARE_ROOT, str(software_root)),
                            (TEMPLATE_INSTANCE_ROOT, str(instance_root))], key=lambda p: -len(p[0]))
    return plan


# -- the master ---------------------------------------------------------------------------------

def request_computer(master_url_web: str, name: str, token: str, ca_file: str | None = None,
                     timeout: float = 60.0) -> tuple[str, str]:
    """Exchange the token for the computer's (certificate, key), PEM text; one clear error otherwise."""
    from .token_exchange import exchange

    def refusal(status: int, said: str, body: bytes) -> str:
        if "Certificate still active" in body.decode("utf-8", "replace"):
            return (f"the node name {name!r} is already in use at the master: choose another name, or revoke "
                    f"its certificate to replace that node (master: {said})")
        if status == 403:
            return f"the master refused the token (HTTP 403: {said}): check it, or ask for a new one"
        return f"{url} answered HTTP {status}: {said or 'no reason given'}"

    url = master_url_web.rstrip("/") + "/Person_requestComputer"
    return exchange(url, token, refusal, fields={"title": name}, timeout=timeout, ca_file=ca_file)


def computer_id_of(certificate: str, key: str) -> str:
    """The computer id: the common name of the certificate's subject (COMP-1234 at a SlapOS master).
    The key must be the certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(certificate.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SlapOSError("the master's certificate is not a PEM X.509 certificate") from None
    try:
        private = serialization.load_pem_private_key(key.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise SlapOSError("the master's key is not an unencrypted PEM private key") from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, raw) != cert.public_key().public_bytes(der, raw):
        raise SlapOSError("the master's key does not belong to its certificate")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not str(names[0].value).strip():
        raise SlapOSError(f"the master's certificate names no computer (subject {cert.subject.rfc4514_string()})")
    computer_id = str(names[0].value).strip()
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$", computer_id):
        raise SlapOSError(f"the master's certificate names an unusable computer id {computer_id[:80]!r}")
    return computer_id


# -- the configuration --------------------------------------------------------------------------

def template_path() -> Path:
    """slapos.cfg.example: installed beside the package's data (share/slapnode), or the source tree's."""
    candidates = [Path(sys.prefix) / "share" / "slapnode" / "slapos.cfg.example",
                  Path(__file__).resolve().parents[2] / "slapos.cfg.example"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SlapOSError("slapos.cfg.example is not installed (looked in " + ", ".join(map(str, candidates)) + ")")


def render(template: str, plan: Plan) -> str:
    """The template with our settings on the first (possibly commented) line of each key in its
    section, and every template path prefix moved where the options say."""
    pending = dict(plan.settings)
    section = ""
    out: list[str] = []
    for line in template.splitlines():
        match = _SECTION.match(line)
        if match:
            section = match.group(1).strip()
        else:
            key_match = _KEY_LINE.match(line)
            key = (section, key_match.group(1)) if key_match else None
            if key in pending:
                line = f"{key[1]} = {pending.pop(key)}"
            elif key_match:
                for old, new in plan.prefixes:
                    line = re.sub(rf"(?<![\w/.-]){re.escape(old)}(?=/|$|\s)", new, line)
        out.append(line)
    text = "# Written by `slapos node register` from slapos.cfg.example.\n" + "\n".join(out) + "\n"
    for (section, key), value in pending.items():  # keys the template does not show
        text = re.sub(rf"^\[{re.escape(section)}\]\s*$", f"[{section}]\n{key} = {value}", text, count=1, flags=re.M)
    return text


def make_dirs(path: Path, mode: int) -> None:
    """Create the missing directories of `path` with `mode`; existing ones are left as they are."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        os.mkdir(directory, mode)
        os.chmod(directory, mode)  # the umask may have taken bits the mode needs (never adds any)


def write_new(path: Path, text: str, mode: int) -> None:
    """Write a file that is `mode` from the moment it exists (a temporary file created with O_EXCL,
    then renamed over the target)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits of `mode`; it never adds any
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keep_former(paths: list[Path], stamp: str) -> list[Path]:
    """Rename the existing files among `paths` to `<name>.<stamp>` (modes kept: a key stays 0600)."""
    kept = []
    for path in paths:
        if path.exists() or path.is_symlink():
            target = path.with_name(f"{path.name}.{stamp}")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"{path.name}.{stamp}.{n}")
            os.rename(path, target)
            kept.append(target)
    return kept


def next_steps(config: Path) -> list[str]:
    return [
        f"slapos node format --cfg {config} --now   # create the partitions and tell the master",
        f"slapos node software --cfg {config}        # then periodically (cron): software,",
        f"slapos node instance --cfg {config}        # instances",
        f"slapos node report --cfg {config}          # and reports (see docs/join.md)",
    ]


def run(args: argparse.Namespace) -> int:
    if not args.token:
        raise UsageError("--token is required: ask the master for a one-time token (slapos computer token)")
    plan = make_plan(args)
    template = template_path().read_text(encoding="utf-8")
    if args.dry_run:
        print("dry run: nothing asked of the master, nothing written. `slapos node register` would:")
        print(f"  exchange the token at {args.master_url_web.rstrip('/')}/Person_requestComputer "
              f"for the certificate of {args.node_name!r}")
        print(f"  write the key {plan.key_file} (0600) and the certificate {plan.cert_file}")
        print(f"  write {plan.config} from {template_path()}"
              + (" (the former one kept as slapos.cfg.<time>)" if plan.config.exists() else ""))
        for (section, key), value in sorted(plan.settings.items()):
            print(f"    [{section}] {key} = {value}")
        print("then run:")
        for line in next_steps(plan.config):
            print("  " + line)
        return 0
    for directory in (plan.config.parent, plan.ssl_dir):  # fail before spending the token
        probe = directory
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise SlapOSError(f"cannot write in {probe}: run as root, or choose another place with --cfg")
    certificate, key = request_computer(args.master_url_web, args.node_name, args.token, args.master_ca_file)
    computer_id = computer_id_of(certificate, key)
    plan.settings[("slapos", "computer_id")] = computer_id
    text = render(template, plan)
    _check(text, plan)
    make_dirs(plan.config.parent, 0o755)
    # traversable, not listable: each partition's user reaches its own 0600 files in partition_pki
    make_dirs(plan.ssl_dir, 0o711)
    make_dirs(plan.partition_pki, 0o711)
    # the state directory holds the lock files, the computer definition and the logs the written
    # configuration names: the next commands printed below must find them
    make_dirs(plan.state_dir, 0o755)
    make_dirs(plan.state_dir / "log", 0o750)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = keep_former([plan.config, plan.key_file, plan.cert_file], stamp)
    write_new(plan.key_file, key, 0o600)
    write_new(plan.cert_file, certificate, 0o644)
    write_new(plan.config, text, 0o600)
    for path in kept:
        log.info("kept the former %s", path)
    print(f"registered {args.node_name!r} as computer {computer_id}; wrote {plan.config}, "
          f"key {plan.key_file} (0600), certificate {plan.cert_file}")
    if kept:
        print("former files kept: " + ", ".join(map(str, kept)))
    print("next:")
    for line in next_steps(plan.config):
        print("  " + line)
    return 0


def _check(text: str, plan: Plan) -> None:
    """What we write must load and say what we meant (a template change must not silently drop a key)."""
    from slapos.base.config import Config

    try:
        cfg = Config(text=text)
    except ConfigError as e:
        raise SlapOSError(f"the configuration written from slapos.cfg.example does not load: {e}") from None
    wrong = [f"[{s}] {k}" for (s, k), v in plan.settings.items() if cfg.get(s, k, None) != v]
    if wrong:
        raise SlapOSError("the configuration written from slapos.cfg.example lost " + ", ".join(wrong))


COMMANDS = [
    Command(
        path=("node", "register"),
        help="join a master with a one-time token: fetch this computer's certificate, write slapos.cfg",
        description=(
            "Exchange a one-time token for this computer's certificate and key at the master "
            "(Person_requestComputer on --master-url-web), then write slapos.cfg from slapos.cfg.example "
            "with every path following the options, the key 0600, and the former configuration kept. "
            "--dry-run asks nothing and writes nothing."
        ),
        run=run,
        arguments=arguments,
    ),
]
