"""`/status.json`: the proxy's whole view in the status vocabulary (slapos/base/statusdoc.py).

The master's tables (allocation, requested and reported states, errors) merged with what each
node last posted (its verdict per partition, promises, back-off) and its last usage journal.
Parameters and connection parameters are not part of it (they hold secrets); the dashboard
shows them on an instance's page.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any

from slapos.base import statusdoc

from . import show
from .nodestatus import latest_reports, latest_usage

NODE_FIELDS = ("status", "last_attempt", "last_success", "backoff", "promises")


def collect(conn: sqlite3.Connection, secrets: bool = False) -> dict[str, Any]:
    """Everything the dashboard and /status.json show; `partitions[i]["_show"]` keeps the
    `proxy show` row (with parameters) for the dashboard, and is removed from /status.json."""
    data = show._collect(conn, ("computers", "software", "partitions", "slaves", "tree"), secrets)
    reports = {r.computer: r for r in latest_reports(conn)}
    reported = {computer: report.by_partition() for computer, report in reports.items()}
    usage = latest_usage(conn)
    for computer in data["computers"]:
        report = reports.get(computer["reference"])
        computer["status_reported_at"] = statusdoc.iso(report.received_at) if report else None
        computer["usage_reported_at"] = usage.get(computer["reference"], {}).get("date")
    partitions = []
    for row in data["partitions"]:
        computer, partition = row["computer"], row["partition"]
        node = reported.get(computer, {}).get(partition)
        record = statusdoc.partition_record(
            computer, partition,
            slap_state=row["slap_state"],
            title=row["title"],
            software_release=row["software_release"],
            software_type=row["software_type"],
            requested_state=row["requested_state"],
            reported_state=row["reported_state"],
            last_error=row["error"],
            timestamp=str(row["timestamp"]) if row["timestamp"] is not None else None,
            usage=usage.get(computer, {}).get("partitions", {}).get(partition),
        )
        if node is not None and row["slap_state"] == "busy":
            for key in NODE_FIELDS:
                record[key] = node[key]
            if node.get("last_error"):
                record["last_error"] = node["last_error"]
        record["_show"] = row
        partitions.append(record)
    data["partitions"] = partitions
    by_id = {(p["computer"], p["partition"]): p for p in partitions}

    def annotate(nodes: list[dict[str, Any]]) -> None:  # the node's verdict on each instance of the trees
        for node in nodes:
            record = by_id.get((node["computer"], node["partition"])) if node["kind"] == "instance" else None
            node["status"] = record["status"] if record is not None else None
            annotate(node["children"])

    annotate(data["tree"])
    return data


def status_document(conn: sqlite3.Connection) -> dict[str, Any]:
    data = collect(conn, secrets=False)
    for record in data["partitions"]:
        del record["_show"]
    shared = [
        {key: s[key] for key in ("reference", "title", "root", "computer", "hosted_by", "software_release",
                                 "software_type", "requested_state", "error", "error_at")}
        for s in data["slaves"]
    ]
    return {
        "schema": statusdoc.SCHEMA,
        "source": "proxy",
        "generated_at": statusdoc.iso(time.time()),
        "computers": data["computers"],
        "software": data["software"],
        "partitions": data["partitions"],
        "shared": shared,
        "tree": data["tree"],
    }
