"""`slapos node report` against a real proxy, with partitions running in a real supervisord."""
from __future__ import annotations

import json
import os
import stat

import psutil
import pytest

from slapos.grid.destroy import RETENTION_DATE_FILE, RETENTION_DELAY_FILE
from slapos.grid.lock import RunLock
from tests.conftest import wait_for

from .conftest import slapos

SLEEPER = "#!/bin/sh\nexec sleep 600\n"


def supervised_pids(report_node, partition_id):
    infos = report_node.supervisor().partition_processes(partition_id)
    return [i["pid"] for i in infos if i["pid"]]


def test_destroy_frees_the_partition_and_leaves_nothing_of_the_tenant(report_node, tmp_path):
    pid = report_node.request("doomed")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("not the tenant's")
    path = report_node.deploy(pid, services={"db": SLEEPER}, files={
        "srv/data.db": "tenant data", "etc/secret.cfg": "password=1234", ".timestamp": "1795625303.36",
    })
    (path / "evil-root").symlink_to("/")
    (path / "evil-outside").symlink_to(outside)
    before = os.stat(path)
    resource = (path / ".slapos-resource").read_text()
    running = wait_for(lambda: supervised_pids(report_node, pid), what="the service to run")
    report_node.request("doomed", state="destroyed")

    done = report_node.report()
    assert done.returncode == 0, done.stderr
    assert f"{pid}: destroyed, the master freed it" in done.stderr

    assert report_node.is_free(pid)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in running)
    assert report_node.supervisor().partition_processes(pid) == []
    assert not (report_node.instance_root / "etc" / "supervisord.conf.d" / f"{pid}.conf").exists()
    # only the formatter's description of the partition is left (recipes of the next tenant read it)
    assert os.listdir(path) == [".slapos-resource"]
    assert (path / ".slapos-resource").read_text() == resource
    after = os.stat(path)
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (before.st_uid, before.st_gid, 0o750)
    assert not (report_node.certificates / f"{pid}.crt").exists()
    assert not (report_node.certificates / f"{pid}.key").exists()
    assert (outside / "precious").read_text() == "not the tenant's"

    # the partition is reused by the next request and nothing of the previous tenant is there
    reused = report_node.request("newcomer")
    assert reused == pid
    assert set(os.listdir(path)) <= {".slapos-resource"}
    assert report_node.master_partitions()[pid].getInstanceParameterDict().get("instance_title") == "newcomer"

    # the next report has nothing left to do (options of the other slapgrid commands are accepted)
    again = report_node.report("--maximum-periodicity", "60", "--promise-timeout", "5", "--partition-timeout", "30")
    assert again.returncode == 0, again.stderr
    assert "nothing to destroy" in again.stderr


def test_retention_delay_keeps_the_partition_until_its_date(report_node):
    pid = report_node.request("kept")
    delay_days = 2.0
    path = report_node.deploy(pid, services={"db": SLEEPER}, files={
        RETENTION_DELAY_FILE: str(delay_days), "srv/data.db": "keep me a while"})
    report_node.request("kept", state="destroyed")

    first = report_node.report()
    assert first.returncode == 0, first.stderr
    assert f"{pid}: kept until" in first.stderr
    assert "1 retained" in first.stderr
    assert not report_node.is_free(pid)
    assert (path / "srv" / "data.db").read_text() == "keep me a while"
    date = float((path / RETENTION_DATE_FILE).read_text())
    import time

    assert abs(date - (time.time() + delay_days * 86400)) < 120
    assert report_node.supervisor().partition_processes(pid)[0]["statename"] == "STOPPED"

    # a later run before the date changes nothing
    assert report_node.report().returncode == 0
    assert float((path / RETENTION_DATE_FILE).read_text()) == date

    # the tenant moving its copy of the date changes nothing: root keeps the date
    (path / RETENTION_DATE_FILE).write_text("inf")
    record = path.parent / "var" / "retention" / pid
    assert float(record.read_text()) == date and record.stat().st_uid == os.geteuid()
    assert report_node.report().returncode == 0
    assert not report_node.is_free(pid)

    # the date has passed: destroyed, and root's record of it is gone
    record.write_text(str(time.time() - 1))
    last = report_node.report()
    assert last.returncode == 0, last.stderr
    assert report_node.is_free(pid)
    assert set(os.listdir(path)) <= {".slapos-resource"}
    assert not record.exists()


def test_a_destroy_that_fails_half_way_is_finished_by_the_next_run(report_node):
    pid = report_node.request("stubborn")
    hook = (
        "#!/bin/sh\n"
        "if [ ! -e flag ]; then touch flag; echo 'backup server unreachable' >&2; exit 3; fi\n"
        "echo \"hook ran as $(id -un) in $(basename $PWD)\"\n"
    )
    path = report_node.deploy(pid, services={"db": SLEEPER}, files={"srv/data.db": "x"})
    (path / "sbin").mkdir()
    (path / "sbin" / "destroy").write_text(hook)
    os.chmod(path / "sbin" / "destroy", 0o755)
    if os.geteuid() == 0:
        st = os.stat(path)
        os.chown(path / "sbin", st.st_uid, st.st_gid)
        os.chown(path / "sbin" / "destroy", st.st_uid, st.st_gid)
    report_node.request("stubborn", state="destroyed")

    first = report_node.report()
    assert first.returncode == 1
    assert "sbin/destroy exited with code 3" in first.stderr
    assert "backup server unreachable" in first.stderr
    assert not report_node.is_free(pid)
    assert (path / "srv" / "data.db").exists()
    assert report_node.supervisor().partition_processes(pid)[0]["statename"] == "STOPPED"
    # the failure is visible at the master
    show = json.loads(slapos("proxy", "show", "--cfg", str(report_node.proxy.config_path), "--partitions",
                             "--format", "json").stdout)
    [row] = [p for p in show["partitions"] if p["partition"] == pid]
    assert row["reported_state"] == "error"

    second = report_node.report("-v")
    assert second.returncode == 0, second.stderr
    user = "nobody" if os.geteuid() == 0 else __import__("pwd").getpwuid(os.geteuid()).pw_name
    assert f"sbin/destroy: hook ran as {user} in {pid}" in second.stderr
    assert report_node.is_free(pid)
    assert set(os.listdir(path)) <= {".slapos-resource"}


def test_only_local_partitions_are_touched_and_one_failure_does_not_stop_the_others(report_node):
    first = report_node.request("one")
    second = report_node.request("two")
    report_node.deploy(first, files={"data": "1"})
    report_node.deploy(second, files={"data": "2"})
    # the master names a partition this node does not have (any more)
    missing = report_node.partition_path(second)
    renamed = missing.with_name("elsewhere")
    missing.rename(renamed)
    try:
        report_node.request("one", state="destroyed")
        report_node.request("two", state="destroyed")
        done = report_node.report()
    finally:
        renamed.rename(missing)
    assert done.returncode == 1
    assert f"{second}: no directory" in done.stderr
    assert report_node.is_free(first)
    assert not report_node.is_free(second)
    assert (renamed.exists() or missing.exists())


def test_usage_of_a_busy_partition_lands_in_the_proxy(report_node):
    pid = report_node.request("busy")
    burner = (
        "#!/usr/bin/python3\nimport time\nstart = time.process_time()\n"
        "while time.process_time() - start < 0.4: pass\n"
        "print('burnt', flush=True)\ntime.sleep(600)\n"
    )
    script = (
        "#!/bin/sh\n"
        "echo '<journal><transaction><movement><resource>Requests</resource><quantity>5</quantity>"
        "</movement></transaction></journal>' > \"$1\"\n"
    )
    report_node.deploy(pid, services={"burner": burner}, files={"srv/blob": "x" * 200_000})
    (report_node.partition_path(pid) / "etc" / "report").mkdir()
    from .conftest import give_to_owner, write

    write(report_node.partition_path(pid) / "etc" / "report" / "requests", script, 0o755)
    burner_log = report_node.partition_path(pid) / f".{pid}_burner.log"
    wait_for(lambda: burner_log.exists() and "burnt" in burner_log.read_text(), what="the burner to burn")
    # a report file of the software release itself, and a bad one
    reports = report_node.partition_path(pid) / "var" / "xml_report"
    reports.mkdir(parents=True)
    (reports / "own.xml").write_text(
        "<journal><transaction><movement><resource>Requests</resource><quantity>7</quantity>"
        "</movement></transaction></journal>")
    (reports / "broken.xml").write_text("<journal><transaction>")
    give_to_owner(report_node.partition_path(pid))

    done = report_node.report()
    assert done.returncode == 0, done.stderr
    assert "usage of 1 partition(s) sent" in done.stderr
    assert "broken.xml is not well-formed" in done.stderr

    shown = slapos("proxy", "show", "--cfg", str(report_node.proxy.config_path), "--usage", "--format", "json")
    [stored] = json.loads(shown.stdout)["usage"]
    from slapos.grid import usage

    totals = usage.partition_movement_totals(stored["xml"].encode())
    assert totals[(pid, usage.CPU_RESOURCE)] >= 0.35
    assert totals[(pid, usage.MEMORY_RESOURCE)] > 1_000_000
    assert totals[(pid, usage.DISK_RESOURCE)] >= 200_000
    assert totals[(pid, "Requests")] == 7 + 5  # the file left there, and what etc/report/requests wrote
    assert not (reports / "own.xml").exists()  # sent, so removed
    assert (reports / "broken.xml").exists()
    table = slapos("proxy", "show", "--cfg", str(report_node.proxy.config_path), "--usage")
    assert table.returncode == 0 and report_node.computer_id in table.stdout

    # the next report counts only the CPU used since this one
    again = report_node.report()
    assert again.returncode == 0
    latest = json.loads(slapos("proxy", "show", "--cfg", str(report_node.proxy.config_path), "--usage",
                               "--format", "json").stdout)["usage"][-1]
    assert usage.partition_movement_totals(latest["xml"].encode())[(pid, usage.CPU_RESOURCE)] < 0.2


def test_an_invalid_journal_is_not_sent(report_node, caplog):
    from slapos.grid import usage

    pid = report_node.request("x")
    slap = report_node.proxy.connect()
    computer = slap.registerComputer(report_node.computer_id)
    good = usage.build_journal(report_node.computer_id, 0, 1, [usage.PartitionUsage(pid, cpu_seconds=2)])
    bad = good.replace(b"<quantity>2</quantity>", b"<quantity>-2</quantity>")
    with pytest.raises(usage.UsageDocumentError, match="quantity"):
        usage.send_journal(computer, bad)
    usage.send_journal(computer, good)
    slap.close()
    stored = json.loads(slapos("proxy", "show", "--cfg", str(report_node.proxy.config_path), "--usage",
                               "--format", "json").stdout)["usage"]
    assert [row["xml"] for row in stored] == [good.decode()]


def test_second_run_is_locked_out_and_node_bang_bumps_every_instance(report_node):
    settings = report_node.settings()
    with RunLock(settings.pidfile_report):
        locked = report_node.report()
    assert locked.returncode == 10
    assert "already running" in locked.stderr

    a, b = report_node.request("a"), report_node.request("b")
    before = {p: report_node.timestamp(p) for p in (a, b)}
    banged = slapos("node", "bang", "--cfg", str(report_node.config_path), "-m", "disk replaced")
    assert banged.returncode == 0, banged.stderr
    after = {p: report_node.timestamp(p) for p in (a, b)}
    assert all(float(after[p]) > float(before[p]) for p in (a, b))
    show = json.loads(slapos("proxy", "show", "--cfg", str(report_node.proxy.config_path), "--computers",
                             "--format", "json").stdout)
    assert show["computers"][0]["last_bang_message"] == "disk replaced"


def test_bad_configuration_is_one_line_and_exit_1(tmp_path):
    done = slapos("node", "report", "--cfg", str(tmp_path / "missing.cfg"), "--now")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "not found" in done.stderr


def test_a_tree_is_freed_children_first_over_several_runs(report_node):
    from .conftest import SR_URL

    root = report_node.request("root")
    slap = report_node.proxy.connect()
    child = slap.registerComputerPartition(report_node.computer_id, root).request(
        SR_URL, "default", "child", state="started").getId()
    slap.close()
    for pid in (root, child):
        report_node.deploy(pid, files={"data": pid})
    report_node.request("root", state="destroyed")

    runs = []
    for _ in range(4):
        done = report_node.report()
        assert done.returncode == 0, done.stderr
        runs.append(done.stderr)
        if report_node.is_free(root):
            break
    assert "the master keeps it for now" in runs[0]
    assert report_node.is_free(root) and report_node.is_free(child)
    assert len(runs) <= 3
    for pid in (root, child):
        assert os.listdir(report_node.partition_path(pid)) == [".slapos-resource"]


@pytest.mark.parametrize("delay", ["1e300", "inf", "garbage", "-3", "nan"])
def test_odd_retention_delays(tmp_path, delay):
    """What a tenant may write in its own retention file: never a crash."""
    from slapos.grid.destroy import Destroyer

    part = tmp_path / "slappart0"
    part.mkdir()
    (part / RETENTION_DELAY_FILE).write_text(delay)
    destroyer = Destroyer(settings=None, supervisor=lambda: None, clock=lambda: 1000.0)
    until = destroyer.retained_until(part)
    if delay in ("garbage", "-3", "nan"):
        assert until is None and not (part / RETENTION_DATE_FILE).exists()
    else:
        assert until is not None and until > 1000.0
        from slapos.grid.destroy import _date

        assert _date(until)


def test_unreachable_master_is_one_line_and_exit_1(tmp_path):
    from tests.fixtures.proxy import free_port

    config = tmp_path / "slapos.cfg"
    config.write_text(
        "[slapos]\ncomputer_id = COMP-1\n"
        f"master_url = http://127.0.0.1:{free_port()}/\n"
        f"software_root = {tmp_path / 'soft'}\ninstance_root = {tmp_path / 'inst'}\n"
        f"root_check = false\npidfile_report = {tmp_path / 'report.pid'}\n"
    )
    done = slapos("node", "report", "--cfg", str(config), "--now")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "cannot connect to the master" in done.stderr
    assert done.stderr.strip().count("\n") == 0
    banged = slapos("node", "bang", "--cfg", str(config), "-m", "x")
    assert banged.returncode == 1 and "cannot connect" in banged.stderr
