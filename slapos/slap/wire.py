"""The SLAP wire formats: xml_marshaller documents and instance XML (SLAP-PROTOCOL.md §3).

* `dumps(value)` / `loads(data)`: the marshalled object graph carried by every `*_xml` form field and
  by the XML answers of a master (`<marshal>…</marshal>`), byte-for-byte what the reference emits.
* `dumps_instance_xml(d)` / `loads_instance_xml(data)`: the `<instance><parameter id=…>` format in
  which masters store instance and connection parameters.
* `wrap_json_parameters` / `unwrap_json_parameters`: the `_` (JSON-in-XML) convention (§3.5).

Decoding is safe by construction: it never imports or instantiates anything named by the payload.
An `<object>` becomes a plain `WireObject` record (or whatever `object_hook` makes of it), and only
the four SLAP classes are accepted. DTDs (hence entity expansion and external entities), `<code>`,
`<complex>`, unknown tags, oversized, too deep or too large documents are refused with `WireError`.

`dumps` builds the text directly (no lxml) because the proxy encodes whole computers with it on
every node run; lxml is only imported, lazily, by the decoders.

Cut along its seams: wire_limits (what may travel, limits, WireError), wire_encode (`dumps`),
wire_decode (`loads`); this module keeps instance XML and the `_` convention and re-exports all.
"""
from __future__ import annotations

from collections.abc import Mapping

from .wire_decode import _attribute, _parse, _prepare, loads
from .wire_encode import Fragment, dumps, encode_fragment
from .wire_limits import (
    _INVALID_XML_CHARS,
    ALLOWED_CLASSES,
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_EXPANDED,
    MAX_SIZE,
    WIRE_MODULE,
    WireError,
    WireObject,
    xml_safe,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import cost)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = [
    "ALLOWED_CLASSES",
    "WIRE_MODULE",
    "WireError",
    "WireObject",
    "dumps",
    "loads",
    "dumps_instance_xml",
    "loads_instance_xml",
    "wrap_json_parameters",
    "unwrap_json_parameters",
    "is_json_parameters",
    "MAX_SIZE",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_EXPANDED",
    "xml_safe",
    "Fragment",
    "encode_fragment",
]


# --------------------------------------------------------------------------------------------
# Instance XML (§3.4)

_INSTANCE_HEADER = "<?xml version='1.0' encoding='utf-8'?>\n"


def _escape_text(text: str) -> str:
    if _INVALID_XML_CHARS.search(text):
        raise WireError(f"value {text[:40]!r} holds a control character or surrogate that XML cannot carry")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _escape_attribute(text: str) -> str:
    return (
        _escape_text(text)
        .replace('"', "&quot;")
        .replace("\n", "&#10;")
        .replace("\t", "&#9;")
    )


def dumps_instance_xml(parameters: Mapping[str, Any]) -> str:
    """Instance XML of a parameter dict: keys sorted, values through str(), as the reference writes it."""
    if not parameters:
        return _INSTANCE_HEADER + "<instance/>\n"
    out = [_INSTANCE_HEADER, "<instance>\n"]
    for key in sorted(parameters, key=str):
        value = str(parameters[key])
        if value:
            out.append(f'  <parameter id="{_escape_attribute(str(key))}">{_escape_text(value)}</parameter>\n')
        else:
            out.append(f'  <parameter id="{_escape_attribute(str(key))}"></parameter>\n')
    out.append("</instance>\n")
    return "".join(out)


class _InstanceTarget:
    """Parser target collecting the direct <parameter> children of <instance>."""

    def __init__(self, max_depth: int, max_elements: int) -> None:
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.depth = 0
        self.count = 0
        self.result: dict[str, str | None] = {}
        self.key: str | None = None
        self.text: list[str] = []
        self.child_seen = False

    def start(self, tag: str, attrib) -> None:
        self.depth += 1
        self.count += 1
        if self.count > self.max_elements:
            raise WireError(f"instance XML has more than {self.max_elements} elements; refusing it")
        if self.depth > self.max_depth:
            raise WireError(f"instance XML is nested more than {self.max_depth} levels deep; refusing it")
        if self.depth == 1 and tag != "instance":
            raise WireError(f"root element is <{tag}>, expected <instance>")
        if self.depth == 2 and tag == "parameter":
            key = _attribute(attrib.get("id"))
            if key is None:
                raise WireError("a <parameter> element has no id attribute")
            self.key = key
            self.text = []
            self.child_seen = False
        elif self.depth == 3:
            # mixed content: like the reference, the value is the text before the first child
            self.child_seen = True

    def data(self, text: str) -> None:
        if self.depth == 2 and self.key is not None and not self.child_seen:
            self.text.append(text)

    def end(self, tag: str) -> None:
        if self.depth == 2 and self.key is not None:
            text = "".join(self.text) or None
            key, self.key = self.key, None
            if key in self.result:
                previous = self.result[key]
                text = text if previous is None else previous if text is None else f"{previous} {text}"
            self.result[key] = text
        self.depth -= 1

    def close(self) -> dict[str, str | None]:
        return self.result


def loads_instance_xml(
    data: str | bytes,
    *,
    max_size: int = MAX_SIZE,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> dict[str, str | None]:
    """Parameters of an instance XML document: `id` → text (None when empty); a repeated id is
    joined to the previous value with a space, as the reference does."""
    raw = _prepare(data, max_size, "instance XML")
    return _parse(raw, _InstanceTarget(max_depth, max_elements))


# --------------------------------------------------------------------------------------------
# The `_` (JSON-in-XML) convention (§3.5)

JSON_KEY = "_"


def wrap_json_parameters(parameters: Any) -> dict[str, str]:
    """`{"_": <JSON of parameters, indent 2>}`; a dict whose only key is already `_` is kept."""
    import json

    if isinstance(parameters, Mapping) and set(parameters) == {JSON_KEY}:
        return {JSON_KEY: str(parameters[JSON_KEY])}
    try:
        return {JSON_KEY: json.dumps(parameters, indent=2)}
    except (TypeError, ValueError) as e:
        raise WireError(f"parameters cannot be serialised as JSON: {e}") from None


def is_json_parameters(parameters: Mapping[str, Any] | None) -> bool:
    """True when the parameters follow the `_` convention (a single `_` key holding text)."""
    return bool(parameters) and set(parameters) == {JSON_KEY} and isinstance(parameters[JSON_KEY], str)


def unwrap_json_parameters(parameters: Mapping[str, Any] | None) -> Any:
    """The JSON value inside `{"_": json}`; other dicts are returned unchanged (as a new dict)."""
    import json

    if not is_json_parameters(parameters):
        return dict(parameters or {})
    try:
        return json.loads(parameters[JSON_KEY])
    except ValueError as e:
        raise WireError(f"parameter '_' does not hold valid JSON: {e}") from None
