"""`slapos configure local` (a standalone node in a directory) and `slapos configure client`."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from slapos.base.config import Config
from slapos.cli.standalone import Layout, render_node_config
from tests.conftest import IS_ROOT
from tests.fixtures.proxy import free_port

from .conftest import QuietHandler, client_env, one_line_error, serve_http, slapos_argv


def _stop_pid(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _stop_supervisord(root: Path) -> None:
    """supervisord started by configure local (when `node supervisord` exists in this tree)."""
    for pidfile in (root / "instance").glob("**/supervisord.pid"):
        _stop_pid(pidfile)


def _layout_args(**overrides) -> argparse.Namespace:
    values = dict(root=None, slapos_configuration_directory=None, slapos_buildout_directory=None,
                  computer_id="local_computer", partition_number=10, interface_name="lo",
                  ipv4_local_network="10.0.0.0/16", daemon_listen_ip="127.0.0.1", daemon_listen_port=8080)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_both_layouts_render_loadable_configurations(tmp_path):
    system = Layout.from_args(_layout_args(), euid=0)
    assert not system.standalone
    assert system.config_path == Path("/etc/opt/slapos/slapos.cfg")
    text = render_node_config(system)
    config = Config(text=text)
    assert config.get("slapos", "software_root") == "/opt/slapgrid"
    assert config.get("slapos", "instance_root") == "/srv/slapgrid"
    assert config.get_bool("slapos", "root_check", True) is True
    assert config.get_bool("slapformat", "alter_user") is True
    assert config.get("slapformat", "ipv4_local_network") == "10.0.0.0/16"
    assert config.get("slapproxy", "database_uri") == "/opt/slapos/proxy.db"
    # partitions with their own users: the proxy asks every call for a credential, the node's is
    # in master_url (docs/security-proxy.md), and a second rendering makes another one
    from slapos.slap.connection import url_credential

    assert config.get("slapproxy", "access") == "credentials"
    credential = url_credential(config.get("slapos", "master_url"))
    assert credential and config.get("slapos", "master_url") == f"http://127.0.0.1:8080/c/{credential}/"
    assert url_credential(Config(text=render_node_config(system)).get("slapos", "master_url")) != credential

    user = Layout.from_args(_layout_args(root=str(tmp_path / "node"), partition_number=3), euid=1000)
    assert user.standalone
    config = Config(text=render_node_config(user))
    root = tmp_path / "node"
    assert config.get("slapos", "master_url") == "http://127.0.0.1:8080/"
    assert config.get("slapproxy", "access", "open") == "open"  # one user: the open standalone node
    assert config.get("slapos", "software_root") == str(root / "software")
    assert config.get("slapos", "pidfile_instance") == str(root / "var" / "slapgrid-cp.pid")
    assert config.get_bool("slapos", "root_check") is False
    for key in ("alter_user", "alter_network", "create_tap", "create_tun"):
        assert config.get_bool("slapformat", key) is False, key
    assert config.get_int("slapformat", "partition_amount") == 3
    # a non-root user without --root gets ~/slapos
    assert Layout.from_args(_layout_args(), euid=1000).config_path == Path("~/slapos/etc/slapos.cfg").expanduser()
    # an IPv6 listen address is bracketed in the URL
    assert Layout.from_args(_layout_args(root="/x", daemon_listen_ip="::1"), euid=0).master_url == "http://[::1]:8080/"


def test_configure_local_makes_a_working_standalone_node(open_tmp_path):
    root = open_tmp_path / "node"
    home = open_tmp_path / "home"
    home.mkdir()
    env = client_env(home)
    port = free_port()
    argv = slapos_argv("configure", "local", "--root", str(root), "--partition-number", "2",
                       "--daemon-listen-port", str(port))
    if IS_ROOT:
        argv += ["--owner", "nobody"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr + result.stdout
        cfg = root / "etc" / "slapos.cfg"
        assert f"configuration  {cfg}" in result.stdout
        assert f"export SLAPOS_CONFIGURATION={cfg}" in result.stdout
        assert "@reboot" in result.stdout and "node instance --now" in result.stdout
        assert "Traceback" not in result.stderr
        # the partitions exist and the proxy knows them
        assert sorted(p.name for p in (root / "instance").iterdir() if p.name.startswith("slappart")) == [
            "slappart0", "slappart1"]
        if IS_ROOT:
            assert (root / "instance" / "slappart0").stat().st_uid != 0
        # the client configuration points to it: request works without --cfg
        client_cfg = home / ".slapos" / "slapos-client.cfg"
        assert client_cfg.is_symlink() and client_cfg.resolve() == cfg
        for args in (["supply", "/srv/sr/software.cfg"], ["request", "first", "/srv/sr/software.cfg"]):
            done = subprocess.run(slapos_argv(*args), capture_output=True, text=True, env=env, timeout=60)
            assert done.returncode == 0, done.stderr
        assert "local_computer/slappart0" in done.stdout

        # running it again keeps the configuration and the running proxy
        again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert again.returncode == 0, again.stderr
        assert "keeping the existing" in again.stderr
        assert "already running" in again.stderr
    finally:
        _stop_supervisord(root)
        _stop_pid(root / "var" / "slapos-proxy.pid")


def test_configure_local_without_start_prints_the_commands(tmp_path):
    root = tmp_path / "node"
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        slapos_argv("configure", "local", "--root", str(root), "--no-start", "--daemon-listen-port", "18080"),
        capture_output=True, text=True, env=client_env(home), timeout=60,
    )
    assert result.returncode == 0, result.stderr
    cfg = root / "etc" / "slapos.cfg"
    assert f"slapos proxy start --cfg {cfg} &" in result.stdout
    assert f"slapos node format --cfg {cfg} --now" in result.stdout
    assert not (root / "var" / "slapos-proxy.pid").exists()
    assert Config(cfg).get("slapos", "master_url") == "http://127.0.0.1:18080/"
    # bad values are refused in one line
    result = subprocess.run(slapos_argv("configure", "local", "--root", str(root), "--partition-number", "0"),
                            capture_output=True, text=True, env=client_env(home), timeout=60)
    assert result.returncode == 5
    assert "--partition-number must be at least 1" in one_line_error(result)


class _Master(QuietHandler):
    """The web side of a remote master: hands out a user certificate for a valid token."""

    def do_POST(self):  # noqa: N802
        if self.path == "/Person_getCertificate" and self.headers.get("X-Access-Token") == "good-token":
            body = json.dumps({"certificate": "-----BEGIN CERTIFICATE-----\nC\n", "key": "-----BEGIN KEY-----\nK\n"})
            self.send_response(200)
        else:
            body = "{}"
            self.send_response(403)
        data = body.encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def web_master():
    with serve_http(_Master) as url:
        yield url


def test_configure_client(client, web_master, tmp_path):
    env = client.env
    output = tmp_path / "written.cfg"
    result = subprocess.run(
        slapos_argv("configure", "client", "--master-url", client.proxy.url, "--computer-id", "local_computer",
                    "-o", str(output)),
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"export SLAPOS_CLIENT_CONFIGURATION={output}" in result.stdout
    assert client.run("supply", "/srv/x.cfg", "--cfg", str(output)).returncode == 0

    # with a token: the certificate is fetched from the master's web site and kept private
    default = client.home / ".slapos" / "slapos-client.cfg"
    args = ["configure", "client", "--master-url", "https://slap.example/", "--master-url-web", web_master]
    result = subprocess.run(slapos_argv(*args, "--token", "good-token"), capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    config = Config(default)
    cert = Path(config.get("slapconsole", "cert_file"))
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert cert.stat().st_mode & 0o777 == 0o600
    assert Path(config.get("slapconsole", "key_file")).stat().st_mode & 0o777 == 0o600
    assert config.get("slapos", "master_url") == "https://slap.example/"

    result = subprocess.run(slapos_argv(*args, "--token", "bad", "--force"), capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 1
    assert "refused the token (HTTP 403)" in one_line_error(result)
    result = subprocess.run(slapos_argv("configure", "client", "--master-url", "https://slap.example/", "--force"),
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 5
    assert "an https master needs your certificate" in one_line_error(result)



def test_example_configuration_documents_both_layouts(tmp_path):
    from slapos.base.settings import NodeSettings
    from slapos.client.settings import ClientSettings
    from tests.client.conftest import REPO

    text = (REPO / "slapos.cfg.example").read_text()
    root_node = Config(text=text)
    settings = NodeSettings.from_config(root_node)
    assert settings.root_check is True and str(settings.instance_root) == "/srv/slapgrid"
    assert root_node.get_bool("slapformat", "alter_user") is True
    assert ClientSettings.from_config(root_node).master_url == "http://127.0.0.1:8080/"

    # layout B is what `slapos configure local --root /home/alice/slapos` writes, line for line
    written = Config(text=render_node_config(Layout.from_args(_layout_args(root="/home/alice/slapos"), euid=1000)))
    section, checked = None, 0
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
            continue
        body = line.lstrip("#").strip()
        if line.startswith("#") and ("/home/alice/slapos/" in body or body.endswith("= false")):
            key, _, value = (part.strip() for part in body.partition("="))
            assert written.get(section, key) == value, (section, key)
            checked += 1
    assert checked >= 12
    settings = NodeSettings.from_config(written)
    assert settings.root_check is False and str(settings.pidfile_instance) == "/home/alice/slapos/var/slapgrid-cp.pid"


def test_a_command_run_in_process_gives_the_callers_logging_back(tmp_path):
    import logging

    from slapos.cli.standalone import run_slapos

    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    mine = logging.StreamHandler()
    for handler in saved_handlers:
        root.removeHandler(handler)
    root.addHandler(mine)
    root.setLevel(logging.ERROR)
    try:
        code = run_slapos("configure", "client", "--master-url", "http://127.0.0.1:1/",
                          "--output", str(tmp_path / "client.cfg"))
        assert code == 0
        assert (tmp_path / "client.cfg").is_file()
        assert root.handlers == [mine]
        assert root.level == logging.ERROR
    finally:
        root.removeHandler(mine)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
