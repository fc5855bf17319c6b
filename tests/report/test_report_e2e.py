"""request → `slapos node instance` → destroy → `slapos node report` → request again, all real:
proxy, instance buildout, supervisord, report."""
from __future__ import annotations

import os

from tests.conftest import wait_for

from .conftest import install_fake_software, slapos

URL = "http://sr.example/report-e2e.cfg"
PROFILE = """
[buildout]
parts = service data

[service]
recipe = slapnodetest:file
path = ${buildout:directory}/etc/service/writer
mode = 755
content =
  #!/bin/sh
  echo "${slap-configuration:configuration.message}" > ${buildout:directory}/srv/runtime-${slap-configuration:configuration.message}
  exec sleep 100000

[data]
recipe = slapnodetest:file
path = ${buildout:directory}/srv/tenant.txt
content = ${slap-configuration:configuration.message}
"""


def node_instance(report_node):
    return slapos("node", "instance", "--cfg", str(report_node.config_path), "--now", timeout=120)


def request(report_node, title, message=None, state="started"):
    slap = report_node.proxy.connect()
    try:
        return slap.registerOpenOrder().request(
            URL, title, partition_parameter_kw={"message": message} if message else None, state=state).getId()
    finally:
        slap.close()


def test_request_deploy_destroy_and_reuse(plain_report_node):
    report_node = plain_report_node
    install_fake_software(report_node, URL, PROFILE)
    slap = report_node.proxy.connect()
    slap.registerSupply().supply(URL, report_node.computer_id)
    slap.close()

    pid = request(report_node, "first", "alice")
    deployed = node_instance(report_node)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    path = report_node.partition_path(pid)
    assert (path / "srv" / "tenant.txt").read_text().strip() == "alice"
    wait_for(lambda: (path / "srv" / "runtime-alice").exists(), what="the service to run")
    [info] = wait_for(lambda: [i for i in report_node.supervisor().partition_processes(pid)
                               if i["statename"] == "RUNNING"], what="supervisord to see it running")

    request(report_node, "first", "alice", state="destroyed")
    stopped = node_instance(report_node)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    done = report_node.report()
    assert done.returncode == 0, done.stderr
    assert report_node.is_free(pid)
    assert not psutil_alive(info["pid"])
    assert os.listdir(path) in ([], [".slapos-resource"])
    assert os.stat(path).st_mode & 0o777 == 0o750

    # a new tenant gets the same partition, and sees nothing of the first one
    again = request(report_node, "second", "bob")
    assert again == pid
    redeployed = node_instance(report_node)
    assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr
    assert (path / "srv" / "tenant.txt").read_text().strip() == "bob"
    wait_for(lambda: (path / "srv" / "runtime-bob").exists(), what="the new service to run")
    leftovers = [str(p) for p in path.rglob("*") if "alice" in p.name or (
        p.is_file() and not p.is_symlink() and p.stat().st_size < 100_000 and b"alice" in p.read_bytes())]
    assert leftovers == []


def psutil_alive(pid):
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
