"""Wall time of `slapos request` against a real proxy, interpreter start included.

Scripts call `slapos request` in loops, so one call must stay cheap: target <= 0.2 s
(the reference takes about 0.5 s). The bench starts a proxy on a free loopback port, tells it about
a computer with a few partitions, supplies a release, then runs `.venv/bin/slapos request NAME URL`
N times (the first call allocates, the others update: both are what scripts do) and prints the
median and the best time. It also prints where the start-up goes (`python -X importtime`),
largest cumulative imports first, and the time of a bare interpreter for comparison.

    .venv/bin/python bench/request.py [--runs 20]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET = 0.2
SR = "/srv/bench/software.cfg"


def slapos_argv(*args: str) -> list[str]:
    script = REPO / ".venv" / "bin" / "slapos"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "slapos.cli.main", *args]


def timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _importtime_rows(command: list[str], env: dict) -> list[tuple[float, float, str]]:
    result = subprocess.run([sys.executable, "-X", "importtime", *command], env=env, capture_output=True,
                            text=True, check=True)
    rows = []
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:") or "cumulative" in parts[1]:
            continue
        self_us = int(parts[0].split(":")[1])
        rows.append((int(parts[1]) / 1000, self_us / 1000, parts[2].rstrip()[1:]))  # drop the separator space
    return rows


def import_breakdown(argv: list[str], env: dict, top: int, repeat: int = 5):
    """Slowest imports of `slapos request`: (top-level rows, rows at any depth, total ms), each figure
    the best of `repeat` runs (import times are noisy on a busy machine); a row is
    (cumulative ms, self ms, module)."""
    # `.venv/bin/slapos` is a Python script: run it under -X importtime
    command = argv[1:] if argv[0] == sys.executable else argv
    best: dict[str, tuple[float, float]] = {}
    totals = []
    for _ in range(repeat):
        rows = _importtime_rows(command, env)
        totals.append(sum(self_ms for _, self_ms, _ in rows))
        for cumulative, self_ms, name in rows:
            old = best.get(name)
            best[name] = (min(cumulative, old[0]), min(self_ms, old[1])) if old else (cumulative, self_ms)
    rows = [(c, s, name) for name, (c, s) in best.items()]
    top_level = [r for r in rows if not r[2].startswith(" ")]
    return sorted(top_level, reverse=True)[:top], sorted(rows, reverse=True)[:top], min(totals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=12, help="imports to show")
    args = parser.parse_args()

    from tests.client.conftest import client_env, register_partitions, write_client_config
    from tests.fixtures.proxy import start_proxy

    with tempfile.TemporaryDirectory(prefix="bench-request-") as tmp:
        tmp_path = Path(tmp)
        proxy = start_proxy(tmp_path / "proxy")
        try:
            register_partitions(proxy, 3)
            home = tmp_path / "home"
            home.mkdir()
            config = write_client_config(tmp_path / "client.cfg", proxy.url, proxy.computer_id)
            env = client_env(home)
            # users run with compiled bytecode: let the first (warm-up) calls write it
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            subprocess.run(slapos_argv("supply", SR, "--cfg", str(config)), env=env, check=True,
                           stdout=subprocess.DEVNULL)
            request = slapos_argv("request", "bench", SR, "--parameters", "a=1", "--cfg", str(config))
            timed(request, env)  # warm-up: allocation, bytecode
            baseline, times = [], []
            for _ in range(args.runs):  # interleaved, so background load hits both alike
                baseline.append(timed([sys.executable, "-c", "pass"], env))
                times.append(timed(request, env))
            top_level, all_rows, total = import_breakdown(request, env, args.top)
        finally:
            proxy.stop()

    median = statistics.median(times)
    print(f"slapos request against a proxy, {args.runs} runs (interpreter start included)")
    print(f"  median {median * 1000:6.1f} ms   best {min(times) * 1000:6.1f} ms   target <= {TARGET * 1000:.0f} ms "
          f"({'ok' if median <= TARGET else 'OVER TARGET'})")
    print(f"  bare interpreter (python -c pass): median {statistics.median(baseline) * 1000:.1f} ms")
    print(f"  imports: {total:.1f} ms in total (python -X importtime, best of 5 runs)")
    print("  slowest top-level imports (cumulative ms):")
    for cumulative, _self, name in top_level:
        print(f"    {cumulative:6.1f}  {name.strip()}")
    print("  slowest imports at any depth (cumulative ms):")
    for cumulative, _self, name in all_rows:
        print(f"    {cumulative:6.1f}  {name.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
