"""The database file: creation, WAL, mode, transactions, migrations from version 1 and the import of
a reference (slapos.core) proxy database."""
from __future__ import annotations

import sqlite3
import stat

import pytest

from slapos.proxy import db as dbmodule
from slapos.proxy.db import SCHEMA_V1, SCHEMA_VERSION, Database, DatabaseError
from slapos.slap import wire

from .conftest import COMPUTER, SR, start_live


def test_fresh_database_is_private_wal_and_current(tmp_path):
    database = Database.open(tmp_path / "proxy.db")
    try:
        assert stat.S_IMODE((tmp_path / "proxy.db").stat().st_mode) == 0o600
        assert database.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert database.version() == SCHEMA_VERSION
    finally:
        database.close()
    # an existing file with loose permissions is tightened
    (tmp_path / "proxy.db").chmod(0o644)
    Database.open(tmp_path / "proxy.db").close()
    assert stat.S_IMODE((tmp_path / "proxy.db").stat().st_mode) == 0o600


def test_write_transaction_rolls_back_on_error(tmp_path):
    database = Database.open(tmp_path / "proxy.db")
    try:
        generation = database.generation
        with pytest.raises(RuntimeError):
            with database.write() as conn:
                conn.execute("INSERT INTO computer (reference) VALUES ('C')")
                raise RuntimeError("boom")
        assert database.conn.execute("SELECT count(*) FROM computer").fetchone()[0] == 0
        assert database.generation == generation
        with database.write() as conn:
            conn.execute("INSERT INTO computer (reference) VALUES ('C')")
        assert database.generation == generation + 1
        with database.write() as conn:  # no change: cached documents stay valid
            conn.execute("SELECT * FROM computer")
        assert database.generation == generation + 1
    finally:
        database.close()


def make_v1_database(path) -> None:
    """A database as the first version of this proxy wrote it."""
    conn = sqlite3.connect(str(path))
    for statement in SCHEMA_V1:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO computer VALUES (?, '10.0.0.1', '255.255.0.0')", (COMPUTER,))
    conn.execute("INSERT INTO software VALUES (?, ?, 'available')", (SR, COMPUTER))
    conn.execute(
        "INSERT INTO partition (reference, computer_reference, slap_state, software_release, software_type, title,"
        " requested_by, requester_id, requested_state, parameters, connection, timestamp)"
        " VALUES ('slappart0', ?, 'busy', ?, 'default', 'old-instance', '', 'user', 'started', '{\"a\":\"1\"}',"
        " '{\"url\":\"http://x/\"}', 1700000000.5)",
        (COMPUTER, SR),
    )
    conn.execute("INSERT INTO partition (reference, computer_reference) VALUES ('slappart1', ?)", (COMPUTER,))
    conn.execute(
        "INSERT INTO partition_network VALUES (?, 'slappart0', 'slaptap0', '10.0.0.10', '255.255.255.255')",
        (COMPUTER,),
    )
    conn.execute(
        "INSERT INTO slave (reference, title, requested_by, computer_reference, hosted_by, requester_id,"
        " software_release, software_type, requested_state, parameters, connection)"
        " VALUES ('_front', 'front', '', ?, 'slappart0', 'user', ?, 'default', 'started', '{\"d\":\"e\"}', NULL)",
        (COMPUTER, SR),
    )
    conn.commit()
    conn.close()


def test_version_1_database_is_upgraded_in_place_losing_nothing(tmp_path):
    path = tmp_path / "proxy.db"
    make_v1_database(path)
    live = start_live(tmp_path)
    try:
        connection = live.connect()
        partition = connection.registerComputerPartition(COMPUTER, "slappart0")
        params = partition.getInstanceParameterDict()
        assert params["a"] == "1" and params["timestamp"] == "1700000000.5"
        assert params["ip_list"] == [("slaptap0", "10.0.0.10")]
        assert params["slave_instance_list"] == [
            {"d": "e", "slap_software_type": "default", "slave_reference": "_front", "slave_title": "_front"}
        ]
        assert partition.getConnectionParameterDict() == {"url": "http://x/"}
        # the old instance is found again by its title; new columns work
        order = connection.registerOpenOrder()
        assert order.request(SR, "old-instance", {"a": "1"}).getId() == "slappart0"
        partition.started()
        assert live.rows("SELECT reported_state FROM partition WHERE reference = 'slappart0'") == [
            {"reported_state": "started"}
        ]
    finally:
        live.http.close()
        live.server.stop()
    backups = list(tmp_path.glob("proxy.db.backup-v1-*"))
    assert len(backups) == 1 and stat.S_IMODE(backups[0].stat().st_mode) == 0o600
    old = sqlite3.connect(str(backups[0]))
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1  # the backup is the untouched original
    old.close()
    conn = sqlite3.connect(str(path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_failed_migration_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "proxy.db"
    make_v1_database(path)
    monkeypatch.setattr(dbmodule, "MIGRATIONS", [dbmodule.MIGRATIONS[0] + ["THIS IS NOT SQL"]])
    with pytest.raises(DatabaseError, match="cannot use proxy database"):
        Database.open(path)
    conn = sqlite3.connect(str(path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    columns = [row[1] for row in conn.execute("PRAGMA table_info(partition)")]
    assert "reported_state" not in columns
    conn.close()


REFERENCE_SCHEMA = [
    "CREATE TABLE config18 (name VARCHAR(255) PRIMARY KEY, value VARCHAR(255))",
    "CREATE TABLE software18 (url VARCHAR(255), computer_reference VARCHAR(255), requested_state VARCHAR(255),"
    " PRIMARY KEY (url, computer_reference))",
    "CREATE TABLE computer18 (reference VARCHAR(255) PRIMARY KEY, address VARCHAR(255), netmask VARCHAR(255))",
    "CREATE TABLE partition18 (reference VARCHAR(255), computer_reference VARCHAR(255), slap_state VARCHAR(255),"
    " software_release VARCHAR(255), xml TEXT, connection_xml TEXT, slave_instance_list TEXT,"
    " software_type VARCHAR(255), partition_reference VARCHAR(255), requested_by VARCHAR(255),"
    " requester_id VARCHAR(255), requested_state VARCHAR(255), timestamp REAL,"
    " PRIMARY KEY (reference, computer_reference))",
    "CREATE TABLE slave18 (reference VARCHAR(255), computer_reference VARCHAR(255), connection_xml TEXT,"
    " hosted_by VARCHAR(255), requester_id VARCHAR(255))",
    "CREATE TABLE partition_network18 (partition_reference VARCHAR(255), computer_reference VARCHAR(255),"
    " reference VARCHAR(255), address VARCHAR(255), netmask VARCHAR(255))",
    "CREATE TABLE forwarded_partition_request18 (partition_reference VARCHAR(255), master_url VARCHAR(255),"
    " PRIMARY KEY (partition_reference, master_url))",
]


def make_reference_database(path) -> None:
    conn = sqlite3.connect(str(path))
    for statement in REFERENCE_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO config18 VALUES ('local_software_release_root', '/')")
    conn.execute("INSERT INTO computer18 VALUES (?, 'fd00::2', 'ffff:ffff:ffff:ffff::')", (COMPUTER,))
    conn.execute("INSERT INTO software18 VALUES (?, ?, 'available')", (SR, COMPUTER))
    slaves = wire.dumps([{"slave_reference": "_myslave", "slave_title": "_myslave",
                          "slap_software_type": "default", "url": "http://[fd00::2:a]:8080/"}])
    conn.execute(
        "INSERT INTO partition18 VALUES ('slappart0', ?, 'busy', ?, ?, ?, ?, 'default', 'myinstance', '', 'user',"
        " 'started', 1795625303.3630798)",
        (COMPUTER, SR, wire.dumps_instance_xml({"_": '{"title": "a & b"}'}),
         wire.dumps_instance_xml({"user": "admin"}), slaves),
    )
    conn.execute(
        "INSERT INTO partition18 VALUES ('slappart1', ?, 'busy', ?, ?, NULL, NULL, 'default', 'mychild',"
        " 'myinstance', 'slappart0', 'started', 1795625378.685935)",
        (COMPUTER, SR, wire.dumps_instance_xml({"foo": "bar", "n": "3"})),
    )
    conn.execute(
        "INSERT INTO partition18 VALUES ('slappart2', ?, 'free', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        " 'started', NULL)",
        (COMPUTER,),
    )
    conn.execute("INSERT INTO slave18 VALUES ('_myslave', ?, ?, 'slappart0', 'user')",
                 (COMPUTER, wire.dumps_instance_xml({"domain": "demo.example"})))
    for n in range(3):
        conn.execute("INSERT INTO partition_network18 VALUES (?, ?, ?, ?, '255.255.255.255')",
                     (f"slappart{n}", COMPUTER, f"slaptap{n}", f"10.0.0.{10 + n}"))
    conn.commit()
    conn.close()


def test_reference_database_is_imported(tmp_path):
    make_reference_database(tmp_path / "proxy.db")
    live = start_live(tmp_path)
    try:
        connection = live.connect()
        partitions = {p.getId(): p for p in connection.registerComputer(COMPUTER).getComputerPartitionList()}
        root = partitions["slappart0"].getInstanceParameterDict()
        assert root["_"] == '{"title": "a & b"}' and root["timestamp"] == "1795625303.3630798"
        assert root["slave_instance_list"] == [{"slave_reference": "_myslave", "slave_title": "_myslave",
                                                "slap_software_type": "default", "url": "http://[fd00::2:a]:8080/"}]
        assert partitions["slappart0"].getConnectionParameterDict() == {"user": "admin"}
        assert partitions["slappart1"].getInstanceParameterDict()["root_instance_title"] == "myinstance"
        assert partitions["slappart2"].getRequestedState() == "destroyed"
        order = connection.registerOpenOrder()
        again = order.request(SR, "myslave", {"url": "http://[fd00::2:a]:8080/"}, shared=True)
        assert again.getConnectionParameterDict() == {"domain": "demo.example"}
        assert order.request(SR, "myinstance", {"_": '{"title": "a & b"}'}).getId() == "slappart0"
        assert order.request(SR, "new").getId() == "slappart2"
    finally:
        live.http.close()
        live.server.stop()
    # the reference tables are left in place
    conn = sqlite3.connect(str(tmp_path / "proxy.db"))
    assert conn.execute("SELECT count(*) FROM partition18").fetchone()[0] == 3
    conn.close()
    assert list(tmp_path.glob("proxy.db.backup-reference18-*"))


def test_newer_or_foreign_databases_are_refused(tmp_path):
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(str(newer))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this proxy"):
        Database.open(newer)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(str(foreign))
    conn.execute("CREATE TABLE things (a)")
    conn.close()
    with pytest.raises(DatabaseError, match="not a slapproxy database"):
        Database.open(foreign)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(DatabaseError, match="cannot use proxy database"):
        Database.open(garbage)
    with pytest.raises(DatabaseError, match="no proxy database"):
        Database.open(tmp_path / "missing.db", create=False)


def test_older_reference_database_connection_xml_is_read(tmp_path):
    """An older slapproxy (tables suffixed 11, fewer columns) keeps connection parameters as
    `connection_xml` too: they are imported, missing columns read as empty."""
    path = tmp_path / "proxy.db"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE computer11 (reference VARCHAR(255) PRIMARY KEY, address VARCHAR(255),"
                 " netmask VARCHAR(255))")
    conn.execute("CREATE TABLE software11 (url VARCHAR(255), computer_reference VARCHAR(255))")
    conn.execute("CREATE TABLE partition11 (reference VARCHAR(255), computer_reference VARCHAR(255),"
                 " slap_state VARCHAR(255), software_release VARCHAR(255), xml TEXT, connection_xml TEXT,"
                 " slave_instance_list TEXT, software_type VARCHAR(255), partition_reference VARCHAR(255),"
                 " requested_by VARCHAR(255), requested_state VARCHAR(255))")
    conn.execute("INSERT INTO computer11 VALUES (?, '127.0.0.1', '255.255.255.255')", (COMPUTER,))
    conn.execute("INSERT INTO software11 VALUES (?, ?)", (SR, COMPUTER))
    conn.execute("INSERT INTO partition11 VALUES ('slappart0', ?, 'busy', ?, ?, ?, NULL, 'default', 'old',"
                 " '', 'started')",
                 (COMPUTER, SR, wire.dumps_instance_xml({"a": "1"}), wire.dumps_instance_xml({"url": "http://x/"})))
    conn.commit()
    conn.close()
    live = start_live(tmp_path)
    try:
        (partition,) = [p for p in live.connect().registerComputer(COMPUTER).getComputerPartitionList()
                        if p.getId() == "slappart0"]
        assert partition.getConnectionParameterDict() == {"url": "http://x/"}
        assert partition.getInstanceParameterDict()["a"] == "1"
    finally:
        live.http.close()
        live.server.stop()
    assert list(tmp_path.glob("proxy.db.backup-reference11-*"))
