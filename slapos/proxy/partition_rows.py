"""A partition's row in the proxy's database: find it (busy or not), check a requested state, and
bump its `timestamp`, the only change signal a node sees (strictly increasing, even if the clock
goes back). Split from slapos.proxy.allocation, which re-exports these names.
"""
from __future__ import annotations

import sqlite3
import time

from .errors import BadRequest, NotFound

STATES = ("started", "stopped", "destroyed")
USER = "user"
MAX_ERROR_LOG = 256 * 1024  # keep the end of huge build logs, where the error is


def check_state(state: str | None, what: str = "state") -> str | None:
    if state is None or state in STATES:
        return state
    raise BadRequest(f"invalid {what} {state!r}: use started, stopped or destroyed")


def bump_sql(where: str) -> str:
    # strictly greater than the stored value, even if the wall clock went backwards
    return f"UPDATE partition SET timestamp = max(?, coalesce(timestamp, 0) + 0.000001) WHERE {where}"


def bump_partition(conn: sqlite3.Connection, computer_id: str | None, partition_id: str | None) -> None:
    if not computer_id or not partition_id or partition_id == USER:
        return
    conn.execute(
        bump_sql("computer_reference = ? AND reference = ? AND slap_state = 'busy'"),
        (time.time(), computer_id, partition_id),
    )


def busy_partition(conn: sqlite3.Connection, computer_id: str, partition_id: str) -> sqlite3.Row:
    row = any_partition(conn, computer_id, partition_id)
    if row["slap_state"] != "busy":
        raise NotFound(f"partition {partition_id!r} on computer {computer_id!r} holds no instance (it is free)")
    return row


def any_partition(conn: sqlite3.Connection, computer_id: str, partition_id: str) -> sqlite3.Row:
    row = conn.execute(
        "SELECT * FROM partition WHERE computer_reference = ? AND reference = ?", (computer_id, partition_id)
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown partition {partition_id!r} on computer {computer_id!r}")
    return row
