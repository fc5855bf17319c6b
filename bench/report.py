"""What `slapos node report` costs on its periodic path, and how fast destruction wipes.

* `usage`: measuring N partitions (process table pass, CPU ledger, disk walk of F files each) and
  building + validating the journal — the work every report run does, in-process;
* `wipe`: emptying one partition of F files in D directories (tenantfs.wipe_content).

    .venv/bin/python bench/report.py [--partitions 100] [--files 1000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slapos.grid import tenantfs, usage  # noqa: E402


def populate(path: Path, files: int, per_dir: int = 50) -> None:
    for i in range(files):
        directory = path / f"d{i // per_dir}"
        if i % per_dir == 0:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i}").write_bytes(b"x" * 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        refs = []
        for n in range(args.partitions):
            path = base / f"slappart{n}"
            populate(path, args.files)
            refs.append(usage.PartitionRef(f"slappart{n}", path, [os.getpid()]))
        ledger = usage.CpuLedger(base / "ledger.json")
        start = time.perf_counter()
        measured = usage.measure(refs, ledger)
        document = usage.build_journal("COMP-BENCH", time.time() - 300, time.time(), measured)
        usage.validate(document)
        elapsed = time.perf_counter() - start
        total_files = args.partitions * args.files
        print(f"usage: {args.partitions} partitions x {args.files} files: {elapsed:.3f} s "
              f"({elapsed / args.partitions * 1000:.2f} ms per partition, {total_files / elapsed:,.0f} files/s, "
              f"journal {len(document):,} bytes)")

        victim = base / "victim"
        populate(victim, args.files * 10)
        start = time.perf_counter()
        result = tenantfs.wipe_content(victim)
        elapsed = time.perf_counter() - start
        assert result.ok, result.errors[:3]
        print(f"wipe: {result.removed:,} entries in {elapsed:.3f} s ({result.removed / elapsed:,.0f} entries/s)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
