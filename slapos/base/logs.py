"""Logging set-up shared by every command.

* On a terminal the console shows plain lines ('warning: ' / 'error: ' prefixes); anywhere else
  (cron, supervisord, a systemd unit) each line also carries the time, the level and the step,
  because nobody reads it live. Under systemd (JOURNAL_STREAM set) the journal keeps the time:
  the line does not repeat it.
* Every record gets `step` and `partition` (a partition id, or a software release name), from
  `log_context(partition=..., step=...)` when a caller set one, else: the step from the worker
  thread that logs (the node's runs name their pools: build → buildout, activate → supervisord,
  finish and promise → promise) or from the logger's name (instance, software, report, proxy,
  format... or the command), the partition from the project's convention of starting a line
  with "%s: " (partition id) or "[%s] " (software release).
* `--log-format` (or SLAPNODE_LOG_FORMAT): `auto` (default: `plain` on a terminal, `text`
  elsewhere), `plain` (the message only), `text` (time, level, step, partition, message),
  `json` (one JSON object per line, console and log file, those fields apart, for log shippers).
* The log file (`--log-file`) is reopened when logrotate moves it away (WatchedFileHandler):
  contrib/logrotate/slapos needs no copytruncate and no pid file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator

CONSOLE_FORMAT = "%(message)s"
CONSOLE_DEBUG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
FILE_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(step)s %(where)s%(message)s"
# console when not on a terminal: time and level first, then the step, then the line
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(step)s %(where)s%(message)s"
JOURNAL_FORMAT = "%(levelname)s %(step)s %(where)s%(message)s"
FORMATS = ("auto", "plain", "text", "json")

# every `slapos` run imports this module: json, datetime, contextvars and logging.handlers are
# imported only when used (they cost ~7 ms together); the context is per thread
_context = threading.local()
_ID = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")
_format_choice = ["auto"]  # kept for later setup_logging calls (proxy and format re-open with a file)
_command_step = ["slapos"]  # the step of lines logged by the generic "slapos" logger: the command's name


def set_command_step(name: str) -> None:
    _command_step[0] = name


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Name the partition and/or step of every line logged inside (by this thread)."""
    previous = getattr(_context, "fields", None)
    _context.fields = {**(previous or {}), **fields}
    try:
        yield
    finally:
        _context.fields = previous


# worker threads of the node's runs (instance.py, software.py name their pools) → their step
_THREAD_STEPS = {"build": "buildout", "activate": "supervisord", "finish": "promise", "promise": "promise"}


def _step(name: str, thread: str = "") -> str:
    step = _THREAD_STEPS.get(thread.partition("_")[0])
    if step is not None:
        return step
    parts = [p for p in name.split(".") if p not in ("slapos", "grid")]
    return parts[0] if parts else _command_step[0]


class ContextFilter(logging.Filter):
    """Adds `step`, `partition` and `where` (partition prefix not already in the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "step"):
            return True
        context = getattr(_context, "fields", None) or {}
        record.step = context.get("step") or _step(record.name, record.threadName or "")
        named = None  # the partition the message itself starts with
        if isinstance(record.msg, str) and record.args and isinstance(record.args, tuple):
            first = record.args[0]
            if isinstance(first, str) and _ID.match(first) and record.msg.startswith(("%s: ", "[%s] ")):
                named = first
        partition = context.get("partition") or named
        in_message = named is not None and named == partition
        record.partition = partition
        record.partition_in_message = in_message
        record.where = f"{partition}: " if partition and not in_message else ""
        return True


_COLORS = {logging.ERROR: "\033[31m", logging.WARNING: "\033[33m", logging.DEBUG: "\033[2m"}
_RESET = "\033[0m"


class _ConsoleFormatter(logging.Formatter):
    """Plain message for INFO; 'warning: ' / 'error: ' prefixes so problems stand out.
    `time`: each line starts with the time (`--log-time`); `color`: problems in colour
    (`--log-color`, for a terminal)."""

    def __init__(self, fmt: str, time: bool = False, color: bool = False):
        super().__init__(fmt)
        self.time = time
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            message = f"error: {message}"
        elif record.levelno >= logging.WARNING:
            message = f"warning: {message}"
        if self.color:
            level = max((lv for lv in _COLORS if lv <= record.levelno), default=None)
            if record.levelno >= logging.WARNING or record.levelno <= logging.DEBUG:
                message = f"{_COLORS[level or logging.DEBUG]}{message}{_RESET}"
        if self.time:
            message = f"{self.formatTime(record, '%Y-%m-%d %H:%M:%S')} {message}"
        return message


class _TimeFormatter(logging.Formatter):
    """ISO 8601 local time with its offset: unambiguous in a log read days later."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        local = time.localtime(record.created)
        offset = time.strftime("%z", local)  # +0100 → +01:00
        return (f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.{int(record.msecs):03d}"
                f"{offset[:3]}:{offset[3:]}")


class JsonFormatter(_TimeFormatter):
    """One JSON object per line: time, level, logger, step, partition, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        message = record.getMessage()
        partition = getattr(record, "partition", None)
        if partition and getattr(record, "partition_in_message", False):
            for prefix in (f"{partition}: ", f"[{partition}] "):
                if message.startswith(prefix):
                    message = message[len(prefix):]
                    break
        data = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "step": getattr(record, "step", _step(record.name)),
            "partition": partition,
            "message": message,
            "pid": record.process,
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def console_is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def command_log_handler(path: str, accept) -> logging.Handler:
    """A log file (reopened after logrotate) of the records `accept(record)` picks, each line as a
    command's console writes it under cron (time, level, step, partition): `slapos node run` keeps
    one such file per command it runs in-process, as the cron block's `>> file` does."""
    from logging.handlers import WatchedFileHandler

    class _Accept(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return bool(accept(record))

    handler = WatchedFileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.addFilter(_Accept())
    handler.addFilter(ContextFilter())
    handler.setFormatter(_TimeFormatter(PLAIN_FORMAT))
    return handler


def setup_logging(verbosity: int = 0, log_file: str | None = None, debug: bool = False,
                  log_format: str | None = None, time: bool = False, color: bool = False) -> None:
    """verbosity: -1 quiet (warnings only), 0 info, 1+ debug. log_format: one of FORMATS (default:
    the previous call's: `slapos` chooses it once from --log-format or SLAPNODE_LOG_FORMAT).
    `time`, `color` (`--log-time`, `--log-color`): see _ConsoleFormatter (the plain format)."""
    chosen = log_format or _format_choice[0]
    if chosen not in FORMATS:
        from .errors import UsageError

        raise UsageError(f"log format {chosen!r} unknown: use one of {', '.join(FORMATS)}")
    _format_choice[0] = chosen
    if chosen == "auto":
        chosen = "plain" if console_is_terminal() else "text"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()
    level = logging.DEBUG if (debug or verbosity > 0) else (logging.WARNING if verbosity < 0 else logging.INFO)
    context = ContextFilter()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.addFilter(context)
    if chosen == "json":
        console.setFormatter(JsonFormatter())
    elif debug:
        console.setFormatter(_TimeFormatter(CONSOLE_DEBUG_FORMAT))
    elif chosen == "plain":
        console.setFormatter(_ConsoleFormatter(CONSOLE_FORMAT, time=time, color=color))
    else:
        console.setFormatter(_TimeFormatter(JOURNAL_FORMAT if os.environ.get("JOURNAL_STREAM") else PLAIN_FORMAT))
    root.addHandler(console)
    root.setLevel(logging.DEBUG if log_file else level)
    if log_file:
        from logging.handlers import WatchedFileHandler

        file_handler = WatchedFileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.addFilter(context)
        file_handler.setFormatter(JsonFormatter() if chosen == "json" else _TimeFormatter(FILE_FORMAT))
        root.addHandler(file_handler)
    # libraries that are chatty at INFO
    for noisy in ("urllib3", "waitress", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
