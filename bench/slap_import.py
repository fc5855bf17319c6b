"""How cheap `import slapos.slap` is, and what the first call costs.

Every promise, recipe and watchdog event of a node imports the client library, most of them to make
one or two calls, and `slapos node software|instance` make one call per run: importing must not
pull `lxml` (it loads when a document is decoded), and the HTTP layer (`slapos.slap.transport`, on
the standard library `http.client`) replaces `requests` + `urllib3`, which cost ~45 ms per run.
Each figure is the wall time of a fresh interpreter (subprocess) running the statement, minus the
time of an interpreter that imports nothing, so it measures our import alone. Cases are run
interleaved (so background load hits them alike); best and median are printed. The "one call" case
calls a small HTTP server that this script runs on loopback.

    .venv/bin/python bench/slap_import.py [--runs 15]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MASTER = "http://127.0.0.1:{port}/"  # filled in by main() once the loopback server listens

CASES = [
    ("baseline (python -c pass)", "pass"),
    ("import slapos.slap", "import slapos.slap"),
    ("from slapos.slap import slap", "from slapos.slap import slap"),
    ("... + initializeConnection + register*", (
        "from slapos.slap import slap\n"
        "s = slap(); s.initializeConnection('http://127.0.0.1:9/')\n"
        "s.registerComputer('C'); s.registerComputerPartition('C', 'slappart0')"
    )),
    ("... + one call to a loopback master", (
        "from slapos.slap import slap\n"
        "s = slap(); s.initializeConnection({master!r})\n"
        "assert s.getHateoasUrl() == 'ok'"
    )),
    ("import requests (the transport we replaced)", "import requests"),
]

CHECK = (
    "import sys\n"
    "from slapos.slap import slap\n"
    "s = slap(); s.initializeConnection({master!r}); s.registerComputer('C')\n"
    "before = {{m for m in sys.modules}}\n"
    "assert s.getHateoasUrl() == 'ok'\n"
    "watched = ('requests', 'urllib3', 'http.client', 'ssl', 'lxml.etree', 'zope.interface')\n"
    "print(sorted(m for m in watched if m in before), sorted(m for m in watched if m in sys.modules))\n"
)


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass


def run_all(runs: int, master: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label, _ in CASES}
    for _ in range(runs):
        for label, code in CASES:
            code = code.format(master=master) if "{master" in code else code
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
            times[label].append(time.perf_counter() - started)
    return times


def importtime(statement: str, repeat: int = 5) -> float:
    """Milliseconds `python -X importtime` attributes to the statement: the cumulative time of its
    top-level imports, minus those an empty interpreter also makes (best of `repeat` runs: import
    times are noisy on a busy machine)."""

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
    return min(sum(us for name, us in top_level(statement).items() if name not in base)
               for _ in range(repeat)) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    master = MASTER.format(port=server.server_address[1])
    try:
        times = run_all(args.runs, master)
        base_best = min(times[CASES[0][0]])
        base_median = statistics.median(times[CASES[0][0]])
        print(f"{'case':46} {'best':>9} {'median':>9}   over baseline (best / median)")
        for label, _ in CASES:
            best, median = min(times[label]), statistics.median(times[label])
            print(f"{label:46} {best * 1000:6.1f} ms {median * 1000:6.1f} ms   "
                  f"{(best - base_best) * 1000:6.1f} ms / {(median - base_median) * 1000:6.1f} ms")
        print(f"python -X importtime: import slapos.slap = {importtime('import slapos.slap'):.1f} ms, "
              f"from slapos.slap import slap = {importtime('from slapos.slap import slap'):.1f} ms")
        print(f"  the request path: + slapos.slap.transport = "
              f"{importtime('from slapos.slap import slap; import slapos.slap.transport'):.1f} ms in all; "
              f"with requests (before) {importtime('from slapos.slap import slap; import requests'):.1f} ms")
        loaded = subprocess.run([sys.executable, "-c", CHECK.format(master=master)], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
        print(f"modules loaded after connect + register (no call yet), then after one call: {loaded}")
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
