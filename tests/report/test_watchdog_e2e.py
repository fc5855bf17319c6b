"""The watchdog as it runs on a node: supervisord (configured by our Supervisor) runs the real
`slapos-watchdog` event listener, which bangs our real proxy when a watched service crashes."""
from __future__ import annotations

import re

from slapos.grid.watchdog import BANG_STATE_FILE
from tests.conftest import wait_for


def watchdog_log(report_node) -> str:
    path = report_node.instance_root / "var" / "log" / "watchdog.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_crashing_service_bangs_the_master_exactly_once(report_node):
    conf = report_node.supervisor()
    crashing = report_node.request("crashy")
    healthy = report_node.request("healthy")
    before = {p: report_node.timestamp(p) for p in (crashing, healthy)}

    # runs long enough to count as started, then dies; supervisord restarts it, it dies again...
    report_node.deploy(crashing, services={"web": "#!/bin/sh\nsleep 1.2\nexit 3\n"},
                       files={".timestamp": before[crashing]})
    report_node.deploy(healthy, services={"web": "#!/bin/sh\nexec sleep 600\n"})
    assert "PROCESS_STATE_RUNNING" in conf.conf_path.read_text()

    # three crashes: one bang, then "already banged"
    wait_for(lambda: watchdog_log(report_node).count("already banged") >= 2, timeout=30,
             what="three crashes of the service")
    log = watchdog_log(report_node)
    assert len(re.findall(rf"{crashing}: web-on-watch EXITED: banged the master", log)) == 1, log
    assert healthy not in log

    # the proxy bumped the crashing tree once; the healthy instance was left alone
    after = {p: report_node.timestamp(p) for p in (crashing, healthy)}
    assert float(after[crashing]) > float(before[crashing])
    assert after[healthy] == before[healthy]
    state = report_node.partition_path(crashing) / BANG_STATE_FILE
    assert float(state.read_text()) == float(before[crashing])


def test_a_burst_of_crashes_across_partitions_loses_no_event(report_node):
    """Far more crashes at once than supervisord's default buffer (10) holds, while the listener
    is busy banging: every event reaches it, every partition is banged once."""
    partitions = [report_node.request(f"burst{i}") for i in range(3)]
    crasher = "#!/bin/sh\nsleep 1.1\nexit 1\n"
    services = {f"s{n:02d}": crasher for n in range(8)}  # 24 crashes at once
    for pid in partitions:
        report_node.deploy(pid, services=services, start=False)
    supervisor = report_node.supervisor()
    for pid in partitions:
        supervisor.start_partition(pid)

    expected = len(partitions) * len(services)

    def handled():
        log = watchdog_log(report_node)
        return log.count(" EXITED: banged the master") + log.count(" EXITED, partition already banged")

    wait_for(lambda: handled() >= expected, timeout=40, what=f"{expected} crash events to be handled")
    log = watchdog_log(report_node)
    for pid in partitions:
        assert len(re.findall(rf"{pid}: s\d\d-on-watch EXITED: banged the master", log)) == 1
    supervisord_log = (report_node.instance_root / "var" / "log" / "supervisord.log").read_text()
    assert "overflowed" not in supervisord_log
