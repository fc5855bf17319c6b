"""What the operators' view costs the periodic paths (docs/dashboard.md):

* node: the observation after a no-change `slapos node instance` run (read every partition's
  status, write the metrics file, compare with the last posted report: no request) on 100
  deployed partitions, in-process, median of 30 — wall and CPU time; to be read against the
  whole no-change run (bench/instance.py);
* proxy: counting one request in the metrics (`RequestMetrics.observe`), and rendering
  `/metrics`, `/status.json` and the computer page of the dashboard for 100 busy partitions.

    .venv/bin/python bench/observe.py [--partitions 100]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.node import build_node  # noqa: E402
from tests.fixtures.proxy import start_proxy  # noqa: E402
from tests.instance.conftest import install_software  # noqa: E402


def median_time(function, repeat: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=100)
    args = parser.parse_args()
    size = args.partitions

    from slapos.proxy.metrics import RequestMetrics

    metrics = RequestMetrics({"requestComputerPartition"})
    per_call = timeit.timeit(lambda: metrics.observe("requestComputerPartition", "POST", "200 OK", 0.0003),
                             number=200000) / 200000
    print(f"proxy: counting one request in /metrics             {per_call * 1e6:8.2f} µs")

    root = Path(tempfile.mkdtemp(prefix="bo", dir="/tmp"))
    os.chmod(root, 0o755)
    proxy = start_proxy(root / "proxy")
    try:
        node = build_node(root / "n", proxy, partitions=size)
        url = install_software(node.software_root, "cheap")
        connection = proxy.connect()
        connection.registerSupply().supply(url, node.computer_id)
        order = connection.registerOpenOrder()
        for index in range(size):
            order.request(url, f"instance{index}")
        subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "instance", "--now", "--cfg",
                        str(node.config_path)], check=False, capture_output=True, timeout=3600)

        from slapos.base.config import Config
        from slapos.base.settings import NodeSettings
        from slapos.grid import observe
        from slapos.grid.status import all_statuses

        settings = NodeSettings.from_config(Config(node.config_path))
        observe.after_instance_run(settings, 0.1, 0)  # posts once if the run's report differs
        wall, cpu = median_time(lambda: observe.after_instance_run(settings, 0.1, 0, changed=False), 30)
        print(f"node: observation after a no-change run, {size} partitions  {wall * 1e3:8.2f} ms wall"
              f"  {cpu * 1e3:8.2f} ms CPU")
        wall, cpu = median_time(lambda: observe.after_instance_run(settings, 0.1, 0, changed=True), 30)
        print(f"node: observation after a run that changed something  {wall * 1e3:8.2f} ms wall"
              f"  {cpu * 1e3:8.2f} ms CPU")
        wall, cpu = median_time(lambda: all_statuses(settings), 30)
        print(f"node:   of which reading the partition statuses      {wall * 1e3:8.2f} ms wall  {cpu * 1e3:8.2f} ms CPU")

        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for path in ("metrics", "status.json", f"dashboard/computer?id={node.computer_id}"):
            def fetch(path=path):
                with opener.open(proxy.url + path, timeout=30) as response:
                    response.read()
            fetch()
            wall, _ = median_time(fetch, 20)
            print(f"proxy: GET /{path.split('?')[0]:<28} {size} partitions  {wall * 1e3:8.2f} ms")
    finally:
        subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "supervisorctl", "--cfg",
                        str(root / "n" / "slapos.cfg"), "shutdown"], check=False, capture_output=True)
        proxy.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
