"""Tenants get a clean environment: what the agent's environment holds (tokens, agent sockets,
cloud credentials) reaches none of the processes it starts for a partition: the instance
buildout (run by the fork server), supervisord and the services it runs, promises, report
scripts, the destroy hook."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import make_traversable, wait_for

from .conftest import ROOT_ENV, give_tree, slapos

pytestmark = pytest.mark.root


def environment(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def check_clean(env: dict[str, str], user: str, where: str) -> None:
    leaked = sorted(set(ROOT_ENV) & set(env))
    assert not leaked, f"{where} sees the agent's {leaked}"
    assert not any(value in ROOT_ENV.values() for value in env.values()), f"{where} sees a root secret"
    assert env.get("USER") == user, f"{where} runs with USER={env.get('USER')}"
    assert env.get("LANG") == "C.UTF-8" and "PATH" in env


def test_instance_buildout_services_and_promises(instance_node, tenant_users):
    tenant, builder = tenant_users
    node = instance_node(partitions=1)
    url = node.install("envdump")
    give_tree(node.software_root, builder)
    pid = node.request(url, "env")
    path = node.partition_path(pid)
    give_tree(path, tenant)
    make_traversable(node.root)
    done = slapos("node", "instance", "--cfg", str(node.config_path), "--now")  # starts supervisord too
    assert done.returncode == 0, done.stderr
    check_clean(environment(path / "env-buildout.txt"), tenant.name, "the instance buildout")
    assert environment(path / "env-buildout.txt")["HOME"] == str(path)
    check_clean(environment(path / "env-promise.txt"), tenant.name, "a promise")
    wait_for(lambda: (path / "env-service.txt").exists(), what="the service's dump")
    service = environment(path / "env-service.txt")
    check_clean(service, tenant.name, "a service")
    # supervisord itself: started by this run, from the agent's environment
    supervisord = node.supervisor().pid()
    with open(f"/proc/{supervisord}/environ", "rb") as f:
        env = dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item)
    assert not set(ROOT_ENV) & set(env), "supervisord was started with the agent's environment"


def test_report_scripts_and_destroy_hook(report_node, tenant_users, tmp_path):
    tenant = tenant_users[0]
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, tenant.uid, tenant.gid)
    make_traversable(out)
    pid = report_node.request("env")
    path = report_node.deploy(pid, files={
        "etc/report/envdump": f"#!/bin/sh\nenv > {out}/report.txt\n",
        "sbin/destroy": f"#!/bin/sh\nenv > {out}/destroy.txt\n",
    })
    for name in ("etc/report/envdump", "sbin/destroy"):
        os.chmod(path / name, 0o755)
    give_tree(path, tenant)
    make_traversable(report_node.root)
    done = slapos("node", "report", "--cfg", str(report_node.config_path), "--now")
    assert done.returncode == 0, done.stderr
    check_clean(environment(out / "report.txt"), tenant.name, "a report script")

    report_node.request("env", state="destroyed")
    done = slapos("node", "report", "--cfg", str(report_node.config_path), "--now")
    assert done.returncode == 0, done.stderr
    check_clean(environment(out / "destroy.txt"), tenant.name, "the destroy hook")
