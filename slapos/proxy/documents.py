"""The SLAP records the proxy sends (SLAP-PROTOCOL.md §3.2), built from database rows.

`Computer` → its `SoftwareRelease`s and `ComputerPartition`s (the one document a node fetches per
run), `ComputerPartition` alone (`registerComputerPartition`) and `SoftwareInstance` (the answer
to a request). Encoding is `slapos.slap.wire.dumps`; encoded computer and partition documents are
cached per database generation (`DocumentCache`), so a node polling an unchanged computer costs a
dictionary lookup. Within a computer document, each partition is kept encoded (a `wire.Fragment`)
as long as the rows it is built from are unchanged, so after a write only the partitions it
touched are encoded again.
"""
from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable

from slapos.slap.wire import Fragment, WireObject, dumps, dumps_instance_xml, encode_fragment

from .access import partition_url
from .allocation import any_partition
from .db import Database
from .values import load_params

SERVER_URL_PLACEHOLDER = "slap_server_url"  # the reference sends this literal text


def instance_guid(computer_id: str, partition_id: str) -> str:
    return f"{computer_id}-{partition_id}"


def shared_instance_guid(computer_id: str, slave_reference: str) -> str:
    return f"{computer_id}-shared-{slave_reference}"


def format_timestamp(value: float | None) -> str | None:
    return None if value is None else repr(float(value))


def software_release(url: str, computer_id: str, requested_state: str | None = None) -> WireObject:
    attrs = {"_computer_guid": computer_id, "_software_instance_list": [], "_software_release": url}
    if requested_state is not None:
        attrs["_requested_state"] = requested_state
    return WireObject("SoftwareRelease", (url, computer_id), attrs)


def slave_entry(row: sqlite3.Row) -> dict:
    """One element of a hosting partition's slave_instance_list."""
    entry: dict = load_params(row["parameters"])
    entry["slave_reference"] = row["reference"]
    entry["slave_title"] = row["reference"]
    entry["slap_software_type"] = row["software_type"]
    return entry


def partition_parameters(row: sqlite3.Row, ip_list: list[tuple], slaves: list[dict]) -> dict:
    """`_parameter_dict` of a busy partition: its parameters plus what the server adds."""
    params: dict = load_params(row["parameters"])
    title = row["title"]
    params["full_address_list"] = []
    params["instance_title"] = title
    params["ip_list"] = ip_list
    params["root_instance_title"] = row["requested_by"] or title
    params["slap_computer_id"] = row["computer_reference"]
    params["slap_computer_partition_id"] = row["reference"]
    params["slap_software_release_url"] = row["software_release"]
    params["slap_software_type"] = row["software_type"]
    params["slave_instance_list"] = slaves
    timestamp = format_timestamp(row["timestamp"])
    if timestamp is not None:
        params["timestamp"] = timestamp
    return params


def computer_partition(
    row: sqlite3.Row, ip_list: list[tuple], slaves: list[dict], credentials: bool = False
) -> WireObject:
    """A ComputerPartition record. With `credentials` (access = credentials, the computer
    document the node fetches with its own credential), a busy partition carries
    `_slapnode_master_url`: its own master URL relative to the node's, which the node writes
    into the partition's [slap-connection] instead of its own (docs/security-proxy.md)."""
    computer_id, partition_id = row["computer_reference"], row["reference"]
    attrs: dict = {
        "_computer_id": computer_id,
        "_instance_guid": instance_guid(computer_id, partition_id),
        "_partition_id": partition_id,
        "_request_dict": None,
    }
    if row["slap_state"] == "busy":
        attrs["_connection_dict"] = load_params(row["connection"])
        attrs["_need_modification"] = 1
        attrs["_parameter_dict"] = partition_parameters(row, ip_list, slaves)
        attrs["_requested_state"] = row["requested_state"]
        attrs["_software_release_document"] = software_release(row["software_release"], computer_id)
        if credentials and row["credential"]:
            attrs["_slapnode_master_url"] = partition_url(row["credential"])
    else:
        # a free partition: the node only cleans it up (§6.9)
        attrs["_need_modification"] = 0
        attrs["_requested_state"] = "destroyed"
        attrs["_software_release_document"] = None
    return WireObject("ComputerPartition", (computer_id, partition_id, None), attrs)


def ip_lists(conn: sqlite3.Connection, computer_id: str, partition_id: str | None = None) -> dict[str, list]:
    """partition id → [(interface, address), ...] in format order."""
    result: dict[str, list] = defaultdict(list)
    sql = "SELECT partition_reference, interface, address FROM partition_network WHERE computer_reference = ?"
    args: tuple = (computer_id,)
    if partition_id is not None:
        sql += " AND partition_reference = ?"
        args = (computer_id, partition_id)
    for partition, interface, address in _tuples(conn).execute(sql + " ORDER BY rowid", args):
        result[partition].append((interface, address))
    return result


def _tuples(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """A cursor yielding plain tuples: much cheaper than sqlite3.Row for thousands of rows."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor


def slave_rows(
    conn: sqlite3.Connection, computer_id: str, partition_id: str | None = None
) -> dict[str, list[sqlite3.Row]]:
    """hosting partition id → the rows of its shared instances (not destroyed), in request order."""
    result: dict[str, list] = defaultdict(list)
    sql = (
        "SELECT * FROM slave WHERE computer_reference = ? AND hosted_by IS NOT NULL "
        "AND requested_state != 'destroyed'"
    )
    args: tuple = (computer_id,)
    if partition_id is not None:
        sql += " AND hosted_by = ?"
        args = (computer_id, partition_id)
    for row in conn.execute(sql + " ORDER BY rowid", args):
        result[row["hosted_by"]].append(row)
    return result


# (computer id, partition id) -> (the rows the partition is built from, its encoding). The rows
# are the whole key, so an entry is never stale, whatever database or process wrote them.
_PARTITION_FRAGMENTS: dict[tuple[str, str], tuple[tuple, Fragment]] = {}
_PARTITION_FRAGMENTS_MAX = 100_000


def _partition_fragments(conn: sqlite3.Connection, computer_id: str, credentials: bool) -> list[Fragment]:
    """The encoded partitions of a computer, in document order, reusing those whose rows are unchanged."""
    ips = ip_lists(conn, computer_id)
    slaves_of = slave_rows(conn, computer_id)
    fragments = []
    cache = _PARTITION_FRAGMENTS
    for row in conn.execute("SELECT * FROM partition WHERE computer_reference = ? ORDER BY rowid", (computer_id,)):
        partition_id = row["reference"]
        ip_list = ips.get(partition_id, [])
        slaves = slaves_of.get(partition_id, ())
        content = (credentials, tuple(row), tuple(ip_list), tuple(tuple(slave) for slave in slaves))
        key = (computer_id, partition_id)
        entry = cache.get(key)
        if entry is not None and entry[0] == content:
            fragments.append(entry[1])
            continue
        fragment = encode_fragment(
            computer_partition(row, ip_list, [slave_entry(slave) for slave in slaves], credentials)
        )
        if len(cache) >= _PARTITION_FRAGMENTS_MAX:
            cache.clear()
        cache[key] = (content, fragment)
        fragments.append(fragment)
    return fragments


def computer_document(conn: sqlite3.Connection, computer_id: str, credentials: bool = False) -> WireObject:
    partitions = _partition_fragments(conn, computer_id, credentials)
    softwares = [
        software_release(url, computer_id, state)
        for url, state in conn.execute(
            "SELECT url, requested_state FROM software WHERE computer_reference = ? ORDER BY rowid", (computer_id,)
        )
    ]
    return WireObject(
        "Computer",
        (computer_id,),
        {
            "_computer_id": computer_id,
            "_computer_partition_list": partitions,
            "_software_release_list": softwares,
        },
    )


def partition_document(conn: sqlite3.Connection, computer_id: str, partition_id: str) -> WireObject:
    row = any_partition(conn, computer_id, partition_id)
    ips = ip_lists(conn, computer_id, partition_id).get(partition_id, [])
    slaves = slave_rows(conn, computer_id, partition_id).get(partition_id, ())
    return computer_partition(row, ips, [slave_entry(slave) for slave in slaves])


def software_instance(conn: sqlite3.Connection, row: sqlite3.Row) -> WireObject:
    """Answer to the request of a (non-shared) instance, from its partition row."""
    computer_id, partition_id = row["computer_reference"], row["reference"]
    connection = load_params(row["connection"])
    params = load_params(row["parameters"])
    timestamp = format_timestamp(row["timestamp"])
    if timestamp is not None:
        params["timestamp"] = timestamp
    ip_list = ip_lists(conn, computer_id, partition_id).get(partition_id, [])
    return WireObject(
        "SoftwareInstance",
        (),
        {
            "_connection_dict": connection,
            "_instance_guid": instance_guid(computer_id, partition_id),
            "_parameter_dict": params,
            "_requested_state": row["requested_state"],
            "connection_xml": dumps_instance_xml(connection) if row["connection"] else None,
            "ip_list": ip_list,
            "slap_computer_id": computer_id,
            "slap_computer_partition_id": partition_id,
            "slap_server_url": SERVER_URL_PLACEHOLDER,
            "slap_software_release_url": row["software_release"],
            "slap_software_type": row["software_type"],
        },
    )


def shared_instance(conn: sqlite3.Connection, slave: sqlite3.Row, host: sqlite3.Row | None) -> WireObject:
    """Answer to the request of a shared instance: its own parameters and connection, the host's
    place (computer, partition, addresses, software). A destroyed shared instance whose host is
    gone has no place: computer and partition are None."""
    if host is None:
        computer_id = partition_id = None
        ip_list: list = []
        software_release_url, software_type = slave["software_release"], slave["software_type"]
    else:
        computer_id, partition_id = host["computer_reference"], host["reference"]
        ip_list = ip_lists(conn, computer_id, partition_id).get(partition_id, [])
        software_release_url, software_type = host["software_release"], host["software_type"]
    return WireObject(
        "SoftwareInstance",
        (),
        {
            "_connection_dict": load_params(slave["connection"]),
            "_instance_guid": shared_instance_guid(slave["computer_reference"] or "", slave["reference"]),
            "_parameter_dict": load_params(slave["parameters"]),
            "_requested_state": slave["requested_state"],
            "ip_list": ip_list,
            "slap_computer_id": computer_id,
            "slap_computer_partition_id": partition_id,
            "slap_server_url": SERVER_URL_PLACEHOLDER,
            "slap_software_release_url": software_release_url,
            "slap_software_type": software_type,
        },
    )


class DocumentCache:
    """Encoded documents keyed by what they describe, valid for one database generation.

    The generation is read *before* the snapshot the document is built from: a write committed
    meanwhile bumps it, so the entry is born stale rather than serving old data as new."""

    MAX_ENTRIES = 100_000

    def __init__(self, db: Database):
        self.db = db
        self._entries: dict[tuple, tuple[int, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], WireObject]) -> bytes:
        generation = self.db.generation
        entry = self._entries.get(key)
        if entry is not None and entry[0] == generation:
            return entry[1]
        body = dumps(build()).encode("ascii")
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (generation, body)
        return body
