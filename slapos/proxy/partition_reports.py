"""What nodes report on their partitions: the state reached, an error (of the partition or of a
shared instance it hosts), and `destroyed`, which frees the partition once no instance it
requested is left. Runs inside the caller's write transaction, as allocation does.
Split from slapos.proxy.allocation, which re-exports these names.
"""
from __future__ import annotations

import logging
import sqlite3
import time

from .errors import Forbidden, NotFound
from .partition_rows import MAX_ERROR_LOG, any_partition

log = logging.getLogger("slapos.proxy")


def report_partition(conn: sqlite3.Connection, computer_id: str, partition_id: str, state: str) -> None:
    any_partition(conn, computer_id, partition_id)
    conn.execute(
        "UPDATE partition SET reported_state = ?, reported_at = ? WHERE computer_reference = ? AND reference = ?",
        (state, time.time(), computer_id, partition_id),
    )


def report_error(
    conn: sqlite3.Connection, computer_id: str, partition_id: str, error_log: str, slave_reference: str | None
) -> None:
    any_partition(conn, computer_id, partition_id)
    text = error_log[-MAX_ERROR_LOG:]
    if slave_reference is None:
        conn.execute(
            "UPDATE partition SET error_log = ?, error_at = ? WHERE computer_reference = ? AND reference = ?",
            (text, time.time(), computer_id, partition_id),
        )
        return
    slave = conn.execute(
        "SELECT computer_reference, hosted_by FROM slave WHERE reference = ?", (slave_reference,)
    ).fetchone()
    if slave is None:
        raise NotFound(f"unknown shared instance {slave_reference!r}")
    if (slave["computer_reference"], slave["hosted_by"]) != (computer_id, partition_id):
        # only its host reports on a shared instance: another partition must not blame it
        raise Forbidden(f"shared instance {slave_reference!r} is not hosted by {partition_id!r} on {computer_id!r}")
    conn.execute("UPDATE slave SET error_log = ?, error_at = ? WHERE reference = ?", (text, time.time(), slave_reference))


def destroyed(conn: sqlite3.Connection, computer_id: str, partition_id: str) -> str:
    """The node destroyed the partition: free it, unless instances it requested still exist."""
    row = any_partition(conn, computer_id, partition_id)
    now = time.time()
    if row["slap_state"] != "busy":
        conn.execute(
            "UPDATE partition SET reported_state = 'destroyed', reported_at = ? "
            "WHERE computer_reference = ? AND reference = ?",
            (now, computer_id, partition_id),
        )
        return "OK"
    is_root = not row["requested_by"]
    children = conn.execute(
        "SELECT computer_reference, reference, title, requested_state FROM partition WHERE slap_state = 'busy' "
        "AND NOT (computer_reference = ? AND reference = ?) "
        "AND ((requester_computer = ? AND requester_id = ?) OR (? AND requested_by = ?)) ORDER BY rowid",
        (computer_id, partition_id, computer_id, partition_id, is_root, row["title"]),
    ).fetchall()
    if children:
        for child in children:
            if child["requested_state"] != "destroyed":
                conn.execute(
                    "UPDATE partition SET requested_state = 'destroyed', "
                    "timestamp = max(?, coalesce(timestamp, 0) + 0.000001) "
                    "WHERE computer_reference = ? AND reference = ?",
                    (now, child["computer_reference"], child["reference"]),
                )
        names = ", ".join(child["title"] for child in children)
        return f"Not destroying yet because this partition has child partitions: {names}"
    free_partition(conn, computer_id, partition_id, now)
    log.info("partition %s on %s destroyed and freed (was %r)", partition_id, computer_id, row["title"])
    return "OK"


def free_partition(conn: sqlite3.Connection, computer_id: str, partition_id: str, now: float) -> None:
    conn.execute(
        """UPDATE partition SET slap_state = 'free', requested_state = 'started', software_release = NULL,
           software_type = NULL, title = NULL, requested_by = NULL, requester_id = NULL,
           requester_computer = NULL, parameters = NULL, connection = NULL,
           reported_state = 'destroyed', reported_at = ?, error_log = NULL, error_at = NULL,
           credential = NULL, credential_hash = NULL
           WHERE computer_reference = ? AND reference = ?""",
        (now, computer_id, partition_id),
    )
    # its shared instances wait for a new host (they are kept, as the reference keeps them)
    conn.execute(
        "UPDATE slave SET hosted_by = NULL WHERE computer_reference = ? AND hosted_by = ?", (computer_id, partition_id)
    )
