"""How fast `/watchComputer` wakes a node, and what the change feed costs the proxy (docs/watch.md).

* wake latency: a node long-polls its computer on `slapos proxy start` (a subprocess, real
  HTTP); another client changes an instance's parameters; the figure is the time from sending
  that request to the watcher holding the watch's answer (median and 95th percentile), beside
  the request's own round trip: the proxy publishes at the commit, so the watcher often has its
  answer before the requester has its own. The daemon's target, request → service answering in
  ≤ 3 s, spends this first.
* write cost: a changing request (new parameters each time, the path that fires the triggers)
  through the proxy's WSGI application in-process, with the change feed's triggers and with them
  dropped; the difference is what the feed adds to a write.
* waiting watches: CPU time the proxy process spends over `--idle` seconds while `--watchers`
  watches wait and nothing changes (a waiting watch must cost nothing).

    .venv/bin/python bench/watch.py [--count 200] [--watchers 4] [--idle 10]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slapos.slap.watch import watch_computer  # noqa: E402
from tests.fixtures.proxy import start_proxy  # noqa: E402

SR = "http://bench.example/software.cfg"
COMPUTER = "COMP-0"


def computer(partitions: int) -> dict:
    return {"reference": COMPUTER, "address": "10.0.0.1", "netmask": "255.0.0.0",
            "partition_list": [{"reference": f"slappart{i}", "address_list": [{"addr": f"10.0.0.{i + 2}",
                                                                                "netmask": "255.0.0.0"}],
                                "tap": {"name": f"slaptap{i}"}} for i in range(partitions)]}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wake_latency(url: str, count: int) -> tuple[list[float], list[float]]:
    from slapos.slap import slap

    node, user = slap(), slap()
    node.initializeConnection(url)
    user.initializeConnection(url)
    order = user.registerOpenOrder()
    cursor = watch_computer(node.connection, COMPUTER, None, 5).cursor
    samples, round_trips = [], []
    for i in range(count):
        answer: list = []
        thread = threading.Thread(target=lambda c=cursor, out=answer: out.append(
            (watch_computer(node.connection, COMPUTER, c, 30), time.perf_counter())))
        thread.start()
        time.sleep(0.02)  # the watch reaches the proxy and waits (if not, the log answers it anyway)
        sent = time.perf_counter()
        order.request(SR, "bench", {"n": str(i)})
        round_trips.append(time.perf_counter() - sent)
        thread.join()
        result, woke = answer[0]
        assert result.changes, result
        cursor = result.cursor
        samples.append(woke - sent)
    return samples, round_trips


def write_cost(count: int) -> tuple[float, float]:
    """Median seconds of a changing request through the WSGI app, with and without the triggers."""
    from urllib.parse import urlencode

    from slapos.proxy.app import make_app
    from slapos.proxy.config import ProxyConfig
    from slapos.slap import wire

    with tempfile.TemporaryDirectory() as directory:
        app = make_app(ProxyConfig(database=Path(directory) / "proxy.db", computer_id=COMPUTER))

        def call(endpoint: str, fields: dict) -> None:
            body = urlencode(fields).encode()
            environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/" + endpoint, "CONTENT_LENGTH": str(len(body)),
                       "CONTENT_TYPE": "application/x-www-form-urlencoded", "wsgi.input": io.BytesIO(body)}
            status: list = []
            app(environ, lambda s, h, e=None: status.append(s))
            assert status[0].startswith("200"), status

        call("loadComputerConfigurationFromXML", {"xml": wire.dumps(computer(4))})
        call("supplySupply", {"url": SR, "computer_id": COMPUTER, "state": "available"})

        def request(i: int) -> None:
            call("requestComputerPartition", {
                "software_release": SR, "partition_reference": "bench", "software_type": "default",
                "partition_parameter_xml": wire.dumps({"n": str(i)}), "filter_xml": wire.dumps({}),
                "state": wire.dumps(None), "shared_xml": wire.dumps(False)})

        def measure() -> float:
            samples = []
            for i in range(count):
                start = time.perf_counter()
                request(i)
                samples.append(time.perf_counter() - start)
            return statistics.median(samples)

        measure()  # warm up
        triggers = ("partition", "supply", "resupply", "bang")
        with_feed, without = [], []
        for _ in range(3):  # alternated: the database and the caches grow as it runs
            with_feed.append(measure())
            for name in triggers:
                app.db.conn.execute(f"DROP TRIGGER temp.slapnode_watch_{name}")
            without.append(measure())
            app.watch.install(app.db.conn)
        app.close()
    return min(with_feed), min(without)


def idle_cpu(url: str, pid: int, watchers: int, seconds: float) -> float:
    from slapos.slap import slap

    node = slap()
    node.initializeConnection(url)
    cursor = watch_computer(node.connection, COMPUTER, None, 5).cursor
    threads = [threading.Thread(target=watch_computer, args=(node.connection, COMPUTER, cursor, 55), daemon=True)
               for _ in range(watchers)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu()
    time.sleep(seconds)
    return (cpu() - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="changes timed (default 200)")
    parser.add_argument("--watchers", type=int, default=4, help="waiting watches for the idle figure (default 4)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle figure (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        running = start_proxy(Path(directory), COMPUTER, {"slapproxy": {"threads": str(max(8, 2 * args.watchers + 2))}})
        try:
            from slapos.slap import slap

            setup = slap()
            setup.initializeConnection(running.url)
            setup.registerComputer(COMPUTER).updateConfiguration(computer(4))
            setup.registerSupply().supply(SR, COMPUTER)
            samples, round_trips = wake_latency(running.url, args.count)
            print(f"wake latency (request sent → watch answered), {len(samples)} changes: "
                  f"median {statistics.median(samples) * 1000:.2f} ms, p95 {percentile(samples, 0.95) * 1000:.2f} ms "
                  f"(the request's own round trip: median {statistics.median(round_trips) * 1000:.2f} ms)")
            assert running.process is not None
            share = idle_cpu(running.url, running.process.pid, args.watchers, args.idle)
            print(f"proxy CPU with {args.watchers} waiting watches, nothing changing: {share * 100:.2f} % of a core")
        finally:
            running.stop()
    with_feed, without = write_cost(max(50, args.count))
    print(f"changing request through the app: {with_feed * 1e6:.0f} µs with the change feed, "
          f"{without * 1e6:.0f} µs without ({(with_feed - without) * 1e6:+.0f} µs)")


if __name__ == "__main__":
    main()
