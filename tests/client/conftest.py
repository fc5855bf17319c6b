"""Fixtures of the client tests: the real `slapos` command against a real proxy.

`client` gives a proxy that knows a computer with a few partitions (sent through the SLAP protocol,
`loadComputerConfigurationFromXML`, as `slapos node format` does), a client configuration, a
private HOME (the instance record lives in ~/.slapos) and `run(...)` to call `.venv/bin/slapos`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SLAPOS = REPO / ".venv" / "bin" / "slapos"
if not SLAPOS.exists():  # running outside the project's venv: same code through the interpreter
    SLAPOS = None


def slapos_argv(*args: str) -> list[str]:
    if SLAPOS is not None:
        return [str(SLAPOS), *args]
    return [sys.executable, "-m", "slapos.cli.main", *args]


def computer_document(computer_id: str, partitions: int) -> dict:
    """What `slapos node format` sends for an unprivileged node (§7.4)."""
    return {
        "reference": computer_id,
        "address": "127.0.0.1",
        "netmask": "255.0.0.0",
        "partition_list": [
            {
                "reference": f"slappart{i}",
                "address_list": [{"addr": "127.0.0.1", "netmask": "255.0.0.0"}],
                "tap": {"name": f"slappart{i}"},
            }
            for i in range(partitions)
        ],
    }


def register_partitions(proxy, partitions: int = 3) -> None:
    connection = proxy.connect()
    connection.registerComputer(proxy.computer_id).updateConfiguration(
        computer_document(proxy.computer_id, partitions)
    )


@dataclass
class Client:
    proxy: object
    home: Path
    config: Path
    env: dict

    def run(self, *args: str, input: str | None = None, env: dict | None = None, timeout: float = 60,
            cfg: bool = True) -> subprocess.CompletedProcess:
        argv = slapos_argv(*args)
        if cfg and "--cfg" not in args:
            argv += ["--cfg", str(self.config)]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input,
            env={**self.env, **(env or {})}, cwd=str(self.home),
        )

    @property
    def registry(self) -> Path:
        return self.home / ".slapos" / "instances.json"


def client_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLAPOS_")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_client_config(path: Path, master_url: str, computer_id: str, extra: str = "") -> Path:
    path.write_text(
        f"[slapos]\nmaster_url = {master_url}\ncomputer_id = {computer_id}\n{extra}", encoding="utf-8"
    )
    return path


@pytest.fixture
def client(proxy, tmp_path: Path) -> Client:
    register_partitions(proxy, 3)
    home = tmp_path / "home"
    home.mkdir()
    config = write_client_config(tmp_path / "client.cfg", proxy.url, proxy.computer_id)
    return Client(proxy, home, config, client_env(home))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error output must be exactly one `error: …` line, without a traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


class QuietHandler(BaseHTTPRequestHandler):
    """Base of the small loopback servers that play a remote master in these tests."""

    def log_message(self, *args):
        pass


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]):
    """A real HTTP server on 127.0.0.1:<free port> in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def throwaway_user(parent: Path):
    """As root: a system user `tops<random>` (prefix of the ops helper) with a home below `parent`;
    its crontab, user and group are removed afterwards. Yields (passwd entry, home)."""
    import pwd
    import uuid

    from tests.conftest import make_traversable

    name = "tops" + uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/bin/sh", "-U", name], check=True)
    account = pwd.getpwnam(name)
    home = parent / f"home-{name}"
    home.mkdir()
    os.chown(home, account.pw_uid, account.pw_gid)
    make_traversable(home)
    try:
        yield account, home
    finally:
        subprocess.run(["crontab", "-u", name, "-r"], capture_output=True, check=False)
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", name], check=False, capture_output=True)
