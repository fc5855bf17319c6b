"""The proxy's WSGI application: a thin router over the SLAP endpoints.

Each route decodes its form fields, calls the domain (`allocation`, `computers`) inside one
transaction, and encodes the answer. Bad input of any kind is answered with a 4xx and a one-line
plain-text reason; the reference answers most of it with a 500.

This module is the routing table and the WSGI entry; a call's fields are read by
`slapos.proxy.wsgi` (`Request`, `Response`, form decoding), the operators' pages are
`slapos.proxy.operators`.

    app = make_app(ProxyConfig(database=tmp_path / "proxy.db"))   # a fresh app on a temp database
"""
from __future__ import annotations

import logging
import secrets
import sqlite3
import string
import time
from collections.abc import Callable, Iterable

from slapos.slap import wire

from . import access, allocation, ca, computers, documents, identity, join, ownership, users, watch
from .access import ANONYMOUS, OPEN, Identity, require_node, require_partition
from .cache import CacheServer
from .config import ProxyConfig
from .db import Database
from .errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    ServiceUnavailable,
)
from .metrics import RequestMetrics
from .operators import Operators
from .values import normalise_params
from .wsgi import Request, Response, bool_field, dict_field, parse_fields, read_form, state_field, text, xml

log = logging.getLogger("slapos.proxy")

CERTIFICATE = b"<marshal><dictionary id=\"i2\"><string>certificate</string><string></string>" \
    b"<string>key</string><string></string></dictionary></marshal>"
EMPTY_STRING = b"<marshal><string></string></marshal>"

# Endpoints of the SLAP protocol this proxy does not serve, as the reference (404, §2.1–2.2).
NOT_SERVED = {
    "getComputerStatus": "computer status is not kept by this proxy",
    "generateComputerCertificate": "certificates come from the token exchange (slapos node register)",
    "revokeComputerCertificate": "revoke with slapos proxy revoke on the proxy's machine",
    "requestComputer": "computers register themselves with slapos node format",
    "getHostingSubscriptionIpList": "this proxy does not compute firewall address lists",
    "updateComputerPartitionRelatedInstanceList": "this proxy does not track related instance lists",
    "getComputerPartitionStatus": "partition status is not kept by this proxy",
}


def new_run_id() -> str:
    """A random id for one proxy run (`getRunId`): a client seeing it change knows the proxy restarted."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


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
        # /watchComputer: a watch holds one of waitress' threads, so at most half of them wait (none
        # with one thread: it would hold every other call back); the TLS server has a thread per connection
        self.watch = watch.ChangeFeed(self.run_id, max(1 if config.tls else 0, config.threads // 2))
        self.watch.attach(self.db)
        self.mounts: list[tuple[str, Callable]] = []
        # binary cache for nodes (slapos node software); answers 503 until configured
        self.mount("/shacache", CacheServer(
            *(config.shacache_directories or (None, None)),
            max_entry_size=config.shacache_max_entry_size, quota=config.shacache_quota,
        ))
        # read-only user API (service/computer commands), answering for the caller's own records
        with self.db.write(documents=False) as conn:
            ownership.ensure_tables(conn)
            users.migrate_supply_owners(conn)
            ca.ensure_table(conn)
        # the proxy's certificate authority: computer certificates for tokens (docs/join.md)
        self.ca = ca.CertificateAuthority(config.ca_directory or config.database.parent / "ca").load_or_create()
        from .hateoas import HateoasApp

        self.mount("/hateoas", HateoasApp(self.db))
        get, post = "GET", "POST"
        ops = Operators(self.db, config.computer_id, lambda: self.requests)
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
            # the web side of a master: a one-time token for a computer certificate (node register)
            "Person_requestComputer": (post, self.request_computer),
            # ... and a user token for a user certificate (slapos configure client --token)
            "Person_getCertificate": (post, lambda req: join.user_certificate(self.db, self.ca, req, self.config.tls)),
            # proxy only
            "getRunId": (get, lambda req: text(self.run_id)),
            "watchComputer": (get, lambda req: watch.handle(self.watch, req, self._require_computer)),
            "getHateoasUrl": (get, self.hateoas_url),
            "hateoas": (get, lambda req: Response(b"", "308 Permanent Redirect", headers=(("Location", "/hateoas/"),))),
            "reportNodeStatus": (post, self.node_status_report),
            "": (get, self.index),
            # operators: dashboard, machine-readable status, Prometheus metrics (slapos/proxy/dashboard.py)
            "dashboard": (get, ops.page("overview")),
            "dashboard/computer": (get, ops.page("computer")),
            "dashboard/instance": (get, ops.page("instance")),
            "dashboard/static/dashboard.css": (get, ops.static("dashboard.css")),
            "dashboard/static/dashboard.js": (get, ops.static("dashboard.js")),
            "dashboard/static/favicon.svg": (get, ops.static("favicon.svg")),
            "status.json": (get, ops.status_json),
            "metrics": (get, ops.metrics_text),
        }
        self.requests = RequestMetrics(set(self.routes) | {"shacache"})  # .worker set by server.py
        self.requests.extra.append(self.watch.families)

    def mount(self, prefix: str, app: Callable) -> None:
        self.mounts.append(("/" + prefix.strip("/") + "/", app))

    def close(self) -> None:
        self.watch.close()
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
            fields = parse_fields(environ.get("QUERY_STRING", ""))
        else:
            fields = read_form(environ, self.config.max_request_size)
        return handler(Request(environ, endpoint, fields, self.config.max_request_size, identity))

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

    def request_computer(self, req: Request) -> Response:
        return join.request_computer(self.db, self.ca, req, self.config.tls)

    def node_status_report(self, req: Request) -> Response:
        """A node's partition status after its run (`slapos node instance` posts it; optional)."""
        from .nodestatus import store_report

        computer_id, document = req.reference("computer_id"), req.field("status_json")
        require_node(req.identity, req.endpoint, computer_id)
        with self.db.write(documents=False) as conn:
            try:
                count = store_report(conn, computer_id, document, self.config.computer_id)
            except ValueError as e:
                raise BadRequest(f"{req.endpoint}: {e}") from None
        return text(f"OK {count}")

    def get_full_computer_information(self, req: Request) -> Response:
        computer_id = req.reference("computer_id")
        require_node(req.identity, req.endpoint, computer_id)  # every partition's parameters and connection
        credentials = self.access.credentials

        def build() -> wire.WireObject:
            with self.db.read() as conn:
                computers.require_computer(conn, computer_id, self.config.computer_id)
                return documents.computer_document(conn, computer_id, credentials)

        return xml(self.cache.get(("computer", computer_id, credentials), build))

    def load_computer_configuration(self, req: Request) -> Response:
        require_node(req.identity, req.endpoint, req.identity.computer_id)
        computer = req.marshalled("xml", required=True)
        if isinstance(computer, dict):
            require_node(req.identity, req.endpoint, str(computer.get("reference")))
        with self.db.write() as conn:
            answer = computers.load_configuration(conn, computer)
            ownership.record(conn, "computer", computer["reference"], identity.caller(req.environ))
            return text(answer)

    def _require_computer(self, computer_id: str) -> None:
        with self.db.read() as conn:
            computers.require_computer(conn, computer_id, self.config.computer_id)

    def supply(self, req: Request) -> Response:
        url, computer_id, state = req.reference("url"), req.reference("computer_id"), req.field("state")
        if req.identity.kind != "user":  # a person supplies too (users.py); the nodes, to themselves
            require_node(req.identity, "supplying software", computer_id)
        with self.db.write() as conn:
            if req.identity.kind == "user":
                users.check_supply(conn, req.identity, url, computer_id, state)
            return text(computers.supply(conn, url, computer_id, state, self.config.computer_id))

    def software_report(self, state: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            url, computer_id = req.reference("url"), req.reference("computer_id")
            require_node(req.identity, req.endpoint, computer_id)
            error_log = req.field("error_log") if state == "error" else None
            with self.db.write(documents=state == "destroyed") as conn:
                return text(computers.report_software(conn, url, computer_id, state, error_log))

        return handler

    def use_computer(self, req: Request) -> Response:
        computer_id, use_string = req.reference("computer_id"), req.field("use_string")
        require_node(req.identity, req.endpoint, computer_id)
        with self.db.write(documents=False) as conn:
            return text(computers.use_computer(conn, computer_id, use_string, self.config.computer_id))

    def computer_bang(self, req: Request) -> Response:
        computer_id, message = req.reference("computer_id"), req.field("message")
        require_node(req.identity, req.endpoint, computer_id)
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
        if not identity.owns(computer_id) and (computer_id, partition_id) != (identity.computer_id, identity.partition_id):
            with self.db.read() as conn:  # (the node and a partition reading itself need no look-up)
                access.require_tree(conn, identity, computer_id, partition_id, req.endpoint)

        def build() -> wire.WireObject:
            with self.db.read() as conn:
                return documents.partition_document(conn, computer_id, partition_id)

        return xml(self.cache.get(("partition", computer_id, partition_id), build))

    def partition_certificate(self, req: Request) -> Response:
        computer_id, partition_id = req.reference("computer_id"), req.reference("computer_partition_id")
        require_partition(req.identity, computer_id, partition_id, req.endpoint)
        if not self.config.tls:  # no client certificates on a plain HTTP proxy (credentials instead)
            with self.db.read() as conn:
                allocation.any_partition(conn, computer_id, partition_id)
            return xml(CERTIFICATE)
        return xml(wire.dumps(join.partition_certificate(self.db, self.ca, computer_id, partition_id)))

    def request_computer_partition(self, req: Request) -> Response:
        software_release = req.reference("software_release")
        title = req.reference("partition_reference")
        shared = bool_field(req, "shared_xml")
        software_type = req.optional("software_type") or ("" if shared else "default")
        parameters = normalise_params(dict_field(req, "partition_parameter_xml"), "partition_parameter_xml")
        filter_kw = dict_field(req, "filter_xml")
        for key in ("computer_guid", "instance_guid"):
            if filter_kw.get(key) is not None and not isinstance(filter_kw[key], str):
                raise BadRequest(f"filter {key} must be a string")
        if filter_kw.get("master_url"):
            raise NotFound(
                "this proxy does not forward requests to other masters (filter master_url): "
                "request from that master directly"
            )
        state = state_field(req)
        header = self._requester(req)
        request = allocation.InstanceRequest(
            software_release, software_type, title, parameters, filter_kw, state, self.config.computer_id
        )
        with self.db.write() as conn:
            if not header and req.identity.kind == "computer":  # a node's own client (TLS proxy)
                join.require_own_tree(conn, req.identity, identity.caller(req.environ), title, filter_kw)
            if not header:  # a person's request: its own trees only, when identified by a certificate
                users.claim_tree(conn, req.identity, req.environ, title)
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
        if identity.kind == "user":  # a person: never for a partition
            if header is not None:
                raise Forbidden(f"requesting an instance: {identity} requests as a person, not for partition "
                                f"{header[1]} of {header[0]}")
            return None
        if identity.kind == "computer":  # the node of a computer: for its own partitions, or as a person
            if header is not None:
                require_partition(identity, header[0], header[1], "requesting an instance")
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
        connection = normalise_params(dict_field(req, "connection_xml"), "connection_xml")
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
        require_node(req.identity, req.endpoint, computer_id)
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
            users.check_rename(conn, computer_id, partition_id, new_name)  # a root takes no one else's title
            allocation.rename(conn, computer_id, partition_id, new_name)
        return text("done")


def make_app(config: ProxyConfig, db: Database | None = None) -> ProxyApp:
    """A fresh proxy application on `config.database` (created or upgraded as needed)."""
    return ProxyApp(config, db)
