"""What the daemon's passes need around the grid's steps (grid/daemon.py): the buildout fork
server kept between instance passes, the release stamps that tell a software pass built
something, and the parent-death signal of the child commands.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class KeptForkServer:
    """The buildout fork server (grid/forkserver.py) kept from one instance pass to the next: a
    pass deploying a partition then does not wait for a Python to start and import buildout
    (~0.25 s, more on a busy machine). Closed after `IDLE_CLOSE` seconds unused (its memory back)."""

    IDLE_CLOSE = 600.0

    def __init__(self) -> None:
        self.server = None
        self.last_used = 0.0

    def builder(self, ctx):
        from .build import Builder

        keeper = self

        class _KeptBuilder(Builder):
            def forkserver(self):
                server = super().forkserver()
                keeper.server, keeper.last_used = server, time.monotonic()
                return server

            def close(self) -> None:  # kept for the next pass
                pass

        if self.server is not None and (not self.server.alive
                                        or time.monotonic() - self.last_used > self.IDLE_CLOSE):
            self.close()
        builder = _KeptBuilder(ctx)
        builder._forkserver = self.server
        return builder

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.server = None


def completed_stamps(software_root: Path) -> dict[str, int]:
    """{release directory: mtime of its .completed}: what a software pass changed (lstat only:
    the software user owns these directories, nothing there is followed)."""
    stamps: dict[str, int] = {}
    try:
        entries = list(os.scandir(software_root))
    except OSError:
        return stamps
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                stamps[entry.name] = os.lstat(os.path.join(entry.path, ".completed")).st_mtime_ns
        except OSError:
            continue
    return stamps


def die_with_parent():
    """A preexec_fn asking the kernel to send SIGTERM to the child when this thread ends
    (prctl PR_SET_PDEATHSIG; Linux only: elsewhere, nothing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_death_signal
