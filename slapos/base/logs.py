"""Logging set-up shared by every command: quiet console lines, detailed log file."""
from __future__ import annotations

import logging
import sys

CONSOLE_FORMAT = "%(message)s"
CONSOLE_DEBUG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
FILE_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


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


def setup_logging(verbosity: int = 0, log_file: str | None = None, debug: bool = False,
                  time: bool = False, color: bool = False) -> None:
    """verbosity: -1 quiet (warnings only), 0 info, 1+ debug; `time`, `color`: see _ConsoleFormatter."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    level = logging.DEBUG if (debug or verbosity > 0) else (logging.WARNING if verbosity < 0 else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter(CONSOLE_DEBUG_FORMAT) if debug
                         else _ConsoleFormatter(CONSOLE_FORMAT, time=time, color=color))
    root.addHandler(console)
    root.setLevel(logging.DEBUG if log_file else level)
    if log_file:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(file_handler)
    # libraries that are chatty at INFO
    for noisy in ("urllib3", "waitress", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
