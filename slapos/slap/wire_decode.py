"""Safe decoding of the SLAP wire format (`loads`): lxml, imported on first use, with a parser
target that never imports or instantiates anything named by the payload and refuses DTDs,
unknown tags, oversized, too deep or too large documents. Split from slapos.slap.wire, which
re-exports these names.
"""
from __future__ import annotations

from collections.abc import Callable

from .wire_limits import (
    _MARSHAL_NS,
    _PROLOG_SPACE,
    ALLOWED_CLASSES,
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_EXPANDED,
    MAX_SIZE,
    WIRE_MODULE,
    WireError,
    WireObject,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import cost)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any


# --------------------------------------------------------------------------------------------
# Decoding

_etree_module = None
# With entity substitution off, libxml2 hands a parser target every "&" of an attribute value
# as "&#38;" (so that entity references could be rebuilt); True when this libxml2 does that.
_ATTRIBUTE_AMPERSAND_QUIRK = False


class _ProbeTarget:
    def start(self, tag: str, attrib) -> None:
        self.value = attrib.get("v")

    def end(self, tag: str) -> None:
        """Nothing to do: the probe only looks at the attribute."""

    def close(self) -> str:
        return self.value


def _etree():
    """lxml.etree, imported on first use so that importing slapos.slap stays cheap."""
    global _etree_module, _ATTRIBUTE_AMPERSAND_QUIRK
    if _etree_module is None:
        from lxml import etree

        parser = etree.XMLParser(target=_ProbeTarget(), resolve_entities=False, no_network=True, load_dtd=False)
        parser.feed(b'<p v="&amp;"/>')
        _ATTRIBUTE_AMPERSAND_QUIRK = parser.close() == "&#38;"
        _etree_module = etree
    return _etree_module


def _attribute(value: str | None) -> str | None:
    """An attribute value as written in the document (undoing the quirk above: under it every
    "&" arrives as "&#38;" and nothing else contains "&", so the replacement is exact)."""
    if value is not None and _ATTRIBUTE_AMPERSAND_QUIRK and "&" in value:
        return value.replace("&#38;", "&")
    return value


def _prepare(data: str | bytes, max_size: int, what: str) -> bytes:
    """Size check, UTF-8 bytes, and refusal of any DTD before the parser sees the document."""
    if isinstance(data, str):
        if len(data) > max_size:
            raise WireError(f"{what} is larger than the {max_size} bytes allowed; refusing to parse it")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise WireError(f"{what} is not valid text: {e}") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise WireError(f"{what} must be text or bytes, not {type(data).__name__}")
    if len(raw) > max_size:
        raise WireError(f"{what} is {len(raw)} bytes, more than the {max_size} bytes allowed; refusing to parse it")
    # A DTD can only appear in the prolog (before the root element): scan it. Refusing every <!...>
    # there shuts out entity expansion (billion laughs) and external entities (local file reads).
    pos = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    while True:
        pos = _PROLOG_SPACE.match(raw, pos).end()
        if raw.startswith(b"<?", pos):
            end = raw.find(b"?>", pos + 2)
            if end < 0:
                break
            pos = end + 2
        elif raw.startswith(b"<!--", pos):
            end = raw.find(b"-->", pos + 4)
            if end < 0:
                break
            pos = end + 3
        elif raw.startswith(b"<!", pos):
            raise WireError(f"{what} contains a document type declaration (DOCTYPE/ENTITY); refused")
        else:
            break
    return raw


_CHUNK = 256 * 1024


def _parse(raw: bytes, target: Any) -> Any:
    """Run lxml's parser over `raw` with `target` receiving the events (no tree is built, so
    memory stays flat whatever the document); errors raised by the target propagate."""
    etree = _etree()
    parser = etree.XMLParser(
        target=target,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        encoding="utf-8",
    )
    try:
        for offset in range(0, len(raw), _CHUNK):
            parser.feed(raw[offset:offset + _CHUNK])
        return parser.close()
    except etree.XMLSyntaxError as e:
        reason = " ".join(str(getattr(e, "msg", None) or e).split())
        raise WireError(f"malformed XML: {reason}") from None


def _unescape_string(text: str | None) -> str:
    """Undo the marshaller's own (inner) escaping; the XML parser already undid the outer one."""
    if not text:
        return ""
    if "&" in text:
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text


def _scalar(tag: str, text: str | None) -> Any:
    if tag == "string" or tag == "unicode":
        return _unescape_string(text)
    if tag == "none":
        return None
    stripped = (text or "").strip()
    if tag == "int" or tag == "long":
        try:
            return int(stripped)
        except ValueError:
            raise WireError(f"<{tag}> holds {stripped[:40]!r}, not an integer") from None
    if tag == "bool":
        if stripped in ("1", "True"):
            return True
        if stripped in ("0", "False"):
            return False
        raise WireError(f"<bool> holds {stripped[:40]!r}, expected 1 or 0")
    if tag == "float":
        try:
            return float(stripped)
        except ValueError:
            raise WireError(f"<float> holds {stripped[:40]!r}, not a number") from None
    raise AssertionError(tag)  # pragma: no cover - _SCALARS and this function agree


_SCALARS = frozenset({"string", "unicode", "none", "int", "long", "bool", "float"})
_CONTAINERS = frozenset({"list", "tuple", "set", "dictionary", "object"})
_REFUSED = {
    "code": "<code> (a marshalled Python code object) is refused: it would run code",
    "complex": "<complex> is not part of the SLAP wire format",
}


class _Frame:
    __slots__ = ("tag", "items", "ref", "klass", "start")

    def __init__(self, tag: str, ref: str | None = None, klass: str | None = None, start: int = 0) -> None:
        self.tag = tag
        self.items: list = []
        self.ref = ref
        self.klass = klass
        self.start = start  # the expanded size of the document when this container opened


def _finish(frame: _Frame, object_hook: Callable[[WireObject], Any] | None) -> Any:
    tag, items = frame.tag, frame.items
    if tag == "list":
        return items
    if tag == "tuple":
        return tuple(items)
    if tag == "dictionary":
        if len(items) % 2:
            raise WireError("<dictionary> has an odd number of children (keys and values must alternate)")
        try:
            return dict(zip(items[0::2], items[1::2], strict=True))
        except TypeError:
            raise WireError("<dictionary> has a key that is not hashable (a list, dict or set)") from None
    if tag == "set":
        try:
            return set(items)
        except TypeError:
            raise WireError("<set> holds an element that is not hashable") from None
    # object
    if len(items) != 2 or type(items[0]) is not tuple or type(items[1]) is not dict:
        raise WireError(
            f"<object class={frame.klass!r}> must hold a <tuple> of arguments then a <dictionary> of attributes"
        )
    attrs = items[1]
    for key in attrs:
        if type(key) is not str:
            raise WireError(f"<object class={frame.klass!r}> has a non-text attribute name {key!r}")
    obj = WireObject(frame.klass, items[0], attrs)
    return object_hook(obj) if object_hook is not None else obj


class _MarshalTarget:
    """lxml parser target turning parse events into Python values, with the safety checks."""

    def __init__(self, object_hook, max_depth: int, max_elements: int, max_expanded: int = MAX_EXPANDED) -> None:
        self.object_hook = object_hook
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.max_expanded = max_expanded
        # Expanded size of the document so far (see MAX_EXPANDED): +1 per element, +1 per character
        # of text, + the size of the target at each <reference>. A container's own size is the
        # growth between its start and its end, so one counter serves (cheap: no per-frame sums).
        # Only a reference can make it outgrow the raw document, so only references check it.
        self.expanded = 0
        self.stack: list[_Frame] = []
        self.memo: dict[str, Any] = {}
        self.weights: dict[str, int] = {}  # id -> expanded size of that container
        # ids of containers opened but not finished: a reference to one of them is a cycle
        self.pending: set[str] = set()
        self.text: list[str] = []
        self.in_scalar: str | None = None  # tag of the scalar element being read
        self.count = 0
        self.result: list = []

    def start(self, tag: str, attrib) -> None:
        if tag[0] == "{":
            if not tag.startswith(_MARSHAL_NS):
                raise WireError(f"unexpected namespaced element {tag}")
            tag = tag[len(_MARSHAL_NS):]
        self.count += 1
        if self.count > self.max_elements:
            raise WireError(f"document has more than {self.max_elements} elements; refusing it")
        stack = self.stack
        if self.in_scalar is not None:
            raise WireError(f"<{tag}> is not allowed inside <{self.in_scalar}>")
        if len(stack) >= self.max_depth:
            raise WireError(f"document is nested more than {self.max_depth} levels deep; refusing it")
        if tag in _SCALARS:
            if not stack:
                raise WireError(f"root element is <{tag}>, expected <marshal>")
            # scalars need no frame: their tag and text are all there is
            self.in_scalar = tag
            self.text = []
            return
        if not stack:
            if tag != "marshal" or self.result:
                raise WireError(f"root element is <{tag}>, expected <marshal>")
            stack.append(_Frame("marshal"))
            return
        if stack[-1].tag == "reference":
            raise WireError(f"<{tag}> is not allowed inside <reference>")
        if tag in _CONTAINERS:
            ref = attrib.get("id")
            klass = None
            if tag == "object":
                module, klass = attrib.get("module"), attrib.get("class")
                if module != WIRE_MODULE or klass not in ALLOWED_CLASSES:
                    raise WireError(
                        f"refusing to decode an object of class {module}.{klass}: only "
                        f"{WIRE_MODULE}.{{{', '.join(sorted(ALLOWED_CLASSES))}}} are allowed"
                    )
            if ref is not None:
                if ref in self.memo or ref in self.pending:
                    raise WireError(f"id {ref!r} is used twice in the document")
                self.pending.add(ref)
            self.expanded += 1
            stack.append(_Frame(tag, ref, klass, self.expanded))
        elif tag == "reference":
            stack.append(_Frame(tag, attrib.get("id")))
        elif tag in _REFUSED:
            raise WireError(_REFUSED[tag])
        else:
            raise WireError(f"unknown element <{tag}> in a marshalled document")

    def data(self, text: str) -> None:
        if self.in_scalar is not None:
            self.text.append(text)
        elif not text.isspace():
            where = f"<{self.stack[-1].tag}>" if self.stack else "the document"
            raise WireError(f"unexpected text {text[:40]!r} in {where}")

    def end(self, tag: str) -> None:
        scalar = self.in_scalar
        if scalar is not None:
            self.in_scalar = None
            text = self.text
            if scalar == "string":
                value = text[0] if len(text) == 1 else "".join(text)
                if "&" in value:
                    value = value.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
                self.expanded += 1 + len(value)
            else:
                value = _scalar(scalar, "".join(text))
                self.expanded += 1
            self.stack[-1].items.append(value)
            return
        frame = self.stack.pop()
        ftag = frame.tag
        if ftag == "reference":
            ref = frame.ref
            if frame.items:
                raise WireError("<reference> must be empty")
            if ref in self.memo:
                value = self.memo[ref]
                self.expanded += self.weights[ref]  # the alias costs what it points to, every time
                if self.expanded > self.max_expanded:
                    raise WireError(
                        f"document expands to more than {self.max_expanded} elements and characters "
                        "(<reference> aliases count each time they are used); refusing it"
                    )
            elif ref in self.pending:
                raise WireError(f"<reference id={ref!r}> points to its own container (cyclic); refused")
            else:
                raise WireError(f"<reference id={ref!r}> points to no earlier element")
        elif ftag == "marshal":
            if len(frame.items) != 1:
                raise WireError(f"<marshal> must hold exactly one value, not {len(frame.items)}")
            self.result = frame.items
            return
        else:
            value = _finish(frame, self.object_hook)
            if frame.ref is not None:
                self.pending.discard(frame.ref)
                self.memo[frame.ref] = value
                self.weights[frame.ref] = self.expanded - frame.start + 1
        self.stack[-1].items.append(value)

    def close(self) -> list:
        return self.result


def loads(
    data: str | bytes,
    object_hook: Callable[[WireObject], Any] | None = None,
    *,
    max_size: int = MAX_SIZE,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
    max_expanded: int = MAX_EXPANDED,
) -> Any:
    """Decode an xml_marshaller document safely.

    `<object>` elements become `WireObject`s (or `object_hook(wire_object)`); only the four SLAP
    classes of module `slapos.slap.slap` are accepted. Anything malformed or hostile raises WireError,
    including a document whose expanded size (`<reference>` aliases counted at each use) exceeds
    `max_expanded`.
    """
    raw = _prepare(data, max_size, "XML document")
    result = _parse(raw, _MarshalTarget(object_hook, max_depth, max_elements, max_expanded))
    if not result:
        raise WireError("empty or truncated marshalled document")
    return result[0]
