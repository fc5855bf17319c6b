"""How long one `slapos node collect` sample takes (cron runs it every minute), and how large
its database grows: N partition directories with files, no master involved.

Measured in-process (`slapos.grid.collect.collect`), twice per size: the first run walks every
partition's disk, the next ones (within 10 minutes) do not. Also the time of the query `node
report` runs over the period (`period_summary`) once a day of samples is stored.

    .venv/bin/python bench/collect.py [--sizes 10,100] [--files 200]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slapos.base.config import Config  # noqa: E402
from slapos.base.settings import NodeSettings  # noqa: E402
from slapos.grid import collect, usage  # noqa: E402


def make_node(root: Path, partitions: int, files: int) -> tuple[NodeSettings, list[usage.PartitionRef]]:
    instance = root / "inst"
    refs = []
    for index in range(partitions):
        path = instance / f"slappart{index}"
        (path / "srv").mkdir(parents=True)
        for n in range(files):
            (path / "srv" / f"f{n}").write_bytes(b"x" * 1024)
        refs.append(usage.PartitionRef(f"slappart{index}", path, []))
    cfg = root / "slapos.cfg"
    cfg.write_text(f"[slapos]\ncomputer_id = B\nmaster_url = http://127.0.0.1:1/\nsoftware_root = {root / 'soft'}\n"
                   f"instance_root = {instance}\nroot_check = false\n")
    return NodeSettings.from_config(Config(cfg)), refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            settings, refs = make_node(Path(tmp), size, args.files)
            start = time.perf_counter()
            collect.collect(settings, refs)
            first = time.perf_counter() - start
            start = time.perf_counter()
            collect.collect(settings, refs, now=time.time() + 60)
            second = time.perf_counter() - start
            # a day of samples, then the report's query over it
            conn = collect.open_database(collect.database_path(settings))
            now = time.time()
            with conn:
                conn.executemany("INSERT INTO sample VALUES (?, ?, 0, 0, 1000, 1, NULL, NULL)",
                                 [(now - 60 * m, r.partition_id) for m in range(1, 1441) for r in refs])
            conn.close()
            start = time.perf_counter()
            collect.collect(settings, refs, now=now + 120)
            loaded = time.perf_counter() - start
            start = time.perf_counter()
            collect.period_summary(settings, now - 86400, now + 200, [r.partition_id for r in refs])
            summary = time.perf_counter() - start
            size_kib = os.path.getsize(collect.database_path(settings)) / 1024
            print(f"{size:4d} partitions x {args.files} files: first run {first * 1000:7.1f} ms, "
                  f"next run {second * 1000:6.1f} ms, with a day stored {loaded * 1000:6.1f} ms, "
                  f"report query {summary * 1000:6.1f} ms, database {size_kib:8.0f} KiB")


if __name__ == "__main__":
    main()
