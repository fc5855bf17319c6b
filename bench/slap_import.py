"""How cheap `import slapos.slap` is, and what the first call costs.

Every promise, recipe and watchdog event of a node imports the client library, most of them to make
one or two calls: importing must not pull `requests` or `lxml` (they load on the first call).
Each figure is the wall time of a fresh interpreter (subprocess) running the statement, minus the
time of an interpreter that imports nothing, so it measures our import alone. Cases are run
interleaved (so background load hits them alike); best and median are printed.

    .venv/bin/python bench/slap_import.py [--runs 15]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASES = [
    ("baseline (python -c pass)", "pass"),
    ("import slapos.slap", "import slapos.slap"),
    ("from slapos.slap import slap", "from slapos.slap import slap"),
    ("... + initializeConnection + register*", (
        "from slapos.slap import slap\n"
        "s = slap(); s.initializeConnection('http://127.0.0.1:9/')\n"
        "s.registerComputer('C'); s.registerComputerPartition('C', 'slappart0')"
    )),
    ("import requests + lxml.etree (what we avoid)", "import requests, lxml.etree"),
]

CHECK = (
    "import sys\n"
    "from slapos.slap import slap\n"
    "s = slap(); s.initializeConnection('http://127.0.0.1:9/'); s.registerComputer('C')\n"
    "print(sorted(m for m in ('requests', 'lxml', 'lxml.etree', 'urllib3', 'zope.interface') if m in sys.modules))\n"
)


def run_all(runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label, _ in CASES}
    for _ in range(runs):
        for label, code in CASES:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
            times[label].append(time.perf_counter() - started)
    return times


def importtime(statement: str) -> float:
    """Milliseconds `python -X importtime` attributes to the statement: the cumulative time of its
    top-level imports, minus those an empty interpreter also makes."""

    def top_level(code: str) -> dict[str, int]:
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO,
                                capture_output=True, text=True, check=True)
        found = {}
        for line in result.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
                found[parts[2].strip()] = int(parts[1])
        return found

    base = top_level("pass")
    return sum(us for name, us in top_level(statement).items() if name not in base) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    times = run_all(args.runs)
    base_best = min(times[CASES[0][0]])
    base_median = statistics.median(times[CASES[0][0]])
    print(f"{'case':46} {'best':>9} {'median':>9}   over baseline (best / median)")
    for label, _ in CASES:
        best, median = min(times[label]), statistics.median(times[label])
        print(f"{label:46} {best * 1000:6.1f} ms {median * 1000:6.1f} ms   "
              f"{(best - base_best) * 1000:6.1f} ms / {(median - base_median) * 1000:6.1f} ms")
    print(f"python -X importtime: import slapos.slap = {importtime('import slapos.slap'):.1f} ms, "
          f"from slapos.slap import slap = {importtime('from slapos.slap import slap'):.1f} ms, "
          f"import requests, lxml.etree = {importtime('import requests, lxml.etree'):.1f} ms")
    loaded = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    print(f"modules loaded after connect + register (no call yet): {loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
