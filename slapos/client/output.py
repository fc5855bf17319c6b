"""Printing for the client commands: aligned tables and key/value blocks, or JSON (`--format json`)."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO


def dump_json(value: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    json.dump(value, stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return text.replace("\n", "\\n") if text else "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], stream: TextIO | None = None) -> None:
    """An aligned table (`slapos.base.table`), fitted to the terminal when `stream` is one."""
    from slapos.base.table import render, terminal_width

    stream = stream or sys.stdout
    stream.write(render(headers, ([_cell(v) for v in row] for row in rows), width=terminal_width(stream)))


def block(pairs: Sequence[tuple[str, Any]], stream: TextIO | None = None, indent: str = "") -> None:
    """`key  value` lines with the values aligned."""
    stream = stream or sys.stdout
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        stream.write(f"{indent}{key.ljust(width)}  {_cell(value)}\n")


def display_parameters(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """Parameters as a person wants to read them: the `_` JSON convention unpacked (§3.5)."""
    if set(parameters) == {"_"} and isinstance(parameters["_"], str):
        try:
            value = json.loads(parameters["_"])
        except ValueError:
            return parameters
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    return parameters
