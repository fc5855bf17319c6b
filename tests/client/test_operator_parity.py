"""Operator parity (issue 15): every command an operator of the reference types exists with
`--help`, and every option line of the reference's crontabs and scripts is accepted against a live
proxy (no usage error: exit 5, "unrecognized", "invalid choice", "ambiguous")."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from slapos.cli import cron

from .conftest import REPO, client_env, slapos_argv, throwaway_user

COMMANDS = [
    ("node", "collect"), ("node", "prune"), ("node", "software"), ("node", "instance"), ("node", "report"),
    ("node", "promise"), ("service", "list"), ("service", "info"), ("computer", "list"), ("computer", "info"),
    ("computer", "token"), ("cachelookup", "binary-sr"), ("cachelookup", "url"), ("cachelookup", "pypi"),
    ("help",), ("console",), ("configure", "local"), ("list",), ("info",),
]
USAGE_WORDS = ("unrecognized", "invalid choice", "ambiguous option", "usage:")


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(slapos_argv(*args), capture_output=True, text=True, timeout=180,
                          env=env or client_env(Path("/tmp")), cwd=str(cwd or REPO))


def accepted(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode != 5, result.stderr
    assert not any(word in result.stderr for word in USAGE_WORDS), result.stderr
    return result


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help(path):
    done = run(*path, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: slapos {' '.join(path)}")


def test_help_command_and_global_log_options():
    assert run("help").stdout.startswith("usage: slapos")
    assert run("help", "node", "software").stdout.startswith("usage: slapos node software")
    assert run("help", "computer").stdout.startswith("usage: slapos computer")
    unknown = run("help", "nothing-like-this")
    assert unknown.returncode == 5 and "unknown command" in unknown.stderr
    assert run("--log-time", "--log-color", "help", "list").returncode == 0
    # the no-effect options are marked as such in --help
    assert "no effect here" in run("node", "software", "--help").stdout


@pytest.fixture
def live(make_node, tmp_path):
    node = make_node(partitions=2)
    pem = tmp_path / "pem"
    pem.mkdir()
    for name in ("key", "cert", "ca", "signature"):
        (pem / name).write_text("-----BEGIN X-----\n-----END X-----\n")
    yield node, pem
    from slapos.base.config import Config
    from slapos.base.settings import NodeSettings
    from slapos.grid.supervisor import Supervisor

    Supervisor(NodeSettings.from_config(Config(node.config_path))).shutdown()


def test_reference_option_lines_against_a_live_proxy(live, tmp_path):
    node, pem = live
    cfg = str(node.config_path)
    common = ["--cfg", cfg, "--key_file", str(pem / "key"), "--cert_file", str(pem / "cert"),
              "--master_ca_file", str(pem / "ca"), "--signature_private_key_file", str(pem / "signature"),
              "--supervisord-socket", str(tmp_path / "sv.sock"), "--supervisord-configuration-path",
              str(tmp_path / "sv.conf"), "--buildout", "/usr/bin/buildout", "--now", "--maximal_delay=5"]
    lines = [
        ["node", "software", *common, "--all"],
        ["node", "software", *common, "--only-sr", "http://sr.example/a.cfg"],
        ["node", "software", *common, "--only_sr", "0123456789abcdef0123456789abcdef"],
        ["node", "software", *common, "--only", "http://sr.example/a.cfg", "--buildout-debug"],
        ["node", "instance", *common, "--all"],
        ["node", "instance", *common, "--only-cp", "slappart0", "--maximum-periodicity", "60",
         "--promise-timeout", "3", "--partition-timeout", "60"],
        ["node", "instance", *common, "--only_cp", "slappart0,slappart1", "--force-stop"],
        ["node", "report", *common, "--partition-timeout", "60"],
        ["node", "promise", *common, "--promise-timeout", "3", "--maximum-periodicity", "60"],
        ["node", "collect", *common],
        ["node", "prune", *common, "--dry-run"],
    ]
    for line in lines:
        done = accepted(run(*line))
        assert done.returncode in (0, 2), (line, done.stderr)  # 2: a promise failed, not a usage error
    # legacy wrappers pass the same options through
    for script, path in (("slapgrid-sr", ["--all"]), ("slapgrid-cp", ["--only_cp", "slappart0"]),
                         ("slapgrid-ur", [])):
        binary = REPO / ".venv" / "bin" / script
        if not binary.exists():
            pytest.skip("legacy entry points not installed (make install)")
        argv = [str(binary), cfg, *common[2:], *path]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=client_env(Path("/tmp")))
        accepted(done)
        assert done.returncode == 0, (script, done.stderr)


def test_command_line_values_stand_in_for_missing_keys(live, tmp_path):
    node, _pem = live
    text = node.config_path.read_text()
    stripped = tmp_path / "no-id.cfg"
    stripped.write_text("".join(line for line in text.splitlines(True)
                                if not line.startswith(("computer_id", "master_url"))))
    before = run("node", "software", "--cfg", str(stripped), "--now")
    assert before.returncode == 1 and "is missing" in before.stderr
    done = run("node", "software", "--cfg", str(stripped), "--now", "--computer-id", node.computer_id,
               "--master-url", node.master_url)
    assert done.returncode == 0, done.stderr
    done = run("node", "report", "--cfg", str(stripped), "--now", "--computer_id", node.computer_id,
               "--master_url", node.master_url)
    assert done.returncode == 0, done.stderr


def test_console_takes_c_and_k(client, tmp_path):
    key, cert = tmp_path / "user.key", tmp_path / "user.crt"
    key.write_text("k")
    cert.write_text("c")
    script = tmp_path / "script.py"
    script.write_text("print('connected to', slap.connection.url(''))\n")
    done = client.run("console", "--cfg", str(client.config), "-c", str(cert), "-k", str(key), str(script))
    assert done.returncode == 0, done.stderr
    assert client.proxy.url in done.stdout


def test_configure_local_roots(tmp_path):
    root = tmp_path / "node"
    instance, software = tmp_path / "parts", tmp_path / "releases"
    done = run("configure", "local", "--root", str(root), "--no-start", "--slapos-instance-root", str(instance),
               "--slapos-software-root", str(software), "--enable-shacache-proxy",
               env=client_env(tmp_path))
    assert done.returncode == 0, done.stderr
    config = (root / "etc" / "slapos.cfg").read_text()
    assert f"instance_root = {instance}" in config and f"software_root = {software}" in config
    assert "node collect" in done.stdout  # the printed crontab runs collect every minute


def test_system_cron_file_is_merged_idempotently(tmp_path):
    target = tmp_path / "slapos-node"
    target.write_text("MAILTO=ops@example.com\n# an operator's own job\n*/5 * * * * root /usr/local/bin/backup\n")
    lines = ["SLAPOS_CONFIGURATION=/etc/opt/slapos/slapos.cfg", "* * * * * /usr/bin/slapos node instance --now",
             "@reboot /usr/bin/slapos node boot"]
    cron.install_system(lines, target)
    first = target.read_text()
    cron.install_system(lines, target)
    assert target.read_text() == first  # idempotent
    assert first.count(cron.BEGIN) == 1
    assert "*/5 * * * * root /usr/local/bin/backup" in first and "MAILTO=ops@example.com" in first
    assert "* * * * * root /usr/bin/slapos node instance --now" in first  # cron.d lines name the user
    assert "@reboot root /usr/bin/slapos node boot" in first
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    victim = tmp_path / "victim"
    victim.write_text("x")
    link = tmp_path / "linked"
    link.symlink_to(victim)
    with pytest.raises(Exception, match="symbolic link"):
        cron.install_system(lines, link)
    assert victim.read_text() == "x"


def test_install_cron_in_a_users_crontab(tmp_path):
    if os.geteuid() != 0 or not Path("/usr/bin/crontab").exists():
        pytest.skip("needs root (a throw-away user) and the crontab command (apt-get install cron)")
    with throwaway_user(tmp_path) as (account, home):
        name = account.pw_name
        subprocess.run(["crontab", "-u", name, "-"], input="0 3 * * * /usr/local/bin/mine\n", text=True, check=True)

        def configure() -> subprocess.CompletedProcess:
            argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                    *slapos_argv("configure", "local", "--root", str(home / "slapos"), "--no-start",
                                 "--install-cron")]
            return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=client_env(home),
                                  cwd=str(home))

        for _ in range(2):
            done = configure()
            assert done.returncode == 0, done.stderr
            assert "periodic runs installed in your crontab" in done.stdout
        table = subprocess.run(["crontab", "-u", name, "-l"], capture_output=True, text=True, check=True).stdout
        assert table.count(cron.BEGIN) == 1 and "0 3 * * * /usr/local/bin/mine" in table
        assert "node instance --now" in table and "node collect" in table
