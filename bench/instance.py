"""How long `slapos node instance` takes on 10, 100 and 300 started partitions.

For each size, against a real proxy (`slapos proxy start`) and a node formatted by our
`slapos node format` (partitions owned by nobody when root), each partition holding one instance
of a cheap software release (tests/data/instance/cheap.cfg: one service, one executable promise):

* `first deployment`: the first `slapos node instance --now` (every buildout runs, supervisord
  loads every partition, promises run, the master is told), then a redeploy of everything with
  `--force --jobs 4`; with the per-partition overhead outside buildout;
* `no change, no promise due`: the cron steady state (median of 5 runs);
* `no change, every promise due`: the same with each partition's promise due (they run side by
  side);
* `supervisord shutdown`: `slapos node supervisorctl shutdown` with every service running.

Every figure is the wall time of the whole command (interpreter start-up included), which is what
cron pays. Targets on 2 cores, 100 partitions: no change ≤ 0.12 s without promises due (reference
slapos.core 1.26.1: 0.55 s), ≤ 1 s with every promise due, first deployment ≤ 9 s (reference 37 s),
shutdown ≤ 3 s (reference 80 s).

    .venv/bin/python bench/instance.py [--sizes 10,100,300] [--other-slapos PATH]

`--other-slapos` runs the same steps with another implementation's `slapos` command (same proxy
protocol; its own format, instance and supervisorctl) and prints the ratio.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.node import build_node  # noqa: E402
from tests.fixtures.proxy import start_proxy  # noqa: E402
from tests.instance.conftest import install_software  # noqa: E402

# Measure what an installed node runs: compiled modules, cached outside the source tree.
PYCACHE = tempfile.mkdtemp(prefix="bench-instance-pycache-")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = PYCACHE
atexit.register(shutil.rmtree, PYCACHE, True)
OURS = [sys.executable, "-m", "slapos.cli.main"]


def run(command: list[str], *args: str, check: bool = True) -> float:
    begin = time.monotonic()
    result = subprocess.run([*command, *args], env=ENV, capture_output=True, text=True, timeout=3600)
    elapsed = time.monotonic() - begin
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return elapsed


def make_promises_due(instance_root: Path) -> None:
    for state_path in instance_root.glob("*/.slapgrid/state.json"):
        state = json.loads(state_path.read_text())
        state["next_promise_check"] = 0
        state_path.write_text(json.dumps(state))
    for cache in instance_root.glob("*/.slapgrid/promise/cache/*"):
        data = json.loads(cache.read_text())
        data["next_run_after"] = 0
        cache.write_text(json.dumps(data))


def buildout_seconds(instance_root: Path) -> float:
    total = 0.0
    for log in instance_root.glob("*/.slapgrid/log/instance.log"):
        total += sum(float(x) for x in re.findall(r"buildout done in ([0-9.]+) s", log.read_text()))
    return total


def bench_size(size: int, command: list[str], label: str) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bi", dir="/tmp"))
    os.chmod(root, 0o755)
    proxy = start_proxy(root / "proxy")
    figures: dict[str, float] = {}
    try:
        node = build_node(root / "n", proxy, partitions=size)
        cfg = str(node.config_path)
        url = install_software(node.software_root, "cheap")
        connection = proxy.connect()
        connection.registerSupply().supply(url, node.computer_id)
        order = connection.registerOpenOrder()
        for index in range(size):
            order.request(url, f"instance{index}")

        figures["first deployment"] = run(command, "node", "instance", "--now", "--cfg", cfg)
        if command is OURS:
            buildouts = buildout_seconds(node.instance_root)
            figures["buildout per partition (fork server)"] = buildouts / size
            figures["overhead per partition (outside buildout)"] = (figures["first deployment"] - buildouts) / size
            figures["redeploy all --force --jobs 4"] = run(command, "node", "instance", "--now", "--force",
                                                           "--jobs", "4", "--cfg", cfg)
        times = [run(command, "node", "instance", "--now", "--cfg", cfg) for _ in range(5)]
        figures["no change, no promise due"] = statistics.median(times)
        if command is OURS:
            times = []
            for _ in range(3):
                make_promises_due(node.instance_root)
                times.append(run(command, "node", "instance", "--now", "--cfg", cfg))
            figures["no change, every promise due"] = statistics.median(times)
        figures["supervisord shutdown"] = run(command, "node", "supervisorctl", "--cfg", cfg, "shutdown",
                                              check=False)
    finally:
        run(OURS, "node", "supervisorctl", "--cfg", str(root / "n" / "slapos.cfg"), "shutdown", check=False)
        if (root / "n" / "slapos.cfg").exists():  # as root, each partition got a cgroup
            from slapos.base.config import Config
            from slapos.base.settings import NodeSettings
            from tests.fixtures.supervisor import remove_cgroups

            remove_cgroups(NodeSettings.from_config(Config(root / "n" / "slapos.cfg")))
        proxy.stop()
        shutil.rmtree(root, ignore_errors=True)
    for name, value in figures.items():
        print(f"{label:>6} {size:4d} partitions  {name:<42} {value:8.3f} s", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,300", help="partition counts (default 10,100,300)")
    parser.add_argument("--other-slapos", metavar="PATH", help="another implementation's slapos command")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for size in sizes:
        ours = bench_size(size, OURS, "ours")
        if args.other_slapos:
            try:
                other = bench_size(size, [args.other_slapos], "other")
            except Exception as e:  # the other implementation may not run on this machine
                print(f" other {size:4d} partitions  failed: {e}")
                continue
            for name in other:
                if name in ours and ours[name] > 0:
                    print(f" ratio {size:4d} partitions  {name:<42} {other[name] / ours[name]:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
