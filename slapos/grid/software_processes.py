"""Processes of software builds that must not outlive their run: builds left running by an
interrupted agent, and our own builds on SIGTERM or Ctrl-C (builds run in their own sessions, so
a signal to the agent does not reach them). psutil is imported only when needed.
Split from slapos.grid.software, which re-exports these names.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

logger = logging.getLogger("slapos.software")


def kill_leftover_builds(directory: Path) -> list[int]:
    """Kill processes still working in `directory`: a build left running by an agent that was
    killed (kill -9 does not reach the build, which runs in its own session). We hold the run
    lock, so no build of ours is legitimately running there."""

    import psutil

    from .process import kill_tree

    try:  # a link planted by the software user (to /, to another release) is not followed
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return []
    except OSError:
        return []
    root = os.path.realpath(directory)
    victims = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd = proc.info.get("cwd")
        if proc.pid == os.getpid() or not cwd or not (cwd == root or cwd.startswith(root + os.sep)):
            continue
        # only buildouts (ours or bin/buildout by hand): a shell someone left in the directory lives
        # on; killing a buildout's tree also ends the compilers it started
        if any("buildout" in part for part in proc.info.get("cmdline") or ()):
            victims.append(proc)
    for proc in victims:
        logger.warning("killing process %d left running in %s by an interrupted build", proc.pid, directory)
        kill_tree(proc.pid)
    psutil.wait_procs(victims, timeout=10)
    return [p.pid for p in victims]


def terminate_children() -> None:
    """Kill every child process tree of ours (used on SIGTERM/Ctrl-C while builds run)."""
    try:
        import psutil

        from .process import kill_tree
    except ImportError:
        return
    for child in psutil.Process().children(recursive=False):
        kill_tree(child.pid)


def _install_termination_handler():
    """SIGTERM while building: stop the builds (they run in their own sessions) and exit 143."""
    if threading.current_thread() is not threading.main_thread():
        return None
    import signal

    def handler(signum, frame):
        terminate_children()
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def _restore_termination_handler(previous) -> None:
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)
