"""The client configuration: which master, with which user certificate, and the product aliases.

Looked up like the reference (SLAP-PROTOCOL.md §8): `--cfg`, then `$SLAPOS_CLIENT_CONFIGURATION`,
then `~/.slapos/slapos-client.cfg`, then the node configuration (a node's slapos.cfg works too).
The user's certificate is `[slapconsole] cert_file/key_file`, falling back to `[slapos]`'s; the
CA that verifies an https master, `master_ca_file` of `[slapconsole]`, else of `[slapos]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slapos.base.config import Config
from slapos.base.errors import ConfigError


def parse_product_list(text: str, where: str) -> dict[str, str]:
    """`software_product_list` lines are `<product> <url>`; blank lines and `#` comments are skipped."""
    products: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(
                f"software_product_list of {where}, line {number}: expected '<product> <url>', got {line!r}"
            )
        products[parts[0]] = parts[1]
    return products


@dataclass
class ClientSettings:
    config: Config
    master_url: str
    key_file: Path | None = None
    cert_file: Path | None = None
    master_ca_file: Path | None = None
    computer_id: str | None = None
    product_list: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, cli_path: str | None, master_url: str | None = None,
             key_file: str | None = None, cert_file: str | None = None) -> ClientSettings:
        config = Config.load(cli_path, client=True)
        return cls.from_config(config, master_url=master_url, key_file=key_file, cert_file=cert_file)

    @classmethod
    def from_config(cls, config: Config, master_url: str | None = None,
                    key_file: str | None = None, cert_file: str | None = None) -> ClientSettings:
        """`master_url`, `key_file`, `cert_file`: command-line overrides of the configuration."""
        master_url = master_url or config.get("slapos", "master_url")
        key_file = _certificate_path(config, "key_file", key_file)
        cert_file = _certificate_path(config, "cert_file", cert_file)
        if (key_file is None) != (cert_file is None):
            raise ConfigError(
                f"cert_file and key_file go together in [slapconsole] of {config.path}: set both or neither"
            )
        if master_url.lower().startswith("https") and cert_file is None:
            raise ConfigError(
                f"master {master_url} is https: set [slapconsole] cert_file and key_file "
                f"(your user certificate) in {config.path}"
            )
        products: dict[str, str] = {}
        for section in ("slapos", "slapconsole"):
            products.update(
                parse_product_list(config.get(section, "software_product_list", ""), f"[{section}] of {config.path}")
            )
        return cls(
            config=config,
            master_url=master_url,
            key_file=key_file,
            cert_file=cert_file,
            master_ca_file=config.get_path("slapconsole", "master_ca_file", None)
            or config.get_path("slapos", "master_ca_file", None),
            computer_id=config.get("slapos", "computer_id", None),
            product_list=products,
        )

    def connect(self):
        """A `slapos.slap.slap` connected to the master with the user's identity."""
        from slapos.slap import connect_as

        return connect_as(self)


def _certificate_path(config: Config, key: str, override: str | None = None) -> Path | None:
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ConfigError(f"{key} {path} (command line) does not exist")
        return path
    for section in ("slapconsole", "slapos"):
        path = config.get_path(section, key, None)
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"{key} {path} (section [{section}] of {config.path}) does not exist")
            return path
    return None
