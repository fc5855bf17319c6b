"""The proxy's SQLite database: schema, migrations and transactions.

* One file, WAL mode (readers never block the writer), file mode 0600 (it holds connection
  secrets).
* The schema version lives in `PRAGMA user_version`. A fresh database is built by running the
  version-1 schema and then every migration, so a fresh database and an upgraded one are the same
  by construction. Opening an older database upgrades it in place inside one transaction, after a
  backup copy next to it. A database made by the reference slapproxy (tables suffixed `18`) is
  imported into our tables; its own tables are left untouched.
* Every write runs in `BEGIN IMMEDIATE` (takes the write lock up front: two requests can never
  both read "slappart3 is free" and both take it), serialised in-process by a lock so waiting
  writers queue on a Python lock instead of SQLite's sleeping busy handler.
* `generation` counts committed writes that change what a node sees, so the encoded
  computer documents can be cached and invalidated (see `documents.DocumentCache`).
"""
from __future__ import annotations

import datetime
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slapos.base.errors import SlapOSError

log = logging.getLogger("slapos.proxy.db")

# -- schema -----------------------------------------------------------------------------------
# Version 1: the first schema of this proxy. Kept verbatim: it is where every migration starts.
SCHEMA_V1 = [
    """CREATE TABLE computer (
        reference TEXT PRIMARY KEY,
        address TEXT,
        netmask TEXT
    )""",
    """CREATE TABLE software (
        url TEXT NOT NULL,
        computer_reference TEXT NOT NULL,
        requested_state TEXT NOT NULL DEFAULT 'available',
        PRIMARY KEY (url, computer_reference)
    )""",
    # title = instance title (`partition_reference` on the wire), requested_by = title of the
    # root of its tree ('' for a root), requester_* = partition that asked for it directly
    # (requester_id 'user' for a person). parameters/connection: JSON objects of strings.
    """CREATE TABLE partition (
        reference TEXT NOT NULL,
        computer_reference TEXT NOT NULL,
        slap_state TEXT NOT NULL DEFAULT 'free',
        software_release TEXT,
        software_type TEXT,
        title TEXT,
        requested_by TEXT,
        requester_id TEXT,
        requester_computer TEXT,
        requested_state TEXT NOT NULL DEFAULT 'started',
        parameters TEXT,
        connection TEXT,
        timestamp REAL,
        PRIMARY KEY (computer_reference, reference)
    )""",
    # an instance is identified by (title, tree): the database itself refuses a second one
    """CREATE UNIQUE INDEX partition_instance ON partition (title, requested_by)
        WHERE slap_state = 'busy'""",
    """CREATE TABLE partition_network (
        computer_reference TEXT NOT NULL,
        partition_reference TEXT NOT NULL,
        interface TEXT NOT NULL,
        address TEXT NOT NULL,
        netmask TEXT
    )""",
    """CREATE INDEX partition_network_partition
        ON partition_network (computer_reference, partition_reference)""",
    # shared ("slave") instances: reference = '<requested_by>_<title>'; the row is the source of
    # the hosting partition's slave_instance_list
    """CREATE TABLE slave (
        reference TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        computer_reference TEXT,
        hosted_by TEXT,
        requester_id TEXT,
        requester_computer TEXT,
        software_release TEXT,
        software_type TEXT,
        requested_state TEXT NOT NULL DEFAULT 'started',
        parameters TEXT,
        connection TEXT
    )""",
]

# Migrations: MIGRATIONS[n] upgrades version n+1 to n+2.
MIGRATIONS: list[list[str]] = [
    # 1 → 2: keep what the node reports (states, errors, usage) so `proxy show` can display it
    [
        "ALTER TABLE computer ADD COLUMN formatted_at REAL",
        "ALTER TABLE computer ADD COLUMN bang_at REAL",
        "ALTER TABLE computer ADD COLUMN bang_message TEXT",
        "ALTER TABLE software ADD COLUMN reported_state TEXT",
        "ALTER TABLE software ADD COLUMN reported_at REAL",
        "ALTER TABLE software ADD COLUMN error_log TEXT",
        "ALTER TABLE software ADD COLUMN error_at REAL",
        "ALTER TABLE partition ADD COLUMN reported_state TEXT",
        "ALTER TABLE partition ADD COLUMN reported_at REAL",
        "ALTER TABLE partition ADD COLUMN error_log TEXT",
        "ALTER TABLE partition ADD COLUMN error_at REAL",
        "ALTER TABLE slave ADD COLUMN error_log TEXT",
        "ALTER TABLE slave ADD COLUMN error_at REAL",
        """CREATE TABLE usage_report (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            computer_reference TEXT NOT NULL,
            date TEXT NOT NULL,
            xml TEXT NOT NULL
        )""",
        "CREATE INDEX slave_host ON slave (computer_reference, hosted_by)",
    ],
    # 2 → 3: per-partition credentials (access = credentials, slapos/proxy/access.py); busy
    # partitions of an upgraded database get theirs when the proxy starts (access.issue_missing)
    [
        "ALTER TABLE partition ADD COLUMN credential TEXT",
        "ALTER TABLE partition ADD COLUMN credential_hash TEXT",
        "CREATE UNIQUE INDEX partition_credential ON partition (credential_hash) WHERE credential_hash IS NOT NULL",
    ],
    # 3 → 4: the partition status each node posts after its runs (promises, back-off), for the
    # dashboard and /status.json; `document` is the JSON list of partition records (statusdoc)
    [
        """CREATE TABLE node_status (
            computer_reference TEXT PRIMARY KEY,
            received_at REAL NOT NULL,
            document TEXT NOT NULL
        )""",
    ],
]

SCHEMA_VERSION = 1 + len(MIGRATIONS)
REFERENCE_SUFFIX = "18"  # slapos.core 1.26.1 table names: partition18, software18, ...
DEFAULT_BUSY_TIMEOUT = 30.0


class DatabaseError(SlapOSError):
    """The database file cannot be opened, read or upgraded."""


def _now_tag() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _ensure_private_file(path: Path) -> None:
    """Create the file 0600 if missing, and make an existing one 0600 too (it holds secrets)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class Database:
    """One SQLite file shared by the threads of one proxy process."""

    def __init__(self, path: str | Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # bumped after each committed write that changes what nodes or clients see
        self._generation = 0
        # run on each new connection, and at the end of each write() (True: committed); the
        # change feed of /watchComputer (slapos/proxy/watch.py) installs its triggers with them
        self._connect_hooks: list[Callable[[sqlite3.Connection], None]] = []
        self._end_hooks: list[Callable[[bool], None]] = []

    @property
    def generation(self) -> int:
        return self._generation

    def _bump(self) -> None:
        self._generation += 1

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = True, **kw) -> Database:
        """Open (and create or upgrade) the database; raise DatabaseError with one clear line."""
        path = Path(path)
        if not create and not path.exists():
            raise DatabaseError(f"no proxy database at {path}: check [slapproxy] database_uri or start the proxy once")
        if create and not path.parent.is_dir():
            raise DatabaseError(f"directory {path.parent} of the proxy database does not exist: create it first")
        try:
            _ensure_private_file(path)
        except OSError as e:
            raise DatabaseError(f"cannot open proxy database {path}: {e.strerror}") from None
        db = cls(path, **kw)
        try:
            db.upgrade()
        except sqlite3.DatabaseError as e:
            db.close()
            raise DatabaseError(f"cannot use proxy database {path}: {e}") from None
        except BaseException:
            db.close()
            raise
        return db

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # NORMAL is durable across application crashes in WAL mode; only a power loss may undo
        # the last commits, which a node simply reports again.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (waitress runs each request in one worker thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            with self._connections_lock:
                for hook in self._connect_hooks:
                    hook(conn)
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    def add_hooks(self, on_connect: Callable[[sqlite3.Connection], None], on_end: Callable[[bool], None]) -> None:
        """`on_connect(conn)` for every connection (those open now too, before any other thread
        uses them: call this at start-up), `on_end(committed)` after each write transaction."""
        with self._connections_lock:
            self._connect_hooks.append(on_connect)
            self._end_hooks.append(on_end)
            for conn in self._connections:
                on_connect(conn)

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    # -- transactions ---------------------------------------------------------------------------
    @contextmanager
    def write(self, documents: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE). `documents=False` for writes nodes never see
        (reports), so they do not invalidate cached computer documents."""
        conn = self.conn
        with self._write_lock:
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for hook in self._end_hooks:
                    hook(False)
                raise
            # a repeated request that changes nothing keeps the cached documents valid; the
            # bump comes after COMMIT (a reader reads the generation before its snapshot)
            if documents and conn.total_changes != before:
                self._bump()
            for hook in self._end_hooks:  # after the bump: a woken node reads the new documents
                hook(True)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one consistent snapshot."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # -- schema -------------------------------------------------------------------------------
    def version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def upgrade(self) -> list[str]:
        """Bring the file to SCHEMA_VERSION; return what was done (for the log)."""
        conn = self.conn
        # WAL is a property of the file: set once, kept by every later connection
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("database %s: could not switch to WAL mode (got %s)", self.path, mode)
        version = self.version()
        tables = _tables(conn)
        done: list[str] = []
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"proxy database {self.path} has schema version {version}, newer than this proxy "
                f"understands ({SCHEMA_VERSION}): use a newer slapnode"
            )
        if version == SCHEMA_VERSION:
            return done
        if version == 0:
            suffix = reference_suffix(tables)
            ours = tables & {"computer", "partition", "software", "slave", "partition_network"}
            if ours:
                raise DatabaseError(
                    f"{self.path} has proxy tables but no schema version: it was not made by this proxy"
                )
            if suffix is not None:
                backup = self.backup(f"reference{suffix}")
                with self._schema_transaction():
                    self._create(conn)
                    counts = import_reference(conn, suffix)
                done.append(f"imported reference database ({counts}); backup {backup}")
                log.info("database %s: %s", self.path, done[-1])
                return done
            if any(t.startswith(("partition", "software", "computer")) for t in tables):
                found = ", ".join(sorted(tables))
                raise DatabaseError(
                    f"{self.path} is not a database this proxy can read (tables: {found}); "
                    f"only our own schema and the reference's version-{REFERENCE_SUFFIX} tables are understood"
                )
            if tables - {"sqlite_sequence"}:
                raise DatabaseError(f"{self.path} is not a slapproxy database: use another database_uri")
            with self._schema_transaction():
                self._create(conn)
            done.append(f"created schema version {SCHEMA_VERSION}")
            return done
        backup = self.backup(f"v{version}")
        with self._schema_transaction():
            for index in range(version - 1, SCHEMA_VERSION - 1):
                for statement in MIGRATIONS[index]:
                    conn.execute(statement)
                done.append(f"migrated schema {index + 1} → {index + 2}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("database %s: %s; backup %s", self.path, ", ".join(done), backup)
        return done

    @contextmanager
    def _schema_transaction(self) -> Iterator[None]:
        conn = self.conn
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._bump()

    def _create(self, conn: sqlite3.Connection) -> None:
        for statement in SCHEMA_V1:
            conn.execute(statement)
        for migration in MIGRATIONS:
            for statement in migration:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def backup(self, label: str) -> Path:
        """Copy the whole database next to it before changing its schema (mode 0600)."""
        target = self.path.with_name(f"{self.path.name}.backup-{label}-{_now_tag()}")
        _ensure_private_file(target)
        dest = sqlite3.connect(str(target))
        try:
            self.conn.backup(dest)
        finally:
            dest.close()
        return target


# -- reference import ----------------------------------------------------------------------------
def reference_suffix(tables: set[str]) -> str | None:
    """The version suffix of a reference slapproxy database (`partition18`, or `partition11`.. of
    older releases that already kept connection parameters as `connection_xml`), or None."""
    found = [int(t[len("partition"):]) for t in tables
             if t.startswith("partition") and t[len("partition"):].isdigit()]
    found = [n for n in found if 11 <= n <= int(REFERENCE_SUFFIX)]
    return str(max(found)) if found else None


class _Row(dict):
    def __missing__(self, key: str) -> None:
        return None


def import_reference(conn: sqlite3.Connection, suffix: str = REFERENCE_SUFFIX) -> str:
    """Copy the rows of a reference slapproxy database (tables `<name>18`) into our tables.

    Instance and connection parameters are instance XML there and JSON here; shared instances are
    rebuilt from the hosts' marshalled slave_instance_list (our `slave` table is their source).
    """
    from slapos.slap import wire

    from .values import dump_params

    s = suffix
    tables = _tables(conn)

    def rows(name: str) -> list[dict]:
        if name + s not in tables:
            return []
        # older releases lack some columns: every row answers None for them
        result = conn.execute(f"SELECT * FROM {name}{s}").fetchall()  # noqa: S608 - fixed names
        return [_Row(zip(row.keys(), tuple(row), strict=True)) for row in result]

    def instance_xml(text: str | None) -> str | None:
        if not text:
            return None
        return dump_params(wire.loads_instance_xml(text))

    counts = {"computers": 0, "software": 0, "partitions": 0, "shared": 0}
    for row in rows("computer"):
        conn.execute(
            "INSERT INTO computer (reference, address, netmask) VALUES (?, ?, ?)",
            (row["reference"], row["address"], row["netmask"]),
        )
        counts["computers"] += 1
    for row in rows("software"):
        conn.execute(
            "INSERT OR REPLACE INTO software (url, computer_reference, requested_state) VALUES (?, ?, ?)",
            (row["url"], row["computer_reference"], row["requested_state"] or "available"),
        )
        counts["software"] += 1
    slave_rows = {row["reference"]: row for row in rows("slave")}
    partitions = rows("partition")
    titles = {(p["computer_reference"], p["reference"]): p for p in partitions}
    for row in partitions:
        busy = row["slap_state"] == "busy"
        try:
            conn.execute(
                """INSERT INTO partition (reference, computer_reference, slap_state, software_release,
                   software_type, title, requested_by, requester_id, requester_computer, requested_state,
                   parameters, connection, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    row["reference"], row["computer_reference"], row["slap_state"] or "free",
                    row["software_release"], row["software_type"],
                    row["partition_reference"], row["requested_by"] if busy else None,
                    row["requester_id"], row["computer_reference"] if row["requester_id"] else None,
                    row["requested_state"] or "started",
                    instance_xml(row["xml"]), instance_xml(row["connection_xml"]), row["timestamp"],
                ),
            )
        except sqlite3.IntegrityError:
            raise DatabaseError(
                f"the reference database has two instances titled {row['partition_reference']!r} in one "
                "tree: fix it with sqlite3 before importing"
            ) from None
        counts["partitions"] += 1
        if not busy or not row["slave_instance_list"]:
            continue
        for entry in wire.loads(row["slave_instance_list"]) or []:
            if not isinstance(entry, dict) or "slave_reference" not in entry:
                continue
            reference = str(entry["slave_reference"])
            params = {
                k: v for k, v in entry.items() if k not in ("slave_reference", "slave_title", "slap_software_type")
            }
            old = slave_rows.get(reference)
            requester_id = old["requester_id"] if old is not None else "user"
            requested_by = ""
            if requester_id and requester_id != "user":
                requester = titles.get((row["computer_reference"], requester_id))
                if requester is not None:
                    requested_by = requester["requested_by"] or requester["partition_reference"] or ""
            title = reference[len(requested_by) + 1:] if reference.startswith(requested_by + "_") else reference
            conn.execute(
                """INSERT OR REPLACE INTO slave (reference, title, requested_by, computer_reference, hosted_by,
                   requester_id, requester_computer, software_release, software_type, requested_state,
                   parameters, connection) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'started', ?, ?)""",
                (
                    reference, title, requested_by, row["computer_reference"], row["reference"],
                    requester_id, row["computer_reference"] if requester_id != "user" else None,
                    row["software_release"], str(entry.get("slap_software_type") or row["software_type"]),
                    dump_params(params), instance_xml(old["connection_xml"]) if old is not None else None,
                ),
            )
            counts["shared"] += 1
    for row in rows("partition_network"):
        conn.execute(
            """INSERT INTO partition_network (computer_reference, partition_reference, interface, address, netmask)
               VALUES (?, ?, ?, ?, ?)""",
            (row["computer_reference"], row["partition_reference"], row["reference"], row["address"], row["netmask"]),
        )
    return ", ".join(f"{n} {k}" for k, n in counts.items())
