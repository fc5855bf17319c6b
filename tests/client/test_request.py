"""`slapos request|supply|remove|list|info` run for real (`.venv/bin/slapos`) against a real proxy."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from .conftest import (
    Client,
    QuietHandler,
    client_env,
    one_line_error,
    serve_http,
    slapos_argv,
    write_client_config,
)

SR = "/srv/demo/software.cfg"


def supply(client: Client, url: str = SR) -> None:
    result = client.run("supply", url)
    assert result.returncode == 0, result.stderr


def request_json(client: Client, *args: str) -> dict:
    result = client.run("request", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def publish(client: Client, partition_id: str, parameters: dict, slave_reference: str | None = None) -> None:
    """What an instance does from inside its partition: publish its connection parameters."""
    partition = client.proxy.connect().registerComputerPartition(client.proxy.computer_id, partition_id)
    partition.setConnectionDict(parameters, slave_reference=slave_reference)


def test_request_prints_status_and_updates_list_and_info(client):
    supply(client)
    result = client.run("request", "web", SR, "--parameters", "title=demo & co", "replicas=2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0] == "instance          web"
    assert "partition         local_computer/slappart0" in result.stdout
    assert "requested state   started" in result.stdout
    assert "connection parameters: none published yet" in result.stdout

    status = request_json(client, "web", SR, "--parameters", "title=demo & co", "replicas=2")
    assert status["partition_id"] == "slappart0"
    assert status["computer_id"] == "local_computer"
    assert status["parameters"] == {"title": "demo & co", "replicas": "2"}
    assert status["connection_parameters"] == {}
    assert status["requested_state"] == "started"

    publish(client, "slappart0", {"url": "http://[::1]:8080/", "password": "s3cret"})
    status = request_json(client, "web", SR, "--parameters", "title=demo & co", "replicas=2")
    assert status["connection_parameters"] == {"url": "http://[::1]:8080/", "password": "s3cret"}
    table = client.run("request", "web", SR, "--parameters", "title=demo & co", "replicas=2").stdout
    assert "connection parameters:\n  password  s3cret\n  url       http://[::1]:8080/\n" in table

    listing = client.run("list")
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "STATE", "TYPE", "SHARED"]
    assert row.split()[:6] == ["web", "started", "default", "no", "local_computer/slappart0", "yes"]

    info = client.run("info", "web", "--format", "json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["source"] == "master"
    assert data["parameters"] == {"title": "demo & co", "replicas": "2"}
    assert data["connection_parameters"]["password"] == "s3cret"
    assert data["software_url"] == SR
    assert data["ip_list"] == [["slappart0", "127.0.0.1"]]
    assert data["errors"] == []
    text = client.run("info", "web").stdout
    assert "source            master" in text and "parameters:\n  replicas  2\n  title     demo & co\n" in text

    # the record is private: parameters may hold secrets
    assert client.registry.stat().st_mode & 0o777 == 0o600


def test_state_changes_and_destroyed_instances(client):
    supply(client)
    request_json(client, "db", SR)
    stopped = request_json(client, "db", SR, "--state", "stopped")
    assert stopped["requested_state"] == "stopped"
    assert json.loads(client.run("info", "db", "--format", "json").stdout)["requested_state"] == "stopped"
    # a request without --state keeps the state the master has
    assert request_json(client, "db", SR)["requested_state"] == "stopped"
    again = json.loads(client.run("info", "db", "--format", "json").stdout)
    assert again["requested_state"] == "stopped"

    request_json(client, "db", SR, "--state", "destroyed")
    assert "db" not in client.run("list").stdout
    everything = json.loads(client.run("list", "--all", "--format", "json").stdout)
    assert [(e["name"], e["requested_state"]) for e in everything] == [("db", "destroyed")]

    # the node destroys it and the proxy frees the partition: info says so, from the master
    partition = client.proxy.connect().registerComputerPartition("local_computer", "slappart0")
    partition.destroyed()
    info = json.loads(client.run("info", "db", "--format", "json").stdout)
    assert info["requested_state"] == "destroyed"
    assert any("no longer holds this instance" in e for e in info["errors"])


def test_shared_instance(client):
    supply(client)
    host = request_json(client, "frontend", SR)
    shared = request_json(client, "site", SR, "--slave", "--parameters", "url=http://backend/")
    assert shared["shared"] is True
    assert shared["partition_id"] == host["partition_id"]
    publish(client, host["partition_id"], {"domain": "site.example"}, slave_reference="_site")
    shared = request_json(client, "site", SR, "--slave", "--parameters", "url=http://backend/")
    assert shared["connection_parameters"] == {"domain": "site.example"}
    info = json.loads(client.run("info", "site", "--format", "json").stdout)
    assert info["shared"] is True
    assert info["parameters"] == {"url": "http://backend/"}
    assert info["connection_parameters"] == {"domain": "site.example"}
    assert info["errors"] == []


def test_wait_returns_when_connection_parameters_appear(client):
    supply(client)
    request_json(client, "slow", SR)
    argv = slapos_argv("request", "slow", SR, "--wait", "--timeout", "60", "--format", "json", "--cfg", str(client.config))
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client.env)
    try:
        time.sleep(1.0)
        assert process.poll() is None, process.communicate()
        publish(client, "slappart0", {"ready": "yes"})
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert json.loads(out)["connection_parameters"] == {"ready": "yes"}
    assert "Traceback" not in err


def test_wait_timeout_is_exit_2_with_one_line(client):
    supply(client)
    result = client.run("request", "never", SR, "--wait", "--timeout", "1")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "no connection parameters yet after 1 s" in lines[0]
    assert "Traceback" not in result.stderr


def test_supply_and_remove(client):
    result = client.run("supply", SR, "local_computer")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"requested installation of {SR} on local_computer\n"
    computer = client.proxy.connect().registerComputer("local_computer")
    assert [(s.getURI(), s.getState()) for s in computer.getSoftwareReleaseList()] == [(SR, "available")]
    # COMPUTER_ID defaults to computer_id of the configuration
    result = client.run("remove", SR)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"requested removal of {SR} from local_computer\n"
    computer = client.proxy.connect().registerComputer("local_computer")
    assert [(s.getURI(), s.getState()) for s in computer.getSoftwareReleaseList()] == [(SR, "destroyed")]


def test_product_aliases(client, proxy, tmp_path):
    # from the client configuration (no round trip), and from the master's product list
    write_client_config(
        client.config, proxy.url, proxy.computer_id,
        "software_product_list =\n  demo /srv/demo/software.cfg\n",
    )
    supply(client, "product.demo")
    assert request_json(client, "a", "product.demo")["software_url"] == SR
    assert request_json(client, "b", "demo")["software_url"] == SR
    result = client.run("request", "c", "product.nothing")
    assert result.returncode == 1
    assert "software product 'nothing' is unknown" in one_line_error(result)


def test_product_alias_from_the_proxy(tmp_path):
    from tests.fixtures.proxy import start_proxy

    from .conftest import register_partitions

    proxy = start_proxy(tmp_path / "p", extra_config={"slapproxy": {"software_product_list": "\nkvm /srv/kvm.cfg"}})
    try:
        register_partitions(proxy, 1)
        home = tmp_path / "home"
        home.mkdir()
        client = Client(proxy, home, write_client_config(tmp_path / "c.cfg", proxy.url, proxy.computer_id),
                        client_env(home))
        supply(client, "product.kvm")
        assert request_json(client, "vm", "product.kvm")["software_url"] == "/srv/kvm.cfg"
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------------
# error paths: exit code and exactly one line, no traceback


def test_unreachable_master(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = write_client_config(tmp_path / "c.cfg", "http://127.0.0.1:9/", "local_computer")
    env = client_env(home)
    script = tmp_path / "s.py"
    script.write_text("request('/sr', 'x')\n")
    for args in (["request", "x", SR], ["supply", SR], ["remove", SR], ["console", str(script)]):
        result = subprocess.run(slapos_argv(args[0], "--cfg", str(config), *args[1:]), capture_output=True,
                                text=True, env=env, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        line = one_line_error(result)
        assert "http://127.0.0.1:9/" in line and "cannot connect to the master" in line


def test_info_falls_back_to_the_record_when_the_master_is_down(client):
    supply(client)
    request_json(client, "kept", SR, "--parameters", "a=1")
    client.proxy.stop()
    result = client.run("info", "kept", "--format", "json")
    assert result.returncode == 0
    assert "cannot refresh 'kept' from the master" in result.stderr
    data = json.loads(result.stdout)
    assert data["source"].startswith("local record")
    assert data["parameters"] == {"a": "1"}
    assert data["partition_id"] == "slappart0"


def test_unknown_instance(client):
    result = client.run("info", "nothing")
    assert result.returncode == 2
    assert "unknown instance 'nothing'" in one_line_error(result)


def test_no_free_partition_is_one_line_and_recorded(client):
    supply(client)
    for name in ("a", "b", "c"):
        request_json(client, name, SR)
    result = client.run("request", "d", SR)
    assert result.returncode == 1
    assert "No free computer partition" in one_line_error(result)
    assert "d" not in json.loads(client.run("list", "--format", "json").stdout)  # never invented
    # an existing instance keeps the error of its last request for `slapos info`
    client.proxy.stop()
    result = client.run("request", "a", SR)
    assert result.returncode == 1
    one_line_error(result)
    listing = json.loads(client.run("list", "--format", "json").stdout)
    entry = next(e for e in listing if e["name"] == "a")
    assert entry["last_error"]
    info = json.loads(client.run("info", "a", "--format", "json").stdout)
    assert any(e.startswith("last request failed") for e in info["errors"])
    assert "\nerrors:\n  last request failed: POST " in client.run("info", "a").stdout


def test_bad_arguments_and_configuration(client, tmp_path):
    cases = [
        (["request", "x", SR, "--parameters", "novalue"], 5, "--parameters expects key=value pairs"),
        (["request", "x", SR, "--node", "computer_guid"], 5, "--node expects key=value pairs"),
        (["request", "x", SR, "--parameters-file", str(tmp_path / "none.json")], 1, "none.json not found"),
        (["request", "x", SR, "--wait", "--timeout", "0"], 5, "--timeout must be a positive"),
    ]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": 1,,}')
    cases.append((["request", "x", SR, "--parameters-file", str(bad_json)], 1, "is not valid JSON: "))
    for args, code, message in cases:
        result = client.run(*args)
        assert result.returncode == code, (args, result.stderr)
        assert message in one_line_error(result), args

    missing_key = tmp_path / "missing.cfg"
    missing_key.write_text("[slapos]\ncomputer_id = local_computer\n")
    for command in (["request", "x", SR], ["supply", SR], ["list"], ["info", "x"], ["console", "-p"]):
        result = client.run(*command, "--cfg", str(missing_key))
        assert result.returncode == 1, (command, result.stderr)
        line = one_line_error(result)
        assert "key 'master_url' is missing in section [slapos]" in line and str(missing_key) in line

    https = tmp_path / "https.cfg"
    https.write_text("[slapos]\nmaster_url = https://master.example/\n")
    result = client.run("request", "x", SR, "--cfg", str(https))
    assert result.returncode == 1
    assert "[slapconsole] cert_file and key_file" in one_line_error(result)

    result = client.run("list", cfg=False)  # no --cfg, no environment, no ~/.slapos/slapos-client.cfg
    assert result.returncode == 1
    assert "slapos-client.cfg" in one_line_error(result)


def test_configuration_lookup_environment_and_home(client, tmp_path):
    supply(client)
    # $SLAPOS_CLIENT_CONFIGURATION, with ~ expanded
    result = client.run("request", "env", SR, cfg=False, env={"SLAPOS_CLIENT_CONFIGURATION": "~/../client.cfg"})
    assert result.returncode == 0, result.stderr
    # then ~/.slapos/slapos-client.cfg
    (client.home / ".slapos").mkdir(exist_ok=True)
    (client.home / ".slapos" / "slapos-client.cfg").write_text(client.config.read_text())
    result = client.run("info", "env", cfg=False)
    assert result.returncode == 0, result.stderr
    assert "instance          env" in result.stdout


class _NotReadyMaster(QuietHandler):
    """A remote master that has not allocated anything yet: 408 on every request."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(408)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def not_ready_master():
    with serve_http(_NotReadyMaster) as url:
        yield url


def test_not_ready_is_exit_2(not_ready_master, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = write_client_config(tmp_path / "c.cfg", not_ready_master, "COMP-1")
    result = subprocess.run(slapos_argv("request", "later", SR, "--cfg", str(config)), capture_output=True,
                            text=True, env=client_env(home), timeout=60)
    assert result.returncode == 2
    assert "'later' is not ready yet" in one_line_error(result)
    # recorded, so `slapos list` shows what is pending
    entry = json.loads((home / ".slapos" / "instances.json").read_text())["masters"][not_ready_master]["later"]
    assert entry.get("partition_id") is None and "not ready" in entry["last_error"]


def test_concurrent_requests_keep_every_record(client):
    supply(client)
    argvs = [slapos_argv("request", name, SR, "--cfg", str(client.config)) for name in ("p1", "p2", "p3")]
    processes = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=client.env) for a in argvs]
    for process in processes:
        process.wait(timeout=60)
        assert process.returncode == 0, process.stderr.read()
    names = [e["name"] for e in json.loads(client.run("list", "--format", "json").stdout)]
    assert names == ["p1", "p2", "p3"]
