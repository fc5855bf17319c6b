"""The proxy's settings: `[slapproxy]` and `[slapos]` of slapos.cfg, plus command-line overrides."""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base.config import Config
from slapos.base.errors import ConfigError
from slapos.slap.connection import url_credential

from .access import CREDENTIALS_MODE, MODES, OPEN_MODE, new_credential
from .cache import DEFAULT_MAX_CACHE_ENTRY, DEFAULT_MAX_CACHE_TOTAL, cache_directories

log = logging.getLogger("slapos.proxy")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THREADS = 8
DEFAULT_MAX_REQUEST_SIZE = 16 * 1024 * 1024  # a 3000-partition format document fits
DEFAULT_COMPUTER_ID = "local_computer"


@dataclass
class ProxyConfig:
    database: Path
    computer_id: str = DEFAULT_COMPUTER_ID
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    allow_remote: bool = False
    threads: int = DEFAULT_THREADS
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    # product name -> software release URLs, best first (`product.<name>` aliases of the client)
    software_products: dict[str, list[str]] = field(default_factory=dict)
    software_root: Path | None = None
    instance_root: Path | None = None
    log_file: Path | None = None
    # binary cache for nodes: (content, metadata) directories, see slapos/proxy/cache.py
    shacache_directories: tuple[Path, Path] | None = None
    # binary cache limits (bytes): one stored archive, and all of them together (413 / 507)
    shacache_max_entry_size: int = DEFAULT_MAX_CACHE_ENTRY
    shacache_quota: int = DEFAULT_MAX_CACHE_TOTAL
    # who may call: "open" (anyone acts for anyone, the standalone node) or "credentials" (the
    # node credential of [slapos] master_url, partition credentials; docs/security-proxy.md)
    access: str = OPEN_MODE
    node_credential: str | None = None
    # the proxy's certificate authority (docs/join.md); default: ca/ beside the database
    ca_directory: Path | None = None
    # mutual TLS with the CA's certificates (docs/join.md); extra names of the server certificate
    tls: bool = False
    tls_server_names: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: Config, **overrides) -> ProxyConfig:
        s = "slapproxy"
        database = overrides.pop("database", None) or cfg.get_path(s, "database_uri")
        products: dict[str, list[str]] = {}
        for line in cfg.get(s, "software_product_list", "").splitlines():
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ConfigError(
                    f"[slapproxy] software_product_list line {line.strip()!r} must be '<product> <url>'"
                )
            products.setdefault(parts[0], []).append(parts[1])
        config = cls(
            database=Path(database).expanduser(),
            computer_id=cfg.get("slapos", "computer_id", DEFAULT_COMPUTER_ID),
            host=cfg.get(s, "host", DEFAULT_HOST),
            port=cfg.get_int(s, "port", DEFAULT_PORT),
            allow_remote=cfg.get_bool(s, "allow_remote", False),
            threads=cfg.get_int(s, "threads", DEFAULT_THREADS),
            max_request_size=cfg.get_int(s, "max_request_size", DEFAULT_MAX_REQUEST_SIZE),
            software_products=products,
            software_root=cfg.get_path("slapos", "software_root", None),
            instance_root=cfg.get_path("slapos", "instance_root", None),
            log_file=cfg.get_path(s, "log_file", None),
            shacache_directories=cache_directories(cfg.section(s)),
            shacache_max_entry_size=_size(cfg, "shacache_max_entry_size", DEFAULT_MAX_CACHE_ENTRY),
            shacache_quota=_size(cfg, "shacache_quota", DEFAULT_MAX_CACHE_TOTAL),
            access=cfg.get(s, "access", OPEN_MODE).strip().lower(),
            ca_directory=cfg.get_path(s, "ca_directory", None),
            tls=cfg.get_bool(s, "tls", False),
            tls_server_names=tuple(cfg.get(s, "tls_server_names", "").split()),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        if not 0 <= config.port <= 65535:
            raise ConfigError(f"[slapproxy] port {config.port} is not a TCP port (0-65535)")
        if config.threads < 1:
            raise ConfigError("[slapproxy] threads must be at least 1")
        if config.max_request_size < 1024:
            raise ConfigError("[slapproxy] max_request_size must be at least 1024 bytes")
        if config.access not in MODES:
            raise ConfigError(f"[slapproxy] access = {config.access!r}: use {' or '.join(MODES)}")
        if config.access == CREDENTIALS_MODE:
            config.node_credential = _node_credential(cfg)
        else:  # an open proxy still accepts the node's URL when it carries one (switching modes)
            config.node_credential = url_credential(cfg.get("slapos", "master_url", ""))
        _warn_unsupported(cfg)
        return config


def _size(cfg: Config, key: str, default: int) -> int:
    value = cfg.get_int("slapproxy", key, default)
    if value < 1:
        raise ConfigError(f"[slapproxy] {key} must be a positive number of bytes, not {value}")
    return value


def _node_credential(cfg: Config) -> str:
    """access = credentials: the node credential is the one of `[slapos] master_url`, in a
    configuration file no one else may read."""
    master_url = cfg.get("slapos", "master_url", "")
    credential = url_credential(master_url)
    if credential is None:
        base = master_url.split("://", 1)[-1].split("/", 1)[0] or "127.0.0.1:8080"
        raise ConfigError(
            "[slapproxy] access = credentials needs the node credential in [slapos] master_url, e.g. "
            f"master_url = http://{base}/c/{new_credential()}/ (a fresh random one; keep the file mode 0600)"
        )
    if cfg.path is not None:
        import os

        mode = os.stat(cfg.path).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"{cfg.path} holds the node credential ([slapos] master_url) but is readable by others "
                f"(mode {mode & 0o777:o}): chmod 600 {cfg.path}"
            )
    return credential


def _warn_unsupported(cfg: Config) -> None:
    """Reference keys we do not act on: say so once at start rather than silently ignore them."""
    for section in cfg.parser.sections():
        if section.startswith("multimaster/"):
            log.warning("[%s] ignored: this proxy does not forward requests to other masters", section)
    if cfg.has("slapproxy", "public_directory_path"):
        log.warning("[slapproxy] public_directory_path ignored: this proxy serves no public files "
                    "(its own dashboard is at /dashboard)")
    if cfg.has("slapproxy", "workers"):
        log.warning("[slapproxy] workers ignored: the proxy runs one process (raise threads instead)")
    root = cfg.get("slapproxy", "local_software_release_root", "/")
    if root != "/":
        log.warning("[slapproxy] local_software_release_root ignored: software release paths are used as given")


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
