"""The multi-process mode was removed (CHANGES): `--workers` is an unknown option and a `workers`
key is ignored with one warning, not silently."""
from __future__ import annotations

import logging
import subprocess
import sys

from slapos.base.config import Config
from slapos.proxy.config import ProxyConfig


def test_workers_option_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "slapos.cli.main", "proxy", "start", "--workers", "2", "-u", str(tmp_path / "p.db")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 5
    assert "--workers" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_workers_key_is_ignored_with_a_warning(tmp_path, caplog):
    config = Config(text=f"[slapproxy]\ndatabase_uri = {tmp_path / 'p.db'}\nworkers = 4\n")
    with caplog.at_level(logging.WARNING, logger="slapos.proxy"):
        proxy = ProxyConfig.from_config(config)
    assert not hasattr(proxy, "workers")
    assert any("workers ignored" in r.getMessage() for r in caplog.records)
