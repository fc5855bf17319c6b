"""Instance and connection parameters as the proxy stores them.

The reference stores parameters as instance XML, so every value a client reads back is a string
(`3` → `'3'`, `True` → `'True'`, `None` → `'None'`) and an empty string comes back as `None`.
We store JSON (much faster to read than XML) but apply exactly that conversion on the way in,
so software releases see what the reference would give them.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import BadRequest


def normalise_value(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    return text or None


def normalise_params(params: Any, what: str = "parameters") -> dict[str, str | None]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{what} must be a dictionary, not {type(params).__name__}")
    return {normalise_value(k) or "": normalise_value(v) for k, v in params.items()}


def dump_params(params: dict[str, str | None] | None) -> str | None:
    """Canonical JSON text (sorted keys) so that 'did it change?' is a string comparison."""
    if params is None:
        return None
    return json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def load_params(text: str | None) -> dict[str, str | None]:
    if not text or text == "{}":
        return {}
    return json.loads(text)
