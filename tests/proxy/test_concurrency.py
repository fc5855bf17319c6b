"""32 clients at once: no partition given to two instances, no lost update, no 500."""
from __future__ import annotations

import threading
from collections import Counter

from slapos.slap import NotFoundError, slap

from .conftest import COMPUTER, SR, format_computer

THREADS = 32


def run_threads(url: str, target, count: int = THREADS) -> list:
    """Run target(connection, n) in `count` threads released together; return results or exceptions."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def worker(n: int) -> None:
        connection = slap()
        connection.initializeConnection(url, timeout=60)
        try:
            barrier.wait()
            results[n] = target(connection, n)
        except Exception as e:  # noqa: BLE001 - collected and asserted on below
            results[n] = e
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_distinct_requests_get_distinct_partitions_and_no_update_is_lost(live):
    connection = live.connect()
    format_computer(connection, COMPUTER, THREADS + 8)
    connection.registerSupply().supply(SR, COMPUTER)

    def request(conn, n):
        partition = conn.registerOpenOrder().request(SR, f"inst{n}", {"n": str(n)})
        return partition.getId()

    ids = run_threads(live.url, request)
    assert not [r for r in ids if isinstance(r, Exception)], ids
    assert len(set(ids)) == THREADS  # never one partition for two instances

    def update(conn, n):
        order = conn.registerOpenOrder()
        partition = order.request(SR, f"inst{n}", {"n": str(n), "round": "2"})
        conn.registerComputerPartition(COMPUTER, partition.getId()).setConnectionDict({"done": str(n)})
        return order.request(SR, f"inst{n}", {"n": str(n), "round": "2"}).getConnectionParameterDict()

    answers = run_threads(live.url, update)
    assert answers == [{"done": str(n)} for n in range(THREADS)]
    rows = live.rows("SELECT title, parameters, connection FROM partition WHERE slap_state = 'busy'")
    assert len(rows) == THREADS
    for row in rows:
        n = row["title"][len("inst"):]
        assert row["parameters"] == f'{{"n":"{n}","round":"2"}}'
        assert row["connection"] == f'{{"done":"{n}"}}'


def test_same_title_requested_at_once_allocates_once(live):
    connection = live.connect()
    format_computer(connection, COMPUTER, 8)
    connection.registerSupply().supply(SR, COMPUTER)
    ids = run_threads(live.url, lambda conn, n: conn.registerOpenOrder().request(SR, "shared-title").getId())
    assert ids == ["slappart0"] * THREADS
    assert live.rows("SELECT count(*) AS n FROM partition WHERE slap_state = 'busy'") == [{"n": 1}]


def test_more_requests_than_partitions(live):
    connection = live.connect()
    format_computer(connection, COMPUTER, 20)
    connection.registerSupply().supply(SR, COMPUTER)
    results = run_threads(live.url, lambda conn, n: conn.registerOpenOrder().request(SR, f"i{n}").getId())
    allocated = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, NotFoundError)]
    assert len(allocated) == 20 and len(refused) == 12, Counter(type(r).__name__ for r in results)
    assert len(set(allocated)) == 20
    assert live.rows("SELECT count(*) AS n FROM partition WHERE slap_state = 'busy'") == [{"n": 20}]


def test_readers_and_writers_together(live):
    """Nodes fetching their computer while clients request: every answer is complete and valid."""
    connection = live.connect()
    format_computer(connection, COMPUTER, 16)
    connection.registerSupply().supply(SR, COMPUTER)

    def mixed(conn, n):
        if n % 2:
            return len(conn.registerComputer(COMPUTER).getComputerPartitionList())
        return conn.registerOpenOrder().request(SR, f"m{n}").getId()

    results = run_threads(live.url, mixed)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert all(r == 16 for r in results[1::2])
    assert len(set(results[0::2])) == 16
