"""The figures of `slapos node run` (docs/daemon.md), on a real proxy and a node formatted by our
`slapos node format`, with the example release software-release/hello-web built beforehand:

1. **request → first HTTP answer**: the daemon runs (push mode, default periods); new instances
   are requested (`slapos.slap` request, as `slapos request` does) and the time from the request
   returning to its service answering `GET /` is measured: `--requests` of them *isolated* (each
   once the daemon finished the previous pass), then as many *back-to-back* (each as soon as the
   previous one answers: it waits for the end of the previous pass, its promises and report).
   Target: median ≤ 3 s on 2 cores (cron mode: up to 60 s + a whole run; `--cron-requests` more
   instances are then deployed by `slapos node instance --now` started as the request returns,
   the daemon stopped: the run alone, without cron's wait for its tick).
2. **idle CPU**: CPU time of the daemon over `--idle-seconds` (default 60) with those instances
   running and nothing changing (the periodic passes of the default periods included), from
   /proc/<pid>/stat; its child commands (`slapos node software` every minute) counted apart.
   Target ≤ 1 % of one core.
3. **RSS** of the daemon (VmRSS of /proc/<pid>/status) after the deployments and after the idle
   minute. Target ≤ 60 MB.

    .venv/bin/python bench/daemon_figures.py [--requests 10] [--idle-seconds 60]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import make_traversable  # noqa: E402
from tests.fixtures.node import build_node  # noqa: E402
from tests.fixtures.proxy import free_port, start_proxy  # noqa: E402

RELEASE = str(REPO / "software-release" / "hello-web" / "software.cfg")
SLAPOS = [sys.executable, "-m", "slapos.cli.main"]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own user+system CPU, that of its waited-for children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS
    children = (int(fields[13]) + int(fields[14])) / TICKS
    return own, children


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def status(socket_path: Path) -> dict:
    import json

    from slapos.grid.daemon_status import query

    return json.loads(query(socket_path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10, help="instances requested one after the other")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="length of the idle CPU measurement")
    parser.add_argument("--cron-requests", type=int, default=5,
                        help="instances then deployed by `slapos node instance --now` (cron's run) for comparison")
    parser.add_argument("--keep", action="store_true", help="keep the node's directory (and the daemon's log)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    make_traversable(root)
    os.chmod(root, 0o755)
    proxy = start_proxy(root / "proxy")
    daemon = None
    node = None
    try:
        node = build_node(root / "node", proxy, partitions=2 * args.requests + args.cron_requests + 1)
        slap = proxy.connect()
        slap.registerSupply().supply(RELEASE, node.computer_id)
        env = dict(os.environ, PYTHONPATH=str(REPO), SLAPNODE_LOG_FORMAT="text")
        print(f"building hello-web ({RELEASE}) ...", flush=True)
        subprocess.run([*SLAPOS, "node", "software", "--now", "--cfg", str(node.config_path)], env=env,
                       check=True, capture_output=True, timeout=600)
        log = open(root / "daemon.log", "ab")
        daemon = subprocess.Popen([*SLAPOS, "node", "run", "--cfg", str(node.config_path)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        socket_path = node.root / "var" / "slapos-node-run.sock"
        deadline = time.monotonic() + 30
        while True:
            try:
                if status(socket_path)["daemon"]["master"]["mode"] == "push":
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"the daemon did not reach push mode; see {root / 'daemon.log'}")
            time.sleep(0.05)
        time.sleep(1)  # its first full passes are over
        rss_start = rss_mb(daemon.pid)

        def idle() -> None:
            while True:
                run = status(socket_path)["daemon"]
                if not run["runs"]["instance"]["running"] and not run["queue"]["partitions"]:
                    return
                time.sleep(0.05)

        figures: dict[str, list[float]] = {"isolated": [], "back-to-back": []}
        for i in range(2 * args.requests):
            series = "isolated" if i < args.requests else "back-to-back"
            if series == "isolated":
                idle()  # the daemon has finished the previous pass (promises, report)
            port = free_port()
            slap.registerOpenOrder().request(RELEASE, f"hello-{i}", partition_parameter_kw={
                "port": str(port), "message": f"hello {i}"})
            began = time.monotonic()
            while not answers(port):
                if time.monotonic() - began > 120:
                    raise SystemExit(f"hello-{i} never answered; see {root / 'daemon.log'}")
                time.sleep(0.02)
            figures[series].append(time.monotonic() - began)
            print(f"  hello-{i} ({series}): answered {figures[series][-1]:.2f} s after the request returned",
                  flush=True)
        time.sleep(3)  # the passes finish (promises, report to the master)
        rss_after = rss_mb(daemon.pid)

        own0, children0 = cpu_seconds(daemon.pid)
        time.sleep(args.idle_seconds)
        own1, children1 = cpu_seconds(daemon.pid)
        rss_idle = rss_mb(daemon.pid)
        runs = status(socket_path)["daemon"]["runs"]
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(90)

        # the same, cron's way (without the wait for the next tick): `slapos node instance --now`
        # started when the request returns
        cron_times = []
        for i in range(args.cron_requests):
            port = free_port()
            slap.registerOpenOrder().request(RELEASE, f"cron-{i}", partition_parameter_kw={
                "port": str(port), "message": f"cron {i}"})
            began = time.monotonic()
            run = subprocess.Popen([*SLAPOS, "node", "instance", "--now", "--cfg", str(node.config_path)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not answers(port):
                if time.monotonic() - began > 120:
                    raise SystemExit(f"cron-{i} never answered")
                time.sleep(0.02)
            cron_times.append(time.monotonic() - began)
            run.wait(120)

        print()
        for series, times in figures.items():
            print(f"request → first HTTP answer, {series} ({len(times)} new instances, push mode): "
                  f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s "
                  f"(target ≤ 3 s)")
        if cron_times:
            print(f"cron mode, the run alone (`slapos node instance --now` started when the request returns; "
                  f"cron adds 0-60 s, 30 s on average, before it): median {statistics.median(cron_times):.2f} s "
                  f"over {len(cron_times)}")
        share = 100 * (own1 - own0) / args.idle_seconds
        child_share = 100 * (children1 - children0) / args.idle_seconds
        print(f"idle CPU over {args.idle_seconds:.0f} s: daemon {share:.2f} % of one core (target ≤ 1 %); "
              f"its child commands (software/format passes) {child_share:.2f} %")
        print(f"RSS: {rss_start:.1f} MB at start, {rss_after:.1f} MB after the deployments, "
              f"{rss_idle:.1f} MB after the idle period (target ≤ 60 MB)")
        print("passes: " + ", ".join(f"{k} {v['runs']}" for k, v in runs.items()))
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(90)
        if node is not None:
            subprocess.run([*SLAPOS, "node", "supervisorctl", "shutdown", "--cfg", str(node.config_path)],
                           capture_output=True, timeout=120)
        proxy.stop()
        if args.keep:
            print(f"kept {root} (the daemon's log: {root / 'daemon.log'})")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
