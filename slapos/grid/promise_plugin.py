"""The interface of Python promise plugins (`<partition>/etc/plugin/<name>.py`), and their runner.

A software release checks the health of an instance with promises. Executables in
`etc/promise/` are the simple kind (exit 0 = fine, anything else = failed, output = message).
Python plugins in `etc/plugin/` define a class named `RunPromise`:

    from slapos.grid.promise_plugin import GenericPromise

    class RunPromise(GenericPromise):
        periodicity = 5   # minutes between two periodic checks (default 2)
        timeout = 10      # seconds (never more than [slapos] promise_timeout)

        def sense(self):
            port = int(self.getConfig("port", "8080"))
            if port_answers(port):
                self.logger.info("port %s answers", port)
            else:
                self.logger.error("port %s does not answer", port)

`sense()` looks at the instance and logs what it saw; `test()` (after a deployment) and
`anomaly()` (periodic checks) turn that into a verdict: by default the promise failed when
`sense()` logged an error or raised, and the message is the last line logged. Override them to
decide differently; return `(failed: bool, message: str)`. `getConfig(key)` reads the
`extra_config_dict` the plugin module may define, then the runner's settings (`partition-id`,
`partition-folder`, `computer-id`, `master-url`, `partition-cert`, `partition-key`).

The node runs each plugin in a child process (`python -m slapos.grid.promise_plugin`) as the
partition user, under a timeout, side by side with the partition's other promises. This module
uses the standard library only so that the child starts fast.
"""
from __future__ import annotations

import abc
import argparse
import importlib.util
import json
import logging
import os
import signal
import sys
import traceback

RESULT_MARKER = "SLAPOS-PROMISE-RESULT "
DEFAULT_PERIODICITY = 2.0  # minutes
TIMED_OUT = "Error: Promise timed out"  # how a timed-out promise's message starts (the node looks for it)


class PromiseTimeout(Exception):
    pass


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class GenericPromise(abc.ABC):
    """Base class of promise plugins: implement `sense()`; override `test()`/`anomaly()` if needed."""

    periodicity: float = DEFAULT_PERIODICITY  # minutes
    timeout: float | None = None  # seconds

    def __init__(self, config: dict):
        self.config = dict(config)
        title = self.config.get("title", type(self).__module__)
        self.logger = logging.getLogger(f"promise.{title}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self._collector = _Collector()
        self.logger.handlers = [self._collector]

    # -- helpers for plugins ----------------------------------------------------------------
    def getConfig(self, key: str, default=None):
        return self.config.get(key, default)

    def setPeriodicity(self, minute: float) -> None:
        if minute <= 0:
            raise ValueError("periodicity must be a positive number of minutes")
        self.periodicity = float(minute)

    def getPartitionFolder(self) -> str:
        return self.config.get("partition-folder", os.getcwd())

    def getTitle(self) -> str:
        return self.config.get("title", "")

    # -- the two steps ------------------------------------------------------------------------
    @abc.abstractmethod
    def sense(self) -> None:
        """Look at the instance; log with self.logger.info (fine) or self.logger.error (failed)."""

    def _verdict(self) -> tuple[bool, str]:
        records = self._collector.records
        if not records:
            return True, "Error: No output returned by the promise"
        failed = any(r.levelno >= logging.ERROR for r in records)
        return failed, records[-1].getMessage()

    def test(self) -> tuple[bool, str]:
        """Verdict after a deployment: (failed, message)."""
        return self._verdict()

    def anomaly(self) -> tuple[bool, str]:
        """Verdict of a periodic check: (failed, message)."""
        return self.test()


# -- the runner (child process) -------------------------------------------------------------------
def _load(path: str, title: str):
    spec = importlib.util.spec_from_file_location(f"slapos_promise_{title.replace('-', '_')}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, "RunPromise", None)
    if cls is None or not callable(getattr(cls, "sense", None)):
        raise TypeError(f"{os.path.basename(path)} defines no RunPromise class with a sense() method")
    return module, cls


def _alarm(signum, frame):
    raise PromiseTimeout()


def run_plugin(path: str, mode: str, timeout: float, config: dict) -> dict:
    """Load and run one plugin; the result dict the node stores."""
    title = config.get("title") or os.path.splitext(os.path.basename(path))[0]
    periodicity = DEFAULT_PERIODICITY
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        module, cls = _load(path, title)
        extra = getattr(module, "extra_config_dict", None)
        merged = {**config, **(extra if isinstance(extra, dict) else {})}
        promise = cls(merged)
        own = getattr(promise, "timeout", None)
        if own and 0 < float(own) < timeout:
            timeout = float(own)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        periodicity = float(getattr(promise, "periodicity", DEFAULT_PERIODICITY) or DEFAULT_PERIODICITY)
        promise.sense()
        failed, message = promise.anomaly() if mode == "anomaly" else promise.test()
        failed, message = bool(failed), str(message)
    except PromiseTimeout:
        failed, message = True, f"{TIMED_OUT} after {timeout:g} seconds"
    except Exception as e:
        traceback.print_exc()
        failed, message = True, f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return {"failed": failed, "message": message, "periodicity": periodicity}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slapos.grid.promise_plugin",
                                     description="Run one promise plugin and print its result (used by the node).")
    parser.add_argument("path", help="the plugin file (etc/plugin/<name>.py)")
    parser.add_argument("--mode", choices=("test", "anomaly"), default="test")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = {"title": os.path.splitext(os.path.basename(args.path))[0], "path": args.path}
    for item in args.config:
        key, _, value = item.partition("=")
        config[key] = value
    out = sys.stdout
    sys.stdout = sys.stderr  # a plugin's prints must not mix with the result line
    result = run_plugin(args.path, args.mode, args.timeout, config)
    sys.stderr.flush()
    out.write(RESULT_MARKER + json.dumps(result) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
