"""How fast the proxy answers: the request update path, the full computer information, concurrency.

* update path: one instance requested again and again with the same parameters (what every
  instance buildout run and every `slapos request` loop does), from one sequential client on a
  keep-alive `http.client` connection posting a pre-encoded form. Target: median ≤ 0.4 ms
  (reference slapos.core 1.26.1: 1.6 ms).
* full computer information (`getFullComputerInformation`, the one call of every node run) for a
  computer with 10, 100 and 1000 partitions, all holding an instance. Targets: 100 partitions
  ≤ 3 ms, 1000 ≤ 30 ms (reference: 27 ms for 100). Reported twice: `repeat` (unchanged computer,
  the node's steady state) and `changed` (a write happened just before each call, so the
  document is rebuilt and encoded every time).
* concurrency: 8 clients on the update path against 1; target ≥ 3× the single-client
  throughput. Measured twice:
  - with Python client processes (`http.client`), as before: on a 2-core machine these clients
    eat about as much CPU as the server, so this figure mostly says how the machine is shared;
  - with `wrk` (a C load generator, `apt-get install wrk`; skipped with a note when missing): one
    wrk thread with 1 connection, then with 8, posting pre-encoded requests for 8 instances in
    turn. For our own proxy, its CPU time per request is printed with the ceiling it
    implies: 8 connections can at best keep every core busy, so their rate is at most
    cores ÷ (CPU per request), and the ratio to one connection at most that over the 1-connection rate.

Without --url the bench starts our proxy (`slapos proxy start`, a subprocess) on a temporary
database; with --url it drives another proxy (e.g. the reference one) the same way, for a
side-by-side run. Figures vary with the machine: run it on an otherwise idle one.

    .venv/bin/python bench/proxy.py [--url http://127.0.0.1:8080/] [--sizes 10,100,1000] [--quick]
                                    [--threads N]
"""
from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slapos.slap import wire  # noqa: E402

SR = "http://bench.example/software.cfg"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Client:
    """One keep-alive connection; request bodies are encoded once, before timing."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def call(self, method: str, endpoint: str, body: bytes | None = None) -> tuple[int, bytes]:
        path = f"{self.prefix}/{endpoint}"
        self.conn.request(method, path, body=body, headers=FORM if body is not None else {})
        response = self.conn.getresponse()
        data = response.read()
        if response.getheader("Connection", "").lower() == "close":  # e.g. Werkzeug closes every time
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return response.status, data

    def post(self, endpoint: str, **fields) -> bytes:
        status, data = self.call("POST", endpoint, urlencode(fields).encode())
        if status != 200:
            raise SystemExit(f"{endpoint} answered {status}: {data[:300]!r}")
        return data


def computer_xml(computer_id: str, partitions: int) -> str:
    return wire.dumps({
        "reference": computer_id, "address": "10.0.0.1", "netmask": "255.255.0.0",
        "partition_list": [
            {
                "reference": f"slappart{i}",
                "address_list": [{"addr": f"10.{i // 250}.{i % 250}.1", "netmask": "255.255.255.255"},
                                 {"addr": f"fd00::{i:x}:1", "netmask": "ffff:ffff:ffff:ffff::"}],
                "tap": {"name": f"slaptap{i}"},
            }
            for i in range(partitions)
        ],
    })


def request_body(title: str, computer_id: str, params: dict | None = None) -> bytes:
    return urlencode({
        "software_release": SR, "partition_reference": title, "software_type": "default",
        "partition_parameter_xml": wire.dumps(params or {"_": '{"title": "bench", "replicas": 2}'}),
        "filter_xml": wire.dumps({"computer_guid": computer_id}),
        "state": wire.dumps(None), "shared_xml": wire.dumps(False),
    }).encode()


def prepare(client: Client, computer_id: str, partitions: int, run: str) -> None:
    client.post("loadComputerConfigurationFromXML", xml=computer_xml(computer_id, partitions))
    client.post("supplySupply", url=SR, computer_id=computer_id, state="available")
    for i in range(partitions):
        status, data = client.call("POST", "requestComputerPartition", request_body(f"{run}-{computer_id}-{i}", computer_id))
        if status != 200:
            raise SystemExit(f"filling {computer_id}: request {i} answered {status}: {data[:200]!r}")


def timed(fn, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def ms(value: float) -> str:
    return f"{value * 1000:.3f} ms"


def bench_update_path(client: Client, computer_id: str, run: str, count: int) -> float:
    body = request_body(f"{run}-{computer_id}-0", computer_id)

    def call():
        status, _ = client.call("POST", "requestComputerPartition", body)
        assert status == 200, status

    timed(call, min(200, count))  # warm-up
    samples = timed(call, count)
    median = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1]
    print(f"update path, 1 sequential client: median {ms(median)}, p90 {ms(p90)}, "
          f"{len(samples) / sum(samples):.0f} calls/s  (target ≤ 0.4 ms; reference 1.6 ms)")
    return len(samples) / sum(samples)


def bench_full_information(client: Client, computer_id: str, partitions: int, run: str, quick: bool) -> None:
    query = "getFullComputerInformation?" + urlencode({"computer_id": computer_id})

    def call():
        status, data = client.call("GET", query)
        assert status == 200 and len(data) > 100, status

    count = 20 if partitions >= 1000 else 100
    if quick:
        count = max(5, count // 5)
    timed(call, 3)
    repeat = statistics.median(timed(call, count))
    # a write before each call: the document must be rebuilt (cache invalidated)
    bodies = [request_body(f"{run}-{computer_id}-0", computer_id, {"n": str(n)}) for n in range(count)]
    changed = []
    for body in bodies:
        client.call("POST", "requestComputerPartition", body)
        changed.extend(timed(call, 1))
    target = {100: " (target ≤ 3 ms; reference 27 ms)", 1000: " (target ≤ 30 ms)"}.get(partitions, "")
    size = len(client.call("GET", query)[1])
    print(f"full computer information, {partitions:5d} partitions ({size / 1024:.0f} KiB): "
          f"repeat median {ms(repeat)}, changed median {ms(statistics.median(changed))}{target}")


def _worker(url: str, body: bytes, duration: float, start_at: float, queue) -> None:
    client = Client(url)
    while time.time() < start_at:
        time.sleep(0.001)
    count = 0
    end = start_at + duration
    while time.time() < end:
        status, _ = client.call("POST", "requestComputerPartition", body)
        if status != 200:
            queue.put(("error", status))
            return
        count += 1
    queue.put(("ok", count))


def concurrent_rate(url: str, bodies: list[bytes], duration: float) -> float:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.5
    workers = [ctx.Process(target=_worker, args=(url, body, duration, start_at, queue)) for body in bodies]
    for w in workers:
        w.start()
    results = [queue.get(timeout=duration + 60) for _ in workers]
    for w in workers:
        w.join()
    errors = [r for r in results if r[0] != "ok"]
    if errors:
        raise SystemExit(f"concurrent clients failed: {errors}")
    return sum(r[1] for r in results) / duration


def bench_concurrency(url: str, computer_id: str, run: str, duration: float) -> None:
    bodies = [request_body(f"{run}-{computer_id}-{i}", computer_id) for i in range(8)]
    one = concurrent_rate(url, bodies[:1], duration)
    eight = concurrent_rate(url, bodies, duration)
    print(f"update path, client processes: 1 → {one:.0f} calls/s, 8 → {eight:.0f} calls/s "
          f"({eight / one:.2f}×; target ≥ 3×; {os.cpu_count()} cores shared by server and clients)")


LUA = """-- requestComputerPartition of {count} instances in turn, bodies encoded beforehand
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local path = "{path}"
local bodies = {{
{bodies}
}}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, path, nil, bodies[(n % #bodies) + 1])
end
"""


def wrk_script(directory: Path, url: str, bodies: list[bytes]) -> Path:
    # urlencoded bodies hold no ']' (it is %5D), so a long bracket string quotes them as they are
    lua = LUA.format(
        count=len(bodies), path=urlsplit(url).path.rstrip("/") + "/requestComputerPartition",
        bodies="\n".join(f"  [==[{body.decode('ascii')}]==]," for body in bodies),
    )
    script = directory / "update.lua"
    script.write_text(lua)
    return script


def cpu_seconds(pid: int | None) -> float:
    """CPU time of a process and its children (the proxy and its workers)."""
    if pid is None:
        return 0.0
    import psutil

    try:
        process = psutil.Process(pid)
        total = 0.0
        for proc in [process, *process.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def wrk_rate(url: str, script: Path, connections: int, duration: float, pid: int | None) -> tuple[float, float]:
    """(requests per second, proxy CPU seconds per request) of one wrk run."""
    before = cpu_seconds(pid)
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(script), url],
        capture_output=True, text=True, timeout=duration + 60,
    )
    after = cpu_seconds(pid)
    out = result.stdout
    total = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if result.returncode != 0 or not total or not rate:
        raise SystemExit(f"wrk failed ({result.returncode}): {(out + result.stderr)[-500:]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise SystemExit(f"wrk: the proxy did not answer every request with 200: {(bad or errors).group(0)}")
    count = int(total.group(1))
    return float(rate.group(1)), (after - before) / count if pid is not None else 0.0


def bench_wrk(url: str, script: Path, duration: float, pid: int | None, label: str) -> float:
    one, cpu_one = wrk_rate(url, script, 1, duration, pid)
    eight, cpu_eight = wrk_rate(url, script, 8, duration, pid)
    cores = os.cpu_count() or 1
    print(f"update path, wrk (C client){label}: 1 connection → {one:.0f} calls/s ({ms(1 / one)} each), "
          f"8 → {eight:.0f} calls/s ({eight / one:.2f}×; target ≥ 3×)", flush=True)
    if pid is not None and cpu_one > 0 and cpu_eight > 0:
        busy = one * cpu_one  # cores the proxy keeps busy for a single connection
        print(f"    proxy CPU per call: {cpu_one * 1e6:.0f} µs with 1 connection, which keeps {busy:.0%} of a core "
              f"busy (so {cores} cores allow at most {cores / busy:.2f}× even with no overhead); "
              f"{cpu_eight * 1e6:.0f} µs with 8 (so {cores} cores cap them at {cores / cpu_eight:.0f} calls/s, "
              f"{cores / cpu_eight / one:.2f}×)", flush=True)
    return eight / one


def start_own_proxy(directory: Path, threads: int | None = None,
                    access: str = "open") -> tuple[str, subprocess.Popen]:
    import secrets
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = directory / "slapos.cfg"
    # access = credentials: every call carries the node credential in its path (docs/security-proxy.md)
    prefix = f"c/{secrets.token_urlsafe(32)}/" if access == "credentials" else ""
    config.write_text(
        f"[slapos]\ncomputer_id = BENCH-10\nmaster_url = http://127.0.0.1:{port}/{prefix}\n"
        f"[slapproxy]\nhost = 127.0.0.1\nport = {port}\n"
        f"database_uri = {directory / 'proxy.db'}\naccess = {access}\n"
        + (f"threads = {threads}\n" if threads else "")
    )
    config.chmod(0o600)
    log = open(directory / "proxy.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "slapos.cli.main", "-q", "proxy", "start", "--cfg", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
    )
    url = f"http://127.0.0.1:{port}/{prefix}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if Client(url).call("GET", "getRunId")[0] == 200:
                return url, process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the proxy did not start: " + (directory / "proxy.log").read_text()[-2000:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark this proxy instead of starting ours")
    parser.add_argument("--sizes", default="10,100,1000", help="partition counts (default 10,100,1000)")
    parser.add_argument("--count", type=int, default=3000, help="update-path calls (default 3000)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per concurrency run")
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--threads", type=int, help="threads of our proxy (default: the proxy's, 8)")
    parser.add_argument("--access", choices=("open", "credentials"), default="open",
                        help="[slapproxy] access of our proxy (credentials: the calls carry the node credential)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    run = f"r{int(time.time())}"  # fresh titles: the bench may be run twice against one proxy
    process = None
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        if args.url:
            url = args.url if args.url.endswith("/") else args.url + "/"
        else:
            url, process = start_own_proxy(Path(tmp), args.threads, args.access)
        try:
            print(f"proxy: {url}{'' if args.url else ' (ours, started for this run)'}")
            client = Client(url)
            for size in sizes:
                prepare(client, f"BENCH-{size}", size, run)
            smallest = f"BENCH-{sizes[0]}"
            bench_update_path(client, smallest, run, 300 if args.quick else args.count)
            for size in sizes:
                bench_full_information(client, f"BENCH-{size}", size, run, args.quick)
            concurrent_computer = smallest if sizes[0] >= 8 else f"BENCH-{max(sizes)}"
            duration = 1.0 if args.quick else args.duration
            bench_concurrency(url, concurrent_computer, run, duration)
            if shutil.which("wrk") is None:
                print("update path, wrk (C client): skipped, wrk is not installed (apt-get install wrk); "
                      "the figure above used Python clients sharing the cores with the proxy")
                return 0
            bodies = [request_body(f"{run}-{concurrent_computer}-{i}", concurrent_computer) for i in range(8)]
            script = wrk_script(Path(tmp), url, bodies)
            bench_wrk(url, script, duration, None if args.url else process.pid, "")
        finally:
            if process is not None:
                process.terminate()
                process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
