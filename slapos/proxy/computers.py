"""Computers and their software: format (registration), supply, the node's software reports,
usage reports and computer bang. Each function runs inside the caller's write transaction."""
from __future__ import annotations

import datetime
import logging
import sqlite3
import time
from typing import Any

from .allocation import MAX_ERROR_LOG, bump_sql
from .errors import BadRequest, NotFound

log = logging.getLogger("slapos.proxy")

SUPPLY_STATES = ("available", "destroyed")
SOFTWARE_REPORTS = ("building", "available", "error", "destroyed")


def check_reference(value: Any, what: str) -> str:
    """Computer and partition ids end up in paths on nodes: refuse what could escape a directory."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{what} must be a non-empty string")
    if "/" in value or "\x00" in value or value in (".", "..") or len(value) > 255:
        raise BadRequest(f"{what} {value[:60]!r} is not a valid name (no '/', NUL, '.' or '..')")
    return value


def require_computer(conn: sqlite3.Connection, computer_id: str, default_computer: str) -> None:
    """Known computers, plus the proxy's own computer even before it is formatted."""
    if computer_id == default_computer:
        return
    if conn.execute("SELECT 1 FROM computer WHERE reference = ?", (computer_id,)).fetchone() is None:
        raise NotFound(f"unknown computer {computer_id!r}: format it first (slapos node format) or check its id")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def load_configuration(conn: sqlite3.Connection, computer: Any) -> str:
    """`loadComputerConfigurationFromXML`: upsert the computer and sync its partitions and addresses.

    Partitions not in the list are deleted (as the reference does); new ones are free; existing
    ones keep their instance."""
    if not isinstance(computer, dict):
        raise BadRequest("xml must hold a dictionary describing the computer (the output of slapos node format)")
    computer_id = check_reference(computer.get("reference"), "computer reference")
    partition_list = computer.get("partition_list") or []
    if not isinstance(partition_list, list):
        raise BadRequest("partition_list must be a list")
    partitions: dict[str, dict] = {}
    for item in partition_list:
        if not isinstance(item, dict):
            raise BadRequest("each element of partition_list must be a dictionary")
        reference = check_reference(item.get("reference"), "partition reference")
        if reference in partitions:
            raise BadRequest(f"partition {reference!r} appears twice in partition_list")
        partitions[reference] = item
    now = time.time()
    conn.execute(
        """INSERT INTO computer (reference, address, netmask, formatted_at) VALUES (?, ?, ?, ?)
           ON CONFLICT (reference) DO UPDATE SET address = excluded.address, netmask = excluded.netmask,
           formatted_at = excluded.formatted_at""",
        (computer_id, _text(computer.get("address")), _text(computer.get("netmask")), now),
    )
    existing = {
        row["reference"]: row
        for row in conn.execute("SELECT reference, slap_state, title FROM partition WHERE computer_reference = ?",
                                (computer_id,))
    }
    for reference, row in existing.items():
        if reference in partitions:
            continue
        if row["slap_state"] == "busy":
            log.warning("computer %s: partition %s removed by format while holding instance %r",
                        computer_id, reference, row["title"])
        conn.execute("DELETE FROM partition WHERE computer_reference = ? AND reference = ?", (computer_id, reference))
        conn.execute(
            "UPDATE slave SET hosted_by = NULL WHERE computer_reference = ? AND hosted_by = ?",
            (computer_id, reference),
        )
    for reference in partitions:
        if reference not in existing:
            conn.execute(
                "INSERT INTO partition (reference, computer_reference, slap_state, requested_state) "
                "VALUES (?, ?, 'free', 'started')",
                (reference, computer_id),
            )
    conn.execute("DELETE FROM partition_network WHERE computer_reference = ?", (computer_id,))
    for reference, item in partitions.items():
        tap = item.get("tap")
        interface = tap.get("name") if isinstance(tap, dict) else None
        interface = str(interface) if interface else reference
        addresses = item.get("address_list") or []
        if not isinstance(addresses, list):
            raise BadRequest(f"address_list of partition {reference!r} must be a list")
        for address in addresses:
            if not isinstance(address, dict) or not address.get("addr"):
                raise BadRequest(f"address_list of partition {reference!r} holds an entry without 'addr'")
            conn.execute(
                "INSERT INTO partition_network (computer_reference, partition_reference, interface, address, netmask)"
                " VALUES (?, ?, ?, ?, ?)",
                (computer_id, reference, interface, str(address["addr"]), _text(address.get("netmask"))),
            )
    log.info("computer %s formatted: %d partitions", computer_id, len(partitions))
    return "done"


def supply(conn: sqlite3.Connection, url: str, computer_id: str, state: str, default_computer: str) -> str:
    if state not in SUPPLY_STATES:
        raise BadRequest(f"invalid state {state!r} for supplySupply: use available or destroyed")
    require_computer(conn, computer_id, default_computer)
    conn.execute(
        """INSERT INTO software (url, computer_reference, requested_state) VALUES (?, ?, ?)
           ON CONFLICT (url, computer_reference) DO UPDATE SET requested_state = excluded.requested_state""",
        (url, computer_id, state),
    )
    log.info("software release %s supplied to %s as %s", url, computer_id, state)
    return f"Supplied '{url}' to be {state}"


def report_software(
    conn: sqlite3.Connection, url: str, computer_id: str, state: str, error_log: str | None = None
) -> str:
    row = conn.execute(
        "SELECT requested_state FROM software WHERE url = ? AND computer_reference = ?", (url, computer_id)
    ).fetchone()
    if row is None:
        raise NotFound(f"software release {url} is not supplied to computer {computer_id!r}")
    now = time.time()
    if state == "error":
        conn.execute(
            "UPDATE software SET reported_state = 'error', reported_at = ?, error_log = ?, error_at = ? "
            "WHERE url = ? AND computer_reference = ?",
            (now, (error_log or "")[-MAX_ERROR_LOG:], now, url, computer_id),
        )
    elif state == "destroyed" and row["requested_state"] == "destroyed":
        conn.execute("DELETE FROM software WHERE url = ? AND computer_reference = ?", (url, computer_id))
    else:
        conn.execute(
            "UPDATE software SET reported_state = ?, reported_at = ? WHERE url = ? AND computer_reference = ?",
            (state, now, url, computer_id),
        )
    return "OK"


def use_computer(conn: sqlite3.Connection, computer_id: str, use_string: str, default_computer: str) -> str:
    require_computer(conn, computer_id, default_computer)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    conn.execute(
        "INSERT INTO usage_report (computer_reference, date, xml) VALUES (?, ?, ?)", (computer_id, date, use_string)
    )
    return "OK"


def computer_bang(conn: sqlite3.Connection, computer_id: str, message: str, default_computer: str) -> int:
    """Every instance of the computer is processed again at the next node run."""
    require_computer(conn, computer_id, default_computer)
    now = time.time()
    conn.execute(
        "UPDATE computer SET bang_at = ?, bang_message = ? WHERE reference = ?", (now, message, computer_id)
    )
    cursor = conn.execute(bump_sql("computer_reference = ? AND slap_state = 'busy'"), (now, computer_id))
    return cursor.rowcount
