"""`slapos proxy start` and `slapos proxy show` as commands."""
from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import time

from tests.fixtures.proxy import write_config

from .conftest import COMPUTER, SR, format_computer


def slapos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slapos.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def test_proxy_fixture_runs_the_command(proxy):
    assert proxy.url.endswith("/") and proxy.computer_id == "local_computer"
    assert stat.S_IMODE(proxy.database.stat().st_mode) == 0o600
    connection = proxy.connect()
    format_computer(connection, "local_computer", 2)
    connection.registerSupply().supply(SR, "local_computer")
    assert connection.registerOpenOrder().request(SR, "inst").getId() == "slappart0"
    assert "listening on " + proxy.url in proxy.log()
    assert "Werkzeug" not in proxy.log()
    assert proxy.stop() == 0  # SIGTERM is a clean stop


def test_help():
    result = slapos("proxy", "start", "--help")
    assert result.returncode == 0 and "--allow-remote" in result.stdout
    result = slapos("proxy", "show", "--help")
    assert result.returncode == 0 and "--no-secrets" in result.stdout


def test_non_loopback_needs_allow_remote(tmp_path):
    config = tmp_path / "slapos.cfg"
    write_config(config, {"slapos": {"computer_id": COMPUTER},
                          "slapproxy": {"host": "0.0.0.0", "port": "0", "database_uri": str(tmp_path / "p.db")}})
    result = slapos("proxy", "start", "--cfg", str(config))
    assert result.returncode == 5
    assert "refusing to listen on 0.0.0.0" in result.stderr and "--allow-remote" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    log = tmp_path / "proxy.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--cfg", str(config), "--allow-remote"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "listening on http://" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert "NO authentication" in text and "listening on http://0.0.0.0:" in text
    finally:
        process.terminate()
        process.wait(10)


def test_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = slapos("proxy", "start", "-u", str(tmp_path / "p.db"), "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "choose another port" in result.stderr


def test_show_table_json_and_secrets(proxy):
    connection = proxy.connect()
    format_computer(connection, "local_computer", 3)
    connection.registerSupply().supply(SR, "local_computer")
    order = connection.registerOpenOrder()
    order.request(SR, "root", {"_": '{"replicas": 2}'})
    root = connection.registerComputerPartition("local_computer", "slappart0")
    root.setConnectionDict({"password": "hunter2"})
    root.request(SR, "default", "child")
    order.request(SR, "front", {"url": "http://x/"}, shared=True)
    connection.registerSoftwareRelease(SR, "local_computer").error("compiler missing")

    table = slapos("proxy", "show", "--cfg", str(proxy.config_path))
    assert table.returncode == 0, table.stderr
    out = table.stdout
    for words in ("Computers:", "Partitions:", "Software releases:", "Shared instances:", "Instance trees:",
                  "hunter2", "compiler missing", "└── child [default] on slappart1@local_computer"):
        assert words in out, words

    data = json.loads(slapos("proxy", "show", "--cfg", str(proxy.config_path), "--format", "json").stdout)
    [root_row] = [p for p in data["partitions"] if p["title"] == "root"]
    assert root_row["connection"] == {"password": "hunter2"} and root_row["requester"] == "user"
    [child_row] = [p for p in data["partitions"] if p["title"] == "child"]
    assert child_row["root"] == "root" and child_row["requester"] == "slappart0@local_computer"
    assert data["software"][0]["reported_state"] == "error"
    assert [c["title"] for c in data["tree"][0]["children"]] == ["child"]

    hidden = slapos("proxy", "show", "-u", str(proxy.database), "--partitions", "--no-secrets", "--format", "json")
    assert "hunter2" not in hidden.stdout and json.loads(hidden.stdout)["partitions"][0]["connection"] == "(hidden)"
    params = slapos("proxy", "show", "-u", str(proxy.database), "--partitions", "--params")
    assert '"replicas": 2' in params.stdout  # json-in-xml shown as JSON


def test_show_missing_database(tmp_path):
    result = slapos("proxy", "show", "-u", str(tmp_path / "nope.db"))
    assert result.returncode == 1 and "no proxy database" in result.stderr
