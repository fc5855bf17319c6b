"""The HTTP side of the proxy's routes: `Request` (the fields of a call, decoded and checked),
`Response`, and the decoding of query strings and form bodies (bounded: `MAX_FIELDS` fields,
the body size limit of the configuration). `slapos.proxy.app` routes; this module only reads and
answers, so that every route decodes its input the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from slapos.slap import wire

from . import allocation
from .access import OPEN, Identity
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

XML = "text/xml; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"
MAX_FIELDS = 64


class _BoundedCache(dict):
    """A dict that forgets everything when full: cheap, and enough for repeated identical input."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        if len(self) >= self.size:
            self.clear()
        self[key] = value


_MISSING = object()
MAX_CACHED_TEXT = 8192
# raw marshalled field → decoded value; raw form body → fields. Every request of an instance
# buildout or of a `slapos request` loop repeats the same bodies; decoding XML is the costly part.
_DECODED = _BoundedCache(2048)
_FORMS = _BoundedCache(1024)


@dataclass
class Response:
    """What a route answers (the WSGI entry adds Content-Type and Content-Length)."""

    body: bytes
    status: str = "200 OK"
    content_type: str = TEXT
    headers: tuple = ()


def text(body: str) -> Response:
    return Response(body.encode("utf-8"))


def xml(body: bytes | str) -> Response:
    return Response(body if isinstance(body, bytes) else body.encode("ascii"), content_type=XML)


class Request:
    """The parts of a WSGI request the routes need: fields (query or form) and the partition header."""

    __slots__ = ("environ", "endpoint", "fields", "max_expanded", "identity")

    def __init__(self, environ: dict, endpoint: str, fields: dict[str, str], max_expanded: int = wire.MAX_EXPANDED,
                 identity: Identity = OPEN):
        self.environ = environ
        self.endpoint = endpoint
        self.fields = fields
        # a marshalled field may not expand (references counted at each use) beyond the body limit
        self.max_expanded = max_expanded
        self.identity = identity  # who calls (access.resolve): checked by each route

    def field(self, name: str) -> str:
        try:
            return self.fields[name]
        except KeyError:
            raise BadRequest(f"missing field '{name}' for {self.endpoint}") from None

    def reference(self, name: str) -> str:
        """A required, non-empty identifier field (computer, partition, URL, title)."""
        value = self.field(name)
        if not value.strip():
            raise BadRequest(f"field '{name}' of {self.endpoint} is empty")
        return self._sendable(name, value)

    def optional(self, name: str) -> str | None:
        """An optional field; the text 'None' means None (the client sends None that way, §1.1)."""
        value = self.fields.get(name)
        return None if value is None or value == "None" or value == "" else self._sendable(name, value)

    def _sendable(self, name: str, value: str) -> str:
        """Identifiers end up in documents: one XML cannot carry would break every later document
        of the computer (a 500 for the node), so it is refused here."""
        if not wire.xml_safe(value):
            raise BadRequest(f"field '{name}' of {self.endpoint} holds a control character XML cannot carry")
        return value

    def marshalled(self, name: str, default: Any = None, required: bool = False) -> Any:
        """The decoded value of a marshalled field. Callers must not modify it: small documents
        are decoded once and shared (clients send the same ones again and again)."""
        raw = self.fields.get(name)
        if raw is None or raw == "":
            if required:
                raise BadRequest(f"missing field '{name}' for {self.endpoint}")
            return default
        cached = _DECODED.get(raw, _MISSING)
        if cached is not _MISSING:
            return cached
        try:
            value = wire.loads(raw, max_expanded=self.max_expanded)
        except wire.WireError as e:
            raise BadRequest(f"field '{name}' of {self.endpoint}: {e}") from None
        if len(raw) <= MAX_CACHED_TEXT:
            _DECODED.put(raw, value)
        return value

    def partition_header(self) -> tuple[str, str] | None:
        """(computer_id, partition_id) from `Authorization: X-SlapPartition computer_id=…, computer_partition_id=…`."""
        header = self.environ.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() != "x-slappartition":
            return None
        items: dict[str, str] = {}
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise BadRequest("malformed X-SlapPartition authorization header: expected key=value items")
            items[key.strip()] = value.strip()
        try:
            return items["computer_id"], items["computer_partition_id"]
        except KeyError:
            raise BadRequest(
                "X-SlapPartition authorization header needs computer_id and computer_partition_id"
            ) from None


def state_field(req: Request, name: str = "state") -> str | None:
    """`state` is marshalled (`<marshal><none/></marshal>`); plain text is accepted for curl users."""
    raw = req.fields.get(name)
    if raw is None or raw == "" or raw == "None":
        return None
    value = req.marshalled(name) if raw.lstrip().startswith("<") else raw
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"field '{name}' must be a state name, not {type(value).__name__}")
    return allocation.check_state(value)


def bool_field(req: Request, name: str) -> bool:
    raw = req.fields.get(name)
    if raw is None or raw == "":
        return False
    if raw.lstrip().startswith("<"):
        value = req.marshalled(name)
    else:
        value = raw.strip().lower() in ("1", "true", "yes")
    if not isinstance(value, (bool, int)):
        raise BadRequest(f"field '{name}' must be a boolean")
    return bool(value)


def dict_field(req: Request, name: str) -> dict:
    value = req.marshalled(name, default={})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"field '{name}' of {req.endpoint} must be a marshalled dictionary, not {type(value).__name__}")
    return value


def read_form(environ: dict, limit: int) -> dict[str, str]:
    """The fields of a POST body: form-encoded, at most `limit` bytes, UTF-8."""
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type and not content_type.lower().startswith("application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(
            f"send the fields as application/x-www-form-urlencoded, not {content_type.split(';')[0]}"
        )
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("invalid Content-Length header") from None
    if length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    fields = _FORMS.get(body)
    if fields is not None:
        return fields
    try:
        fields = parse_fields(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    if len(body) <= MAX_CACHED_TEXT:
        _FORMS.put(body, fields)
    return fields


def parse_fields(data: str) -> dict[str, str]:
    """The fields of a query string or form body (at most MAX_FIELDS; the first of a name wins)."""
    if not data:
        return {}
    try:
        pairs = parse_qsl(data, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("a form field is not UTF-8 text") from None
    except ValueError:
        raise BadRequest(f"too many form fields (more than {MAX_FIELDS})") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)  # the first occurrence wins, as in the reference
    return fields
