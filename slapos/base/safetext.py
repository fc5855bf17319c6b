"""Values that come from outside (the master) pasted into files the node generates.

The node writes master data into buildout profiles (the instance profile's [slap-connection],
a software directory's buildout.cfg) and into supervisord configurations. Both are line-based
`key = value` formats: a value holding a line break adds lines of its own choosing (a new section,
a new `[program:]` running as root). Python and the parsers split lines on more than `\\n`
(`\\r`, `\\x0b`, `\\x0c`, `\\x1c`-`\\x1e`, `\\x85`, U+2028, U+2029 for `str.splitlines`), so every
control character (C0, DEL, C1) and the Unicode line and paragraph separators are refused, not
only `\\n`. Every such value goes through `line_value` (or one of the encoders below, which call
it): one place decides what may reach a generated file.
"""
from __future__ import annotations

import re

from .errors import SlapOSError

# C0 controls, DEL, C1 controls, U+2028/U+2029 (line/paragraph separators), U+FEFF (a BOM
# in the middle of a file confuses readers that strip it)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_SPACE = re.compile(r"\s")


class UnsafeValue(SlapOSError):
    """A value that must not be written into a generated configuration file."""


def line_value(key: str, value: object, where: str) -> str:
    """`value` as text that stays on one line, or UnsafeValue naming `key` and `where`."""
    text = "" if value is None else str(value)
    match = _UNSAFE.search(text)
    if match is not None:
        raise UnsafeValue(
            f"refusing {key} for {where}: it holds the control character U+{ord(match.group()):04X} "
            f"at offset {match.start()} (a value from the master must stay on one line)"
        )
    return text


def buildout_value(key: str, value: object, where: str = "the buildout profile") -> str:
    """A value for a buildout `key = value` line: one line, and `$` doubled so that buildout
    reads it back verbatim instead of substituting `${section:option}` references in it."""
    return line_value(key, value, where).replace("$", "$$")


def buildout_word(key: str, value: object, where: str = "the buildout profile") -> str:
    """A value buildout splits on whitespace (`extends`, part lists): one line and one word, so
    that a URL cannot add a second profile to extend."""
    text = line_value(key, value, where)
    if not text or _SPACE.search(text):
        raise UnsafeValue(f"refusing {key} {text!r} for {where}: it must be one word, without spaces")
    return text


def supervisor_value(key: str, value: object, where: str = "the supervisord configuration") -> str:
    """A value for supervisord: one line, `%` doubled (supervisord expands `%(name)s`)."""
    return line_value(key, value, where).replace("%", "%%")
