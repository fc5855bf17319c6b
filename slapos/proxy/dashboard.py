"""The proxy's web dashboard: read-only HTML pages over the same data as `/status.json`.

    /dashboard                                   computers, software releases, instance trees
    /dashboard/computer?id=C                     the partitions of computer C
    /dashboard/instance?computer=C&partition=P   one instance: parameters, connection, promises
    /dashboard/static/<file>                     its stylesheet and script (shipped in the package)

Templates are Jinja2 (already a dependency, for the buildout recipes) with autoescape on: every
value from the database or a node is escaped by default, nothing is marked safe by hand. Jinja2
is imported on the first page only: the SLAP routes never pay for it. Pages work without
JavaScript; `dashboard.js` only refreshes the content in place (and can be paused, WCAG 2.2.1).
Secrets (connection and parameter values whose key looks like one, passwords inside URLs) are
masked unless the page is asked for with `?secrets=1`.
"""
from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from . import status

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_FILES = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
MASK = "••••••"
SECRET_KEY = re.compile(r"pass|secret|key|token|private|credential|cert|auth|salt|hash|cookie", re.I)
DEFAULT_REFRESH = 10  # seconds between two in-place refreshes of a page (dashboard.js)


@cache
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template fails the test, not the page silently
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = short_url
    env.filters["quantity"] = quantity
    env.filters["lastline"] = last_line
    return env


def render(template: str, **context: Any) -> bytes:
    return _environment().get_template(template).render(**context).encode("utf-8")


def static_file(name: str) -> tuple[bytes, str] | None:
    kind = STATIC_FILES.get(name)
    if kind is None:
        return None
    return (STATIC / name).read_bytes(), kind


# -- values ------------------------------------------------------------------------------------
def is_link(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 2048:
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _mask_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.password is None:
        return value
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def display_value(key: str, value: Any, secrets: bool) -> dict[str, Any]:
    """{"text", "link" (href or None), "masked"} for one parameter value."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if not secrets and SECRET_KEY.search(key):
        return {"text": MASK, "link": None, "masked": True}
    if is_link(text):
        shown = text if secrets else _mask_url(text)
        return {"text": shown, "link": text if shown == text else None, "masked": shown != text}
    return {"text": text, "link": None, "masked": False}


def parameter_rows(params: Any, secrets: bool) -> list[dict[str, Any]]:
    """Rows (key, value display) of a parameter dict; JSON-in-`_` parameters are unwrapped."""
    if params is None:
        return []
    if isinstance(params, str):  # `proxy show`'s "(hidden)"
        return [{"key": "", "value": {"text": params, "link": None, "masked": True}}]
    if set(params) == {"_"} and isinstance(params["_"], str):
        try:
            inner = json.loads(params["_"])
        except ValueError:
            inner = None
        if isinstance(inner, dict):
            params = inner
    return [{"key": str(k), "value": display_value(str(k), v, secrets)} for k, v in sorted(params.items())]


def short_url(url: str | None, width: int = 60) -> str:
    if not url:
        return "-"
    return url if len(url) <= width else "…" + url[-(width - 1):]


def quantity(value: float | None, resource: str = "") -> str:
    if value is None:
        return "-"
    kind = resource.lower()
    if "memory" in kind or "disk" in kind:
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or unit == "TiB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
    if "cpu" in kind:
        return f"{value:g} s"
    return f"{value:g}"


def last_line(text: str | None) -> str:
    if not text:
        return ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return last if len(last) <= 120 else last[:117] + "…"


def usage_items(usage: dict[str, float] | None) -> list[tuple[str, str]]:
    """(short resource name, displayed quantity) of a partition's last reported usage."""
    if not usage:
        return []
    items = []
    for resource, value in sorted(usage.items()):
        name = resource.rstrip("/").rpartition("/")[2] or resource
        items.append((name, quantity(value, resource)))
    return items


def promise_summary(record: dict[str, Any]) -> dict[str, Any]:
    promises = record.get("promises") or []
    failed = sum(1 for p in promises if p.get("failed"))
    return {"total": len(promises), "failed": failed}


# -- pages -------------------------------------------------------------------------------------
class Dashboard:
    """The pages, each a function of the query and a read transaction."""

    def __init__(self, db, computer_id: str):
        self.db = db
        self.computer_id = computer_id

    def _common(self, query: dict[str, str], path: str, base: str = "") -> dict[str, Any]:
        """`base`: the credential prefix of the call (`/c/<credential>`, access = credentials), kept
        in every link of the page."""
        path = base + path
        secrets = query.get("secrets") == "1"
        try:
            refresh = int(query.get("refresh", DEFAULT_REFRESH))
        except ValueError:
            refresh = DEFAULT_REFRESH
        refresh = 0 if refresh <= 0 else max(5, min(refresh, 3600))
        toggle = dict(query)
        if secrets:
            toggle.pop("secrets", None)
        else:
            toggle["secrets"] = "1"
        return {
            "base": base,
            "secrets": secrets,
            "refresh": refresh,
            "path": path,
            "toggle_secrets": path + ("?" + urlencode(toggle) if toggle else ""),
            "keep": ("&secrets=1" if secrets else ""),
            "master_computer": self.computer_id,
            "promise_summary": promise_summary,
            "usage_items": usage_items,
        }

    def _collect(self) -> dict[str, Any]:
        # every value is read; the pages mask what looks secret unless `secrets` (display_value)
        with self.db.read() as conn:
            return status.collect(conn, secrets=True)

    def overview(self, query: dict[str, str], base: str = "") -> tuple[str, bytes]:
        context = self._common(query, "/dashboard", base)
        data = self._collect()
        partitions = data["partitions"]
        counts = {
            "computers": len(data["computers"]),
            "busy": sum(1 for p in partitions if p["slap_state"] == "busy"),
            "free": sum(1 for p in partitions if p["slap_state"] != "busy"),
            "shared": len(data["slaves"]),
            "failing": sum(1 for p in partitions if p["slap_state"] == "busy" and (
                p["status"] in ("error", "promise-error", "waiting") or p["reported_state"] == "error")),
            "software": len(data["software"]),
        }
        return "200 OK", render("overview.html", title="Overview", data=data, counts=counts, **context)

    def computer(self, query: dict[str, str], base: str = "") -> tuple[str, bytes]:
        reference = query.get("id", "")
        context = self._common(query, "/dashboard/computer", base)
        data = self._collect()
        found = [c for c in data["computers"] if c["reference"] == reference]
        if not found:
            return self._missing(f"No computer {reference!r} is registered with this proxy.", context)
        partitions = [p for p in data["partitions"] if p["computer"] == reference]
        software = [s for s in data["software"] if s["computer"] == reference]
        return "200 OK", render("computer.html", title=f"Computer {reference}", computer=found[0],
                                partitions=partitions, software=software, **context)

    def instance(self, query: dict[str, str], base: str = "") -> tuple[str, bytes]:
        computer, partition = query.get("computer", ""), query.get("partition", "")
        context = self._common(query, "/dashboard/instance", base)
        data = self._collect()
        found = [p for p in data["partitions"] if p["computer"] == computer and p["partition"] == partition]
        if not found:
            return self._missing(f"No partition {partition!r} on computer {computer!r}.", context)
        record = found[0]
        row = record["_show"]
        shared = [
            {**s, "parameter_rows": parameter_rows(s["parameters"], context["secrets"]),
             "connection_rows": parameter_rows(s["connection"], context["secrets"])}
            for s in data["slaves"] if s["computer"] == computer and s["hosted_by"] == partition
        ]
        title = record["title"] or partition
        return "200 OK", render(
            "instance.html", title=f"Instance {title}", record=record, row=row, shared=shared,
            parameters=parameter_rows(row["parameters"], context["secrets"]),
            connection=parameter_rows(row["connection"], context["secrets"]),
            **context,
        )

    def _missing(self, message: str, context: dict[str, Any]) -> tuple[str, bytes]:
        return "404 Not Found", render("missing.html", title="Not found", message=message, **context)


def status_json(db) -> bytes:
    with db.read() as conn:
        return (json.dumps(status.status_document(conn), indent=2, sort_keys=False) + "\n").encode("utf-8")


def metrics_text(db, requests) -> bytes:
    from .metrics import render_metrics

    with db.read() as conn:
        return render_metrics(requests, conn).encode("utf-8")

