"""`slapos node instance` end to end: real proxy, real buildout runs, real supervisord."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request

from slapos.grid.lock import RunLock
from slapos.grid.partition import software_directory
from tests.conftest import wait_for
from tests.fixtures.proxy import free_port
from tests.instance.conftest import REPO


def fetch(port: int) -> str:
    def get():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
        except OSError:
            return None
    return wait_for(get, what=f"port {port} answering")


def running(node, partition_id, *names):
    def check():
        infos = node.processes(partition_id)
        if all(infos.get(n, {}).get("statename") == "RUNNING" for n in names):
            return {n: infos[n]["pid"] for n in names}
        return None
    return wait_for(check, what=f"{names} RUNNING")


def master_timestamp(node, partition_id):
    computer = node.proxy.connect().registerComputer(node.computer_id)
    for cp in computer.getComputerPartitionList():
        if cp.getId() == partition_id:
            return cp.getInstanceParameterDict()["timestamp"]
    raise KeyError(partition_id)


def test_started_and_stopped_partitions(instance_node):
    node = instance_node(partitions=3)
    url = node.install("web")
    web_port, other_port = free_port(), free_port()
    web = node.request(url, "web", {"port": str(web_port), "message": "hello from web"})
    other = node.request(url, "other", {"port": str(other_port)}, state="stopped")

    assert node.instance() == 0

    # the started partition's services run, under supervisord and for real
    assert fetch(web_port).strip() == "hello from web"
    pids = running(node, web, "http-on-watch", "idle-on-watch")
    # the stopped one was deployed (buildout ran) but nothing of it runs
    assert node.buildout_runs(other) == 1
    assert {i["statename"] for i in node.processes(other).values()} == {"STOPPED"}
    assert node.partition(other).load_state().reported == "stopped"

    path = node.partition_path(web)
    profile = (path / "buildout.cfg").read_text()
    assert profile.startswith((software_directory(node.software_root, url) / "instance.cfg").read_text())
    for line in (f"computer-id = {node.computer_id}", f"partition-id = {web}", f"server-url = {node.master_url}",
                 f"software-release-url = {url}", "requested-state = started", "[slap_connection]",
                 f"partition_id = {web}", "[network-information]"):
        assert line in profile
    assert stat.S_IMODE((path / "buildout.cfg").stat().st_mode) == 0o640
    assert os.readlink(path / "software_release") == str(software_directory(node.software_root, url))
    assert (path / ".timestamp").read_text() == master_timestamp(node, web)
    status = json.loads((path / ".slapgrid/promise/result/http.status.json").read_text())
    assert status["result"]["failed"] is False and "answers" in status["result"]["message"]
    if os.geteuid() == 0:  # services run as the partition user
        uid = int(open(f"/proc/{pids['http-on-watch']}/status").read().split("Uid:")[1].split()[0])
        assert uid == path.stat().st_uid != 0

    # nothing changed: no buildout, nothing restarted
    assert node.instance() == 0
    assert node.buildout_runs(web) == 1 and node.buildout_runs(other) == 1
    assert running(node, web, "http-on-watch", "idle-on-watch") == pids

    # what people see: supervisorctl's lines, and the node's view of each partition
    result = node.slapos("node", "status")
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [f"{web}:http-on-watch", "RUNNING"] == lines[[x[0] for x in lines].index(f"{web}:http-on-watch")][:2]
    assert any(x[:2] == [f"{other}:idle-on-watch", "STOPPED"] for x in lines)
    result = node.slapos("node", "status", "--partitions", "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "slapnode.status/1" and document["computer"] == node.computer_id
    statuses = {s["partition"]: s for s in document["partitions"]}
    assert statuses[web]["status"] == "ok" and statuses[web]["reported_state"] == "started"
    assert [(p["title"], p["failed"]) for p in statuses[web]["promises"]] == [("http", False)]
    assert statuses[other]["requested_state"] == "stopped"
    table = node.slapos("node", "status", "--partitions").stdout
    assert "PARTITION" in table and web in table

    # the master asks to stop it
    node.request(url, "web", {"port": str(web_port), "message": "hello from web"}, state="stopped")
    assert node.instance() == 0
    assert {i["statename"] for i in node.processes(web).values()} == {"STOPPED"}
    assert node.partition(web).load_state().reported == "stopped"


def test_parameter_change_restarts_only_the_changed_service(instance_node):
    node = instance_node(partitions=1)
    url = node.install("web")
    port = free_port()
    web = node.request(url, "web", {"port": str(port), "message": "one"})
    assert node.instance() == 0
    before = running(node, web, "http-on-watch", "idle-on-watch")

    new_port = free_port()
    node.request(url, "web", {"port": str(new_port), "message": "two"})
    assert node.instance() == 0
    assert node.buildout_runs(web) == 2
    after = running(node, web, "http-on-watch", "idle-on-watch")
    assert after["idle-on-watch"] == before["idle-on-watch"]  # unchanged service: same process
    assert after["http-on-watch"] != before["http-on-watch"]  # its script changed: restarted
    assert fetch(new_port).strip() == "two"

    # a change that does not touch any program restarts nothing
    node.request(url, "web", {"port": str(new_port), "message": "three"})
    assert node.instance() == 0
    assert node.buildout_runs(web) == 3
    assert running(node, web, "http-on-watch", "idle-on-watch") == after
    assert fetch(new_port).strip() == "three"


def test_failing_buildout_is_isolated_and_backs_off(instance_node, capsys):
    node = instance_node(partitions=2)
    good_url, bad_url = node.install("web"), node.install("fail")
    port = free_port()
    good = node.request(good_url, "good", {"port": str(port), "message": "fine"})
    bad = node.request(bad_url, "bad")

    assert node.instance() == 1
    assert fetch(port).strip() == "fine"  # the other partition deployed anyway
    state = node.partition(bad).load_state()
    assert state.status == "error" and "broken on purpose" in state.last_error
    assert state.failures == 1 and state.next_retry > time.time() + 30
    assert "broken on purpose" in node.partition(bad).error_log_path.read_text()
    assert not node.partition(bad).timestamp_path.exists()
    assert node.partition(good).load_state().status == "ok"
    # the console gets one line saying why, and where the whole error is
    console = capsys.readouterr().err.splitlines()
    failed = [line for line in console if f"{bad}: failed:" in line]
    assert len(failed) == 1 and "broken on purpose" in failed[0], console
    assert sum("broken on purpose" in line for line in console) == 1, console  # no buildout tail
    assert "buildout failed" in failed[0] and str(node.partition(bad).error_log_path) in failed[0]

    # unchanged inputs: no new attempt before the back-off delay, and status says why
    assert node.instance() == 1
    assert node.buildout_runs(bad) == 1
    table = node.slapos("node", "status", "--partitions").stdout
    bad_line = next(line for line in table.splitlines() if line.startswith(bad))
    assert "waiting" in bad_line and "until" in bad_line and "broken on purpose" in bad_line

    # --force tries again at once (and counts a second failure: a longer delay)
    assert node.instance("--force", "--only-cp", bad) == 1
    assert node.buildout_runs(bad) == 2 and node.buildout_runs(good) == 1
    state = node.partition(bad).load_state()
    assert state.failures == 2 and state.next_retry >= state.last_attempt + 120

    # new inputs from the master: tried again at once
    node.request(bad_url, "bad", {"anything": "new"})
    assert node.instance() == 1
    assert node.buildout_runs(bad) == 3
    assert node.partition(bad).load_state().failures == 1


def test_promise_failure_and_timeout(instance_node):
    node = instance_node(partitions=1, extra_config={"slapos": {"promise_timeout": "2"}})
    url = node.install("promise")
    partition = node.request(url, "checked", {"promise": "fail"})
    assert node.instance() == 2
    state = node.partition(partition).load_state()
    assert state.status == "promise-error"
    assert state.last_error == "Promise 'param' failed with output: the service is not healthy"
    assert not node.partition(partition).timestamp_path.exists()
    results = {r["title"]: r for r in json.loads(node.slapos("node", "status", "--partitions", "--format",
                                                                "json").stdout)["partitions"][0]["promises"]}
    assert results["param"]["failed"] and not results["check-plugin"]["failed"]
    assert results["check-plugin"]["message"] == f"plugin sees partition {partition}"

    node.request(url, "checked", {"promise": "sleep"})
    begin = time.monotonic()
    assert node.instance() == 2
    assert time.monotonic() - begin < 15
    assert "timed out after 2 seconds" in node.partition(partition).load_state().last_error

    node.request(url, "checked", {"promise": "ok"})
    assert node.instance() == 0
    assert node.partition(partition).load_state().status == "ok"
    # `slapos node promise` runs them again, reports nothing, exit 0
    result = node.slapos("node", "promise")
    assert result.returncode == 0, result.stderr
    assert "promise param: OK" in result.stderr


def test_periodicity(instance_node):
    node = instance_node(partitions=1)
    url = node.install("cheap")
    partition = node.request(url, "cheap")
    (software_directory(node.software_root, url) / "periodicity").write_text("2")
    assert node.instance() == 0
    assert node.instance() == 0
    assert node.buildout_runs(partition) == 1  # within its periodicity: up to date
    time.sleep(2.2)
    assert node.instance() == 0
    assert node.buildout_runs(partition) == 2  # periodicity passed: processed again
    (software_directory(node.software_root, url) / "periodicity").write_text("0")
    assert node.instance() == 0
    assert node.buildout_runs(partition) == 3  # 0: every run


def test_only_cp_and_the_lock(instance_node):
    node = instance_node(partitions=2)
    url = node.install("cheap")
    first, second = node.request(url, "first"), node.request(url, "second")
    assert node.instance("--only-cp", second) == 0
    assert node.buildout_runs(first) == 0 and node.buildout_runs(second) == 1
    assert node.instance("--only-cp", "slappart99") == 1  # not a partition of this computer
    with RunLock(node.settings().pidfile_instance):
        result = node.slapos("node", "instance", "--now")
        assert result.returncode == 10
        assert "already running" in result.stderr
    assert node.buildout_runs(first) == 0


def test_kill_9_during_buildout_then_converge(instance_node):
    node = instance_node(partitions=1)
    url = node.install("slow")
    partition = node.request(url, "slow")
    flag = node.partition_path(partition) / ".slow-flag"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.Popen([sys.executable, "-m", "slapos.cli.main", "node", "instance", "--now", "--cfg",
                            str(node.config_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(flag.exists, timeout=30, what="buildout sleeping")
        sleeper = int(flag.read_text())
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait()
    # the buildout of the killed run does not live on
    wait_for(lambda: not os.path.exists(f"/proc/{sleeper}") or open(f"/proc/{sleeper}/stat").read().split()[2] == "Z",
             what="buildout killed with the run")
    assert node.instance() == 0
    running(node, partition, "idle-on-watch")
    leftovers = [p for p in node.partition_path(partition).rglob("*.tmp")]
    assert leftovers == []
    assert node.instance() == 0 and node.buildout_runs(partition) == 2


def test_master_unreachable_and_reboot(instance_node):
    node = instance_node(partitions=1)
    url = node.install("web")
    port = free_port()
    web = node.request(url, "web", {"port": str(port), "message": "still here"})
    assert node.instance() == 0
    pids = running(node, web, "http-on-watch", "idle-on-watch")

    # supervisord went away (a reboot): a run with nothing new starts it and the services again
    result = node.slapos("node", "supervisorctl", "shutdown")
    assert result.returncode == 0 and "supervisord stopped" in result.stderr
    assert not node.supervisor().is_running()
    assert node.instance() == 0
    assert node.buildout_runs(web) == 1
    assert fetch(port).strip() == "still here"
    pids = running(node, web, "http-on-watch", "idle-on-watch")

    node.proxy.stop()
    assert node.instance() == 3  # offline: nothing stopped
    assert running(node, web, "http-on-watch", "idle-on-watch") == pids
    node.supervisor().shutdown()
    assert node.instance() == 3  # offline after a reboot: started partitions start again
    assert fetch(port).strip() == "still here"


def test_force_stop_then_destroyed(instance_node):
    node = instance_node(partitions=1)
    url = node.install("cheap")
    partition = node.request(url, "doomed")
    assert node.instance() == 0
    running(node, partition, "idle-on-watch")

    # --force-stop: deployed, services stopped; the next normal run starts them again
    assert node.instance("--force-stop") == 0
    assert {i["statename"] for i in node.processes(partition).values()} == {"STOPPED"}
    assert node.instance() == 0
    running(node, partition, "idle-on-watch")

    node.request(url, "doomed", state="destroyed")
    assert node.instance() == 0
    assert {i["statename"] for i in node.processes(partition).values()} == {"STOPPED"}
    assert node.partition_path(partition).exists()  # destruction is `slapos node report`'s job


def test_no_change_run_is_cheap(instance_node, monkeypatch):
    """Nothing new: one request to the master, no process started, no word to supervisord."""
    node = instance_node(partitions=3)
    url = node.install("cheap")
    for title in ("a", "b", "c"):
        node.request(url, title)
    assert node.instance("--jobs", "3") == 0

    import subprocess as subprocess_module

    from slapos.grid.supervisor import Supervisor
    from slapos.slap.connection import Connection

    calls = []
    original = Connection._call

    def counting(self, method, endpoint, *args, **kwargs):
        calls.append(endpoint)
        return original(self, method, endpoint, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the no-change path must not start a process or talk to supervisord")

    monkeypatch.setattr(Connection, "_call", counting)
    monkeypatch.setattr(subprocess_module.Popen, "__init__", forbidden)
    monkeypatch.setattr(Supervisor, "call", forbidden)
    assert node.instance() == 0
    assert calls == ["getFullComputerInformation"]
