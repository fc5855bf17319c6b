"""`slapos node run` for tests: a formatted node (tests/instance/conftest.py), the daemon in a
subprocess with short periods, its status read from its unix socket."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_traversable, wait_for
from tests.instance.conftest import REPO, InstanceNode, instance_node  # noqa: F401 (fixture)

# short periods: a test lasts seconds; software and format are not run unless a test asks
FAST = {"run_instance_period": "2", "run_poll_period": "1", "run_software_period": "0", "run_report_period": "0",
        "run_collect_period": "0", "run_format_period": "0", "run_stop_timeout": "20"}


@dataclass
class RunningDaemon:
    node: InstanceNode
    process: subprocess.Popen
    log_path: Path

    @property
    def socket(self) -> Path:
        return self.node.root / "var" / "slapos-node-run.sock"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        from slapos.grid.daemon_status import query

        return json.loads(query(self.socket))

    def wait_runs(self, kind: str, more_than: int, timeout: float = 60) -> dict:
        """Wait until `kind` has run more than `more_than` passes; its runs' record."""
        def check():
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            run = self.status()["daemon"]["runs"][kind]
            return run if run["runs"] > more_than and not run["running"] else None
        return wait_for(check, timeout=timeout, what=f"{kind} pass #{more_than + 1}")

    def runs(self, kind: str) -> int:
        return self.status()["daemon"]["runs"][kind]["runs"]

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_daemon(node: InstanceNode, *args: str, log_name: str = "daemon.log") -> RunningDaemon:
    make_traversable(node.root)
    log_path = node.root / log_name
    env = dict(os.environ, PYTHONPATH=str(REPO), SLAPNODE_LOG_FORMAT="text")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "slapos.cli.main", "node", "run", "--cfg", str(node.config_path), *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO))
    daemon = RunningDaemon(node, process, log_path)

    def answers():
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited ({process.returncode}):\n{daemon.log()[-3000:]}")
        return daemon.socket.exists()
    wait_for(answers, timeout=30, what="the daemon's status socket")
    return daemon


@pytest.fixture
def daemon_node(instance_node):  # noqa: F811
    """Factory: (node, start) where start(*args) starts `slapos node run` on it; stopped after."""
    started: list[RunningDaemon] = []

    def factory(partitions: int = 2, extra: dict | None = None):
        config = {"slapos": {**FAST, **(extra or {})}}
        node = instance_node(partitions=partitions, extra_config=config)

        def start(*args: str, **kw) -> RunningDaemon:
            daemon = start_daemon(node, *args, **kw)
            started.append(daemon)
            return daemon
        return node, start

    yield factory
    for daemon in started:
        daemon.stop()


class OtherMaster:
    """Any SLAP master but ours, on loopback: every call forwarded to a real proxy, except
    `/watchComputer`, which it does not know (404), as slapos.core's master does not."""

    def __init__(self, upstream_port: int):
        import http.client
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def forward(self):
                if self.path.split("?")[0].rstrip("/").endswith("/watchComputer"):
                    self.send_error(404, "Not Found")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.getheader("Content-Type") or "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
