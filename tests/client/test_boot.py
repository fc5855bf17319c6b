"""`slapos node boot` on a real standalone node (its own proxy), and when the master never answers."""
from __future__ import annotations

import subprocess

from tests.fixtures.proxy import free_port

from .conftest import client_env, one_line_error, slapos_argv
from .test_configure import _stop_pid, _stop_supervisord


def test_boot_gives_up_when_the_master_never_answers(tmp_path):
    cfg = tmp_path / "slapos.cfg"
    cfg.write_text(
        "[slapos]\ncomputer_id = C\nmaster_url = http://127.0.0.1:9/\nroot_check = false\n"
        f"software_root = {tmp_path}/soft\ninstance_root = {tmp_path}/inst\n"
        "[slapformat]\ninterface_name = lo\n"
    )
    result = subprocess.run(slapos_argv("node", "boot", "--cfg", str(cfg), "--timeout", "1"), capture_output=True,
                            text=True, env=client_env(tmp_path), timeout=60)
    assert result.returncode == 3  # offline
    assert "master http://127.0.0.1:9/ does not answer after" in one_line_error(result)


def test_boot_brings_a_standalone_node_up(open_tmp_path):
    root = open_tmp_path / "node"
    env = client_env(open_tmp_path)
    port = free_port()
    configured = subprocess.run(
        slapos_argv("configure", "local", "--root", str(root), "--no-start", "--partition-number", "2",
                    "--daemon-listen-port", str(port)),
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert configured.returncode == 0, configured.stderr
    cfg = root / "etc" / "slapos.cfg"
    boot = slapos_argv("node", "boot", "--cfg", str(cfg), "--no-instance", "--timeout", "60")
    try:
        # first boot: starts the proxy (nothing runs yet), formats, bangs
        result = subprocess.run(boot, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"proxy started on 127.0.0.1:{port}" in result.stderr
        assert "network ready" in result.stderr
        partitions = sorted(p for p in (root / "instance").glob("slappart*"))
        assert [p.name for p in partitions] == ["slappart0", "slappart1"]
        # the node processed its partitions before the reboot
        for partition in partitions:
            (partition / ".timestamp").write_text("1795625296.3328707")
        # second boot, complete this time: supervisord and the instance step run too
        full = [a for a in boot if a != "--no-instance"]
        result = subprocess.run(full, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "already running" in result.stderr
        assert "2 partition(s) will be reprocessed" in result.stderr
        assert not any((p / ".timestamp").exists() for p in partitions)
        assert "Traceback" not in result.stderr
        assert list((root / "instance").glob("**/supervisord.pid")), "supervisord was not started"
    finally:
        _stop_supervisord(root)
        _stop_pid(root / "var" / "slapos-proxy.pid")
