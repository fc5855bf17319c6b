"""`slapos node collect`: sample each partition's resource use into a local SQLite database.

Run every minute by the standard crontab; no master is contacted. One run takes one pass over
the process table (the same `usage.ProcessTable` and partition-process rules as `node report`)
and writes, in one transaction:

* `sample`: per partition, CPU time used by its live processes (cumulative, seconds), the CPU
  share since the previous sample (percent of one core), resident memory, process count, and
  disk used (measured at most every `DISK_INTERVAL` seconds: a tree walk is the expensive part);
* `process`: each of those processes (pid, name, CPU seconds, memory) — what an operator
  looks at when a partition is busy;
* `computer`: the machine's CPU percent, memory used/total and load average.

History is bounded: rows older than `[slapos] collect_cache` days (default 15) are deleted at
each run, and each table keeps at most `MAX_ROWS` rows. The database is 0600 in a 0700 directory
below the instance root (it names tenants' processes).

`node report` reads the samples of its period (see `period_summary`) so the master gets the
mean memory over the period instead of one instant.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base.errors import SlapOSError

from . import usage

log = logging.getLogger("slapos.grid.collect")

DATABASE = Path("var") / "data-log" / "collect.db"  # below instance_root
DEFAULT_KEEP_DAYS = 15
DISK_INTERVAL = 600.0
MAX_ROWS = 500_000

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sample (
        time REAL NOT NULL, partition TEXT NOT NULL, cpu_seconds REAL NOT NULL, cpu_percent REAL,
        memory_bytes INTEGER NOT NULL, process_count INTEGER NOT NULL, disk_bytes INTEGER,
        disk_time REAL)""",
    # covering: the report's period query reads the index only
    "CREATE INDEX IF NOT EXISTS sample_period ON sample (partition, time, memory_bytes, process_count)",
    "CREATE INDEX IF NOT EXISTS sample_time ON sample (time)",
    """CREATE TABLE IF NOT EXISTS process (
        time REAL NOT NULL, partition TEXT NOT NULL, pid INTEGER NOT NULL, name TEXT,
        cpu_seconds REAL NOT NULL, memory_bytes INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS process_time ON process (time)",
    """CREATE TABLE IF NOT EXISTS computer (
        time REAL NOT NULL, cpu_percent REAL, memory_used INTEGER, memory_total INTEGER, load1 REAL)""",
    "CREATE INDEX IF NOT EXISTS computer_time ON computer (time)",
    # the last sample and the last disk measure of each partition: a run reads this, not the history
    """CREATE TABLE IF NOT EXISTS latest (
        partition TEXT PRIMARY KEY, time REAL NOT NULL, cpu_seconds REAL NOT NULL, disk_bytes INTEGER,
        disk_time REAL)""",
)


class CollectError(SlapOSError):
    """The collect database cannot be opened or written."""


def database_path(settings) -> Path:
    return Path(settings.instance_root) / DATABASE


def open_database(path: Path) -> sqlite3.Connection:
    """The database, created 0600 in a 0700 directory; never through a symlink."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.parent.is_symlink() or path.is_symlink():
            raise CollectError(f"{path} or its directory is a symbolic link: remove it")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        conn = sqlite3.connect(str(path), timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in SCHEMA:
            conn.execute(statement)
        conn.commit()
    except (OSError, sqlite3.Error) as e:
        raise CollectError(f"cannot open the collect database {path}: {e}") from None
    for suffix in ("-wal", "-shm"):  # SQLite makes them with the umask
        side = path.with_name(path.name + suffix)
        if side.exists() and not side.is_symlink():
            os.chmod(side, 0o600)
    return conn


@dataclass
class PartitionSample:
    partition_id: str
    cpu_seconds: float
    memory_bytes: int
    process_count: int
    processes: list[tuple[int, str, float, int]] = field(default_factory=list)  # pid, name, cpu, rss
    disk_bytes: int | None = None
    cpu_percent: float | None = None


@dataclass
class CollectResult:
    database: Path
    samples: list[PartitionSample]
    pruned: int = 0


def _sample_partitions(refs: list[usage.PartitionRef], disk_due: set[str]) -> list[PartitionSample]:
    table = usage.ProcessTable()
    uids = usage.exclusive_uids(refs)
    roots = usage.partition_roots(refs) if disk_due else set()
    samples = []
    for ref in refs:
        try:
            procs = table.select(uids.get(ref.partition_id), ref.supervisor_pids)
            sample = PartitionSample(
                ref.partition_id,
                cpu_seconds=sum(p.cpu for p in procs),
                memory_bytes=sum(p.rss for p in procs),
                process_count=len(procs),
                processes=[(p.pid, table.name(p.pid), p.cpu, p.rss) for p in procs],
            )
            if ref.partition_id in disk_due:
                sample.disk_bytes = usage.disk_used(ref, roots)
        except Exception as e:  # one broken partition must not hide the others
            log.error("%s: collect failed: %s", ref.partition_id, e)
            continue
        samples.append(sample)
    return samples


def _computer_row(now: float) -> tuple:
    import psutil

    memory = psutil.virtual_memory()
    return (now, psutil.cpu_percent(interval=None), memory.total - memory.available, memory.total,
            os.getloadavg()[0])


def collect(settings, refs: list[usage.PartitionRef], now: float | None = None,
            keep_days: float | None = None) -> CollectResult:
    """Sample `refs` and store the samples; prune what is older than `keep_days`."""
    now = time.time() if now is None else now
    if keep_days is None:
        keep_days = settings.config.get_float("slapos", "collect_cache", DEFAULT_KEEP_DAYS)
    path = database_path(settings)
    conn = open_database(path)
    try:
        previous = {row[0]: (row[1], row[2], row[3])
                    for row in conn.execute("SELECT partition, time, cpu_seconds, disk_time FROM latest")}
        disk_due = {ref.partition_id for ref in refs
                    if previous.get(ref.partition_id, (0, 0, None))[2] is None
                    or now - previous[ref.partition_id][2] >= DISK_INTERVAL}
        samples = _sample_partitions(refs, disk_due)
        for sample in samples:
            before = previous.get(sample.partition_id)
            if before and now > before[0] and sample.cpu_seconds >= before[1]:
                sample.cpu_percent = round(100.0 * (sample.cpu_seconds - before[1]) / (now - before[0]), 2)
        with conn:
            conn.executemany(
                "INSERT INTO sample VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(now, s.partition_id, s.cpu_seconds, s.cpu_percent, s.memory_bytes, s.process_count,
                  s.disk_bytes, now if s.disk_bytes is not None else None) for s in samples])
            conn.executemany(
                "INSERT INTO process VALUES (?, ?, ?, ?, ?, ?)",
                [(now, s.partition_id, pid, name, cpu, rss) for s in samples for pid, name, cpu, rss in s.processes])
            conn.execute("INSERT INTO computer VALUES (?, ?, ?, ?, ?)", _computer_row(now))
            conn.executemany(
                """INSERT INTO latest VALUES (?, ?, ?, ?, ?) ON CONFLICT (partition) DO UPDATE SET
                   time = excluded.time, cpu_seconds = excluded.cpu_seconds,
                   disk_bytes = coalesce(excluded.disk_bytes, latest.disk_bytes),
                   disk_time = coalesce(excluded.disk_time, latest.disk_time)""",
                [(s.partition_id, now, s.cpu_seconds, s.disk_bytes, now if s.disk_bytes is not None else None)
                 for s in samples])
            pruned = prune(conn, now - keep_days * 86400)
    except sqlite3.Error as e:
        raise CollectError(f"cannot write the collect database {path}: {e}") from None
    finally:
        conn.close()
    return CollectResult(path, samples, pruned)


def prune(conn: sqlite3.Connection, before: float, max_rows: int = MAX_ROWS) -> int:
    """Delete rows older than `before`, then the oldest beyond `max_rows` per table."""
    removed = 0
    for table in ("sample", "process", "computer"):
        removed += conn.execute(f"DELETE FROM {table} WHERE time < ?", (before,)).rowcount  # noqa: S608
        # rowids only grow, so their span bounds the row count: O(1), the cap check costs nothing
        low, high = conn.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()  # noqa: S608
        if low is not None and high - low + 1 > max_rows:
            removed += conn.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "  # noqa: S608 - fixed names
                "ORDER BY time DESC LIMIT -1 OFFSET ?)", (max_rows,)).rowcount
    return removed


@dataclass
class PeriodSummary:
    samples: int
    mean_memory_bytes: float
    max_process_count: int
    last_disk_bytes: int | None


def period_summary(settings, since: float | None, until: float,
                   partitions: Iterable[str]) -> dict[str, PeriodSummary]:
    """What `node collect` saw of each partition between `since` and `until` (for `node report`);
    empty when collect never ran (no database): the report then measures one instant."""
    path = database_path(settings)
    if not path.is_file() or path.is_symlink():
        return {}
    wanted = list(partitions)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        result = {}
        for partition in wanted:
            row = conn.execute(
                """SELECT count(*), avg(memory_bytes), max(process_count),
                   (SELECT disk_bytes FROM latest WHERE partition = ?)
                   FROM sample WHERE partition = ? AND time > ? AND time <= ?""",
                (partition, partition, since or 0.0, until)).fetchone()
            if row and row[0]:
                result[partition] = PeriodSummary(row[0], float(row[1]), int(row[2]), row[3])
        return result
    except sqlite3.Error as e:
        log.warning("usage: cannot read the collect database %s: %s", path, e)
        return {}
    finally:
        conn.close()
