"""The proxy's WSGI application: a thin router over the SLAP endpoints.

Each route decodes its form fields, calls the domain (`allocation`, `computers`) inside one
transaction, and encodes the answer. Bad input of any kind is answered with a 4xx and a one-line
plain-text reason; the reference answers most of it with a 500.

    app = make_app(ProxyConfig(database=tmp_path / "proxy.db"))   # a fresh app on a temp database
"""
from __future__ import annotations

import logging
import secrets
import sqlite3
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from slapos.slap import wire

from . import access, allocation, computers, documents, identity, ownership
from .access import ANONYMOUS, BASE_KEY, OPEN, Identity, require_node, require_partition
from .cache import CacheServer
from .config import ProxyConfig
from .db import Database
from .errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from .metrics import RequestMetrics
from .values import normalise_params

log = logging.getLogger("slapos.proxy")

XML = "text/xml; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"
# the dashboard's pages: same origin only, no inline script or style, never framed, no referrer
# (an instance page's URL may carry ?secrets=1)
HTML_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
MAX_FIELDS = 64
CERTIFICATE = b"<marshal><dictionary id=\"i2\"><string>certificate</string><string></string>" \
    b"<string>key</string><string></string></dictionary></marshal>"
EMPTY_STRING = b"<marshal><string></string></marshal>"

# Endpoints of the SLAP protocol this proxy does not serve, as the reference (404, §2.1–2.2).
NOT_SERVED = {
    "getComputerStatus": "computer status is not kept by this proxy",
    "generateComputerCertificate": "this proxy issues no certificates",
    "revokeComputerCertificate": "this proxy issues no certificates",
    "requestComputer": "computers register themselves with slapos node format",
    "getHostingSubscriptionIpList": "this proxy does not compute firewall address lists",
    "updateComputerPartitionRelatedInstanceList": "this proxy does not track related instance lists",
    "getComputerPartitionStatus": "partition status is not kept by this proxy",
}


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


def new_run_id() -> str:
    """A random id for one proxy run (`getRunId`): a client seeing it change knows the proxy restarted."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


@dataclass
class Response:
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


def _state_field(req: Request, name: str = "state") -> str | None:
    """`state` is marshalled (`<marshal><none/></marshal>`); plain text is accepted for curl users."""
    raw = req.fields.get(name)
    if raw is None or raw == "" or raw == "None":
        return None
    value = req.marshalled(name) if raw.lstrip().startswith("<") else raw
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"field '{name}' must be a state name, not {type(value).__name__}")
    return allocation.check_state(value)


def _bool_field(req: Request, name: str) -> bool:
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


def _dict_field(req: Request, name: str) -> dict:
    value = req.marshalled(name, default={})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"field '{name}' of {req.endpoint} must be a marshalled dictionary, not {type(value).__name__}")
    return value


class ProxyApp:
    """WSGI callable. `mount(prefix, app)` attaches another WSGI app under a path prefix (room for
    the binary cache service, which lives in its own module)."""

    def __init__(self, config: ProxyConfig, db: Database | None = None):
        self.config = config
        self.db = db if db is not None else Database.open(config.database)
        self.cache = documents.DocumentCache(self.db)
        self.access = access.Access(config.access, config.node_credential, self.db)
        with self.db.write() as conn:  # busy partitions of a database from before credentials
            access.issue_missing(conn)
        self.run_id = new_run_id()
        self.mounts: list[tuple[str, Callable]] = []
        # binary cache for nodes (slapos node software); answers 503 until configured
        self.mount("/shacache", CacheServer(
            *(config.shacache_directories or (None, None)),
            max_entry_size=config.shacache_max_entry_size, quota=config.shacache_quota,
        ))
        # read-only user API (service/computer commands), answering for the caller's own records
        with self.db.write(documents=False) as conn:
            ownership.ensure_tables(conn)
        from .hateoas import HateoasApp

        self.mount("/hateoas", HateoasApp(self.db))
        get, post = "GET", "POST"
        self.routes: dict[str, tuple[str, Callable[[Request], Response]]] = {
            # computer (node) side
            "getFullComputerInformation": (get, self.get_full_computer_information),
            "getComputerInformation": (get, self.get_full_computer_information),
            "loadComputerConfigurationFromXML": (post, self.load_computer_configuration),
            "supplySupply": (post, self.supply),
            "buildingSoftwareRelease": (post, self.software_report("building")),
            "availableSoftwareRelease": (post, self.software_report("available")),
            "destroyedSoftwareRelease": (post, self.software_report("destroyed")),
            "softwareReleaseError": (post, self.software_report("error")),
            "useComputer": (post, self.use_computer),
            "computerBang": (post, self.computer_bang),
            "getSoftwareReleaseListFromSoftwareProduct": (get, self.software_product),
            # partition side
            "registerComputerPartition": (get, self.register_computer_partition),
            "getComputerPartitionCertificate": (get, self.partition_certificate),
            "requestComputerPartition": (post, self.request_computer_partition),
            "setComputerPartitionConnectionXml": (post, self.set_connection),
            "startedComputerPartition": (post, self.partition_report("started")),
            "stoppedComputerPartition": (post, self.partition_report("stopped")),
            "destroyedComputerPartition": (post, self.destroyed_partition),
            "softwareInstanceError": (post, self.instance_error),
            "softwareInstanceBang": (post, self.instance_bang),
            "softwareInstanceRename": (post, self.instance_rename),
            # proxy only
            "getRunId": (get, lambda req: text(self.run_id)),
            "getHateoasUrl": (get, self.hateoas_url),
            "hateoas": (get, lambda req: Response(b"", "308 Permanent Redirect", headers=(("Location", "/hateoas/"),))),
            "reportNodeStatus": (post, self.node_status_report),
            "": (get, self.index),
            # operators: dashboard, machine-readable status, Prometheus metrics (slapos/proxy/dashboard.py)
            "dashboard": (get, self.page("overview")),
            "dashboard/computer": (get, self.page("computer")),
            "dashboard/instance": (get, self.page("instance")),
            "dashboard/static/dashboard.css": (get, self.static("dashboard.css")),
            "dashboard/static/dashboard.js": (get, self.static("dashboard.js")),
            "dashboard/static/favicon.svg": (get, self.static("favicon.svg")),
            "status.json": (get, self.status_json),
            "metrics": (get, self.metrics_text),
        }
        self.requests = RequestMetrics(set(self.routes) | {"shacache"})  # .worker set by server.py
        self._dashboard = None

    def mount(self, prefix: str, app: Callable) -> None:
        self.mounts.append(("/" + prefix.strip("/") + "/", app))

    def close(self) -> None:
        self.db.close()

    # -- WSGI ------------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        refusal: ProxyError | None = None
        try:
            identity = self.access.resolve(environ)  # strips /c/<credential> from PATH_INFO
        except ProxyError as e:
            identity, environ["PATH_INFO"], refusal = ANONYMOUS, "/", e
        except sqlite3.OperationalError as e:  # the credential look-up met a busy database
            log.warning("%s: database busy while checking a credential: %s", method, e)
            identity, environ["PATH_INFO"] = ANONYMOUS, "/"
            refusal = ServiceUnavailable("database busy: retry later")
        path = environ.get("PATH_INFO") or "/"
        for prefix, app in self.mounts:
            if refusal is None and path.startswith(prefix):
                if method not in ("GET", "HEAD") and not identity.trusted:
                    refusal = Forbidden(f"{method} {prefix}: only the node may store into this binary cache")
                    break
                return self._counted(prefix.strip("/"), app, environ, start_response, started)
        endpoint = path[1:] if path.startswith("/") else path
        try:
            if refusal is not None:
                raise refusal
            response = self.dispatch(environ, endpoint, method, identity)
        except ProxyError as e:
            response = Response(str(e).encode("utf-8"), f"{e.status} {e.reason}")
            if isinstance(e, MethodNotAllowed):
                response.headers = (("Allow", e.allowed),)
            log.info("%s /%s → %d %s", method, endpoint[:80], e.status, e)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                log.exception("%s /%s failed", method, endpoint[:80])
                response = Response(b"internal error in the proxy: see its log", "500 Internal Server Error")
            else:  # another process holds the database longer than the busy timeout
                log.warning("%s /%s: database busy: %s", method, endpoint[:80], e)
                response = Response(b"database busy: retry later", "503 Service Unavailable")
        except Exception:
            log.exception("%s /%s failed", method, endpoint[:80])
            response = Response(
                b"internal error in the proxy: see its log", "500 Internal Server Error"
            )
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
        headers.extend(response.headers)
        start_response(response.status, headers)
        self.requests.observe(endpoint, method, response.status, time.perf_counter() - started)
        return [response.body]

    def _counted(self, name: str, app: Callable, environ: dict, start_response: Callable, started: float):
        """A mounted application's answer, counted in the request metrics like ours."""
        answer: list[str] = []

        def counted(status, headers, exc_info=None):
            answer.append(status)
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        result = app(environ, counted)
        self.requests.observe(name, environ.get("REQUEST_METHOD", "GET"), answer[0] if answer else "500",
                              time.perf_counter() - started)
        return result

    def dispatch(self, environ: dict, endpoint: str, method: str, identity: Identity = OPEN) -> Response:
        route = self.routes.get(endpoint)
        if route is None:
            if endpoint in NOT_SERVED:
                raise NotFound(f"{endpoint} is not served by this proxy: {NOT_SERVED[endpoint]}")
            raise NotFound(f"unknown endpoint /{endpoint[:80]}: not a SLAP call this proxy serves")
        allowed, handler = route
        if method == "HEAD" and allowed == "GET":
            method = "GET"
        if method != allowed:
            raise MethodNotAllowed(f"{endpoint} takes {allowed}, not {method}", allowed)
        if method == "GET":
            fields = self._parse(environ.get("QUERY_STRING", ""))
        else:
            fields = self._read_form(environ)
        return handler(Request(environ, endpoint, fields, self.config.max_request_size, identity))

    def _read_form(self, environ: dict) -> dict[str, str]:
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type and not content_type.lower().startswith("application/x-www-form-urlencoded"):
            raise UnsupportedMediaType(
                f"send the fields as application/x-www-form-urlencoded, not {content_type.split(';')[0]}"
            )
        limit = self.config.max_request_size
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
            fields = self._parse(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest("request body is not UTF-8 text") from None
        if len(body) <= MAX_CACHED_TEXT:
            _FORMS.put(body, fields)
        return fields

    @staticmethod
    def _parse(data: str) -> dict[str, str]:
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

    # -- computer side ------------------------------------------------------------------------------
    def index(self, req: Request) -> Response:
        if "text/html" in req.environ.get("HTTP_ACCEPT", ""):  # a browser: the dashboard
            return Response(b"see /dashboard", "303 See Other", headers=(("Location", "/dashboard"),))
        return text(
            f"slapproxy (slapnode): SLAP master of computer {self.config.computer_id}; "
            "point [slapos] master_url here; see `slapos proxy show` or /dashboard"
        )

    def hateoas_url(self, req: Request) -> Response:
        env = req.environ
        host = env.get("HTTP_HOST") or f"{env.get('SERVER_NAME', 'localhost')}:{env.get('SERVER_PORT', '')}"
        return text(f"{env.get('wsgi.url_scheme', 'http')}://{host}/hateoas/")

    # -- operators ----------------------------------------------------------------------------------
    def page(self, name: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            from .dashboard import Dashboard

            # with access = credentials, every instance's parameters are the node's to read
            require_node(req.identity, req.endpoint)
            if self._dashboard is None:
                self._dashboard = Dashboard(self.db, self.config.computer_id)
            status, body = getattr(self._dashboard, name)(req.fields, base=req.environ.get(BASE_KEY, ""))
            return Response(body, status, HTML, HTML_HEADERS)

        return handler

    def static(self, name: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            from .dashboard import static_file

            body, kind = static_file(name)
            return Response(body, content_type=kind, headers=(("Cache-Control", "max-age=300"),
                                                             ("X-Content-Type-Options", "nosniff")))

        return handler

    def status_json(self, req: Request) -> Response:
        from .dashboard import status_json

        require_node(req.identity, req.endpoint)
        return Response(status_json(self.db), content_type=JSON, headers=(("Cache-Control", "no-store"),))

    def metrics_text(self, req: Request) -> Response:
        from slapos.base.promtext import CONTENT_TYPE

        require_node(req.identity, req.endpoint)
        from .dashboard import metrics_text

        return Response(metrics_text(self.db, self.requests), content_type=CONTENT_TYPE)

    def node_status_report(self, req: Request) -> Response:
        """A node's partition status after its run (`slapos node instance` posts it; optional)."""
        from .nodestatus import store_report

        computer_id, document = req.reference("computer_id"), req.field("status_json")
        require_node(req.identity, req.endpoint)
        with self.db.write(documents=False) as conn:
            try:
                count = store_report(conn, computer_id, document, self.config.computer_id)
            except ValueError as e:
                raise BadRequest(f"{req.endpoint}: {e}") from None
        return text(f"OK {count}")

    def get_full_computer_information(self, req: Request) -> Response:
        computer_id = req.reference("computer_id")
        require_node(req.identity, req.endpoint)  # every partition's parameters and connection
        credentials = self.access.credentials

        def build() -> wire.WireObject:
            with self.db.read() as conn:
                computers.require_computer(conn, computer_id, self.config.computer_id)
                return documents.computer_document(conn, computer_id, credentials)

        return xml(self.cache.get(("computer", computer_id, credentials), build))

    def load_computer_configuration(self, req: Request) -> Response:
        require_node(req.identity, req.endpoint)
        computer = req.marshalled("xml", required=True)
        with self.db.write() as conn:
            answer = computers.load_configuration(conn, computer)
            ownership.record(conn, "computer", computer["reference"], identity.caller(req.environ))
            return text(answer)

    def supply(self, req: Request) -> Response:
        url, computer_id, state = req.reference("url"), req.reference("computer_id"), req.field("state")
        require_node(req.identity, "supplying software")
        with self.db.write() as conn:
            return text(computers.supply(conn, url, computer_id, state, self.config.computer_id))

    def software_report(self, state: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            url, computer_id = req.reference("url"), req.reference("computer_id")
            require_node(req.identity, req.endpoint)
            error_log = req.field("error_log") if state == "error" else None
            with self.db.write(documents=state == "destroyed") as conn:
                return text(computers.report_software(conn, url, computer_id, state, error_log))

        return handler

    def use_computer(self, req: Request) -> Response:
        computer_id, use_string = req.reference("computer_id"), req.field("use_string")
        require_node(req.identity, req.endpoint)
        with self.db.write(documents=False) as conn:
            return text(computers.use_computer(conn, computer_id, use_string, self.config.computer_id))

    def computer_bang(self, req: Request) -> Response:
        computer_id, message = req.reference("computer_id"), req.field("message")
        require_node(req.identity, req.endpoint)
        with self.db.write() as conn:
            computers.computer_bang(conn, computer_id, message, self.config.computer_id)
        return xml(EMPTY_STRING)

    def software_product(self, req: Request) -> Response:
        product = req.optional("software_product_reference")
        url = req.optional("software_release_url")
        products = self.config.software_products
        if product is not None:
            return xml(wire.dumps(list(products.get(product, []))))
        if url is not None:
            return xml(wire.dumps([u for urls in products.values() if url in urls for u in urls]))
        raise BadRequest(f"{req.endpoint} needs software_product_reference or software_release_url")

    # -- partition side -------------------------------------------------------------------------------
    def register_computer_partition(self, req: Request) -> Response:
        computer_id = req.reference("computer_reference")
        partition_id = req.reference("computer_partition_reference")
        identity = req.identity
        if not identity.trusted and (computer_id, partition_id) != (identity.computer_id, identity.partition_id):
            with self.db.read() as conn:  # (the node and a partition reading itself need no look-up)
                access.require_tree(conn, identity, computer_id, partition_id, req.endpoint)

        def build() -> wire.WireObject:
            with self.db.read() as conn:
                return documents.partition_document(conn, computer_id, partition_id)

        return xml(self.cache.get(("partition", computer_id, partition_id), build))

    def partition_certificate(self, req: Request) -> Response:
        computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
        require_partition(req.identity, computer_id, partition_id, req.endpoint)
        with self.db.read() as conn:
            allocation.any_partition(conn, computer_id, partition_id)
        return xml(CERTIFICATE)

    def request_computer_partition(self, req: Request) -> Response:
        software_release = req.reference("software_release")
        title = req.reference("partition_reference")
        shared = _bool_field(req, "shared_xml")
        software_type = req.optional("software_type") or ("" if shared else "default")
        parameters = normalise_params(_dict_field(req, "partition_parameter_xml"), "partition_parameter_xml")
        filter_kw = _dict_field(req, "filter_xml")
        for key in ("computer_guid", "instance_guid"):
            if filter_kw.get(key) is not None and not isinstance(filter_kw[key], str):
                raise BadRequest(f"filter {key} must be a string")
        if filter_kw.get("master_url"):
            raise NotFound(
                "this proxy does not forward requests to other masters (filter master_url): "
                "request from that master directly"
            )
        state = _state_field(req)
        header = self._requester(req)
        request = allocation.InstanceRequest(
            software_release, software_type, title, parameters, filter_kw, state, self.config.computer_id
        )
        owner = None if header else identity.caller(req.environ)  # a person's request: who they are
        with self.db.write() as conn:
            if owner:
                ownership.record(conn, "instance", title, owner)
            requester = allocation.identify(conn, *header) if header else allocation.Requester()
            if shared:
                slave, host = allocation.request_shared(conn, requester, request)
                document = documents.shared_instance(conn, slave, host)
            else:
                row = allocation.request_instance(conn, requester, request)
                document = documents.software_instance(conn, row)
        return xml(wire.dumps(document))

    def _requester(self, req: Request) -> tuple[str, str] | None:
        """Who requests: the partition of a partition credential (whatever the header says: it
        must agree), else the X-SlapPartition header or form of a trusted caller, else a person."""
        identity = req.identity
        header = req.partition_header()
        if header is None and req.optional("computer_partition_id"):
            header = (req.fields.get("computer_id", self.config.computer_id), req.field("computer_partition_id"))
        if identity.trusted:
            return header
        if identity.kind != "partition":
            require_partition(identity, None, None, "requesting an instance")
        own = (identity.computer_id, identity.partition_id)
        if header is not None and tuple(header) != own:
            raise Forbidden(
                f"requesting an instance: the X-SlapPartition header names partition {header[1]} of {header[0]}, "
                f"but the credential is the one of {identity}"
            )
        return own

    def set_connection(self, req: Request) -> Response:
        computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
        require_partition(req.identity, computer_id, partition_id, req.endpoint)
        if "connection_xml" not in req.fields:
            raise BadRequest(f"missing field 'connection_xml' for {req.endpoint}")
        connection = normalise_params(_dict_field(req, "connection_xml"), "connection_xml")
        slave_reference = req.optional("slave_reference")
        with self.db.write() as conn:
            allocation.set_connection(conn, computer_id, partition_id, connection, slave_reference)
        return text("done")

    def partition_report(self, state: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
            require_partition(req.identity, computer_id, partition_id, req.endpoint)
            with self.db.write(documents=False) as conn:
                allocation.report_partition(conn, computer_id, partition_id, state)
            return text("OK")

        return handler

    def destroyed_partition(self, req: Request) -> Response:
        computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
        # freeing a partition is the node's word, after it cleaned it: never a tenant's
        require_node(req.identity, req.endpoint)
        with self.db.write() as conn:
            return text(allocation.destroyed(conn, computer_id, partition_id))

    def instance_error(self, req: Request) -> Response:
        computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
        require_partition(req.identity, computer_id, partition_id, req.endpoint)
        error_log = req.field("error_log")
        slave_reference = req.optional("slave_reference")
        with self.db.write(documents=False) as conn:
            allocation.report_error(conn, computer_id, partition_id, error_log, slave_reference)
        return text("OK")

    def instance_bang(self, req: Request) -> Response:
        computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
        require_partition(req.identity, computer_id, partition_id, req.endpoint)
        req.field("message")
        with self.db.write() as conn:
            allocation.bang(conn, computer_id, partition_id)
        return text("OK")

    def instance_rename(self, req: Request) -> Response:
        computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
        require_partition(req.identity, computer_id, partition_id, req.endpoint)
        new_name = req.reference("new_name")
        if req.optional("slave_reference"):
            raise BadRequest("renaming a shared instance is not supported by this proxy: request it under the new name")
        with self.db.write() as conn:
            allocation.rename(conn, computer_id, partition_id, new_name)
        return text("done")


def make_app(config: ProxyConfig, db: Database | None = None) -> ProxyApp:
    """A fresh proxy application on `config.database` (created or upgraded as needed)."""
    return ProxyApp(config, db)
