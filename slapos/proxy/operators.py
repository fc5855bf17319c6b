"""The operators' routes of the proxy: the dashboard's pages and static files, `/status.json`
and `/metrics` (docs/dashboard.md). The rendering lives in `slapos.proxy.dashboard`, imported at
the first call only: a proxy nobody looks at never loads its templates.

Every route but the static files is the node's to read (with `access = credentials`, an instance
page shows every instance's parameters).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .access import BASE_KEY, require_node
from .db import Database
from .errors import NotFound
from .metrics import RequestMetrics
from .wsgi import HTML, JSON, Request, Response

if TYPE_CHECKING:  # imported at the first page: see above
    from .dashboard import Dashboard

# the dashboard's pages: same origin only, no inline script or style, never framed, no referrer
# (an instance page's URL may carry ?secrets=1)
HTML_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class Operators:
    """The handlers; `requests` gives the application's request metrics (built after its routes)."""

    def __init__(self, db: Database, computer_id: str, requests: Callable[[], RequestMetrics]):
        self.db = db
        self.computer_id = computer_id
        self.requests = requests
        self._dashboard: Dashboard | None = None  # made at the first page asked

    def page(self, name: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            from .dashboard import Dashboard

            require_node(req.identity, req.endpoint)
            if self._dashboard is None:
                self._dashboard = Dashboard(self.db, self.computer_id)
            status, body = getattr(self._dashboard, name)(req.fields, base=req.environ.get(BASE_KEY, ""))
            return Response(body, status, HTML, HTML_HEADERS)

        return handler

    def static(self, name: str) -> Callable[[Request], Response]:
        def handler(req: Request) -> Response:
            from .dashboard import static_file

            found = static_file(name)
            if found is None:  # a route names a file the package does not ship: a broken install
                raise NotFound(f"/{req.endpoint}: not shipped with this proxy")
            body, kind = found
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

        return Response(metrics_text(self.db, self.requests()), content_type=CONTENT_TYPE)
