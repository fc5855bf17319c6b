"""Reading slapos.cfg: where it is looked up, typed accessors, and errors naming key and section.

Lookup order is the reference's: `--cfg`, then an environment variable
(`SLAPOS_CONFIGURATION` for the node, `SLAPOS_CLIENT_CONFIGURATION` for client commands),
then the default path.
"""
from __future__ import annotations

import configparser
import os
from pathlib import Path
from typing import overload

from .errors import ConfigError

NODE_CONFIG_ENV = "SLAPOS_CONFIGURATION"
CLIENT_CONFIG_ENV = "SLAPOS_CLIENT_CONFIGURATION"
DEFAULT_NODE_CONFIG = "/etc/opt/slapos/slapos.cfg"
DEFAULT_CLIENT_CONFIG = "~/.slapos/slapos-client.cfg"

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off", ""}

# sentinel: "no default given, the key is required"
REQUIRED = object()


def find_config(cli_path: str | None, client: bool = False) -> Path:
    """Return the configuration file to use, or raise ConfigError saying where we looked."""
    env = CLIENT_CONFIG_ENV if client else NODE_CONFIG_ENV
    candidates = []
    if cli_path:
        candidates.append(("--cfg", cli_path))
    elif os.environ.get(env):
        candidates.append((f"${env}", os.environ[env]))
    else:
        if client:
            candidates.append(("default", DEFAULT_CLIENT_CONFIG))
            # a node configuration works for client commands too
            if os.environ.get(NODE_CONFIG_ENV):
                candidates.append((f"${NODE_CONFIG_ENV}", os.environ[NODE_CONFIG_ENV]))
        candidates.append(("default", DEFAULT_NODE_CONFIG))
    for _origin, raw in candidates:
        path = Path(raw).expanduser()
        if path.is_file():
            return path
    origin, raw = candidates[0]
    hint = "pass --cfg FILE" if origin == "default" else "check the path"
    raise ConfigError(f"configuration file {raw} ({origin}) not found: {hint}")


class Config:
    """A parsed slapos.cfg with accessors that fail with one clear line."""

    def __init__(self, path: str | Path | None = None, text: str | None = None):
        self.path = Path(path) if path else None
        self.parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            if text is not None:
                self.parser.read_string(text, source=str(path or "<string>"))
            elif self.path is not None:
                with open(self.path, encoding="utf-8") as f:
                    self.parser.read_file(f)
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
        except configparser.Error as e:
            first = str(e).splitlines()[0]
            raise ConfigError(f"configuration file {path} is not valid INI: {first}") from None

    @classmethod
    def load(cls, cli_path: str | None, client: bool = False) -> Config:
        return cls(find_config(cli_path, client=client))

    # -- accessors ---------------------------------------------------------------------
    def _where(self) -> str:
        return f" of {self.path}" if self.path else ""

    def has(self, section: str, key: str) -> bool:
        return self.parser.has_option(section, key) and self.parser.get(section, key).strip() != ""

    def section(self, section: str) -> dict[str, str]:
        if not self.parser.has_section(section):
            return {}
        return {k: v for k, v in self.parser.items(section)}

    def get(self, section: str, key: str, default=REQUIRED) -> str:
        if self.parser.has_option(section, key):
            value = self.parser.get(section, key).strip()
            if value or default is REQUIRED:
                if not value:
                    raise ConfigError(f"key '{key}' in section [{section}]{self._where()} is empty: give it a value")
                return value
        if default is REQUIRED:
            if not self.parser.has_section(section):
                raise ConfigError(f"section [{section}] is missing{self._where()}: add it with key '{key}'")
            raise ConfigError(f"key '{key}' is missing in section [{section}]{self._where()}")
        return default

    @overload
    def get_path(self, section: str, key: str) -> Path: ...

    @overload
    def get_path(self, section: str, key: str, default: object) -> Path | None: ...

    def get_path(self, section: str, key: str, default=REQUIRED) -> Path | None:
        value = self.get(section, key, default)
        if value is None:
            return None
        return Path(os.path.expanduser(str(value)))

    def get_bool(self, section: str, key: str, default: bool | object = REQUIRED) -> bool:
        value = self.get(section, key, None if default is not REQUIRED else REQUIRED)
        if value is None:
            return bool(default)
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"key '{key}' in section [{section}]{self._where()} must be true or false, not {value!r}")

    def get_int(self, section: str, key: str, default: int | object = REQUIRED) -> int:
        value = self.get(section, key, None if default is not REQUIRED else REQUIRED)
        if value is None:
            return default  # type: ignore[return-value]
        try:
            return int(value)
        except ValueError:
            raise ConfigError(
                f"key '{key}' in section [{section}]{self._where()} must be an integer, not {value!r}"
            ) from None

    def get_float(self, section: str, key: str, default: float | object = REQUIRED) -> float:
        value = self.get(section, key, None if default is not REQUIRED else REQUIRED)
        if value is None:
            return default  # type: ignore[return-value]
        try:
            return float(value)
        except ValueError:
            raise ConfigError(
                f"key '{key}' in section [{section}]{self._where()} must be a number, not {value!r}"
            ) from None

    def get_list(self, section: str, key: str) -> list[str]:
        """A newline- (or space-) separated list; empty when the key is absent."""
        value = self.get(section, key, "")
        return [item for item in value.replace(",", " ").split() if item]
