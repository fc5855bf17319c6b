"""supervisord's XML-RPC interface as the node uses it: one call, a multicall, the process
list, and stopping processes all at once (a process stopped right after its start gets its
signal again). A part of `slapos.grid.supervisor.Supervisor` (see that module), kept apart so
that each file reads in one sitting; the state and fault codes live here, the lowest of the three.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any

from slapos.base.errors import SlapOSError

logger = logging.getLogger("slapos.grid.supervisor")  # one logger for the three files

# supervisor.states.ProcessStates, without importing supervisor on the cheap paths
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = 0, 10, 20, 30, 40, 100, 200, 1000
STOPPED_STATES = (STOPPED, EXITED, FATAL, UNKNOWN)
# supervisor.xmlrpc.Faults
UNKNOWN_METHOD, INCORRECT_PARAMETERS, BAD_NAME = 1, 2, 10
NOT_RUNNING, ALREADY_STARTED, SUCCESS, ALREADY_ADDED, STILL_RUNNING = 70, 60, 80, 90, 91

STOP_WAIT_SECONDS = 20  # per process, before SIGKILL (reference: 60, one group after the other)

_FAULTS = {20: "no such file", 21: "file is not executable", 50: "spawn error", 30: "failed"}


class SupervisorError(SlapOSError):
    """supervisord could not be started or refused a command."""


class _NoExtension(Exception):
    """The supervisord we talk to was started without the slapnode XML-RPC extension."""


class SupervisorClient:
    """The XML-RPC half of `Supervisor` (a mixin: `Supervisor.__init__` sets `socket_path`,
    `_lock` and `_proxy`)."""

    # -- XML-RPC ------------------------------------------------------------------------------
    def _server(self):
        if self._proxy is None:
            import xmlrpc.client

            from supervisor.xmlrpc import SupervisorTransport

            transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
            self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport, allow_none=True)
        return self._proxy

    def call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call; faults become SupervisorError with `.fault_code`."""
        import xmlrpc.client

        with self._lock:
            target = self._server()
            for part in method.split("."):
                target = getattr(target, part)
            try:
                return target(*args)
            except xmlrpc.client.Fault as fault:
                error = SupervisorError(f"supervisord: {method}{args!r} failed: {fault.faultString}")
                error.fault_code = fault.faultCode  # type: ignore[attr-defined]
                raise error from None
            except (OSError, xmlrpc.client.ProtocolError) as e:
                self._proxy = None
                raise SupervisorError(
                    f"cannot talk to supervisord on {self.socket_path}: {e}; is it running? "
                    "('slapos node supervisord' starts it)"
                ) from None

    def _call_ok(self, method: str, *args: Any, ignore: tuple[int, ...] = ()) -> Any:
        try:
            return self.call(method, *args)
        except SupervisorError as e:
            if getattr(e, "fault_code", None) in ignore:
                return None
            raise

    def multicall(self, calls: list[tuple[str, tuple]]) -> list[Any]:
        if not calls:
            return []
        return self.call("system.multicall", [{"methodName": m, "params": list(a)} for m, a in calls])

    def all_processes(self) -> list[dict]:
        return self.call("supervisor.getAllProcessInfo")

    def partition_processes(self, partition_id: str) -> list[dict]:
        """supervisord's getProcessInfo dicts of one partition's programs."""
        return [info for info in self.all_processes() if info["group"] == partition_id]

    def wait_stopped(self, names: set[str], timeout: float | None = None) -> None:
        """Poll until every `group:process` in names is in a stopped state."""
        limit = timeout if timeout is not None else STOP_WAIT_SECONDS + 10
        begin = time.monotonic()
        pending = set(names)
        resent: set[str] = set()
        while pending:
            infos = {f"{i['group']}:{i['name']}": i for i in self.all_processes()}
            pending = {n for n in pending if n in infos and infos[n]["state"] not in STOPPED_STATES}
            if not pending:
                return
            elapsed = time.monotonic() - begin
            if elapsed > limit:
                raise SupervisorError(f"processes still running after {limit:g} s: " + ", ".join(sorted(pending)))
            if elapsed > 0.3:
                for name in pending - resent:
                    info = infos[name]
                    # A TERM that reaches a child between supervisord's fork and its exec is
                    # swallowed by supervisord's own handler, still installed in the child: a
                    # process stopped right after its start then waits for SIGKILL. Signal again.
                    if info["state"] == STOPPING and info["pid"] and info["now"] - info["start"] <= 3:
                        with contextlib.suppress(OSError):
                            os.killpg(info["pid"], signal.SIGTERM)
                        resent.add(name)
            time.sleep(0.05)

    def stop_processes(self, names: list[str], timeout: float | None = None) -> None:
        """Signal every process at once (`stopProcess`, no wait, in one multicall), then wait."""
        if not names:
            return
        results = self.multicall([("supervisor.stopProcess", (n, False)) for n in names])
        for name, result in zip(names, results, strict=True):
            if isinstance(result, dict) and result.get("faultCode") not in (None, NOT_RUNNING, BAD_NAME):
                raise SupervisorError(f"cannot stop {name}: {result.get('faultString')}")
        self.wait_stopped(set(names), timeout)
