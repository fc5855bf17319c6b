"""The proxy's settings: `[slapproxy]` and `[slapos]` of slapos.cfg, plus command-line overrides."""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base.config import Config
from slapos.base.errors import ConfigError

from .cache import cache_directories

log = logging.getLogger("slapos.proxy")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THREADS = 8
DEFAULT_WORKERS = 1  # one process: enough for the node and clients of one machine (README, "Several worker processes")
MAX_WORKERS = 64
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
    # server processes sharing the port and the database (server.WorkerPool)
    workers: int = DEFAULT_WORKERS
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    # product name -> software release URLs, best first (`product.<name>` aliases of the client)
    software_products: dict[str, list[str]] = field(default_factory=dict)
    software_root: Path | None = None
    instance_root: Path | None = None
    log_file: Path | None = None
    # binary cache for nodes: (content, metadata) directories, see slapos/proxy/cache.py
    shacache_directories: tuple[Path, Path] | None = None

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
            workers=cfg.get_int(s, "workers", DEFAULT_WORKERS),
            max_request_size=cfg.get_int(s, "max_request_size", DEFAULT_MAX_REQUEST_SIZE),
            software_products=products,
            software_root=cfg.get_path("slapos", "software_root", None),
            instance_root=cfg.get_path("slapos", "instance_root", None),
            log_file=cfg.get_path(s, "log_file", None),
            shacache_directories=cache_directories(cfg.section(s)),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        if not 0 <= config.port <= 65535:
            raise ConfigError(f"[slapproxy] port {config.port} is not a TCP port (0-65535)")
        if config.threads < 1:
            raise ConfigError("[slapproxy] threads must be at least 1")
        if not 1 <= config.workers <= MAX_WORKERS:
            raise ConfigError(f"[slapproxy] workers must be between 1 and {MAX_WORKERS} (processes), not {config.workers}")
        if config.max_request_size < 1024:
            raise ConfigError("[slapproxy] max_request_size must be at least 1024 bytes")
        _warn_unsupported(cfg)
        return config


def _warn_unsupported(cfg: Config) -> None:
    """Reference keys we do not act on: say so once at start rather than silently ignore them."""
    for section in cfg.parser.sections():
        if section.startswith("multimaster/"):
            log.warning("[%s] ignored: this proxy does not forward requests to other masters", section)
    if cfg.has("slapproxy", "public_directory_path"):
        log.warning("[slapproxy] public_directory_path ignored: this proxy serves no public files "
                    "(its own dashboard is at /dashboard)")
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
