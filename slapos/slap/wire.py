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
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from slapos.base.errors import SlapOSError

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


# --------------------------------------------------------------------------------------------
# Encoding


def _escape_string(text: str) -> str:
    """The reference's double escaping (§3.1), then non-ASCII as decimal character references,
    exactly as xml_marshaller + lxml serialise a <string>."""
    if _INVALID_XML_CHARS.search(text):
        raise WireError(
            f"string {text[:40]!r} holds a control character or surrogate that XML cannot carry"
        )
    if "&" in text:
        text = text.replace("&", "&amp;amp;")
    if "<" in text:
        text = text.replace("<", "&amp;lt;")
    if ">" in text:
        text = text.replace(">", "&amp;gt;")
    if "\r" in text:
        text = text.replace("\r", "&#13;")
    if not text.isascii():
        text = text.encode("ascii", "xmlcharrefreplace").decode("ascii")
    return text


# "<string>…</string>" of short strings already seen: SLAP documents repeat the same attribute names,
# states and URLs for every partition, and escaping is the bulk of the encoding time.
_STRING_CACHE: dict[str, str] = {}
_STRING_CACHE_SIZE = 65536
_STRING_CACHE_MAX_LENGTH = 256


def _string_element(text: str) -> str:
    element = _STRING_CACHE.get(text)
    if element is None:
        element = f"<string>{_escape_string(text)}</string>"
        if len(text) <= _STRING_CACHE_MAX_LENGTH:
            if len(_STRING_CACHE) >= _STRING_CACHE_SIZE:
                _STRING_CACHE.clear()
            _STRING_CACHE[text] = element
    return element


class _Encoder:
    """One dumps() run: the id counter and the memo of containers already emitted."""

    __slots__ = ("out", "counter", "memo")

    def __init__(self) -> None:
        self.out: list[str] = []
        # xml_marshaller starts at 1 and increments before each container: the first id is i2.
        self.counter = 1
        # id(obj) -> [ref, obj, finished]; obj is kept so temporary objects stay alive and their
        # id() cannot be reused by another object during this run.
        self.memo: dict[int, list] = {}

    def _open(self, value: Any) -> str | None:
        """Allocate an id for a container, or emit a <reference> if it was emitted before."""
        entry = self.memo.get(id(value))
        if entry is not None:
            if not entry[2]:
                raise WireError("cannot encode a value that contains itself (cyclic structure)")
            self.out.append(f'<reference id="{entry[0]}"/>')
            return None
        self.counter += 1
        ref = f"i{self.counter}"
        self.memo[id(value)] = [ref, value, False]
        return ref

    def _close(self, value: Any) -> None:
        self.memo[id(value)][2] = True

    def encode(self, value: Any) -> None:
        out = self.out
        kind = type(value)
        if kind is str:
            out.append(_STRING_CACHE.get(value) or _string_element(value))
        elif value is None:
            out.append("<none/>")
        elif kind is bool:
            out.append("<bool>1</bool>" if value else "<bool>0</bool>")
        elif kind is int:
            self._int(value)
        elif kind is dict:
            self._dict(value)
        elif kind is list:
            self._sequence("list", value)
        elif kind is tuple:
            self._tuple(value)
        elif kind is float:
            out.append(f"<float>{value!r}</float>")
        elif kind is WireObject:
            self._object(value, value)
        elif kind is Fragment:
            self.counter = value._emit(out, self.counter)
        else:
            self._other(value)

    def _int(self, value: int) -> None:
        tag = "int" if -(10**24) < value < 10**24 else "long"
        self.out.append(f"<{tag}>{value}</{tag}>")

    def _other(self, value: Any) -> None:
        """Subclasses of the basic types, bytes, sets and objects exposing __wire__()."""
        if isinstance(value, bool):
            self.encode(bool(value))
        elif isinstance(value, str):
            self.encode(str(value))
        elif isinstance(value, int):
            self._int(int(value))
        elif isinstance(value, float):
            self.out.append(f"<float>{float(value)!r}</float>")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError as e:
                raise WireError(f"bytes value is not UTF-8 text ({e}); send text instead") from None
            self.encode(text)
        elif isinstance(value, Mapping):
            self._dict(value)
        elif isinstance(value, (set, frozenset)):
            self._sequence("set", value)
        elif isinstance(value, list):
            self._sequence("list", value)
        elif isinstance(value, tuple):
            self._tuple(value)
        elif isinstance(value, WireObject):
            self._object(value, value)
        elif callable(getattr(value, "__wire__", None)):
            wire = value.__wire__()
            if not isinstance(wire, WireObject):
                raise WireError(f"{type(value).__name__}.__wire__() must return a WireObject")
            self._object(value, wire)
        else:
            raise WireError(
                f"cannot encode a {type(value).__module__}.{type(value).__qualname__} on the SLAP wire"
            )

    def _dict(self, value: Mapping) -> None:
        ref = self._open(value)
        if ref is None:
            return
        if not value:
            self.out.append(f'<dictionary id="{ref}"/>')
        else:
            try:
                keys = sorted(value)
            except TypeError:  # mixed key types: the reference sorts them by repr
                keys = sorted(value, key=repr)
            out = self.out
            out.append(f'<dictionary id="{ref}">')
            encode = self.encode
            cache = _STRING_CACHE
            for key in keys:
                # inlined fast path for the common str keys and values
                if type(key) is str:
                    out.append(cache.get(key) or _string_element(key))
                else:
                    encode(key)
                item = value[key]
                if type(item) is str:
                    out.append(cache.get(item) or _string_element(item))
                else:
                    encode(item)
            out.append("</dictionary>")
        self._close(value)

    def _sequence(self, tag: str, value: Any) -> None:
        ref = self._open(value)
        if ref is None:
            return
        if not value:
            self.out.append(f'<{tag} id="{ref}"/>')
        else:
            self.out.append(f'<{tag} id="{ref}">')
            encode = self.encode
            for item in value:
                encode(item)
            self.out.append(f"</{tag}>")
        self._close(value)

    def _tuple(self, value: tuple) -> None:
        if not value:
            self.out.append("<tuple/>")
            return
        self.out.append("<tuple>")
        encode = self.encode
        for item in value:
            encode(item)
        self.out.append("</tuple>")

    def _object(self, identity: Any, wire: WireObject) -> None:
        ref = self._open(identity)
        if ref is None:
            return
        if wire.klass not in ALLOWED_CLASSES:
            raise WireError(f"class {wire.klass!r} cannot travel on the SLAP wire")
        self.out.append(f'<object id="{ref}" module="{WIRE_MODULE}" class="{wire.klass}">')
        self._tuple(tuple(wire.args))
        self._dict(wire.attrs)
        self.out.append("</object>")
        self._close(identity)


# The opening of every element that carries an id, and the id's number. "<" starts nothing else in
# an encoded document (string text escapes it, and the attributes around it are fixed names), so
# splitting on this finds every id and only ids.
_ID_SPLIT = re.compile(r'(<(?:dictionary|list|set|object|reference) id="i)(\d+)')


class Fragment:
    """A value encoded once, to be placed in other documents: `dumps` copies its text in, with
    the container ids shifted to the position it lands at (ids count up through a document, §3.1).

    The output is the one `dumps` gives for the value itself, provided the value shares no
    container with the rest of the document (a shared one would have been a `<reference>`).
    The text at the last position used is kept, so placing it where it was costs a list append."""

    __slots__ = ("_pieces", "ids", "_placed")

    def __init__(self, text: str, ids: int) -> None:
        """`text` as encoded with its first id at i1, using ids i1 to i`ids`."""
        pieces: list = _ID_SPLIT.split(text)
        for index in range(2, len(pieces), 3):
            pieces[index] = int(pieces[index])
        self._pieces = pieces
        self.ids = ids
        self._placed = (0, text)  # (ids offset, text); replaced as one tuple, so threads may share it

    def _emit(self, out: list[str], counter: int) -> int:
        offset, text = self._placed
        if offset != counter:
            pieces = list(self._pieces)
            for index in range(2, len(pieces), 3):
                pieces[index] = str(pieces[index] + counter)
            text = "".join(pieces)
            self._placed = (counter, text)
        out.append(text)
        return counter + self.ids


def encode_fragment(value: Any) -> Fragment:
    """Encode `value` for placing inside documents built later by `dumps` (see `Fragment`)."""
    encoder = _Encoder()
    encoder.counter = 0
    try:
        encoder.encode(value)
    except RecursionError:
        raise WireError("value is nested too deeply to encode") from None
    return Fragment("".join(encoder.out), encoder.counter)


def dumps(value: Any) -> str:
    """Encode `value` as an xml_marshaller document, exactly as the reference does (§3.1).

    Accepts None, bool, int, float, str, bytes (UTF-8), tuple, list, set, dict, WireObject, any
    object with a `__wire__()` method returning a WireObject, and `Fragment`s (values encoded
    beforehand by `encode_fragment`)."""
    encoder = _Encoder()
    encoder.out.append("<marshal>")
    try:
        encoder.encode(value)
    except RecursionError:
        raise WireError("value is nested too deeply to encode") from None
    encoder.out.append("</marshal>")
    return "".join(encoder.out)


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
