"""The daemon's status endpoint: HTTP on a unix socket (root-only, 0600), and its client.

    GET /status   the status document (JSON, schema slapnode.status/1 plus a "daemon" object)
    GET /metrics  Prometheus text: runs per kind, last exit code and duration, queue, master

The partitions are the records of `slapos node status --partitions` (slapos/base/statusdoc.py);
`daemon` adds what only the loop knows (docs/daemon.md documents every field). A unix socket
and not a TCP port: nothing on the network can reach it, file permissions say who may, and the
path sits next to the run's pidfiles.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from slapos.base import statusdoc

log = logging.getLogger("slapos.daemon")

CLIENT_TIMEOUT = 10.0


def status_document(daemon) -> dict[str, Any]:
    from .status import all_statuses
    from .status import status_document as partitions_document

    snap = daemon.snapshot()
    doc = partitions_document(daemon.settings.computer_id, all_statuses(daemon.settings))
    doc["source"] = "daemon"
    kinds = {}
    for name, k in snap["kinds"].items():
        last = k["last"]
        running = k["running"]
        kinds[name] = {
            "period": k["period"],
            "running": None if running is None else {"since": statusdoc.iso(running["since"]),
                                                     "scope": running["scope"]},
            "last_run": None if last is None else {
                "started": statusdoc.iso(last["started"]), "duration": round(last["duration"], 3),
                "exit_code": last["exit_code"], "scope": last["scope"]},
            "runs": k["runs"], "failed_runs": k["failed_runs"], "busy_skips": k["busy_skips"],
            "next_full_pass_in": None if k["next_full_in"] is None else round(k["next_full_in"], 1),
            "retry_in": None if k["retry_in"] is None else round(k["retry_in"], 1),
        }
    master = dict(snap["master"])
    master["last_contact"] = statusdoc.iso(master["last_contact"])
    doc["daemon"] = {
        "pid": snap["pid"],
        "started": statusdoc.iso(snap["started"]),
        "state": "stopping" if snap["stopping"] else "running",
        "activity": [f"{name}: {k['running']['scope']}" for name, k in snap["kinds"].items() if k["running"]],
        "runs": kinds,
        "queue": {
            "partitions": snap["kinds"]["instance"]["pending"],
            "software_releases": snap["kinds"]["software"]["pending"],
            "full_passes": sorted(n for n, k in snap["kinds"].items() if k["pending_full"]),
        },
        "master": master,
    }
    return doc


def metrics_text(daemon) -> str:
    from slapos.base.promtext import Family, render

    snap = daemon.snapshot()
    runs = Family("slapos_daemon_runs_total", "counter", "Passes run by the daemon, by kind")
    failed = Family("slapos_daemon_failed_runs_total", "counter", "Passes that ended with a non-zero exit code")
    busy = Family("slapos_daemon_busy_skips_total", "counter", "Passes put back because a hand-run command held the lock")
    code = Family("slapos_daemon_last_exit_code", "gauge", "Exit code of the last pass, by kind")
    duration = Family("slapos_daemon_last_duration_seconds", "gauge", "Duration of the last pass, by kind")
    running = Family("slapos_daemon_running", "gauge", "1 while a pass of this kind runs")
    queued = Family("slapos_daemon_queued", "gauge", "Partitions or releases waiting for a pass")
    for name, k in snap["kinds"].items():
        runs.add(k["runs"], kind=name)
        failed.add(k["failed_runs"], kind=name)
        busy.add(k["busy_skips"], kind=name)
        running.add(1 if k["running"] else 0, kind=name)
        queued.add(len(k["pending"]), kind=name)
        if k["last"]:
            code.add(k["last"]["exit_code"], kind=name)
            duration.add(round(k["last"]["duration"], 3), kind=name)
    master = snap["master"]
    push = Family("slapos_daemon_master_push", "gauge", "1 when the master pushes changes, 0 when polled")
    push.add(1 if master["mode"] == "push" else 0)
    errors = Family("slapos_daemon_master_errors_total", "counter", "Failed connections to the master")
    errors.add(master["errors"])
    return render([runs, failed, busy, code, duration, running, queued, push, errors])


class _Handler(BaseHTTPRequestHandler):
    server_version = "slapnode-daemon"
    protocol_version = "HTTP/1.0"

    def address_string(self) -> str:  # a unix socket has no client address
        return "local"

    def log_message(self, format: str, *args) -> None:
        log.debug("status endpoint: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        daemon = self.server.daemon  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/status", "/status.json"):
                body = json.dumps(status_document(daemon), indent=2).encode()
                kind = "application/json"
            elif path == "/metrics":
                from slapos.base.promtext import CONTENT_TYPE

                body, kind = metrics_text(daemon).encode(), CONTENT_TYPE
            else:
                self.send_error(404, "unknown path: GET /status or /metrics")
                return
        except Exception as e:  # the endpoint must not take the loop down
            log.error("status endpoint: %s: %s", type(e).__name__, e)
            self.send_error(500, "the status could not be built (see the daemon's log)")
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class StatusServer:
    def __init__(self, daemon, path: Path):
        self.daemon = daemon
        self.path = Path(path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # we hold the daemon's lock: a socket file left here is a dead daemon's
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path.is_socket() or self.path.is_symlink():
                self.path.unlink()
        except OSError:
            pass
        previous = os.umask(0o177)  # created 0600: no window where others may connect
        try:
            self._server = _Server(str(self.path), _Handler)
        except OSError as e:
            from slapos.base.errors import ConfigError

            raise ConfigError(f"cannot serve the daemon's status on {self.path}: {e.strerror or e}; "
                              "set [slapos] run_status_socket to a shorter or writable path") from None
        finally:
            os.umask(previous)
        # (no chmod: it would follow a link swapped in meanwhile; the umask made it 0600)
        self._server.daemon = self.daemon  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 3600},
                                        name="run-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        # serve_forever's select wakes only on a request or after poll_interval: close instead
        self._server.server_close()
        try:
            self.path.unlink()
        except OSError:
            pass
        self._server = None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonNotRunning(Exception):
    pass


def query(path: Path, what: str = "/status", timeout: float = CLIENT_TIMEOUT) -> bytes:
    """GET `what` from the daemon's socket; DaemonNotRunning when nothing answers there."""
    conn = _UnixConnection(path, timeout)
    try:
        try:
            conn.request("GET", what)
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonNotRunning(f"daemon not running (nothing answers on {path}: {e.strerror})") from None
        except PermissionError:
            raise DaemonNotRunning(f"cannot read the daemon's status on {path}: permission denied (root only)") \
                from None
        body = response.read(64 * 1024 * 1024)
        if response.status != 200:
            raise DaemonNotRunning(f"the daemon answered {response.status} on {path}")
        return body
    finally:
        conn.close()
