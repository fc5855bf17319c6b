"""What the slapnode recipes share: option parsing, atomic file writes and the SLAP connection.

Errors a profile author or an instance user can fix are raised as `zc.buildout.UserError`, which
buildout prints as one `Error: ...` line (no traceback) and turns into a failed run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zc.buildout

UserError = zc.buildout.UserError

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off", ""}


class Recipe:
    """Base of every slapnode recipe: keeps buildout, section name and options, and offers
    typed accessors whose errors name the section and the option."""

    def __init__(self, buildout, name: str, options):
        self.buildout = buildout
        self.name = name
        self.options = options
        self.log = logging.getLogger(name)

    # -- errors and typed options ---------------------------------------------------------
    def error(self, message: str) -> UserError:
        return UserError(f"[{self.name}] {message}")

    def required(self, key: str) -> str:
        value = self.options.get(key, "").strip()
        if not value:
            raise self.error(f"option '{key}' is required")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        raw = self.options.get(key)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise self.error(f"option '{key}' = {raw!r}: use true or false")

    def mode(self, key: str = "mode", default: int | None = None) -> int | None:
        raw = self.options.get(key, "").strip()
        if not raw:
            return default
        try:
            mode = int(raw, 8)
        except ValueError:
            raise self.error(f"option '{key}' = {raw!r}: give an octal mode such as 0644") from None
        if not 0 <= mode <= 0o7777:
            raise self.error(f"option '{key}' = {raw!r}: not a file mode")
        return mode

    def number(self, key: str, default: float) -> float:
        raw = self.options.get(key, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.error(f"option '{key}' = {raw!r}: give a number") from None
        if value <= 0:
            raise self.error(f"option '{key}' = {raw!r}: must be positive")
        return value

    def lines(self, key: str) -> list[str]:
        """The non-empty lines of a multi-line option, stripped."""
        return [line.strip() for line in self.options.get(key, "").splitlines() if line.strip()]

    def path(self, key: str, default: str | None = None) -> Path:
        """An absolute path; a relative one is taken from the buildout directory."""
        raw = self.options.get(key, "").strip() or default
        if not raw:
            raise self.error(f"option '{key}' is required")
        return Path(self.buildout["buildout"]["directory"], raw)

    @property
    def python(self) -> str:
        """The interpreter generated scripts use: the one running buildout, reachable by the
        partition users (see FIELD-NOTES, Privileges)."""
        return self.buildout["buildout"].get("executable") or sys.executable

    # buildout calls update() when the options did not change; by default do the same work as
    # install() (which every subclass defines): each recipe here is idempotent and cheap.
    def update(self):
        return self.install()


def write_file(path: Path, content: str | bytes, mode: int | None = None) -> bool:
    """Write atomically (temporary file + rename), only if content or mode differ.

    Returns True when the file was (re)written. `mode=None` keeps the umask's choice for a new
    file and the current mode of an existing one.
    """
    data = content.encode() if isinstance(content, str) else content
    path = Path(path)
    try:
        current = path.stat()
    except FileNotFoundError:
        current = None
    if current is not None and (mode is None or (current.st_mode & 0o7777) == mode):
        with contextlib.suppress(OSError), path.open("rb") as f:
            if f.read() == data:
                return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is None:
            if current is not None:
                os.chmod(tmp, current.st_mode & 0o7777)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
        else:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def python_script(python: str, origin: str, body: str) -> str:
    """A generated Python script: shebang (`-S`: only the standard library is used, start fast),
    a comment naming its origin, then `body`. Values are embedded with repr(), which always
    yields a Python literal, so nothing in them is ever interpreted."""
    return f"#!{python} -S\n# Generated by {origin}: buildout rewrites this file, do not edit it.\n{body}"


# -- the partition's identity and its connection to the master ------------------------------

# recipe option -> (key in [slap-connection], legacy option names used by slapos.cookbook profiles)
_CONNECTION_KEYS = {
    "computer-id": ("computer",),
    "partition-id": ("partition",),
    "server-url": ("url",),
    "software-release-url": (),
    "key-file": ("key",),
    "cert-file": ("cert",),
    "master-ca-file": (),
    "requested-state": (),
}


@dataclass(frozen=True)
class SlapConnection:
    """The partition identity the node writes into the `[slap-connection]` section of every
    instance profile; a recipe section may override any key (same names, or the legacy
    `computer`, `partition`, `url`, `key`, `cert`)."""

    computer_id: str
    partition_id: str
    server_url: str
    software_release_url: str = ""
    key_file: str = ""
    cert_file: str = ""
    # the CA verifying an https master (a TLS proxy's own CA): without it the system CAs are used
    master_ca_file: str = ""
    requested_state: str = "started"

    @classmethod
    def from_recipe(cls, recipe: Recipe, prefix: str = "") -> SlapConnection:
        """`prefix` is put before the option names looked up in the recipe's own section
        (publish uses `-`, since its plain options are the published values)."""
        try:
            section = recipe.buildout["slap-connection"]
        except KeyError:
            section = {}
        values = {}
        for key, legacy in _CONNECTION_KEYS.items():
            value = ""
            for candidate in (key, *legacy):
                value = recipe.options.get(prefix + candidate, "").strip()
                if value:
                    break
            values[key.replace("-", "_")] = value or section.get(key, "").strip()
        missing = [k for k in ("computer-id", "partition-id", "server-url") if not values[k.replace("-", "_")]]
        if missing:
            raise recipe.error(
                f"no {', '.join(missing)} in [slap-connection]: this profile runs inside a partition "
                "(`slapos node instance` writes that section), or give them in the section"
            )
        values["requested_state"] = values["requested_state"] or "started"
        return cls(**values)

    def partition(self, recipe: Recipe):
        """The `slapos.slap` ComputerPartition of this partition (one GET to the master)."""
        from slapos import slap

        with slap_errors(recipe, f"connecting to the master {self.server_url}"):
            connection = slap.slap()
            connection.initializeConnection(
                self.server_url, key_file=self.key_file or None, cert_file=self.cert_file or None,
                master_ca_file=self.master_ca_file or None,
            )
            return connection.registerComputerPartition(self.computer_id, self.partition_id)


@contextlib.contextmanager
def slap_errors(recipe: Recipe, doing: str) -> Iterator[None]:
    """Turn client-library failures into one clear buildout error naming what we were doing."""
    from slapos.slap import SlapException

    try:
        yield
    except SlapException as e:
        raise recipe.error(f"{doing}: {type(e).__name__}: {e}") from None
    except ValueError as e:  # malformed answer (slapos.slap.wire.WireError)
        raise recipe.error(f"{doing}: unreadable answer from the master: {e}") from None
