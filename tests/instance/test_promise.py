"""Promises: executables and Python plugins, run as the partition user with a timeout each."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from slapos.grid import process
from slapos.grid.partition import Partition
from slapos.grid.promise import ANOMALY, PromiseRunner, first_failure, list_promises
from tests.conftest import make_traversable
from tests.fixtures.supervisor import node_settings

PLUGIN_OK = """
from slapos.grid.promise_plugin import GenericPromise

class RunPromise(GenericPromise):
    periodicity = 5

    def sense(self):
        print("noise on stdout does not matter")
        self.logger.info("all good in %s", self.getConfig("partition-id"))
"""
PLUGIN_FAIL = """
from slapos.grid.promise_plugin import GenericPromise

class RunPromise(GenericPromise):
    def sense(self):
        self.logger.error("the database does not answer")
"""
PLUGIN_CRASH = """
from slapos.grid.promise_plugin import GenericPromise

class RunPromise(GenericPromise):
    def sense(self):
        raise ValueError("unexpected value")
"""
PLUGIN_SLOW = """
import time
from slapos.grid.promise_plugin import GenericPromise

class RunPromise(GenericPromise):
    timeout = 1

    def sense(self):
        time.sleep(30)
"""


@pytest.fixture
def partition(tmp_path_factory):
    root = make_traversable(tmp_path_factory.mktemp("pr"))
    os.chmod(root, 0o755)
    settings = node_settings(root, promise_timeout=5.0)
    path = settings.instance_root / "slappart0"
    path.mkdir(mode=0o750)
    (path / "etc" / "plugin").mkdir(parents=True)
    (path / "etc" / "promise").mkdir(parents=True)
    return Partition(settings, "slappart0")


def give_away(partition):
    """As root: the partition belongs to nobody, and promises run as nobody."""
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        for dirpath, dirnames, filenames in os.walk(partition.path):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.chown(name, nobody.pw_uid, nobody.pw_gid)
    return process.identity_for(partition.path, "promises")


def add(partition, kind, name, text, mode=0o755):
    path = partition.path / "etc" / kind / name
    path.write_text(text)
    path.chmod(mode)
    return path


def runner(partition, **kw):
    return PromiseRunner(partition.settings, partition, identity=give_away(partition), **kw)


def test_executables_and_plugins(partition):
    add(partition, "promise", "ok", "#!/bin/sh\necho fine\n")
    add(partition, "promise", "whoami", "#!/bin/sh\nid -u\n")
    add(partition, "promise", "bad", "#!/bin/sh\necho 'port 80 closed'\nexit 1\n")
    add(partition, "promise", "not-executable", "#!/bin/sh\nexit 1\n", mode=0o644)
    add(partition, "plugin", "check-ok.py", PLUGIN_OK, mode=0o644)
    add(partition, "plugin", "check-fail.py", PLUGIN_FAIL, mode=0o644)
    add(partition, "plugin", "check-crash.py", PLUGIN_CRASH, mode=0o644)
    add(partition, "plugin", "__init__.py", "", mode=0o644)
    titles = [p.title for p in list_promises(partition.path)]
    assert titles == ["bad", "check-crash", "check-fail", "check-ok", "ok", "whoami"]
    with ThreadPoolExecutor(4) as pool:
        results = {r.title: r for r in runner(partition).run(pool=pool)}
    assert not results["ok"].failed and results["ok"].message == "fine"
    assert results["bad"].failed and results["bad"].message == "port 80 closed"
    assert results["check-ok"].message == "all good in slappart0" and not results["check-ok"].failed
    assert results["check-ok"].periodicity == 5
    assert results["check-fail"].failed and results["check-fail"].message == "the database does not answer"
    assert results["check-crash"].failed and "ValueError: unexpected value" in results["check-crash"].message
    if os.geteuid() == 0:  # promises run as the partition user
        assert results["whoami"].message == str(partition.path.stat().st_uid)
    assert first_failure(list(results.values())).title == "bad"

    # results are kept in the reference's layout, readable without running anything
    status = json.loads((partition.promise_dir / "result" / "check-fail.status.json").read_text())
    assert status["title"] == "check-fail" and status["name"] == "check-fail.py"
    assert status["result"]["type"] == "Test Result" and status["result"]["failed"] is True
    assert status["result"]["message"] == "the database does not answer"
    cache = json.loads((partition.promise_dir / "cache" / "check-ok").read_text())
    assert cache["periodicity"] == 5 and cache["next_run_after"] > time.time() + 4 * 60
    assert "INFO - fine" in (partition.promise_dir / "log" / "ok.log").read_text()
    stored = {r.title: r for r in runner(partition).stored_results()}
    assert stored["bad"].failed and stored["bad"].message == "port 80 closed" and not stored["bad"].ran


def test_timeouts(partition):
    partition.settings.promise_timeout = 1.0
    add(partition, "promise", "sleepy", "#!/bin/sh\nexec sleep 30\n")
    add(partition, "plugin", "slow.py", PLUGIN_SLOW, mode=0o644)
    begin = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = {r.title: r for r in runner(partition).run(pool=pool)}
    assert time.monotonic() - begin < 8  # side by side, each killed after its timeout
    assert results["sleepy"].failed and results["sleepy"].message == "Error: Promise timed out after 1 seconds"
    assert results["slow"].failed and "timed out after 1 seconds" in results["slow"].message


def test_anomaly_mode_runs_only_due_promises(partition):
    now = [time.time()]
    add(partition, "promise", "count", "#!/bin/sh\necho run >> \"$PWD/count.txt\"\n")
    r = runner(partition, clock=lambda: now[0])
    assert r.next_check() == now[0]  # never run: due at once
    r.run(mode="test")
    assert r.next_check() == pytest.approx(now[0] + 120, abs=1)
    assert r.run(mode=ANOMALY, force=False)[0].ran is False  # not due: stored result
    now[0] += 121
    assert r.run(mode=ANOMALY, force=False)[0].ran is True
    assert (partition.path / "count.txt").read_text().count("run") == 2


def test_retry_failed_runs_only_what_just_failed(partition):
    """After a start: a failing promise runs once more after the delay; a timed-out one does not."""
    partition.settings.promise_timeout = 1.0
    add(partition, "promise", "ok", "#!/bin/sh\necho run >> \"$PWD/ok.txt\"\n")
    # fails the first time only (a service that was not listening yet)
    add(partition, "promise", "late", "#!/bin/sh\n[ -e \"$PWD/late.txt\" ] && echo up && exit 0\n"
                                      "touch \"$PWD/late.txt\"; echo down; exit 1\n")
    add(partition, "promise", "sleepy", "#!/bin/sh\necho run >> \"$PWD/sleepy.txt\"; exec sleep 30\n")
    r = runner(partition)
    results = r.run()
    assert [(x.title, x.failed, x.timed_out) for x in results] == [
        ("late", True, False), ("ok", False, False), ("sleepy", True, True)]
    retried = []
    results = r.retry_failed(results, 0.2, on_retry=retried.append)
    assert retried == [["late"]]
    assert {x.title: (x.failed, x.message) for x in results}["late"] == (False, "up")
    assert (partition.path / "ok.txt").read_text().count("run") == 1
    assert (partition.path / "sleepy.txt").read_text().count("run") == 1
    status = json.loads((partition.promise_dir / "result" / "late.status.json").read_text())
    assert status["result"]["failed"] is False  # the new result is the one kept
    assert r.retry_failed(results, 0) == results  # 0: no retry


def test_plugins_are_given_only_written_certificates(partition, tmp_path):
    partition.settings.certificate_repository_path = tmp_path / "certs"
    add(partition, "plugin", "check-ok.py", PLUGIN_OK, mode=0o644)
    plugin = list_promises(partition.path)[0]
    assert not any("partition-cert" in arg for arg in runner(partition)._argv(plugin, "test"))
    assert partition.write_certificate("CERT", "KEY")
    argv = runner(partition)._argv(plugin, "test")
    assert f"partition-cert={tmp_path / 'certs' / 'slappart0.crt'}" in argv
    assert not any("master-ca-file" in arg for arg in argv)  # the system CAs
    partition.settings.master_ca_file = tmp_path / "proxy-ca.crt"  # a TLS proxy's CA: a bang verifies it
    assert f"master-ca-file={tmp_path / 'proxy-ca.crt'}" in runner(partition)._argv(plugin, "test")
