"""`slapos configure local --install-daemon`: the systemd unit instead of the periodic cron lines."""
from __future__ import annotations

import os

import pytest

from slapos.cli import cron, service_files
from slapos.cli.main import main


@pytest.fixture
def system_paths(tmp_path, monkeypatch):
    """The unit and cron.d files in a root-only temporary directory; systemd 'not running'."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    monkeypatch.setattr(service_files, "SYSTEMD_UNIT", etc / "systemd" / "slapos-node.service")
    monkeypatch.setattr(service_files, "SYSTEMD_RUNNING", tmp_path / "no-systemd")
    monkeypatch.setattr(cron, "SYSTEM_CRON_FILE", etc / "cron.d" / "slapos-node")
    (etc / "cron.d").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return etc


def test_install_daemon_replaces_the_periodic_cron_lines(system_paths, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("--install-daemon needs root")
    root = tmp_path / "node"
    base = ["configure", "local", "--root", str(root), "--no-start"]
    assert main([*base, "--install-cron"]) == 0
    crontab = system_paths / "cron.d" / "slapos-node"
    assert "node instance --now" in crontab.read_text()

    assert main([*base, "--install-daemon"]) == 0
    unit = (system_paths / "systemd" / "slapos-node.service").read_text()
    assert f"node run --cfg {root / 'etc' / 'slapos.cfg'}" in unit and "KillMode=process" in unit
    table = crontab.read_text()
    assert "@reboot" in table and "node boot" in table  # boot still runs after a reboot
    for periodic in ("node instance", "node software", "node report", "node collect", "node format"):
        assert periodic not in table
    assert table.count(cron.BEGIN) == 1
    assert "systemd is not running here" in capsys.readouterr().out

    assert main([*base, "--install-cron", "--install-daemon"]) == 5


def test_install_daemon_needs_root(system_paths, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("as root the unit is installed")
    assert main(["configure", "local", "--root", str(tmp_path / "node"), "--no-start", "--install-daemon"]) == 5
    assert "needs root" in capsys.readouterr().err


def test_bad_period_is_one_line(tmp_path):
    import subprocess
    import sys

    from tests.instance.conftest import REPO

    cfg = tmp_path / "slapos.cfg"
    cfg.write_text(f"[slapos]\ncomputer_id = c\nmaster_url = http://127.0.0.1:9/\nsoftware_root = {tmp_path}/s\n"
                   f"instance_root = {tmp_path}/i\nroot_check = false\npidfile_instance = {tmp_path}/cp.pid\n"
                   "run_instance_period = -1\n")
    done = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "run", "--cfg", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: run_instance_period in [slapos] must be at least 0 seconds, not -1"], done.stderr
