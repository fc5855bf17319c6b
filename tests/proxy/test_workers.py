"""The proxy with several worker processes (`[slapproxy] workers`): one port, one database, caches
invalidated in every worker, allocation still race-free, workers supervised.

The concurrency tests of test_concurrency.py run again here against a 2-worker proxy (`slapos
proxy start` in a subprocess): the module's `live` fixture below replaces the in-process one.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from slapos.proxy.db import Database, gate_path
from slapos.slap import slap, wire
from tests.fixtures.proxy import RunningProxy, start_proxy

from .conftest import COMPUTER, SR, Http, format_computer
from .test_concurrency import (  # noqa: F401 - collected again here, against the workers
    test_distinct_requests_get_distinct_partitions_and_no_update_is_lost,
    test_more_requests_than_partitions,
    test_readers_and_writers_together,
    test_same_title_requested_at_once_allocates_once,
)

WORKERS = 2


@dataclass
class WorkersLive:
    """What the concurrency tests use of `Live`, for a multi-worker proxy subprocess."""

    running: RunningProxy

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def database(self) -> Path:
        return self.running.database

    def connect(self) -> slap:
        connection = slap()
        connection.initializeConnection(self.url, timeout=60)
        return connection

    def rows(self, sql: str, *args) -> list[dict]:
        conn = sqlite3.connect(str(self.database))
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, args)]
        finally:
            conn.close()

    def worker_pids(self) -> set[int]:
        return {child.pid for child in psutil.Process(self.running.process.pid).children()}


def start_workers(directory: Path, workers: int = WORKERS, threads: int = 4) -> WorkersLive:
    running = start_proxy(
        directory, computer_id=COMPUTER, extra_config={"slapproxy": {"workers": workers, "threads": threads}}
    )
    live = WorkersLive(running)
    deadline = time.monotonic() + 30
    while len(live.worker_pids()) < workers:  # started by now, but let them all be counted
        assert time.monotonic() < deadline, running.log()
        time.sleep(0.05)
    return live


@pytest.fixture
def live(tmp_path: Path):
    proxy = start_workers(tmp_path / "proxy")
    try:
        yield proxy
    finally:
        proxy.running.stop()


def serving_pid(http: Http, pids: set[int]) -> int:
    """The worker process holding the server side of this keep-alive connection."""
    client = http.conn.sock.getsockname()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and tuple(conn.raddr)[:2] == client[:2]:
                return pid
    raise AssertionError(f"no worker serves the connection from {client}")


def connections_on_every_worker(live: WorkersLive) -> list[Http]:
    """Keep-alive connections, at least one served by each worker (the kernel picks the worker)."""
    pids = live.worker_pids()
    connections: list[Http] = []
    covered: set[int] = set()
    for _ in range(200):
        http = Http(live.url)
        assert http.get("getRunId")[0] == 200
        connections.append(http)
        covered.add(serving_pid(http, pids))
        if covered == pids:
            return connections
    raise AssertionError(f"200 connections all went to {covered} of {pids}")


def computer_document(http: Http) -> dict:
    status, body, _ = http.get("getFullComputerInformation", computer_id=COMPUTER)
    assert status == 200, body
    computer = wire.loads(body)
    return {p.attrs["_partition_id"]: p.attrs for p in computer.attrs["_computer_partition_list"]}


def request_form(title: str, params: dict) -> dict:
    return {
        "software_release": SR, "partition_reference": title, "software_type": "default",
        "partition_parameter_xml": wire.dumps(params), "filter_xml": wire.dumps({}),
        "state": wire.dumps(None), "shared_xml": wire.dumps(False),
    }


def test_a_write_in_one_worker_invalidates_the_documents_cached_by_all(live):
    connection = live.connect()
    format_computer(connection, COMPUTER, 4)
    connection.registerSupply().supply(SR, COMPUTER)
    https = connections_on_every_worker(live)
    try:
        for round_ in range(6):
            for http in https:  # every worker caches the current document
                computer_document(http)
                status, _, _ = http.get(
                    "registerComputerPartition", computer_reference=COMPUTER, computer_partition_reference="slappart0"
                )
                assert status == 200
            writer = https[round_ % len(https)]
            status, body, _ = writer.post("requestComputerPartition", **request_form("inst", {"round": str(round_)}))
            assert status == 200, body
            for http in https:  # ... and every worker answers the new one
                partition = computer_document(http)["slappart0"]
                assert partition["_parameter_dict"]["round"] == str(round_)
                status, body, _ = http.get(
                    "registerComputerPartition", computer_reference=COMPUTER, computer_partition_reference="slappart0"
                )
                assert wire.loads(body).attrs["_parameter_dict"]["round"] == str(round_)
    finally:
        for http in https:
            http.close()


def test_one_run_id_for_all_workers(live):
    https = connections_on_every_worker(live)
    try:
        run_ids = {http.get("getRunId")[1] for http in https}
    finally:
        for http in https:
            http.close()
    assert len(run_ids) == 1 and len(run_ids.pop()) == 32


def test_a_dead_worker_is_replaced(live):
    connection = live.connect()
    format_computer(connection, COMPUTER, 2)
    connection.registerSupply().supply(SR, COMPUTER)
    before = live.worker_pids()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        pids = live.worker_pids()
        if len(pids) == WORKERS and victim not in pids:
            break
        assert time.monotonic() < deadline, live.running.log()
        time.sleep(0.05)
    assert f"(pid {victim}) died" in live.running.log() and "killed by SIGKILL" in live.running.log()
    # nothing lost, and the new worker serves like the others
    assert connection.registerOpenOrder().request(SR, "after-crash").getId() == "slappart0"
    https = connections_on_every_worker(live)
    for http in https:
        assert computer_document(http)["slappart0"]["_parameter_dict"]["instance_title"] == "after-crash"
        http.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_worker_cleanly(tmp_path, signum):
    live = start_workers(tmp_path / "proxy")
    running = live.running
    pids = live.worker_pids()
    assert len(pids) == WORKERS
    try:
        running.process.send_signal(signum)
        assert running.process.wait(30) == 0, running.log()
    finally:
        running.stop()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "stopped" in running.log()
    assert "Traceback" not in running.log()


def test_workers_leave_when_the_supervisor_is_killed(tmp_path):
    live = start_workers(tmp_path / "proxy")
    running = live.running
    pids = live.worker_pids()
    try:
        running.process.kill()
        running.process.wait(10)
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(pid) for pid in pids):
            assert time.monotonic() < deadline, f"orphan workers {pids} still running"
            time.sleep(0.05)
    finally:
        running.stop()
        for pid in pids:  # never leave one behind, even when the assertion failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_workers_option_and_bad_values(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "slapos.cli.main", "proxy", "start", "-u", str(tmp_path / "p.db"), "--port", "0",
         "--workers", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: [slapproxy] workers must be between 1 and 64 (processes), not 0"
    with socket.socket() as taken:  # the port is in use: one clear line, as with one process
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = subprocess.run(
            [sys.executable, "-m", "slapos.cli.main", "proxy", "start", "-u", str(tmp_path / "p.db"),
             "--port", str(taken.getsockname()[1]), "--workers", "2"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert "Address already in use; choose another port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    help_text = subprocess.run(
        [sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--workers" in help_text


def test_shared_databases_share_generation_and_write_lock(tmp_path):
    """Two gates on one file (as two worker processes have): one generation, one writer at a time."""
    path = tmp_path / "proxy.db"
    Database.open(path).close()
    first, second = Database.open(path, shared=True), Database.open(path, shared=True)
    try:
        assert gate_path(path).stat().st_mode & 0o777 == 0o600
        start = second.generation
        with first.write() as conn:
            conn.execute("INSERT INTO computer (reference) VALUES ('A')")
        assert second.generation == first.generation == start + 1
        with first.write(documents=False) as conn:  # reports do not invalidate documents
            conn.execute("UPDATE computer SET bang_message = 'x'")
        assert second.generation == start + 1

        entered = threading.Event()
        order: list[str] = []

        def other_writer() -> None:
            with second.write() as conn:
                order.append("second")
                conn.execute("INSERT INTO computer (reference) VALUES ('B')")
            entered.set()

        with first.write() as conn:
            thread = threading.Thread(target=other_writer)
            thread.start()
            assert not entered.wait(0.3)  # waits on the gate, not on SQLite's sleeping busy handler
            order.append("first")
            conn.execute("INSERT INTO computer (reference) VALUES ('C')")
        thread.join(10)
        assert order == ["first", "second"]
        assert second.generation == start + 3
    finally:
        first.close()
        second.close()
