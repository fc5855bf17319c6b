"""What may travel on the SLAP wire and how much of it: the four SLAP classes (`WireObject`), the
decoding limits, the characters XML 1.0 cannot carry, and `WireError`. Split from
slapos.slap.wire, which re-exports these names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from slapos.base.errors import SlapOSError

# The module every SLAP object claims on the wire; the only one we accept.
WIRE_MODULE = "slapos.slap.slap"
ALLOWED_CLASSES = frozenset({"Computer", "ComputerPartition", "SoftwareRelease", "SoftwareInstance"})

# Limits for decoding. A 1000-partition computer is a few MB and about 10 levels deep; these leave
# room for big frontends (thousands of shared instances) while refusing documents built to exhaust
# memory or the stack.
MAX_SIZE = 64 * 1024 * 1024
MAX_DEPTH = 64
MAX_ELEMENTS = 2_000_000
# Bound on the *expanded* size of a decoded document: every element counts 1 and every character
# of text 1, and a `<reference>` counts the whole size of what it points to each time it is used.
# Decoding shares the referenced value (cheap), but whoever walks it afterwards (JSON encoding,
# `str()`, writing parameters to disk) pays the expansion: without this bound a 3 KB body of
# nested references expands to gigabytes ("billion laughs" through aliases instead of entities).
MAX_EXPANDED = MAX_SIZE

# The namespaced variant of xml_marshaller (never used by SLAP, but harmless to accept).
_MARSHAL_NS = "{http://www.erp5.org/namespaces/marshaller}"
# Characters XML 1.0 cannot carry at all, not even as character references.
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_PROLOG_SPACE = re.compile(rb"[ \t\r\n]*")


def xml_safe(text: str) -> bool:
    """Whether `text` can travel in a SLAP document at all (XML 1.0 cannot carry most C0 controls
    nor surrogates, even escaped): what is not must be refused where it comes in, not when a
    document holding it is encoded later."""
    return _INVALID_XML_CHARS.search(text) is None


class WireError(SlapOSError, ValueError):
    """A payload is malformed, hostile, or holds something the SLAP wire format cannot carry."""


@dataclass
class WireObject:
    """One `<object module="slapos.slap.slap" class=…>`: constructor arguments and attributes."""

    klass: str
    args: tuple = ()
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.klass not in ALLOWED_CLASSES:
            raise WireError(
                f"class {self.klass!r} cannot travel on the SLAP wire; "
                f"allowed: {', '.join(sorted(ALLOWED_CLASSES))}"
            )

