"""Which partition serves which request: instances, shared instances, the instance tree.

Every function here runs inside one write transaction (`Database.write()`) opened by the caller,
so a request either applies completely or not at all (a 404 leaves nothing changed).

Vocabulary (SLAP-PROTOCOL.md §4.3–4.8):
* an instance is identified by (title, requested_by): `requested_by` is the title of the root of
  its tree, `''` for an instance a person requested;
* `requester_*` is the partition that asked for it directly (`user` for a person);
* a shared ("slave") instance lives in a hosting partition's `slave_instance_list`; its reference
  is `<requested_by>_<title>` (with `_` and `%` of the tree's name escaped, `shared_reference`,
  so that two trees can never name the same one);
* the partition `timestamp` is the only change signal a node sees: every change that matters to
  a partition bumps it (strictly increasing, even if the clock goes back).

A partition's row and its change signal are in partition_rows, what nodes report on their
partitions in partition_reports (their names stay importable from here).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from . import access
from .errors import BadRequest, Conflict, NotFound
from .partition_reports import destroyed, free_partition, report_error, report_partition  # noqa: F401 - our API
from .partition_rows import (  # noqa: F401 - these names are part of our API
    MAX_ERROR_LOG,
    STATES,
    USER,
    any_partition,
    bump_partition,
    bump_sql,
    busy_partition,
    check_state,
)
from .values import dump_params

log = logging.getLogger("slapos.proxy")


@dataclass(frozen=True)
class Requester:
    """Who is asking: a person (partition_id None) or a partition of a computer."""

    computer_id: str | None = None
    partition_id: str | None = None
    requested_by: str = ""  # root title of the requester's tree ('' for a person)

    @property
    def requester_id(self) -> str:
        return self.partition_id or USER


@dataclass(frozen=True)
class InstanceRequest:
    """What a `requestComputerPartition` asks for, decoded and checked."""

    software_release: str
    software_type: str
    title: str
    parameters: dict  # normalised: text values (see values.py)
    filter_kw: dict  # computer_guid, instance_guid, ... (SLA)
    state: str | None  # None keeps the current requested state
    default_computer: str  # the proxy's own computer, preferred when the filter names none


def shared_reference(requested_by: str, title: str) -> str:
    """The reference of a shared instance: `<tree>_<title>` as the reference spells it, with `%`
    and `_` of the tree's name escaped. Unescaped, tree `a` + title `b_c` and tree `a_b` + title
    `c` would both be `a_b_c`, and one tree could take over another's shared instance; escaped,
    the first `_` always ends the tree's name. Names without `_` or `%` are spelled as before."""
    return requested_by.replace("%", "%25").replace("_", "%5F") + "_" + title


def _slave_row(conn: sqlite3.Connection, requested_by: str, title: str) -> sqlite3.Row | None:
    """A shared instance by what identifies it, (tree, title): never by its reference alone."""
    return conn.execute(
        "SELECT * FROM slave WHERE requested_by = ? AND title = ?", (requested_by, title)
    ).fetchone()


def identify(conn: sqlite3.Connection, computer_id: str | None, partition_id: str | None) -> Requester:
    """The requester named by the X-SlapPartition header (or the form): it must hold an instance."""
    if not partition_id:
        return Requester()
    row = conn.execute(
        "SELECT title, requested_by, slap_state FROM partition WHERE computer_reference = ? AND reference = ?",
        (computer_id, partition_id),
    ).fetchone()
    if row is None or row["slap_state"] != "busy":
        raise BadRequest(f"No partition matching the authorization header: ({computer_id} / {partition_id})")
    return Requester(computer_id, partition_id, row["requested_by"] or row["title"])


# -- instances ------------------------------------------------------------------------------------
def _candidate_computers(
    conn: sqlite3.Connection, software_release: str, computer_guid: str | None, default_computer: str
) -> list[str]:
    """Computers that may host a new instance of `software_release`: they must have it supplied."""
    if computer_guid:
        known = conn.execute("SELECT 1 FROM computer WHERE reference = ?", (computer_guid,)).fetchone()
        if known is None:
            raise NotFound(f"unknown computer {computer_guid!r} (filter computer_guid): format it first")
        supplied = conn.execute(
            "SELECT 1 FROM software WHERE url = ? AND computer_reference = ? AND requested_state = 'available'",
            (software_release, computer_guid),
        ).fetchone()
        if supplied is None:
            raise NotFound(
                f"software release {software_release} is not supplied to computer {computer_guid}: "
                f"supply it first (slapos supply {software_release} {computer_guid})"
            )
        return [computer_guid]
    computers = [
        row[0]
        for row in conn.execute(
            "SELECT computer_reference FROM software WHERE url = ? AND requested_state = 'available' "
            "ORDER BY computer_reference != ?, computer_reference",
            (software_release, default_computer),
        )
    ]
    if not computers:
        raise NotFound(
            f"software release {software_release} is not supplied to any computer: "
            f"supply it first (slapos supply {software_release} {default_computer})"
        )
    return computers


def _root_state(conn: sqlite3.Connection, root_title: str) -> str | None:
    row = conn.execute(
        "SELECT requested_state FROM partition WHERE slap_state = 'busy' AND title = ? AND requested_by = ''",
        (root_title,),
    ).fetchone()
    return row[0] if row else None


def request_instance(conn: sqlite3.Connection, requester: Requester, request: InstanceRequest) -> sqlite3.Row:
    """Allocate (first request) or update (repeat) the instance (title, requester's tree)."""
    software_release, software_type, title = request.software_release, request.software_type, request.title
    parameters, filter_kw, state = request.parameters, request.filter_kw, request.state
    default_computer = request.default_computer
    requested_by = requester.requested_by
    params_text = dump_params(parameters)
    row = conn.execute(
        "SELECT * FROM partition WHERE slap_state = 'busy' AND title = ? AND requested_by = ?",
        (title, requested_by),
    ).fetchone()
    now = time.time()
    if row is None:
        computers = _candidate_computers(conn, software_release, filter_kw.get("computer_guid"), default_computer)
        for computer_id in computers:
            free = conn.execute(
                "SELECT reference FROM partition WHERE computer_reference = ? AND slap_state = 'free' "
                "ORDER BY rowid LIMIT 1",
                (computer_id,),
            ).fetchone()
            if free is not None:
                break
        else:
            raise NotFound(
                f"No free computer partition found for: {title} "
                f"(every partition of {', '.join(computers)} is busy: destroy an instance or format more partitions)"
            )
        partition_id = free[0]
        conn.execute(
            """UPDATE partition SET slap_state = 'busy', software_release = ?, software_type = ?, title = ?,
               requested_by = ?, requester_id = ?, requester_computer = ?, requested_state = ?,
               parameters = ?, connection = NULL, timestamp = max(?, coalesce(timestamp, 0) + 0.000001),
               reported_state = NULL, reported_at = NULL, error_log = NULL, error_at = NULL
               WHERE computer_reference = ? AND reference = ?""",
            (
                software_release, software_type, title, requested_by, requester.requester_id,
                requester.computer_id, state or "started", params_text, now, computer_id, partition_id,
            ),
        )
        access.issue(conn, computer_id, partition_id)
        log.info("instance %r (tree %r) allocated to %s on %s", title, requested_by or title, partition_id, computer_id)
        return any_partition(conn, computer_id, partition_id)

    computer_id, partition_id = row["computer_reference"], row["reference"]
    new_state = state or row["requested_state"]
    if requested_by:
        # a child follows its root when the root is stopped or destroyed (§4.4.3)
        root_state = _root_state(conn, requested_by)
        if root_state is not None and root_state != "started":
            new_state = root_state
    if requester.partition_id and (
        row["requester_id"] != requester.partition_id or row["requester_computer"] != requester.computer_id
    ):
        conn.execute(
            "UPDATE partition SET requester_id = ?, requester_computer = ? WHERE computer_reference = ? AND reference = ?",
            (requester.partition_id, requester.computer_id, computer_id, partition_id),
        )
    if (
        new_state != row["requested_state"]
        or software_release != row["software_release"]
        or software_type != row["software_type"]
        or params_text != (row["parameters"] or dump_params({}))
        or row["timestamp"] is None
    ):
        conn.execute(
            """UPDATE partition SET requested_state = ?, software_release = ?, software_type = ?, parameters = ?,
               timestamp = max(?, coalesce(timestamp, 0) + 0.000001)
               WHERE computer_reference = ? AND reference = ?""",
            (new_state, software_release, software_type, params_text, now, computer_id, partition_id),
        )
        return any_partition(conn, computer_id, partition_id)
    return row


# -- shared instances -----------------------------------------------------------------------------
def _host_ok(host: sqlite3.Row | None, software_release: str, software_type: str) -> bool:
    return (
        host is not None
        and host["slap_state"] == "busy"
        and host["requested_state"] != "destroyed"
        and host["software_release"] == software_release
        and (not software_type or host["software_type"] == software_type)
    )


def _find_host(
    conn: sqlite3.Connection,
    existing: sqlite3.Row | None,
    software_release: str,
    software_type: str,
    filter_kw: dict,
    default_computer: str,
) -> sqlite3.Row | None:
    computer_guid = filter_kw.get("computer_guid")
    guid = filter_kw.get("instance_guid")
    if guid:
        host = conn.execute(
            "SELECT * FROM partition WHERE computer_reference || '-' || reference = ?", (str(guid),)
        ).fetchone()
        if host is not None and computer_guid and host["computer_reference"] != computer_guid:
            return None  # both filters hold (a node acting as a person is kept to its computer: join.py)
        return host if _host_ok(host, software_release, software_type) else None
    if existing is not None and existing["hosted_by"]:
        # stay where we are as long as the host still fits: moving a shared instance is disruptive
        host = conn.execute(
            "SELECT * FROM partition WHERE computer_reference = ? AND reference = ?",
            (existing["computer_reference"], existing["hosted_by"]),
        ).fetchone()
        if _host_ok(host, software_release, software_type) and (
            not computer_guid or host["computer_reference"] == computer_guid
        ):
            return host
    sql = (
        "SELECT * FROM partition WHERE slap_state = 'busy' AND software_release = ? "
        "AND requested_state != 'destroyed'"
    )
    args: list = [software_release]
    if software_type:
        sql += " AND software_type = ?"
        args.append(software_type)
    if computer_guid:
        sql += " AND computer_reference = ?"
        args.append(computer_guid)
    sql += " ORDER BY computer_reference != ?, computer_reference, rowid LIMIT 1"
    args.append(default_computer)
    return conn.execute(sql, args).fetchone()


def request_shared(
    conn: sqlite3.Connection, requester: Requester, request: InstanceRequest
) -> tuple[sqlite3.Row, sqlite3.Row | None]:
    """Place (or update) a shared instance on a hosting partition; return (slave row, host row)."""
    software_release, software_type, title = request.software_release, request.software_type, request.title
    parameters, filter_kw, state = request.parameters, request.filter_kw, request.state
    default_computer = request.default_computer
    requested_by = requester.requested_by
    existing = _slave_row(conn, requested_by, title)
    if existing is not None:
        reference = existing["reference"]  # as it was first stored (a database from before the escaping)
    else:
        reference = shared_reference(requested_by, title)
        taken = conn.execute("SELECT requested_by, title FROM slave WHERE reference = ?", (reference,)).fetchone()
        if taken is not None:  # only possible with rows stored before the escaping
            raise Conflict(
                f"shared instance reference {reference!r} is already used by {taken['title']!r} of another tree: "
                "choose another title"
            )
    new_state = state or (existing["requested_state"] if existing is not None else "started")
    host = _find_host(conn, existing, software_release, software_type, filter_kw, default_computer)
    if host is None:
        if new_state == "destroyed" and existing is not None:
            # its host is gone: just remember it is destroyed
            _detach_from_old_host(conn, existing, None)
            conn.execute(
                "UPDATE slave SET requested_state = 'destroyed', hosted_by = NULL WHERE reference = ?", (reference,)
            )
            return conn.execute("SELECT * FROM slave WHERE reference = ?", (reference,)).fetchone(), None
        where = filter_kw.get("computer_guid") or "any computer"
        raise NotFound(
            f"No partition corresponding to slave request: [{software_release!r}, {where!r}, {software_type!r}] "
            f"(no instance of that software release and type to host shared instance {title!r}: request one first)"
        )
    params_text = dump_params(parameters)
    slave_type = software_type or host["software_type"]
    host_key = (host["computer_reference"], host["reference"])
    if existing is None:
        conn.execute(
            """INSERT INTO slave (reference, title, requested_by, computer_reference, hosted_by, requester_id,
               requester_computer, software_release, software_type, requested_state, parameters)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                reference, title, requested_by, host_key[0], host_key[1], requester.requester_id,
                requester.computer_id, software_release, slave_type, new_state, params_text,
            ),
        )
        if new_state != "destroyed":
            bump_partition(conn, *host_key)
        log.info("shared instance %r placed on %s of %s", reference, host_key[1], host_key[0])
    else:
        old_key = (existing["computer_reference"], existing["hosted_by"])
        visible_before = existing["hosted_by"] is not None and existing["requested_state"] != "destroyed"
        visible_now = new_state != "destroyed"
        if old_key != host_key:
            _detach_from_old_host(conn, existing, host_key)
            if visible_now:
                bump_partition(conn, *host_key)
        elif (visible_before or visible_now) and (
            visible_before != visible_now
            or params_text != existing["parameters"]
            or slave_type != existing["software_type"]
        ):
            bump_partition(conn, *host_key)
        conn.execute(
            """UPDATE slave SET computer_reference = ?, hosted_by = ?, software_release = ?, software_type = ?,
               requested_state = ?, parameters = ?, requester_id = ?, requester_computer = ?
               WHERE reference = ?""",
            (
                host_key[0], host_key[1], software_release, slave_type, new_state, params_text,
                requester.requester_id, requester.computer_id, reference,
            ),
        )
    slave = conn.execute("SELECT * FROM slave WHERE reference = ?", (reference,)).fetchone()
    return slave, host


def _detach_from_old_host(conn: sqlite3.Connection, slave: sqlite3.Row, new_host: tuple | None) -> None:
    if slave["hosted_by"] and slave["requested_state"] != "destroyed":
        old = (slave["computer_reference"], slave["hosted_by"])
        if old != new_host:
            bump_partition(conn, *old)


# -- connection parameters, bang, rename ---------------------------------------------------------
def set_connection(
    conn: sqlite3.Connection,
    computer_id: str,
    partition_id: str,
    connection: dict,
    slave_reference: str | None,
) -> None:
    row = busy_partition(conn, computer_id, partition_id)
    text = dump_params(connection)
    if slave_reference is None:
        if text != row["connection"]:
            conn.execute(
                "UPDATE partition SET connection = ? WHERE computer_reference = ? AND reference = ?",
                (text, computer_id, partition_id),
            )
            # the requester reads them during its own run: make it run again (§4.6)
            bump_partition(conn, row["requester_computer"] or computer_id, row["requester_id"])
        return
    slave = conn.execute("SELECT * FROM slave WHERE reference = ?", (slave_reference,)).fetchone()
    if slave is None:
        raise NotFound(f"unknown shared instance {slave_reference!r}")
    if (slave["computer_reference"], slave["hosted_by"]) != (computer_id, partition_id):
        raise Conflict(
            f"shared instance {slave_reference!r} is hosted by {slave['hosted_by']!r} on "
            f"{slave['computer_reference']!r}, not by {partition_id!r} on {computer_id!r}"
        )
    if text != slave["connection"]:
        conn.execute("UPDATE slave SET connection = ? WHERE reference = ?", (text, slave_reference))
        bump_partition(conn, slave["requester_computer"] or computer_id, slave["requester_id"])


def bang(conn: sqlite3.Connection, computer_id: str, partition_id: str) -> int:
    """Ask for the whole tree of this partition to be processed again: bump every member."""
    row = busy_partition(conn, computer_id, partition_id)
    root = row["requested_by"] or row["title"]
    cursor = conn.execute(
        bump_sql("slap_state = 'busy' AND ((requested_by = '' AND title = ?) OR requested_by = ?)"),
        (time.time(), root, root),
    )
    return cursor.rowcount


def rename(conn: sqlite3.Connection, computer_id: str, partition_id: str, new_name: str) -> None:
    row = busy_partition(conn, computer_id, partition_id)
    old = row["title"]
    if new_name == old:
        return
    clash = conn.execute(
        "SELECT reference FROM partition WHERE slap_state = 'busy' AND title = ? AND requested_by = ?",
        (new_name, row["requested_by"]),
    ).fetchone()
    if clash is not None:
        raise Conflict(f"an instance titled {new_name!r} already exists in this tree (partition {clash[0]})")
    now = time.time()
    conn.execute(
        "UPDATE partition SET title = ?, timestamp = max(?, coalesce(timestamp, 0) + 0.000001) "
        "WHERE computer_reference = ? AND reference = ?",
        (new_name, now, computer_id, partition_id),
    )
    if not row["requested_by"]:
        # a root: its title names the whole tree
        conn.execute(
            "UPDATE partition SET requested_by = ?, timestamp = max(?, coalesce(timestamp, 0) + 0.000001) "
            "WHERE slap_state = 'busy' AND requested_by = ?",
            (new_name, now, old),
        )
        for slave in conn.execute("SELECT * FROM slave WHERE requested_by = ?", (old,)).fetchall():
            new_reference = shared_reference(new_name, slave["title"])
            if conn.execute("SELECT 1 FROM slave WHERE reference = ?", (new_reference,)).fetchone():
                raise Conflict(f"renaming would clash with shared instance {new_reference!r}")
            conn.execute(
                "UPDATE slave SET reference = ?, requested_by = ? WHERE reference = ?",
                (new_reference, new_name, slave["reference"]),
            )
            if slave["hosted_by"] and slave["requested_state"] != "destroyed":
                bump_partition(conn, slave["computer_reference"], slave["hosted_by"])
