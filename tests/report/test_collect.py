"""`slapos node collect`: a busy partition process shows up in the local database; history is
bounded; `node report` sends the mean memory the collect runs saw."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import time

import psutil

from slapos.grid import collect
from tests.conftest import wait_for

from .conftest import slapos

# a shell busy loop: runs as the partition user, needs nothing the user cannot reach
BURNER = "#!/bin/sh\nwhile :; do :; done\n"


def _collect(report_node, *extra: str):
    done = slapos("node", "collect", "--cfg", str(report_node.config_path), *extra)
    assert done.returncode == 0, done.stderr
    return done


def _pids(report_node, partition_id):
    return [i["pid"] for i in report_node.supervisor().partition_processes(partition_id) if i["pid"]]


def test_busy_process_shows_up_in_the_database(report_node):
    pid = report_node.request("busy")
    path = report_node.deploy(pid, services={"burner": BURNER}, files={"srv/blob": "x" * 300_000})
    (burner,) = wait_for(lambda: _pids(report_node, pid), what="the burner to run")
    # supervisord's child is a copy of supervisord until it switched user and exec'd the program
    wait_for(lambda: psutil.Process(burner).name() != "python", what="the burner to start")
    if os.geteuid() == 0:  # it runs as the partition's own user, not as root
        assert psutil.Process(burner).uids().real == os.stat(path).st_uid != 0
    _collect(report_node)
    time.sleep(1.5)
    done = _collect(report_node)
    assert "partition(s) sampled" in done.stderr

    database = report_node.instance_root / collect.DATABASE
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
    conn = sqlite3.connect(str(database))
    rows = conn.execute("SELECT time, cpu_seconds, cpu_percent, memory_bytes, process_count, disk_bytes "
                        "FROM sample WHERE partition = ? ORDER BY time", (pid,)).fetchall()
    assert len(rows) == 2
    first, second = rows
    assert second[1] > first[1]  # CPU time grew between the runs
    # the busy loop used a share of a core (how much depends on the load of the machine)
    assert second[2] is not None and second[2] > 1
    assert second[3] > 0 and second[4] >= 1
    assert first[5] >= 300_000  # disk measured on the first run...
    assert second[5] is None  # ...and not again within DISK_INTERVAL
    processes = conn.execute("SELECT pid, cpu_seconds FROM process WHERE partition = ? AND time = ?",
                             (pid, second[0])).fetchall()
    assert burner in [p for p, _cpu in processes]
    assert conn.execute("SELECT count(*) FROM computer").fetchone()[0] == 2
    # an idle partition is sampled too, with nothing running
    others = conn.execute("SELECT DISTINCT partition FROM sample WHERE partition != ?", (pid,)).fetchall()
    assert others
    conn.close()


def test_history_is_bounded(report_node):
    _collect(report_node)
    database = report_node.instance_root / collect.DATABASE
    conn = sqlite3.connect(str(database))
    old = time.time() - 3 * 86400
    conn.execute("INSERT INTO sample VALUES (?, 'slappart0', 1, NULL, 1, 1, NULL, NULL)", (old,))
    conn.execute("INSERT INTO process VALUES (?, 'slappart0', 1, 'x', 1, 1)", (old,))
    conn.commit()
    conn.close()
    done = _collect(report_node, "--keep-days", "1")
    assert "old row(s) deleted" in done.stderr
    conn = sqlite3.connect(str(database))
    assert conn.execute("SELECT count(*) FROM sample WHERE time < ?", (old + 1,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM process WHERE time < ?", (old + 1,)).fetchone()[0] == 0
    conn.close()
    # the row cap holds whatever the dates
    conn = collect.open_database(database)
    with conn:
        removed = collect.prune(conn, 0.0, max_rows=1)
    assert removed > 0
    assert conn.execute("SELECT count(*) FROM sample").fetchone()[0] == 1
    conn.close()


def test_report_sends_the_mean_memory_collect_saw(report_node):
    pid = report_node.request("measured")
    report_node.deploy(pid, services={"sleeper": "#!/bin/sh\nexec sleep 600\n"})
    wait_for(lambda: _pids(report_node, pid), what="the service to run")
    _collect(report_node)
    database = report_node.instance_root / collect.DATABASE
    conn = sqlite3.connect(str(database))
    # two samples of this period with a known mean (what a busy minute earlier looked like)
    now = time.time()
    conn.execute("DELETE FROM sample WHERE partition = ?", (pid,))
    for offset, memory in ((20, 1_000_000_000), (10, 3_000_000_000)):
        conn.execute("INSERT INTO sample VALUES (?, ?, 0, NULL, ?, 1, NULL, NULL)", (now - offset, pid, memory))
    conn.commit()
    conn.close()
    done = report_node.report()
    assert done.returncode == 0, done.stderr
    shown = slapos("proxy", "show", "--cfg", str(report_node.proxy.config_path), "--usage", "--format", "json")
    [stored] = json.loads(shown.stdout)["usage"]
    from slapos.grid import usage

    totals = usage.partition_movement_totals(stored["xml"].encode())
    assert totals[(pid, usage.MEMORY_RESOURCE)] == 2_000_000_000


def test_collect_refuses_a_symlinked_database(report_node, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root only")
    directory = report_node.instance_root / collect.DATABASE.parent
    directory.mkdir(parents=True, exist_ok=True)
    (directory / collect.DATABASE.name).symlink_to(victim)
    done = slapos("node", "collect", "--cfg", str(report_node.config_path))
    assert done.returncode == 1 and "symbolic link" in done.stderr
    assert victim.read_text() == "root only"
