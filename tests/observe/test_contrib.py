"""The systemd units and the logrotate file of contrib/ (docs/dashboard.md)."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slapos.cli.main import build_parser, load_commands
from tests.conftest import REPO

CONTRIB = REPO / "contrib"


def units() -> list:
    return sorted((CONTRIB / "systemd").iterdir())


def test_every_unit_runs_a_real_slapos_command():
    parser = build_parser(load_commands())
    for unit in units():
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.partition("=")[2])
                assert argv[0].endswith("/slapos"), unit
                args, extra = parser.parse_known_args(argv[1:])
                assert getattr(args, "_command", None) is not None and not extra, (unit, argv)
        if unit.suffix == ".timer":
            assert unit.with_suffix(".service").exists(), unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path):
    slapos = str(Path(sys.executable).parent / "slapos")  # the installed entry point next to this Python
    for unit in units():
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/local/bin/slapos", slapos))
    result = subprocess.run(["systemd-analyze", "verify", *sorted(p.name for p in tmp_path.iterdir())],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_logrotate_file_parses(tmp_path):
    config = (CONTRIB / "logrotate" / "slapos").read_text().replace("/opt/slapos/log", str(tmp_path))
    (tmp_path / "slapos").write_text(config)
    (tmp_path / "x.log").write_text("line\n")
    result = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(tmp_path / "slapos")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
