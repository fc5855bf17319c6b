"""Encoding of the SLAP wire format: `dumps` and `encode_fragment` build the xml_marshaller text
directly (no lxml), byte-for-byte what the reference emits; the proxy encodes whole computers with
it on every node run. Split from slapos.slap.wire, which re-exports these names.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from .wire_limits import _INVALID_XML_CHARS, ALLOWED_CLASSES, WIRE_MODULE, WireError, WireObject

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import cost)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any


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
