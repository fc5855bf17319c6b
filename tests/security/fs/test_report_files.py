"""`slapos node report` and `slapos node format` against files a tenant controls: the retention
delay and date, the list of services to wait for, and `.slapos-resource`."""
from __future__ import annotations

import os
import stat
import time

import pytest

from slapos.grid.destroy import RETENTION_DATE_FILE, RETENTION_DELAY_FILE, WAIT_LIST_FILE
from tests.conftest import make_traversable

from .conftest import as_user, give_tree, plant, slapos

pytestmark = pytest.mark.root

SLEEPER = "#!/bin/sh\nexec sleep 100000\n"


def report(node) -> str:
    make_traversable(node.root)
    done = slapos("node", "report", "--cfg", str(node.config_path), "--now")
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_retention_cannot_keep_a_partition_forever(report_node, tenant_users, victim):
    """A tenant asks for a retention of 10^9 days, then moves its copy of the date to the end
    of time and points it at root's file: the node keeps it at most [slapos]
    max_retention_delay (90 days by default), from the date root recorded."""
    tenant = tenant_users[0]
    pid = report_node.request("greedy")
    path = report_node.deploy(pid, services={"db": SLEEPER})
    give_tree(path, tenant)
    as_user(tenant, f"open({str(path / RETENTION_DELAY_FILE)!r}, 'w').write('1e9')")
    report_node.request("greedy", state="destroyed")
    assert f"{pid}: kept until" in report(report_node)
    record = path.parent / "var" / "retention" / pid
    date = float(record.read_text())
    assert abs(date - (time.time() + 90 * 86400)) < 600
    plant(tenant, path / RETENTION_DATE_FILE, "symlink", victim)
    report(report_node)
    victim.check()
    assert float(record.read_text()) == date
    record.write_text(f"{time.time() - 1}\n")  # 90 days later
    as_user(tenant, f"import os; os.unlink({str(path / RETENTION_DATE_FILE)!r}); "
                    f"open({str(path / RETENTION_DATE_FILE)!r}, 'w').write('inf')")
    report(report_node)
    assert report_node.is_free(pid)
    victim.check()


def test_wait_list_cannot_name_another_partition(report_node, tenant_users):
    """The list of services to wait for before destruction: a tenant naming another
    partition's program (which runs for ever) must not keep its own partition alive."""
    tenant = tenant_users[0]
    other = report_node.request("neighbour")
    report_node.deploy(other, services={"forever": SLEEPER})
    pid = report_node.request("leaving")
    path = report_node.deploy(pid, services={"db": SLEEPER})
    give_tree(path, tenant)
    as_user(tenant, f"open({str(path / WAIT_LIST_FILE)!r}, 'w').write("
                    f"'{other}:forever-on-watch\\n' * 1000 + '{pid}:nothing\\n')")
    report_node.request("leaving", state="destroyed")
    output = report(report_node)
    assert "waiting for" not in output, output
    assert report_node.is_free(pid)
    states = {i["name"]: i["statename"] for i in report_node.supervisor().partition_processes(other)}
    assert states["forever-on-watch"] in ("STARTING", "RUNNING")  # left alone


def test_slapos_resource_fifo_and_link(make_node, tenant_users, victim):
    """`.slapos-resource` (root's, read back and rewritten by `slapos node format`): a FIFO or
    a link the tenant put there does not block or redirect the formatter."""
    tenant = tenant_users[0]
    node = make_node(partitions=2)
    paths = [node.partition_path(p) for p in node.partition_ids]
    for path in paths:
        give_tree(path, tenant)
    plant(tenant, paths[0] / ".slapos-resource", "fifo", victim)
    plant(tenant, paths[1] / ".slapos-resource", "symlink", victim)
    make_traversable(node.root)
    done = slapos("node", "format", "--cfg", str(node.config_path), "--now", timeout=120)
    assert done.returncode == 0, done.stderr
    victim.check()
    for path in paths:
        st = os.lstat(path / ".slapos-resource")
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 0
