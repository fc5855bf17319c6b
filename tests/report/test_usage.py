"""Usage measurement, the usage journal and its validation (no master involved here)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from slapos.grid import usage
from slapos.grid.usage import CpuLedger, PartitionRef, PartitionUsage, UsageDocumentError

BUSY = "import time\nend = time.process_time() + {cpu}\nwhile time.process_time() < end: pass\nprint('done', flush=True)\ntime.sleep(60)\n"


@pytest.fixture
def busy_process():
    """A process that burns about 0.3 s of CPU then sleeps (so it is still there to measure)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY.format(cpu=0.3)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"done"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_busy_process_gives_cpu_memory_and_disk(tmp_path, busy_process):
    part = tmp_path / "slappart0"
    part.mkdir()
    (part / "data").write_bytes(os.urandom(100_000))
    ledger = CpuLedger(tmp_path / "ledger.json")
    [measured] = usage.measure([PartitionRef("slappart0", part, [busy_process.pid])], ledger)
    assert measured.cpu_seconds >= 0.25
    assert measured.memory_bytes > 1_000_000
    assert measured.disk_bytes >= 100_000
    assert measured.process_count == 1

    # the next report counts only what was consumed since this one
    ledger.save(time.time())
    again = CpuLedger(tmp_path / "ledger.json")
    [second] = usage.measure([PartitionRef("slappart0", part, [busy_process.pid])], again)
    assert second.cpu_seconds < 0.1
    assert again.last_report is not None


def test_descendants_of_supervised_processes_are_counted(tmp_path):
    script = f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {BUSY.format(cpu=0.3)!r}])\np.wait()\n"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        import psutil

        while time.monotonic() < deadline:
            children = psutil.Process(parent.pid).children()
            if children and children[0].cpu_times().user + children[0].cpu_times().system >= 0.25:
                break
            time.sleep(0.05)
        part = tmp_path / "p"
        part.mkdir()
        [measured] = usage.measure([PartitionRef("p", part, [parent.pid])], CpuLedger(tmp_path / "l.json"))
        assert measured.process_count == 2
        assert measured.cpu_seconds >= 0.25
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_a_partition_without_processes_reports_zero_cpu(tmp_path):
    part = tmp_path / "idle"
    part.mkdir()
    [measured] = usage.measure([PartitionRef("idle", part, [])], CpuLedger(tmp_path / "l.json"))
    assert (measured.cpu_seconds, measured.memory_bytes, measured.process_count) == (0, 0, 0)


def test_journal_is_valid_and_carries_every_partition(tmp_path):
    usages = [
        PartitionUsage("slappart0", cpu_seconds=1.5, memory_bytes=1000, disk_bytes=4096, process_count=1),
        PartitionUsage("slappart1", cpu_seconds=0.0, memory_bytes=0, disk_bytes=8192),
    ]
    document = usage.build_journal("COMP-1", time.time() - 60, time.time(), usages)
    root = usage.validate(document)
    assert root.tag == "journal"
    totals = usage.partition_movement_totals(document)
    assert totals[("slappart0", usage.CPU_RESOURCE)] == 1.5
    assert totals[("slappart1", usage.DISK_RESOURCE)] == 8192
    assert root.findtext("transaction/reference") == "COMP-1"


@pytest.mark.parametrize("document, reason", [
    (b"<journal><transaction", "not well-formed"),
    (b"<?xml version='1.0'?><journal/>", "journal"),
    (b"<journal><transaction type='x'><start_date>yesterday</start_date></transaction></journal>", "start_date"),
])
def test_invalid_documents_are_refused_with_the_reason(document, reason):
    with pytest.raises(UsageDocumentError) as err:
        usage.validate(document)
    assert reason in str(err.value)


def test_negative_quantity_is_refused():
    good = usage.build_journal("C", 0, 1, [PartitionUsage("p", cpu_seconds=1)])
    bad = good.replace(b"<quantity>1</quantity>", b"<quantity>-1</quantity>", 1)
    assert bad != good
    with pytest.raises(UsageDocumentError, match="quantity"):
        usage.validate(bad)


PARTITION_REPORT = b"""<?xml version="1.0"?>
<journal><transaction type="Sale Packing List">
  <title>My software's own usage</title>
  <movement><resource>Requests</resource><title>HTTP requests</title><reference>somebody-else</reference>
    <quantity>42</quantity><price>0</price><VAT/><category>unit/request</category></movement>
</transaction></journal>
"""


def test_partition_reports_are_merged_under_the_partition_id(tmp_path):
    reports = tmp_path / "slappart3" / "var" / "xml_report"
    reports.mkdir(parents=True)
    (reports / "good.xml").write_bytes(PARTITION_REPORT)
    (reports / "bad.xml").write_bytes(b"<journal><nonsense/></journal>")
    (reports / "bomb.xml").write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE j [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b"<journal><transaction><movement><resource>&b;</resource><quantity>1</quantity></movement>"
        b"</transaction></journal>"
    )
    (reports / "infinite.xml").write_bytes(PARTITION_REPORT.replace(b"<quantity>42", b"<quantity>INF"))
    (reports / "ignored.txt").write_text("not a report")
    directories = usage.report_directories(tmp_path / "inst", tmp_path / "slappart3", "slappart3")
    files, problems = usage.read_partition_reports("slappart3", directories)
    assert [f.path.name for f in files] == ["good.xml"]
    [movement] = files[0].movements
    assert (movement.reference, movement.resource, movement.quantity) == ("slappart3", "Requests", 42.0)
    assert len(problems) == 3 and any("bad.xml" in p for p in problems)
    assert any("infinite.xml" in p and "finite" in p for p in problems)
    # merged into the journal, still valid
    part = PartitionUsage("slappart3", extra=files[0].movements)
    document = usage.build_journal("C", 0, 1, [part])
    assert usage.partition_movement_totals(usage.validate(document) is not None and document)[
        ("slappart3", "Requests")] == 42
    usage.remove_sent(files)
    assert sorted(os.listdir(reports)) == ["bad.xml", "bomb.xml", "ignored.txt", "infinite.xml"]


def test_uids_mark_processes_only_when_exclusive(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    uids = usage.exclusive_uids([PartitionRef("a", a), PartitionRef("b", b)])
    # both owned by us: our own uid never marks a partition's processes
    assert uids == {"a": None, "b": None}
    if os.geteuid() == 0:
        # nobody is not a partition's own user (its home is elsewhere): its processes are not a's
        os.chown(a, 65534, 65534)
        assert usage.exclusive_uids([PartitionRef("a", a), PartitionRef("b", b)]) == {"a": None, "b": None}


def test_reports_behind_a_tenant_symlink_are_neither_read_nor_deleted(tmp_path):
    outside = tmp_path / "outside" / "xml_report"
    outside.mkdir(parents=True)
    (outside / "root-owned.xml").write_bytes(PARTITION_REPORT)
    partition = tmp_path / "slappart0"
    partition.mkdir()
    (partition / "var").symlink_to(tmp_path / "outside")  # var/xml_report -> outside/xml_report
    directories = usage.report_directories(tmp_path / "inst", partition, "slappart0")
    files, problems = usage.read_partition_reports("slappart0", directories)
    assert files == [] and problems == []
    # even a ReportFile naming that place is not removed through the link
    forged = usage.ReportFile(directories[0], "root-owned.xml", [])
    usage.remove_sent([forged])
    assert (outside / "root-owned.xml").exists()


@pytest.fixture
def partition_user(tmp_path):
    """A real user whose home is the partition directory, as `slapos node format` makes them."""
    import secrets

    from tests.conftest import make_traversable

    part = tmp_path / "slappart7"
    part.mkdir(mode=0o750)
    make_traversable(part)
    name = f"slaprep{secrets.token_hex(3)}"
    for attempt in range(10):  # other tests may hold the passwd lock for a moment
        done = subprocess.run(["useradd", "--no-create-home", "--home-dir", str(part), "--shell",
                               "/usr/sbin/nologin", "--user-group", name], capture_output=True, text=True)
        if done.returncode == 0:
            break
        time.sleep(0.2 * (attempt + 1))
    else:
        pytest.fail(f"useradd failed: {done.stderr}")
    try:
        import pwd

        user = pwd.getpwnam(name)
        os.chown(part, user.pw_uid, user.pw_gid)
        yield part, user
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.mark.root
def test_processes_of_the_partition_user_are_counted_and_ended(partition_user):
    from slapos.grid.destroy import kill_leftover_processes

    part, user = partition_user
    assert usage.dedicated_uid(part) == user.pw_uid
    # a daemon that left supervisord: not a descendant of any supervised process
    stray = subprocess.Popen(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                              "sleep", "600"], start_new_session=True)
    try:
        import psutil

        wait = time.monotonic() + 10
        while psutil.Process(stray.pid).uids().real != user.pw_uid and time.monotonic() < wait:
            time.sleep(0.02)
        [measured] = usage.measure([PartitionRef("slappart7", part, [])], CpuLedger(part.parent / "l.json"))
        assert measured.process_count == 1 and measured.memory_bytes > 0
        assert kill_leftover_processes("slappart7", part, grace=2) == 1
        assert not psutil.pid_exists(stray.pid)  # ended (and reaped: it was our child)
    finally:
        stray.kill()
        stray.wait()
