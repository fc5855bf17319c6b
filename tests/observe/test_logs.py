"""Log formats of the `slapos` command (slapos/base/logs.py), run for real in subprocesses."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from slapos.base import logs
from tests.conftest import REPO

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def slapos(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "SLAPNODE_LOG_FORMAT"}
    environment.update(env or {}, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args], capture_output=True, text=True,
                          env=environment, timeout=60)


def test_not_on_a_terminal_lines_carry_time_level_and_step(tmp_path):
    result = slapos("node", "status", "--partitions", "--cfg", str(tmp_path / "missing.cfg"))
    assert result.returncode == 1
    assert re.fullmatch(STAMP + r" ERROR status configuration file .*missing\.cfg \(--cfg\) not found: check the path\n",
                        result.stderr), result.stderr
    # under systemd the journal keeps the time: the line does not repeat it
    result = slapos("node", "status", "--partitions", "--cfg", str(tmp_path / "missing.cfg"),
                    env={"JOURNAL_STREAM": "8:1234"})
    assert result.stderr.startswith("ERROR status configuration file"), result.stderr
    # plain: what a terminal shows
    result = slapos("--log-format", "plain", "node", "status", "--cfg", str(tmp_path / "missing.cfg"))
    assert result.stderr.startswith("error: configuration file"), result.stderr


def test_json_format_on_console_and_in_the_log_file(tmp_path):
    log_file = tmp_path / "slapos.log"
    result = slapos("proxy", "show", "-u", str(tmp_path / "none.db"), "--log-format", "json",
                    "--log-file", str(log_file))
    assert result.returncode != 0
    line = json.loads(result.stderr)
    assert line["level"] == "error" and line["step"] == "show" and "no proxy database" in line["message"]
    assert re.fullmatch(STAMP, line["time"]) and line["partition"] is None and line["pid"] > 0
    in_file = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert in_file[-1]["message"] == line["message"]
    bad = slapos("proxy", "show", env={"SLAPNODE_LOG_FORMAT": "xml"})
    assert bad.returncode == 5 and "SLAPNODE_LOG_FORMAT='xml' is not one of auto, plain, text, json" in bad.stderr


def test_partition_and_step_on_every_line(tmp_path):
    log_file = tmp_path / "node.log"
    try:
        logs.setup_logging(0, str(log_file), log_format="json")
        logging.getLogger("slapos.instance").info("%s: running buildout", "slappart7")
        logging.getLogger("slapos.software").info("[%s] installing %s", "hello-web", "part")
        with logs.log_context(partition="slappart3", step="promise"):
            logging.getLogger("slapos").warning("promise %s failed", "http")
        logging.getLogger("slapos.instance").info("partitions: %s", "1 processed")
        with ThreadPoolExecutor(1, thread_name_prefix="build") as pool:  # as the node's buildout workers
            pool.submit(logging.getLogger("slapos.instance").info, "%s: buildout done", "slappart1").result()
        with logs.log_context(partition="slappart2"):
            logging.getLogger("slapos.instance").info("%s: started", "slappart2")
        lines = [json.loads(x) for x in log_file.read_text().splitlines()]
        assert [(x["step"], x["partition"], x["message"]) for x in lines] == [
            ("instance", "slappart7", "running buildout"),
            ("software", "hello-web", "installing part"),
            ("promise", "slappart3", "promise http failed"),
            ("instance", None, "partitions: 1 processed"),
            ("buildout", "slappart1", "buildout done"),
            ("instance", "slappart2", "started"),
        ]
        logs.setup_logging(0, str(tmp_path / "text.log"), log_format="text")
        with logs.log_context(partition="slappart3"):
            logging.getLogger("slapos.instance").error("buildout failed")
        logging.getLogger("slapos.instance").info("%s: done", "slappart7")
        text = (tmp_path / "text.log").read_text().splitlines()
        assert re.fullmatch(STAMP + r" slapos\.instance\[\d+\] ERROR instance slappart3: buildout failed", text[0])
        assert text[1].endswith("INFO instance slappart7: done")  # the partition once, not twice
    finally:
        logs.setup_logging(0, None, log_format="plain")


def test_log_file_is_reopened_after_logrotate_moved_it(tmp_path):
    log_file = tmp_path / "proxy.log"
    try:
        logs.setup_logging(0, str(log_file), log_format="text")
        logging.getLogger("slapos.proxy").info("before rotation")
        log_file.rename(tmp_path / "proxy.log.1")  # what logrotate does (no copytruncate)
        logging.getLogger("slapos.proxy").info("after rotation")
    finally:
        logs.setup_logging(0, None, log_format="plain")
    assert "before rotation" in (tmp_path / "proxy.log.1").read_text()
    assert "after rotation" in log_file.read_text() and "before" not in log_file.read_text()
