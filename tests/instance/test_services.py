"""Services and promises across starts: promises wait for services just started, a supervisord
started by someone else gets the services of up-to-date partitions, one error line per failure,
partition ids, certificates in the profile. Real proxy, real buildout, real supervisord."""
from __future__ import annotations

import json
import re

import pytest

from slapos.grid.instance import Desired, InstanceOptions, InstanceRun
from slapos.grid.supervisor import Supervisor
from tests.conftest import wait_for
from tests.fixtures.proxy import free_port
from tests.instance.test_instance import fetch, running


def statenames(node, partition_id):
    return {name: info["statename"] for name, info in node.processes(partition_id).items()}


def statenames_now(node, partition_id):
    """statenames, or None while supervisord does not answer (it is reloading)."""
    from slapos.base.errors import SlapOSError

    try:
        return statenames(node, partition_id)
    except SlapOSError:
        return None


def make_promises_due(path):
    state_path = path / ".slapgrid" / "state.json"
    state = json.loads(state_path.read_text())
    state["next_promise_check"] = 0
    state_path.write_text(json.dumps(state))
    for cache in (path / ".slapgrid" / "promise" / "cache").iterdir():
        data = json.loads(cache.read_text())
        data["next_run_after"] = 0
        cache.write_text(json.dumps(data))


@pytest.mark.parametrize("setting", ["wait", "retry"])
def test_promises_wait_for_the_services_just_started(instance_node, setting):
    """The service opens its port 0.3 s after it starts and the promise checks it once, at once.
    `wait` (retry off): the node waits until supervisord no longer says STARTING. `retry` (wait
    off): the failing promise is tried again 1 s later (its first check fails by construction:
    on a loaded machine it could otherwise come after the port opened)."""
    config = {"wait": {"promise_retry_delay": "0"}, "retry": {"service_start_wait": "0"}}[setting]
    node = instance_node(partitions=1, extra_config={"slapos": config})
    url = node.install("slowstart")
    port = free_port()
    partition = node.request(url, "slow", {"port": str(port), "fail-first": "1" if setting == "retry" else "0"})
    assert node.instance() == 0
    state = node.partition(partition).load_state()
    assert state.status == "ok" and state.reported == "started"
    status = json.loads((node.partition_path(partition) / ".slapgrid/promise/result/http.status.json").read_text())
    assert status["result"]["failed"] is False
    log = node.partition(partition).log_path.read_text()
    retried = "promise(s) http failed right after the services (re)started: trying again in 1 s" in log
    assert retried == (setting == "retry")
    fetch(port)


def test_without_waiting_the_promise_fails(instance_node):
    """service_start_wait = 0 and promise_retry_delay = 0: the promise runs right after the start
    and fails (what every first deployment of a slow service got before)."""
    node = instance_node(partitions=1, extra_config={"slapos": {"service_start_wait": "0",
                                                                "promise_retry_delay": "0"}})
    url = node.install("slowstart")
    partition = node.request(url, "slow", {"port": str(free_port()), "delay": "1"})
    assert node.instance() == 2
    assert "does not answer" in node.partition(partition).load_state().last_error


def test_bad_wait_setting_is_one_clear_line(instance_node):
    node = instance_node(partitions=1, extra_config={"slapos": {"service_start_wait": "-1"}})
    result = node.slapos("node", "instance", "--now")
    assert result.returncode != 0
    assert "service_start_wait in [slapos] must be 0 or more seconds" in result.stderr


def test_services_start_under_a_supervisord_started_by_someone_else(instance_node, monkeypatch):
    node = instance_node(partitions=1)
    url = node.install("cheap")
    partition = node.request(url, "cheap")
    assert node.instance() == 0
    first = running(node, partition, "idle-on-watch")
    checked = node.supervisor().checked_path
    assert checked.read_text().strip() == node.supervisor().identity()

    calls = []
    original = Supervisor.call

    def counting(self, method, *args):
        calls.append(method)
        return original(self, method, *args)

    monkeypatch.setattr(Supervisor, "call", counting)

    # `slapos node supervisord` (or configure local, or a boot) starts it with every program stopped
    assert node.slapos("node", "supervisorctl", "shutdown").returncode == 0
    result = node.slapos("node", "supervisord")
    assert result.returncode == 0, result.stderr
    assert set(statenames(node, partition).values()) == {"STOPPED"}
    calls.clear()
    assert node.instance() == 0
    assert calls.count("supervisor.getAllProcessInfo") == 1  # one look, then only what was stopped is started
    assert running(node, partition, "idle-on-watch") != first
    assert node.buildout_runs(partition) == 1  # up to date: not redeployed

    # the same supervisord: not a word to it
    calls.clear()
    assert node.instance() == 0
    assert calls == []

    # a program stopped on purpose stays stopped, even when the node has to look again
    assert node.slapos("node", "stop", f"{partition}:idle-on-watch").returncode == 0
    assert node.instance() == 0
    checked.unlink()
    assert node.instance() == 0
    assert statenames(node, partition) == {"idle-on-watch": "STOPPED"}
    assert checked.exists()

    # `supervisorctl reload`: the same process, every program stopped
    result = node.slapos("node", "supervisorctl", "reload")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: node.supervisor().identity() not in (None, checked.read_text().strip()),
             what="supervisord reloaded")
    wait_for(lambda: statenames_now(node, partition) == {"idle-on-watch": "STOPPED"}, what="programs reloaded")
    assert node.instance() == 0
    running(node, partition, "idle-on-watch")

    # its group is gone too (configuration file removed): given back to supervisord and started
    node.supervisor().partition_conf_path(partition).unlink()
    assert node.slapos("node", "supervisorctl", "shutdown").returncode == 0
    assert node.slapos("node", "supervisord").returncode == 0
    assert node.processes(partition) == {}
    assert node.instance() == 0
    running(node, partition, "idle-on-watch")
    assert node.supervisor().partition_conf_path(partition).exists()
    assert node.buildout_runs(partition) == 1


def test_only_cp_does_not_vouch_for_the_other_partitions(instance_node):
    node = instance_node(partitions=2)
    url = node.install("cheap")
    first, second = node.request(url, "first"), node.request(url, "second")
    assert node.instance() == 0
    assert node.slapos("node", "supervisorctl", "shutdown").returncode == 0
    assert node.slapos("node", "supervisord").returncode == 0
    assert node.instance("--only-cp", first) == 0
    running(node, first, "idle-on-watch")
    assert statenames(node, second) == {"idle-on-watch": "STOPPED"}
    assert node.instance() == 0  # the next full run still looks, and starts the other one
    running(node, second, "idle-on-watch")


def test_promise_failures_are_printed_once(instance_node):
    node = instance_node(partitions=1)
    url = node.install("promise")
    partition = node.request(url, "checked", {"promise": "fail"})
    # a deployment whose promise fails
    result = node.slapos("node", "instance", "--now")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "Promise 'param' failed" in line]
    assert lines == [f"error: {partition}: Promise 'param' failed with output: the service is not healthy"]

    # a periodic (anomaly) check that fails
    node.request(url, "checked", {"promise": "ok"})
    assert node.instance() == 0
    path = node.partition_path(partition)
    (path / "etc" / "promise" / "param").write_text("#!/bin/sh\necho gone bad\nexit 1\n")
    make_promises_due(path)
    result = node.slapos("node", "instance", "--now")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "failed" in line and "Promise" in line]
    assert lines == [f"error: {partition}: Promise 'param' failed with output: gone bad"], result.stderr


def test_node_directories_are_not_partitions(instance_node):
    """A master naming `etc` (the node's supervisord configuration lives there) is refused."""
    node = instance_node(partitions=1)
    url = node.install("cheap")
    node.supervisor().write_config()
    assert (node.instance_root / "etc").is_dir()
    run = InstanceRun(node.settings(), InstanceOptions(now=True))
    handle = node.proxy.connect().registerComputerPartition(node.computer_id, "etc")
    desired = Desired("etc", "started", url, None, {}, "1", 0.0, handle)
    assert run.plan([desired]) == []
    assert "node's own directory" in run.summary.failed["etc"]
    assert not (node.instance_root / "etc" / "buildout.cfg").exists()


def test_profile_names_certificates_only_when_written(instance_node):
    """The proxy gives no certificate: key-file and cert-file are empty (a recipe opening them
    would fail); once the files exist, the profile names them."""
    node = instance_node(partitions=1)
    url = node.install("cheap")
    partition = node.request(url, "cheap")
    certificates = node.root / "certificates"
    assert node.instance("--certificate-repository-path", str(certificates)) == 0
    profile = node.partition(partition).buildout_cfg.read_text()
    for key in ("key-file", "cert-file", "key_file", "cert_file"):
        assert re.search(rf"^{key} = *$", profile, re.M), key
    assert not (certificates / f"{partition}.key").exists()

    settings = node.settings(certificate_repository_path=certificates)
    from slapos.grid.partition import Partition

    assert Partition(settings, partition).write_certificate("CERTIFICATE", "KEY")
    assert node.instance("--certificate-repository-path", str(certificates), "--force") == 0
    profile = node.partition(partition).buildout_cfg.read_text()
    assert f"key-file = {certificates / partition}.key" in profile
    assert f"cert-file = {certificates / partition}.crt" in profile
