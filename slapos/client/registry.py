"""The local record of instances requested from this account (`slapos list`, `slapos info`).

Why a local record: the SLAP protocol has no "list my instances" call. Real masters offer one
through their REST (HATEOAS) API, which neither our proxy nor old masters serve; a record kept by
the client works with every master, costs no network round trip, and also remembers what the
master cannot tell (the last request's error). `slapos info` still asks the master for the live
state of the partition when it can.

The file is `~/.slapos/instances.json` (0600: parameters may hold secrets), keyed by master URL
then instance name; writers take an flock and replace the file atomically, so concurrent
`slapos request` calls from scripts never lose an entry. A record that cannot be written is a
warning, never a failed request.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("slapos.client")

DEFAULT_PATH = "~/.slapos/instances.json"
VERSION = 1


def registry_path() -> Path:
    return Path(os.path.expanduser(DEFAULT_PATH))


def _normalise(master_url: str) -> str:
    return master_url if master_url.endswith("/") else master_url + "/"


class InstanceRegistry:
    def __init__(self, path: Path | None = None):
        self.path = path or registry_path()

    # -- reading -------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": VERSION, "masters": {}}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable instance record %s: %s", self.path, e)
            return {"version": VERSION, "masters": {}}
        if not isinstance(data, dict) or not isinstance(data.get("masters"), dict):
            log.warning("ignoring instance record %s: unexpected content", self.path)
            return {"version": VERSION, "masters": {}}
        return data

    def instances(self, master_url: str) -> dict[str, dict[str, Any]]:
        entries = self._load()["masters"].get(_normalise(master_url), {})
        return entries if isinstance(entries, dict) else {}

    def get(self, master_url: str, name: str) -> dict[str, Any] | None:
        entry = self.instances(master_url).get(name)
        return entry if isinstance(entry, dict) else None

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def update(self, master_url: str, name: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> None:
        """Apply `change(old_entry) -> new_entry` (None deletes) under the lock; warn on failure."""
        try:
            with self._locked():
                data = self._load()
                entries = data["masters"].setdefault(_normalise(master_url), {})
                new = change(entries.get(name))
                if new is None:
                    entries.pop(name, None)
                else:
                    new["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                    entries[name] = new
                text = json.dumps(data, indent=1, sort_keys=True, default=str)
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot update the instance record %s: %s", self.path, e.strerror or e)
        except (TypeError, ValueError) as e:  # a value JSON cannot hold: the request itself succeeded
            log.warning("cannot update the instance record %s: %s", self.path, e)

    def remember(self, master_url: str, name: str, **fields: Any) -> None:
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            entry = dict(old or {})
            entry.update({k: v for k, v in fields.items()})
            entry["name"] = name
            return entry

        self.update(master_url, name, change)

    def forget(self, master_url: str, name: str) -> None:
        self.update(master_url, name, lambda old: None)
