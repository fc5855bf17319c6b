"""The node's supervisord: configuration, selective restarts, parallel stop, local restarts."""
from __future__ import annotations

import os
import time

import pytest

from slapos.grid import supervisor_config
from slapos.grid.partition import PartitionError
from slapos.grid.supervisor import Supervisor, collect_programs
from tests.conftest import make_traversable, wait_for
from tests.fixtures.supervisor import make_partition, node_settings, stop_supervisor

SLEEP = "#!/bin/sh\nexec sleep 1000\n"


def alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for a reaper does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def states(sv, partition_id):
    return {i["name"]: (i["statename"], i["pid"]) for i in sv.partition_processes(partition_id)}




def running(sv, partition_id, *names):
    def check():
        current = states(sv, partition_id)
        return all(current.get(n, ("",))[0] == "RUNNING" for n in names) and current
    return wait_for(check)


def test_configuration_files(supervisor):
    path = make_partition(supervisor, "slappart0", run={"web": SLEEP}, service={"db": SLEEP})
    programs = collect_programs(path)
    assert [(p.name, p.watched, p.process_name) for p in programs] == [
        ("web", False, "web"), ("db", True, "db-on-watch")]
    supervisor.apply_partition("slappart0", programs)
    conf = supervisor.partition_conf_path("slappart0")
    assert conf.stat().st_mode & 0o777 == 0o600
    text = conf.read_text()
    assert "[group:slappart0]\nprograms = slappart0_web,slappart0_db" in text
    for needle in ("stopasgroup = true", "killasgroup = true", "autostart = false",
                   f"stdout_logfile = {supervisor.program_log_path('slappart0', 'web')}",
                   "process_name = db-on-watch"):
        assert needle in text
    # supervisord (root) writes program output in a root-owned place; the partition sees it
    # through a link where the reference layout has the file
    log_dir = supervisor.program_log_dir("slappart0")
    assert log_dir.stat().st_mode & 0o777 == 0o750 and log_dir.stat().st_uid == os.geteuid()
    assert os.readlink(path / ".slappart0_web.log") == str(log_dir / "web.log")
    cgroup = supervisor.cgroups.partition("slappart0")
    if cgroup is None:
        assert f"command = {path}/etc/service/db\n" in text
    else:  # as root: the launcher joins the partition's cgroup, then drops to its user
        st = path.stat()
        assert f"--uid {st.st_uid} --gid {st.st_gid} -- {path}/etc/service/db\n" in text
        assert all(f"--join {name}" in text for name in cgroup.procs_files)
    # the service restarts locally, the run program does not (reference behaviour)
    db = text.split("[program:slappart0_db]")[1]
    web = text.split("[program:slappart0_web]")[1].split("[program:")[0]
    assert "autorestart = true" in db and "startretries = 5" in db
    assert "autorestart = false" in web
    if os.geteuid() == 0 and cgroup is None:
        assert f"user = {path.stat().st_uid}" in text
    main = supervisor.conf_path.read_text()
    assert f"file = {supervisor.socket_path}" in main and "chmod = 0700" in main
    assert "slapos.grid.supervisor_rpc:make_rpcinterface" in main
    assert "[eventlistener:watchdog]" in main and "buffer_size = 10000" in main
    assert supervisor.socket_path.stat().st_mode & 0o777 == 0o700


def test_program_names_are_checked(supervisor):
    path = make_partition(supervisor, "slappart1", run={"ok": SLEEP, "bad name": SLEEP, ".hidden": SLEEP})
    assert [p.name for p in collect_programs(path)] == ["ok"]
    make_partition(supervisor, "slappart1", service={"ok": SLEEP})
    with pytest.raises(PartitionError, match="both in etc/run and etc/service"):
        collect_programs(path)
    with pytest.raises(PartitionError):
        supervisor.partition_conf_path("../etc")


def test_only_changed_programs_restart(supervisor):
    path = make_partition(supervisor, "slappart0", run={"a": SLEEP}, service={"b": SLEEP, "c": SLEEP})
    supervisor.apply_partition("slappart0", collect_programs(path))
    supervisor.start_partition("slappart0")
    before = running(supervisor, "slappart0", "a", "b-on-watch", "c-on-watch")

    # the content of b's script changes, c is removed, d is added
    (path / "etc/service/b").write_text("#!/bin/sh\nexec sleep 1001\n")
    (path / "etc/service/c").unlink()
    make_partition(supervisor, "slappart0", run={"d": SLEEP})
    change = supervisor.apply_partition("slappart0", collect_programs(path))
    assert (change.added, change.changed, change.removed) == (["d"], ["b-on-watch"], ["c-on-watch"])
    supervisor.start_partition("slappart0")
    after = running(supervisor, "slappart0", "a", "b-on-watch", "d")
    assert after["a"][1] == before["a"][1]  # untouched: same process
    assert after["b-on-watch"][1] != before["b-on-watch"][1]  # restarted with its new script
    assert "c-on-watch" not in after

    # nothing changed: nothing restarts
    assert not supervisor.apply_partition("slappart0", collect_programs(path))
    supervisor.start_partition("slappart0")
    assert running(supervisor, "slappart0", "a", "b-on-watch", "d") == after


def test_stop_and_remove_partition(supervisor):
    path = make_partition(supervisor, "slappart2", run={"a": SLEEP, "b": SLEEP})
    supervisor.apply_partition("slappart2", collect_programs(path))
    supervisor.start_partition("slappart2")
    running(supervisor, "slappart2", "a", "b")
    supervisor.stop_partition("slappart2")
    assert {s for s, _ in states(supervisor, "slappart2").values()} == {"STOPPED"}
    supervisor.remove_partition("slappart2")
    assert states(supervisor, "slappart2") == {}
    assert not supervisor.partition_conf_path("slappart2").exists()
    supervisor.stop_partition("slappart2")  # unknown group: nothing to do
    supervisor.start_partition("slappart2")


def test_start_error_names_the_program(supervisor):
    path = make_partition(supervisor, "slappart3", run={"broken": SLEEP})
    (path / "etc/run/broken").chmod(0o644)
    supervisor.apply_partition("slappart3", collect_programs(path))
    if supervisor.cgroups.partition("slappart3") is None:
        with pytest.raises(PartitionError, match="broken"):
            supervisor.start_partition("slappart3")
        return
    # as root the launcher starts, then cannot run the file: the program exits 127 saying why
    supervisor.start_partition("slappart3")
    wait_for(lambda: states(supervisor, "slappart3")["broken"][0] == "EXITED")
    log = (path / ".slappart3_broken.log").read_text()
    assert f"slapos launch: cannot run {path}/etc/run/broken: Permission denied" in log


def test_local_restart_then_fatal(supervisor, monkeypatch):
    monkeypatch.setattr(supervisor_config, "SERVICE_START_RETRIES", 2)  # read when the files are written
    path = make_partition(supervisor, "slappart4", service={"crash": "#!/bin/sh\nexit 3\n"})
    supervisor.apply_partition("slappart4", collect_programs(path))
    supervisor.start_partition("slappart4")
    # supervisord retries by itself with a growing delay, then gives up
    wait_for(lambda: states(supervisor, "slappart4")["crash-on-watch"][0] == "FATAL", timeout=20)
    log = supervisor.log_path.read_text()
    assert log.count("spawned: 'crash-on-watch'") == 3


def test_local_restart_can_be_turned_off(tmp_path_factory):
    root = make_traversable(tmp_path_factory.mktemp("lr"))
    os.chmod(root, 0o755)
    sv = Supervisor(node_settings(root, local_restart=False))
    sv.write_config()
    path = make_partition(sv, "slappart0", service={"s": SLEEP})
    text = sv.render_partition("slappart0", path, collect_programs(path))
    assert "autorestart = false" in text and "startretries = 0" in text


def test_parallel_shutdown_is_fast(supervisor):
    for index in range(20):
        path = make_partition(supervisor, f"slappart{10 + index}", run={"a": SLEEP}, service={"b": SLEEP})
        supervisor._write_partition(f"slappart{10 + index}", collect_programs(path), path)
    supervisor.reconcile()
    errors = supervisor.start_partitions([f"slappart{10 + i}" for i in range(20)])
    assert errors == {}
    wait_for(lambda: sum(i["statename"] == "RUNNING" for i in supervisor.all_processes()) >= 40)
    pid = supervisor.pid()
    begin = time.monotonic()
    assert supervisor.shutdown()
    assert time.monotonic() - begin < 10  # one group at a time would take ~20 s
    assert not alive(pid)
    assert not supervisor.is_running()


def test_ensure_running_reuses_or_starts(tmp_path_factory):
    root = make_traversable(tmp_path_factory.mktemp("er"))
    os.chmod(root, 0o755)
    settings = node_settings(root)
    sv = Supervisor(settings)
    try:
        assert sv.ensure_running() is True
        pid = sv.pid()
        assert Supervisor(settings).ensure_running() is False
        assert sv.pid() == pid
        settings.forbid_supervisord_automatic_launch = True
        sv.shutdown()
        with pytest.raises(Exception, match="forbid_supervisord_automatic_launch"):
            Supervisor(settings).ensure_running()
    finally:
        sv.shutdown()


def test_supervisord_without_our_extension(tmp_path_factory, monkeypatch):
    """A supervisord started by someone else (no slapnode extension): whole groups are replaced."""
    root = make_traversable(tmp_path_factory.mktemp("nx"))
    os.chmod(root, 0o755)
    sv = Supervisor(node_settings(root))
    stock = Supervisor.render_config

    def without_extension(self):
        return stock(self).replace("[rpcinterface:slapnode]", "[x-disabled]")

    monkeypatch.setattr(Supervisor, "render_config", without_extension)
    try:
        sv.ensure_running()
        path = make_partition(sv, "slappart0", run={"a": SLEEP, "b": SLEEP})
        sv.apply_partition("slappart0", collect_programs(path))
        sv.start_partition("slappart0")
        before = running(sv, "slappart0", "a", "b")
        (path / "etc/run/b").write_text("#!/bin/sh\nexec sleep 1002\n")
        change = sv.apply_partition("slappart0", collect_programs(path))
        assert change.replaced
        sv.start_partition("slappart0")
        after = running(sv, "slappart0", "a", "b")
        assert after["b"][1] != before["b"][1]
    finally:
        stop_supervisor(sv.settings)


def test_identity_tells_a_new_supervisord_without_asking_it(tmp_path_factory, monkeypatch):
    root = make_traversable(tmp_path_factory.mktemp("id"))
    os.chmod(root, 0o755)
    sv = Supervisor(node_settings(root))
    assert sv.identity() is None and sv.last_checked() is None
    try:
        sv.ensure_running()
        first = sv.identity()

        def forbidden(*args, **kwargs):
            raise AssertionError("identity() must not use XML-RPC")

        monkeypatch.setattr(Supervisor, "call", forbidden)
        assert first and sv.identity() == first
        monkeypatch.undo()
        sv.remember_checked(first)
        assert sv.last_checked() == first
        assert sv.checked_path.stat().st_mode & 0o777 == 0o600
        sv.shutdown()
        assert sv.identity() is None
        sv.ensure_running()
        assert sv.identity() not in (None, first)
        path = make_partition(sv, "slappart0", run={"a": SLEEP})
        sv.apply_partition("slappart0", collect_programs(path))
        sv.start_partition("slappart0")
        assert sv.still_starting(["slappart0:a", "slappart0:unknown"]) <= {"slappart0:a"}
        wait_for(lambda: not sv.still_starting(["slappart0:a"]))
    finally:
        stop_supervisor(sv.settings)


def test_program_output_reaches_tail_and_goes_with_the_partition(supervisor, capsys):
    """Program logs are root's (var/program-log/<id>): `tail` still shows them, and removing
    the partition removes them (the next tenant of the partition must not read them)."""
    path = make_partition(supervisor, "slappart3", run={"talk": "#!/bin/sh\necho hello from talk\nexec sleep 100\n"})
    supervisor.apply_partition("slappart3", collect_programs(path))
    supervisor.start_partition("slappart3")
    log = supervisor.program_log_path("slappart3", "talk")
    wait_for(lambda: log.exists() and "hello from talk" in log.read_text(), what="the program's output")
    capsys.readouterr()
    assert supervisor.supervisorctl(["tail", "slappart3:talk"]) == 0
    assert "hello from talk" in capsys.readouterr().out
    assert "hello from talk" in (path / ".slappart3_talk.log").read_text()  # the tenant's link
    supervisor.remove_partition("slappart3")
    assert not supervisor.program_log_dir("slappart3").exists()
