"""The node's settings, read once from slapos.cfg ([slapos] and [networkcache]) plus CLI overrides.

Shared by `slapos node software|instance|report|promise|bang|boot` so every run reads the
same keys with the same defaults (see SLAP-PROTOCOL.md §8.1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .errors import ConfigError, PrivilegeError


@dataclass
class NodeSettings:
    config: Config
    computer_id: str
    master_url: str
    software_root: Path
    instance_root: Path
    key_file: Path | None = None
    cert_file: Path | None = None
    master_ca_file: Path | None = None
    certificate_repository_path: Path | None = None
    root_check: bool = True
    pidfile_software: Path = Path("/opt/slapos/slapgrid-sr.pid")
    pidfile_instance: Path = Path("/opt/slapos/slapgrid-cp.pid")
    pidfile_report: Path = Path("/opt/slapos/slapgrid-ur.pid")
    maximum_periodicity: int = 86400
    maximal_delay: int = 0
    promise_timeout: float = 20.0
    partition_timeout: float | None = None
    buildout_timeout: float | None = None
    shared_part_list: list[str] = field(default_factory=list)
    build_time_part_list: list[str] = field(default_factory=list)
    extra_path: list[str] = field(default_factory=list)
    instance_storage_home: str = ""
    ipv4_global_network: str = ""
    forbid_supervisord_automatic_launch: bool = False
    local_restart: bool = True
    watchdog_command: str | None = None
    max_retention_delay: float = 90.0  # days a destroyed partition may ask to be kept, at most
    networkcache: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, **overrides) -> NodeSettings:
        s = "slapos"
        default_pid = config.get_path(s, "pidfile", None)

        def pidfile(kind: str, default: str) -> Path:
            return config.get_path(s, f"pidfile_{kind}", None) or default_pid or Path(default)

        timeout_key = "partition_timeout" if config.has(s, "partition_timeout") else "partition-timeout"

        def required(key: str, path: bool = False):
            # a command-line value stands in for a key the configuration lacks
            if overrides.get(key) is not None:
                return overrides[key]
            return config.get_path(s, key) if path else config.get(s, key)

        settings = cls(
            config=config,
            computer_id=required("computer_id"),
            master_url=required("master_url"),
            software_root=required("software_root", path=True),
            instance_root=required("instance_root", path=True),
            key_file=config.get_path(s, "key_file", None),
            cert_file=config.get_path(s, "cert_file", None),
            master_ca_file=config.get_path(s, "master_ca_file", None),
            certificate_repository_path=config.get_path(s, "certificate_repository_path", None),
            root_check=config.get_bool(s, "root_check", True),
            pidfile_software=pidfile("software", "/opt/slapos/slapgrid-sr.pid"),
            pidfile_instance=pidfile("instance", "/opt/slapos/slapgrid-cp.pid"),
            pidfile_report=pidfile("report", "/opt/slapos/slapgrid-ur.pid"),
            maximum_periodicity=config.get_int(s, "maximum_periodicity", 86400),
            maximal_delay=config.get_int(s, "maximal_delay", 0),
            promise_timeout=config.get_float(s, "promise_timeout", 20.0),
            partition_timeout=config.get_float(s, timeout_key, None),
            buildout_timeout=config.get_float(s, "buildout_timeout", 0.0) or None,
            shared_part_list=config.get(s, "shared_part_list", "").split(),
            build_time_part_list=config.get(s, "build_time_part_list", "").split(),
            extra_path=config.get(s, "path", "").split(os.pathsep) if config.has(s, "path") else [],
            instance_storage_home=config.get(s, "instance_storage_home", ""),
            ipv4_global_network=config.get(s, "ipv4_global_network", ""),
            forbid_supervisord_automatic_launch=config.get_bool(s, "forbid_supervisord_automatic_launch", False),
            local_restart=config.get_bool(s, "local_restart", True),
            watchdog_command=config.get(s, "watchdog_command", None),
            max_retention_delay=config.get_float(s, "max_retention_delay", 90.0),
            networkcache=config.section("networkcache"),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        if not 0 <= settings.max_retention_delay < float("inf"):
            raise ConfigError("[slapos] max_retention_delay is a number of days, 0 or more")
        if (settings.key_file is None) != (settings.cert_file is None):
            raise ConfigError("[slapos] key_file and cert_file go together: set both or neither")
        return settings

    def check_root(self) -> None:
        """The reference's root check: node runs need root unless `root_check = false`."""
        if self.root_check and os.geteuid() != 0:
            raise PrivilegeError(
                "this command must run as root; for a node run by an ordinary user set "
                "'root_check = false' in [slapos] of the configuration"
            )
