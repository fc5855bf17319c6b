"""`make demo` end to end: demo/demo.py drives the real `slapos` command (configure local, proxy,
format, supervisord, node software, request, node instance) in a temporary run directory, then
`--stop` must leave no process behind. As root (CI) the demo runs the node as `nobody`."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo" / "demo.py"
MESSAGE = "Hello from the slapnode demo!"


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLAPNODE_DEMO_", "SLAPOS_"))}


def run_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEMO), *args], cwd=REPO, env=_environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
    )


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """Every process whose command line names the run directory (proxy, supervisord, its programs)."""
    marker = str(run_dir)
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] != os.getpid() and any(marker in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


def _kill(run_dir: Path) -> None:
    """Last resort after a failure: the processes this test started, by pid."""
    for p in processes_of(run_dir):
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_end_to_end_then_stop(open_tmp_path):
    run_dir = open_tmp_path / "run"
    try:
        first = run_demo("--run-dir", str(run_dir))
        assert first.returncode == 0, first.stdout
        match = re.search(r"^GET (http://\S+)  ->  HTTP 200$", first.stdout, re.M)
        assert match, first.stdout
        url = match.group(1)
        assert MESSAGE in first.stdout
        assert "$ slapos node instance --now" in first.stdout  # a tutorial: commands are shown
        assert _get(url).strip() == MESSAGE
        proxy_pid = int((run_dir / "var" / "slapos-proxy.pid").read_text())
        running = {p.pid for p in processes_of(run_dir)}
        assert proxy_pid in running
        assert len(running) >= 4, running  # proxy, supervisord, watchdog, hello-web

        # again: everything is reused, nothing rebuilt
        again = run_demo("--run-dir", str(run_dir))
        assert again.returncode == 0, again.stdout
        assert "already running" in again.stdout
        assert "1 up-to-date" in again.stdout
        assert int((run_dir / "var" / "slapos-proxy.pid").read_text()) == proxy_pid
        assert _get(url).strip() == MESSAGE

        stop = run_demo("--run-dir", str(run_dir), "--stop")
        assert stop.returncode == 0, stop.stdout
        assert "$ slapos node supervisorctl shutdown" in stop.stdout  # every program at once
        assert f"$ kill {proxy_pid}" in stop.stdout
        assert processes_of(run_dir) == []
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in running)
        with pytest.raises(urllib.error.URLError):
            _get(url)
        assert (run_dir / "etc" / "slapos.cfg").exists()  # left for inspection

        # after demo-stop: supervisord starts again with every program stopped, one plain
        # `slapos node instance` starts the deployed service again
        restarted = run_demo("--run-dir", str(run_dir))  # the same ports (kept in the run directory)
        assert restarted.returncode == 0, restarted.stdout
        assert "$ slapos node instance --now\n" in restarted.stdout and "instance --now --force" not in restarted.stdout
        assert _get(url).strip() == MESSAGE
        assert run_demo("--run-dir", str(run_dir), "--stop").returncode == 0
        assert processes_of(run_dir) == []

        nothing = run_demo("--run-dir", str(run_dir), "--stop")
        assert nothing.returncode == 0, nothing.stdout
        assert "Nothing runs" in nothing.stdout
    finally:
        _kill(run_dir)


def test_stop_when_nothing_ever_ran(tmp_path):
    result = run_demo("--run-dir", str(tmp_path / "never"), "--stop", timeout=60)
    assert result.returncode == 0, result.stdout
    assert "Nothing to stop" in result.stdout


def test_proxy_port_in_use_is_one_clear_line(open_tmp_path):
    run_dir = open_tmp_path / "run"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            result = run_demo("--run-dir", str(run_dir), "--proxy-port", str(port), timeout=120)
        finally:
            _kill(run_dir)
    assert result.returncode == 1, result.stdout
    assert f"error: port {port} (the proxy's) is already in use" in result.stdout
    assert "SLAPNODE_DEMO_PROXY_PORT" in result.stdout
    assert processes_of(run_dir) == []


def _load_demo_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("slapnode_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_command_not_built_yet_is_named(tmp_path, monkeypatch):
    """Until every area lands, the demo runs as far as it can and names what is missing: argparse's
    answer to an unknown sub-command (exit 5, 'invalid choice') becomes Missing('slapos node instance')."""
    demo = _load_demo_module(monkeypatch)
    fake = tmp_path / "slapos"
    fake.write_text(
        "#!/bin/sh\n"
        "echo \"slapos node: error: argument COMMAND: invalid choice: 'instance' (see slapos node --help)\" >&2\n"
        "exit 5\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(demo, "slapos_executable", lambda: fake)
    session = demo.Session(demo.RunDir(tmp_path / "run"), dict(os.environ))
    with pytest.raises(demo.Missing, match=r"^slapos node instance$"):
        session.slapos("node", "instance", "--now", show=False)
    # an ordinary failure is a result, not a missing command
    fake.write_text("#!/bin/sh\necho 'error: something failed'\nexit 1\n")
    assert session.slapos("node", "instance", show=False).returncode == 1
