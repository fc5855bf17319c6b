"""What `slapos node format` is asked to do, read once from slapos.cfg and the command line.

Keys come from `[slapformat]`, then `[slapos]` (a key present in both takes the `[slapos]` value,
as the reference does), then the command line (SLAP-PROTOCOL.md §7.1, §8.2).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slapos.base.config import Config
from slapos.base.errors import ConfigError, SlapOSError

SECTION = "slapformat"
# The reference sleeps up to one hour so that a fleet of nodes started by cron does not hit the
# master at the same second; `random_delay` makes it configurable, `--now` skips it.
DEFAULT_RANDOM_DELAY = 3600


@dataclass
class FormatOptions:
    computer_id: str
    master_url: str
    software_root: Path
    instance_root: Path
    computer_xml: Path
    partition_amount: int = 0
    partition_base_name: str = "slappart"
    user_base_name: str = "slapuser"
    tap_base_name: str = "slaptap"
    interface_name: str | None = None
    ipv6_interface: str | None = None
    ipv4_local_network: str | None = None
    ipv6_prefixshift: int = 16
    partition_has_ipv6_range: bool = True
    alter_user: bool = True
    alter_network: bool = True
    create_tap: bool = True  # documented default of the reference: taps unless turned off
    tap_ipv6: bool = True
    tap_gateway_interface: str = ""
    software_user: str = "slapsoft"
    computer_json: Path | None = None
    input_definition_file: Path | None = None
    output_definition_file: Path | None = None
    instance_storage_home: Path | None = None
    certificate_repository_path: Path | None = None
    key_file: Path | None = None
    cert_file: Path | None = None
    master_ca_file: Path | None = None
    log_file: Path | None = None
    root_check: bool = True
    random_delay: int = DEFAULT_RANDOM_DELAY
    # IPv6 duplicate address detection: on (reference behaviour) we wait for new addresses to
    # leave the "tentative" state; off adds them with `nodad` (test namespaces, point-to-point links).
    ipv6_dad: bool = True
    dad_timeout: float = 5.0
    public_ipv4_address: str | None = None
    # the configuration file read: its directory is made readable by the software group (see
    # system.ConfigAccess)
    config_path: Path | None = None
    # filled by resolve_privileges(): why the run is unprivileged, for the log
    unprivileged_reason: str = ""

    @property
    def privileged(self) -> bool:
        return self.alter_user or self.alter_network

    @classmethod
    def from_config(cls, config: Config, **overrides) -> FormatOptions:
        def raw(key: str) -> str | None:
            for section in ("slapos", SECTION):
                if config.has(section, key):
                    return config.get(section, key)
            return None

        def text(key: str, default: str | None = None) -> str | None:
            value = raw(key)
            return default if value is None else value

        def path(key: str) -> Path | None:
            value = raw(key)
            return Path(os.path.expanduser(value)) if value else None

        def section_of(key: str) -> str:
            return "slapos" if config.has("slapos", key) else SECTION

        def boolean(key: str, default: bool) -> bool:
            return config.get_bool(section_of(key), key, default) if raw(key) is not None else default

        def integer(key: str, default: int) -> int:
            return config.get_int(section_of(key), key, default) if raw(key) is not None else default

        for obsolete in ("bridge_name", "no_bridge"):
            if raw(obsolete) is not None:
                raise ConfigError(
                    f"[{SECTION}] {obsolete} is obsolete (bridges are configured by the interface itself): "
                    "remove it; taps are attached to interface_name when it is a bridge, routed otherwise"
                )
        if boolean("create_tun", False):
            raise SlapOSError(
                "create_tun = true is not supported by this slapformat (no tun devices); set create_tun = false"
            )

        instance_root = config.get_path("slapos", "instance_root")
        computer_xml = path("computer_xml") or instance_root / ".slapos-computer.xml"
        options = cls(
            computer_id=config.get("slapos", "computer_id"),
            master_url=config.get("slapos", "master_url"),
            software_root=config.get_path("slapos", "software_root"),
            instance_root=instance_root,
            computer_xml=computer_xml,
            partition_amount=integer("partition_amount", 0),
            partition_base_name=text("partition_base_name", "slappart"),
            user_base_name=text("user_base_name", "slapuser"),
            tap_base_name=text("tap_base_name", "slaptap"),
            interface_name=text("interface_name"),
            ipv6_interface=text("ipv6_interface"),
            ipv4_local_network=text("ipv4_local_network"),
            ipv6_prefixshift=integer("ipv6_prefixshift", 16),
            partition_has_ipv6_range=boolean("partition_has_ipv6_range", True),
            alter_user=boolean("alter_user", True),
            alter_network=boolean("alter_network", True),
            create_tap=boolean("create_tap", True),
            tap_ipv6=boolean("tap_ipv6", True),
            tap_gateway_interface=text("tap_gateway_interface", "") or "",
            software_user=text("software_user", "slapsoft"),
            computer_json=path("computer_json"),
            input_definition_file=path("input_definition_file"),
            output_definition_file=path("output_definition_file"),
            instance_storage_home=path("instance_storage_home"),
            certificate_repository_path=path("certificate_repository_path"),
            key_file=path("key_file"),
            cert_file=path("cert_file"),
            master_ca_file=path("master_ca_file"),
            log_file=path("log_file"),
            root_check=config.get_bool("slapos", "root_check", True),
            random_delay=integer("random_delay", DEFAULT_RANDOM_DELAY),
            ipv6_dad=boolean("ipv6_dad", True),
            public_ipv4_address=text("public_ipv4_address"),
            config_path=config.path,
        )
        explicit = {key for key in ("alter_user", "alter_network") if raw(key) is not None}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in ("alter_user", "alter_network"):
                explicit.add(key)
            setattr(options, key, value)
        options._explicit = explicit  # type: ignore[attr-defined]
        options.validate()
        return options

    def validate(self) -> None:
        if self.partition_amount < 0:
            raise ConfigError(f"[{SECTION}] partition_amount must be 0 or more, not {self.partition_amount}")
        for key in ("partition_base_name", "user_base_name", "tap_base_name"):
            value = getattr(self, key)
            if not value or not all(c.isalnum() or c in "-_" for c in value):
                raise ConfigError(f"[{SECTION}] {key} must be letters, digits, '-' or '_', not {value!r}")
        if not 0 < self.ipv6_prefixshift < 64:
            raise ConfigError(f"[{SECTION}] ipv6_prefixshift must be between 1 and 63, not {self.ipv6_prefixshift}")
        if self.random_delay < 0:
            raise ConfigError(f"[{SECTION}] random_delay must be 0 or more seconds, not {self.random_delay}")

    def resolve_privileges(self, euid: int | None = None) -> None:
        """Fall back to the unprivileged mode when not root and the configuration allows it.

        `alter_user`/`alter_network` default to true (reference); a non-root user who did not set
        them explicitly gets the unprivileged mode with a log line instead of a failure. A non-root
        user who asked for them explicitly gets a clear error (they need root).
        """
        euid = os.geteuid() if euid is None else euid
        if euid == 0:
            return
        explicit = getattr(self, "_explicit", set())
        for key in ("alter_user", "alter_network"):
            if not getattr(self, key):
                continue
            if key in explicit:
                raise SlapOSError(
                    f"{key} = true needs root: run `slapos node format` as root, or set {key} = false "
                    f"in [{SECTION}] for an unprivileged node"
                )
            setattr(self, key, False)
            self.unprivileged_reason = "not running as root and alter_user/alter_network not set"
        if self.create_tap and not self.alter_network:
            # a tap without network management cannot be created; say so once instead of failing
            self.create_tap = False
