"""`slapos proxy show`: what the proxy database holds, as tables or JSON.

Reads the SQLite file directly (the proxy may be running: WAL lets us read alongside it).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from slapos.base.table import render

from .db import Database
from .values import load_params

SECTIONS = ("computers", "software", "partitions", "slaves", "tree", "network", "usage")
DEFAULT_SECTIONS = ("computers", "software", "partitions", "slaves", "tree")
HIDDEN = "(hidden)"


def _date(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).isoformat(timespec="seconds")


def _instance_state(row: Any) -> str | None:
    """What the node said last: 'error' when its last error is newer than its last state report."""
    if row["error_at"] is not None and (row["reported_at"] is None or row["error_at"] >= row["reported_at"]):
        return "error"
    return row["reported_state"]


def collect(database: Path, sections: list[str] | tuple[str, ...], secrets: bool = True) -> dict[str, Any]:
    db = Database.open(database, create=False)
    try:
        with db.read() as conn:
            return _collect(conn, sections, secrets)
    finally:
        db.close()


def _collect(conn, sections, secrets: bool) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if "computers" in sections:
        data["computers"] = [
            {
                "reference": row["reference"],
                "address": row["address"],
                "netmask": row["netmask"],
                "formatted_at": _date(row["formatted_at"]),
                "partitions": row["partitions"],
                "busy": row["busy"],
                "last_bang": _date(row["bang_at"]),
                "last_bang_message": row["bang_message"],
            }
            for row in conn.execute(
                "SELECT c.*, (SELECT count(*) FROM partition p WHERE p.computer_reference = c.reference) AS partitions,"
                " (SELECT count(*) FROM partition p WHERE p.computer_reference = c.reference"
                " AND p.slap_state = 'busy') AS busy FROM computer c ORDER BY c.reference"
            )
        ]
    if "software" in sections:
        data["software"] = [
            {
                "url": row["url"],
                "computer": row["computer_reference"],
                "requested_state": row["requested_state"],
                "reported_state": row["reported_state"],
                "reported_at": _date(row["reported_at"]),
                "error": row["error_log"],
                "error_at": _date(row["error_at"]),
            }
            for row in conn.execute("SELECT * FROM software ORDER BY computer_reference, rowid")
        ]
    partitions = conn.execute("SELECT * FROM partition ORDER BY computer_reference, rowid").fetchall()
    slaves = conn.execute("SELECT * FROM slave ORDER BY rowid").fetchall()
    if "partitions" in sections:
        data["partitions"] = [_partition(row, secrets) for row in partitions]
    if "slaves" in sections:
        data["slaves"] = [_slave(row, secrets) for row in slaves]
    if "tree" in sections:
        data["tree"] = _trees(partitions, slaves)
    if "network" in sections:
        data["network"] = [
            {
                "computer": row["computer_reference"],
                "partition": row["partition_reference"],
                "interface": row["interface"],
                "address": row["address"],
                "netmask": row["netmask"],
            }
            for row in conn.execute("SELECT * FROM partition_network ORDER BY computer_reference, rowid")
        ]
    if "usage" in sections:
        data["usage"] = [
            {"id": row["id"], "computer": row["computer_reference"], "date": row["date"], "xml": row["xml"]}
            for row in conn.execute("SELECT * FROM usage_report ORDER BY id")
        ]
    return data


def _partition(row, secrets: bool) -> dict[str, Any]:
    busy = row["slap_state"] == "busy"
    requester = None
    if busy:
        requester = "user" if row["requester_id"] in (None, "user") else (
            f"{row['requester_id']}@{row['requester_computer']}" if row["requester_computer"] else row["requester_id"]
        )
    return {
        "computer": row["computer_reference"],
        "partition": row["reference"],
        "slap_state": row["slap_state"],
        "title": row["title"] if busy else None,
        "root": (row["requested_by"] or row["title"]) if busy else None,
        "requester": requester,
        "software_release": row["software_release"],
        "software_type": row["software_type"],
        "requested_state": row["requested_state"] if busy else None,
        "reported_state": _instance_state(row),
        "reported_at": _date(row["reported_at"]),
        "parameters": load_params(row["parameters"]) if busy else None,
        "connection": (load_params(row["connection"]) if secrets else HIDDEN) if busy else None,
        "timestamp": row["timestamp"],
        "error": row["error_log"],
        "error_at": _date(row["error_at"]),
    }


def _slave(row, secrets: bool) -> dict[str, Any]:
    return {
        "reference": row["reference"],
        "title": row["title"],
        "root": row["requested_by"] or None,
        "computer": row["computer_reference"],
        "hosted_by": row["hosted_by"],
        "software_release": row["software_release"],
        "software_type": row["software_type"],
        "requested_state": row["requested_state"],
        "parameters": load_params(row["parameters"]),
        "connection": load_params(row["connection"]) if secrets else HIDDEN,
        "error": row["error_log"],
        "error_at": _date(row["error_at"]),
    }


def _trees(partitions, slaves) -> list[dict[str, Any]]:
    """Roots (instances a person requested) with their children, following who requested whom."""
    busy = [row for row in partitions if row["slap_state"] == "busy"]
    nodes = {
        (row["computer_reference"], row["reference"]): {
            "title": row["title"],
            "kind": "instance",
            "computer": row["computer_reference"],
            "partition": row["reference"],
            "software_type": row["software_type"],
            "requested_state": row["requested_state"],
            "reported_state": _instance_state(row),
            "children": [],
        }
        for row in busy
    }
    root_nodes = {
        row["title"]: nodes[(row["computer_reference"], row["reference"])] for row in busy if not row["requested_by"]
    }
    roots = []
    for row in busy:
        node = nodes[(row["computer_reference"], row["reference"])]
        parent = None
        if row["requester_id"] not in (None, "user"):
            parent = nodes.get((row["requester_computer"] or row["computer_reference"], row["requester_id"]))
        if parent is None and row["requested_by"]:  # requester gone: attach under the root of the tree
            parent = root_nodes.get(row["requested_by"])
        (parent["children"] if parent is not None and parent is not node else roots).append(node)
    for row in slaves:
        node = {
            "title": row["title"],
            "kind": "shared",
            "computer": row["computer_reference"],
            "partition": row["hosted_by"],
            "software_type": row["software_type"],
            "requested_state": row["requested_state"],
            "reported_state": "error" if row["error_at"] else None,
            "children": [],
        }
        parent = None
        if row["requester_id"] not in (None, "user"):
            parent = nodes.get((row["requester_computer"] or row["computer_reference"], row["requester_id"]))
        (parent["children"] if parent is not None else roots).append(node)
    return roots


# -- rendering ---------------------------------------------------------------------------------------
def render_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _short_params(params: Any, full: bool) -> str:
    if params is None:
        return ""
    if isinstance(params, str):
        return params
    if not params:
        return "{}"
    if full:
        return json.dumps(_pretty_params(params), indent=2, sort_keys=True)
    text = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return text if len(text) <= 60 else text[:57] + "..."


def _pretty_params(params: dict) -> Any:
    """Show the JSON inside `_` (json-in-xml serialisation) as JSON, not as one escaped string."""
    if set(params) == {"_"} and isinstance(params["_"], str):
        try:
            return json.loads(params["_"])
        except ValueError:
            return params
    return params


def _table(width: int | None, title: str, columns: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return f"{title}: none\n"
    return f"{title}:\n" + render(columns, rows, width=width, indent="  ", rule=True)


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= 60 else last[:57] + "..."


def _tree_lines(nodes: list[dict], prefix: str = "") -> list[str]:
    lines = []
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        branch = "└── " if last else "├── "
        where = f"{node['partition']}@{node['computer']}" if node["partition"] else "no host"
        state = node["requested_state"] + (f", reported {node['reported_state']}" if node["reported_state"] else "")
        kind = "shared " if node["kind"] == "shared" else ""
        lines.append(f"{prefix}{branch}{kind}{node['title']} [{node['software_type']}] on {where} ({state})")
        lines.extend(_tree_lines(node["children"], prefix + ("    " if last else "│   ")))
    return lines


def render_text(data: dict[str, Any], full_params: bool = False, width: int | None = None) -> str:
    """The sections as tables; `width`: fit them to that many columns (None: full width)."""
    parts = []
    if "computers" in data:
        parts.append(_table(width, "Computers", ["computer", "address", "partitions", "busy", "formatted", "last bang"], [
            [c["reference"], c["address"], c["partitions"], c["busy"], c["formatted_at"],
             f"{c['last_bang']} {c['last_bang_message'] or ''}".strip() if c["last_bang"] else ""]
            for c in data["computers"]
        ]))
    if "software" in data:
        parts.append(_table(width, "Software releases", ["computer", "url", "requested", "reported", "last error"], [
            [s["computer"], s["url"], s["requested_state"], s["reported_state"] or "-", _first_line(s["error"])]
            for s in data["software"]
        ]))
    if "partitions" in data:
        parts.append(_table(
            width, "Partitions",
            ["computer", "partition", "state", "instance", "requester", "software", "type", "requested",
             "reported", "parameters", "connection"],
            [
                [p["computer"], p["partition"], p["slap_state"], p["title"], p["requester"], p["software_release"],
                 p["software_type"], p["requested_state"], p["reported_state"],
                 _short_params(p["parameters"], full_params), _short_params(p["connection"], full_params)]
                for p in data["partitions"]
            ],
        ))
        errors = [p for p in data["partitions"] if p["error"]]
        if errors:
            parts.append(_table(width, "Partition errors", ["computer", "partition", "at", "last line"], [
                [p["computer"], p["partition"], p["error_at"], _first_line(p["error"])] for p in errors
            ]))
    if "slaves" in data:
        parts.append(_table(
            width, "Shared instances",
            ["reference", "host", "computer", "type", "requested", "parameters", "connection"],
            [
                [s["reference"], s["hosted_by"] or "(no host)", s["computer"], s["software_type"],
                 s["requested_state"], _short_params(s["parameters"], full_params),
                 _short_params(s["connection"], full_params)]
                for s in data["slaves"]
            ],
        ))
    if "tree" in data:
        lines = _tree_lines(data["tree"])
        parts.append("Instance trees:\n" + ("\n".join("  " + line for line in lines) + "\n" if lines else "  none\n"))
    if "network" in data:
        parts.append(_table(width, "Network", ["computer", "partition", "interface", "address", "netmask"], [
            [n["computer"], n["partition"], n["interface"], n["address"], n["netmask"]] for n in data["network"]
        ]))
    if "usage" in data:
        parts.append(_table(width, "Usage reports", ["id", "computer", "date", "size"], [
            [u["id"], u["computer"], u["date"], f"{len(u['xml'])} bytes"] for u in data["usage"]
        ]))
    return "\n".join(parts)
