"""Promises: the health checks a partition's profile installs, run by the node after each
deployment (test mode, all of them) and on every run for up-to-date partitions (anomaly mode,
only those whose periodicity has come).

* `etc/promise/*`: executables; exit 0 = fine, else failed; their output is the message.
* `etc/plugin/*.py`: Python plugins (`slapos.grid.promise_plugin` documents both interfaces it
  runs: ours, and the ecosystem's `slapos.grid.promise.generic.GenericPromise`, which
  `generic.py` and `interface.py` of this package provide when a release does not bring them).

Each promise runs in a child process as the partition user, with a timeout
(`[slapos] promise_timeout`), side by side with the partition's other promises (and with other
partitions' promises: callers share one thread pool). Results are kept where the reference keeps
them (SLAP-PROTOCOL §6.7), so `slapos node status --partitions` shows them without running
anything:

    .slapgrid/promise/result/<title>.status.json   {title, name, path, execution-time,
                                                    result: {type, failed, date, message}}
    .slapgrid/promise/cache/<title>                {is_tested, is_anomaly_detected, periodicity,
                                                    next_run_after, timestamp, module_file,
                                                    module_file_mtime}
    .slapgrid/promise/log/<title>.log              one line per run
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError
from slapos.slap.connection import redact_url

from .. import process
from ..partition import Partition, open_dir, read_at, write_at
from ..promise_plugin import DEFAULT_PERIODICITY, PLUGIN_MASTER_URL, RESULT_MARKER, TIMED_OUT
from ..promise_plugin import __file__ as RUNNER  # noqa: N812

logger = logging.getLogger(__name__)

LEGACY_PERIODICITY = 2.0  # minutes, as the reference wraps executables
MESSAGE_MAX = 5000
TEST, ANOMALY = "test", "anomaly"


@dataclass(frozen=True)
class Promise:
    title: str
    name: str  # file name
    path: Path
    plugin: bool


@dataclass
class PromiseResult:
    title: str
    name: str
    path: str
    failed: bool
    message: str
    execution_time: float
    date: float
    mode: str = TEST
    periodicity: float = DEFAULT_PERIODICITY  # minutes
    ran: bool = True  # False: not due, this is the last stored result
    skipped: bool = False  # the plugin opted out of this mode (setTestLess/setAnomalyLess): nothing to record
    own_log: bool = False  # the plugin appended its own lines to .slapgrid/promise/log/<title>.log
    tested: bool = True  # isTested() of an ecosystem plugin
    anomaly_detected: bool = True  # isAnomalyDetected() of an ecosystem plugin

    @property
    def timed_out(self) -> bool:
        return self.failed and self.message.startswith(TIMED_OUT)

    def to_status(self) -> dict:
        return {
            "title": self.title,
            "name": self.name,
            "path": self.path,
            "execution-time": round(self.execution_time, 3),
            "result": {
                "type": "Anomaly Result" if self.mode == ANOMALY else "Test Result",
                "failed": self.failed,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(self.date)),
                "message": self.message,
            },
        }

    @classmethod
    def from_status(cls, data: dict) -> PromiseResult:
        result = data.get("result") or {}
        try:
            date = time.mktime(time.strptime(result.get("date", ""), "%Y-%m-%dT%H:%M:%S+0000")) - time.timezone
        except ValueError:
            date = 0.0
        return cls(
            title=str(data.get("title", "")),
            name=str(data.get("name", "")),
            path=str(data.get("path", "")),
            failed=bool(result.get("failed", True)),
            message=str(result.get("message", "")),
            execution_time=float(data.get("execution-time") or 0),
            date=date,
            mode=ANOMALY if result.get("type") == "Anomaly Result" else TEST,
            ran=False,
        )


def list_promises(partition_path: Path) -> list[Promise]:
    """The partition's promises, sorted by title (non-executable legacy files are skipped)."""
    found: dict[str, Promise] = {}
    plugin_dir = partition_path / "etc" / "plugin"
    try:
        names = sorted(os.listdir(plugin_dir))
    except OSError:
        names = []
    for name in names:
        if name.endswith(".py") and not name.startswith(("__init__", ".")):
            path = plugin_dir / name
            if path.is_file():
                found[name[:-3]] = Promise(name[:-3], name, path, True)
    legacy_dir = partition_path / "etc" / "promise"
    try:
        names = sorted(os.listdir(legacy_dir))
    except OSError:
        names = []
    for name in names:
        if name.startswith("."):
            continue
        path = legacy_dir / name
        if not path.is_file():
            continue
        if not os.access(path, os.X_OK):
            logger.warning("%s: promise %s is not executable: skipped", partition_path.name, name)
            continue
        title = os.path.splitext(name)[0]
        if title in found:
            title = name
        found[title] = Promise(title, name, path, False)
    return [found[t] for t in sorted(found)]


def _parse_plugin_output(output: str) -> tuple[dict | None, str]:
    lines = output.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(RESULT_MARKER):
            try:
                data = json.loads(lines[index][len(RESULT_MARKER):])
            except ValueError:
                break
            return data, "\n".join(lines[:index])
    return None, output


class PromiseRunner:
    """Runs and records the promises of one partition."""

    def __init__(self, settings, partition: Partition, timeout: float | None = None,
                 identity: process.Identity | None = None, clock: Callable[[], float] = time.time,
                 master_url: str | None = None):
        self.settings = settings
        self.partition = partition
        # the partition's own master URL (its [slap-connection] server-url), which may carry its
        # credential (`access = credentials`): given to plugins in their environment, never in argv
        self.master_url = master_url
        self.timeout = float(timeout if timeout is not None else settings.promise_timeout)
        self.identity = identity
        self.clock = clock

    # -- storage ----------------------------------------------------------------------------------
    def _ensure_dirs(self) -> None:
        owner = self.partition.file_owner()
        self.partition.ensure_slapgrid()
        with open_dir(self.partition.path, ".slapgrid", "promise", create=True, mode=0o755, owner=owner):
            pass
        for sub in ("cache", "result", "log"):
            with open_dir(self.partition.path, ".slapgrid", "promise", sub, create=True, mode=0o700, owner=owner):
                pass

    def read_cache(self, title: str) -> dict:
        try:
            with open_dir(self.partition.path, ".slapgrid", "promise", "cache") as fd:
                data = read_at(fd, title)
        except (OSError, SlapOSError):
            return {}
        try:
            value = json.loads(data) if data else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def stored_results(self) -> list[PromiseResult]:
        """Last results of the partition's promises, as stored (nothing is run)."""
        results = []
        try:
            with open_dir(self.partition.path, ".slapgrid", "promise", "result") as fd:
                names = sorted(n for n in os.listdir(fd) if n.endswith(".status.json"))
                for name in names:
                    data = read_at(fd, name)
                    if data is None:  # not a regular file (a link, a FIFO): no result to show
                        continue
                    try:
                        results.append(PromiseResult.from_status(json.loads(data)))
                    except (ValueError, TypeError, AttributeError):
                        continue
        except (OSError, SlapOSError):
            return []
        return results

    def _record(self, promise: Promise, result: PromiseResult) -> None:
        owner = self.partition.file_owner()
        mtime = 0.0
        try:
            mtime = promise.path.stat().st_mtime
        except OSError:
            pass
        cache = {
            "is_tested": result.tested,
            "is_anomaly_detected": result.anomaly_detected,
            "periodicity": result.periodicity,
            "next_run_after": result.date + result.periodicity * 60,
            "timestamp": result.date,
            "module_file": str(promise.path),
            "module_file_mtime": mtime,
            "failed": result.failed,
        }
        base = (self.partition.path, ".slapgrid", "promise")
        if not result.skipped:
            with open_dir(*base, "result") as fd:
                write_at(fd, f"{promise.title}.status.json", json.dumps(result.to_status()), 0o644, owner)
        with open_dir(*base, "cache") as fd:
            write_at(fd, promise.title, json.dumps(cache), 0o644, owner)
        if result.skipped or result.own_log:
            return
        with open_dir(*base, "log") as fd:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.date))
            level = "ERROR" if result.failed else "INFO"
            line = f"{when} - {level} - {result.message.replace(chr(10), ' ')[:1000]}\n"
            # a FIFO, a link or a hard link of someone else's file there is replaced, never
            # written through nor given to the tenant
            lfd = tenantfs.open_append(f"{promise.title}.log", fd, 0o644, owner)
            try:
                os.write(lfd, line.encode("utf-8", "replace"))
            finally:
                os.close(lfd)

    # -- deciding --------------------------------------------------------------------------------
    def is_due(self, promise: Promise, now: float) -> bool:
        cache = self.read_cache(promise.title)
        try:
            mtime = promise.path.stat().st_mtime
        except OSError:
            return True
        if not cache or cache.get("module_file_mtime") != mtime:
            return True
        try:
            return now >= float(cache.get("next_run_after", 0))
        except (TypeError, ValueError):
            return True

    def opted_out(self, promise: Promise, mode: str) -> bool:
        """An ecosystem plugin that said (last time it ran, unchanged since) that it skips `mode`."""
        if not promise.plugin:
            return False
        cache = self.read_cache(promise.title)
        try:
            if cache.get("module_file_mtime") != promise.path.stat().st_mtime:
                return False
        except OSError:
            return False
        return cache.get("is_tested" if mode == TEST else "is_anomaly_detected") is False

    # -- running ---------------------------------------------------------------------------------
    def _argv(self, promise: Promise, mode: str) -> list[str]:
        if not promise.plugin:
            return [str(promise.path)]
        s = self.settings
        p = self.partition
        config = {
            "partition-id": p.partition_id,
            "partition-folder": str(p.path),
            "computer-id": s.computer_id,
            # never the node credential: the plugin runs as the partition user. The partition's
            # own URL, when it carries its credential, goes through the environment (PLUGIN_MASTER_URL):
            # /proc/<pid>/cmdline is readable by every tenant, /proc/<pid>/environ by its owner only
            "master-url": redact_url(self.master_url or s.master_url),
        }
        certs = p.certificate_files()  # only certificates that were written
        if certs:
            config["partition-cert"], config["partition-key"] = str(certs[0]), str(certs[1])
        if s.master_ca_file:  # a bang to an https master signed by its own CA (a TLS proxy)
            config["master-ca-file"] = str(s.master_ca_file)
        config["log-folder"] = str(p.path / ".slapgrid" / "promise" / "log")
        # run as a file, not `-m`: nothing of our `slapos` package is imported before the plugin,
        # so that a plugin putting its release's eggs first gets the release's `slapos.*` modules
        argv = [sys.executable, "-I", RUNNER, str(promise.path),
                "--mode", mode, "--timeout", f"{self.timeout:g}"]
        for key, value in config.items():
            argv += ["--config", f"{key}={value}"]
        return argv

    def run_one(self, promise: Promise, mode: str) -> PromiseResult:
        start = self.clock()
        periodicity = LEGACY_PERIODICITY
        flags: dict = {}
        home = self.identity.home if self.identity else str(self.partition.path)
        env = process.clean_environment(home, extra_path=getattr(self.settings, "extra_path", ()) or (),
                                        user=self.identity.name if self.identity else None,
                                        tmpdir=self.partition.path / "tmp")
        if promise.plugin and self.master_url:
            env[PLUGIN_MASTER_URL] = self.master_url
        try:
            outcome = process.run(self._argv(promise, mode), cwd=self.partition.path, env=env,
                                  identity=self.identity, timeout=self.timeout + (2 if promise.plugin else 0),
                                  max_output=64 * 1024)
            if promise.plugin:
                data, rest = _parse_plugin_output(outcome.output)
                if data is None:
                    failed = True
                    message = rest.strip() or f"promise runner exited with {outcome.returncode} and no result"
                else:
                    failed = bool(data.get("failed", True))
                    message = str(data.get("message", ""))
                    try:
                        periodicity = float(data.get("periodicity") or DEFAULT_PERIODICITY)
                    except (TypeError, ValueError):
                        periodicity = DEFAULT_PERIODICITY
                    flags = {"skipped": data.get("skipped") is True, "own_log": data.get("own_log") is True,
                             "tested": data.get("is_tested") is not False,
                             "anomaly_detected": data.get("is_anomaly_detected") is not False}
            else:
                failed = not outcome.ok
                message = outcome.output.strip()
                if failed and not message:
                    message = f"exited with code {outcome.returncode} and no output"
        except process.ProcessTimeout:
            failed, message = True, f"{TIMED_OUT} after {self.timeout:g} seconds"
        except SlapOSError as e:
            failed, message = True, str(e)
        if len(message) > MESSAGE_MAX:
            message = message[:MESSAGE_MAX] + "..."
        return PromiseResult(promise.title, promise.name, str(promise.path), failed, message,
                             self.clock() - start, start, mode, periodicity, **flags)

    def run(self, mode: str = TEST, force: bool = True, pool: Executor | None = None,
            promises: list[Promise] | None = None) -> list[PromiseResult]:
        """Run the partition's promises (all of them when `force`, else those due), record the
        results, and return the latest result of every promise (stored ones for those not run)."""
        promises = list_promises(self.partition.path) if promises is None else promises
        if not promises:
            return []
        now = self.clock()
        due = [p for p in promises if (force or self.is_due(p, now)) and not self.opted_out(p, mode)]
        results: dict[str, PromiseResult] = {}
        if due:
            self._ensure_dirs()
            if pool is not None and len(due) > 1:
                futures = [(p, pool.submit(self.run_one, p, mode)) for p in due]
                fresh = [(p, f.result()) for p, f in futures]
            else:
                fresh = [(p, self.run_one(p, mode)) for p in due]
            for promise, result in fresh:
                self._record(promise, result)
                if not result.skipped:
                    results[promise.title] = result
        if len(results) < len(promises):
            stored = {r.title: r for r in self.stored_results()}
            for promise in promises:
                if promise.title not in results and promise.title in stored:
                    results[promise.title] = stored[promise.title]
        return [results[p.title] for p in promises if p.title in results]

    def retry_failed(self, results: list[PromiseResult], delay: float, mode: str = TEST,
                     pool: Executor | None = None, promises: list[Promise] | None = None,
                     on_retry: Callable[[list[str]], None] | None = None) -> list[PromiseResult]:
        """Run once more, `delay` seconds later, the promises of `results` that just failed (not
        those that timed out: they would cost a whole timeout again). Used right after the
        partition's services were (re)started, when a service may not listen yet. Returns
        `results` with the new results in place."""
        titles = {r.title for r in results if r.failed and r.ran and not r.timed_out}
        if not titles or delay <= 0:
            return results
        promises = list_promises(self.partition.path) if promises is None else promises
        todo = [p for p in promises if p.title in titles]
        if not todo:
            return results
        if on_retry is not None:
            on_retry([p.title for p in todo])
        time.sleep(delay)
        again = {r.title: r for r in self.run(mode, True, pool, todo)}
        return [again.get(r.title, r) for r in results]

    def next_check(self, promises: list[Promise] | None = None) -> float | None:
        """When the next periodic check is due (None: the partition has no promise)."""
        promises = list_promises(self.partition.path) if promises is None else promises
        times = []
        for promise in promises:
            cache = self.read_cache(promise.title)
            try:
                times.append(float(cache["next_run_after"]))
            except (KeyError, TypeError, ValueError):
                return self.clock()
        return min(times) if times else None


def first_failure(results: list[PromiseResult]) -> PromiseResult | None:
    for result in results:
        if result.failed:
            return result
    return None


def failure_message(result: PromiseResult) -> str:
    return f"Promise {result.name!r} failed with output: {result.message}"
