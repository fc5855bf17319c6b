"""What the proxy knows beyond the SLAP tables: the node's partition status reports and usage.

A node posts its partition status (`reportNodeStatus`, a JSON document of the vocabulary in
slapos/base/statusdoc.py) after its runs; the last one per computer is kept. Usage comes from the
last `useComputer` journal of each computer. Both are read by `/status.json`, `/metrics` and the
dashboard.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from slapos.base import statusdoc

from .computers import require_computer

MAX_USAGE_BYTES = 4 << 20  # a journal larger than this is not parsed for display


@dataclass
class NodeReport:
    computer: str
    received_at: float
    partitions: list[dict[str, Any]] = field(default_factory=list)

    def by_partition(self) -> dict[str, dict[str, Any]]:
        return {p["partition"]: p for p in self.partitions}


def store_report(conn: sqlite3.Connection, computer_id: str, text: str, default_computer: str) -> int:
    """Validate and keep a node's status report; returns the number of partitions kept."""
    require_computer(conn, computer_id, default_computer)
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"the status report is not JSON: {e}") from None
    partitions = statusdoc.clean_report(raw, computer_id)
    conn.execute(
        "INSERT OR REPLACE INTO node_status (computer_reference, received_at, document) VALUES (?, ?, ?)",
        (computer_id, time.time(), json.dumps(partitions, separators=(",", ":"))),
    )
    return len(partitions)


def latest_reports(conn: sqlite3.Connection) -> list[NodeReport]:
    reports = []
    for row in conn.execute("SELECT * FROM node_status ORDER BY computer_reference"):
        try:
            partitions = json.loads(row["document"])
        except ValueError:
            partitions = []
        reports.append(NodeReport(row["computer_reference"], row["received_at"], partitions))
    return reports


def latest_usage(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """computer → {"date": ..., "partitions": {partition: {resource: quantity}}} from its last journal."""
    found: dict[str, dict[str, Any]] = {}
    for row in conn.execute(
        """SELECT u.computer_reference, u.date, u.xml FROM usage_report u
           WHERE u.id = (SELECT max(id) FROM usage_report v WHERE v.computer_reference = u.computer_reference)"""
    ):
        found[row["computer_reference"]] = {"date": row["date"], "partitions": parse_usage(row["xml"])}
    return found


def parse_usage(text: str) -> dict[str, dict[str, float]]:
    """partition → {resource: quantity} of a usage journal; {} when it cannot be read."""
    if not text or len(text) > MAX_USAGE_BYTES:
        return {}
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(text.encode("utf-8"), parser)
    except (etree.XMLSyntaxError, ValueError):
        return {}
    usage: dict[str, dict[str, float]] = {}
    for movement in root.iter("movement"):
        partition = movement.findtext("reference") or ""
        resource = movement.findtext("resource") or ""
        try:
            quantity = float(movement.findtext("quantity") or 0)
        except ValueError:
            continue
        resources = usage.setdefault(partition, {})
        resources[resource] = resources.get(resource, 0.0) + quantity
    return usage
