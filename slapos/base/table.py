"""The one table renderer of every listing (`slapos list`, `slapos proxy show`, `slapos node
status`): aligned columns, fitted to the terminal.

On a terminal the table is fitted to its width: the widest columns give up room first (never
below their header, nor below `MIN_WIDTH`), and a cell longer than its column wraps onto more lines
(nothing is cut: a URL or an error stays whole, over several lines). Written to a pipe or a file —
or as JSON, which does not come here — the table keeps its full width, so scripts and tests see
every cell on one line.
"""
from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

SEPARATOR = "  "
MIN_WIDTH = 8  # a column narrower than this is unreadable: the table overflows instead


def terminal_width(stream: TextIO) -> int | None:
    """The width to fit a table written to `stream`: the terminal's columns ($COLUMNS first), or
    None (full width) when `stream` is not a terminal."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return None
    return shutil.get_terminal_size().columns


def _fit(natural: list[int], minimum: list[int], budget: int) -> list[int]:
    """Column widths summing to at most `budget`: cap the widest columns at one common width
    (the largest that fits), never below each column's minimum."""
    if sum(natural) <= budget:
        return natural
    low, high = 0, max(natural)
    while low < high:  # the largest cap whose table fits
        cap = (low + high + 1) // 2
        if sum(max(m, min(n, cap)) for n, m in zip(natural, minimum, strict=True)) <= budget:
            low = cap
        else:
            high = cap - 1
    return [max(m, min(n, low)) for n, m in zip(natural, minimum, strict=True)]


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for line in text.splitlines() or [""]:
        if len(line) <= width:
            lines.append(line)
        else:
            lines.extend(textwrap.wrap(line, width, break_long_words=True, break_on_hyphens=False,
                                       drop_whitespace=True) or [""])
    return lines


def render(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    width: int | None = None,
    indent: str = "",
    rule: bool = False,
) -> str:
    """The table as text (lines ending in a newline). Cells are `str()`-ed (None is empty); a cell
    may hold several lines. `width`: fit to that many columns (None: full width). `rule`: a line of
    dashes under the headers."""
    cells = [["" if value is None else str(value) for value in row] for row in rows]
    count = len(headers)
    natural = [
        max([len(headers[i])] + [len(line) for row in cells for line in (row[i].splitlines() or [""])])
        for i in range(count)
    ]
    widths = natural
    if width is not None:
        budget = width - len(indent) - len(SEPARATOR) * (count - 1)
        minimum = [min(n, max(len(h), MIN_WIDTH)) for n, h in zip(natural, headers, strict=True)]
        widths = _fit(natural, minimum, budget)
    out = [indent + SEPARATOR.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    if rule:
        out.append(indent + SEPARATOR.join("-" * w for w in widths))
    for row in cells:
        wrapped = [_wrap(cell, w) for cell, w in zip(row, widths, strict=True)]
        for n in range(max(len(lines) for lines in wrapped)):
            out.append(indent + SEPARATOR.join(
                (lines[n] if n < len(lines) else "").ljust(w) for lines, w in zip(wrapped, widths, strict=True)
            ).rstrip())
    return "\n".join(out) + "\n"
