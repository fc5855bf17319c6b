"""`[slapos] run_log_directory`: the daemon's lines split per command, in the files the cron block
writes (`slapos-node-software.log`, `-instance.log`, `-report.log`, `-collect.log`, `-format.log`),
as well as on its own output.

The child commands (software, format) write their output to their file, as `>> file 2>&1` does.
The in-process passes are told apart by the thread that logs: the instance pass and its pools
(build, activate, finish, promise, forkserver: grid/instance.py names them), the report and
collect workers.
"""
from __future__ import annotations

import logging
from pathlib import Path

THREADS = {
    "instance": ("run-instance", "build_", "activate", "finish_", "promise_", "forkserver"),
    "report": ("run-report",),
    "collect": ("run-collect",),
}


def log_path(directory: Path, kind: str) -> Path:
    return Path(directory) / f"slapos-node-{kind}.log"


def open_command_logs(directory: Path) -> list[logging.Handler]:
    """Attach one file handler per in-process kind to the root logger; returns them (to close)."""
    from slapos.base.errors import ConfigError
    from slapos.base.logs import command_log_handler

    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run_log_directory {directory}: {e.strerror}") from None
    handlers = []
    for kind, prefixes in THREADS.items():
        def accept(record: logging.LogRecord, prefixes=prefixes) -> bool:
            return (record.threadName or "").startswith(prefixes)

        handler = command_log_handler(str(log_path(directory, kind)), accept)
        logging.getLogger().addHandler(handler)
        handlers.append(handler)
    return handlers


def close_command_logs(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        logging.getLogger().removeHandler(handler)
        handler.close()
