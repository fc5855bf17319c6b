"""The console lines of a software build: buildout's output turned into a few lines (which part,
how long so far, a heartbeat during long parts), durations and sizes as people read them.
Split from slapos.grid.software, which re-exports these names.
"""
from __future__ import annotations

import logging
import re
import time

logger = logging.getLogger("slapos.software")

HEARTBEAT_SECONDS = 60.0


class BuildProgress:
    """Turns buildout's output into a few console lines: which part, how long so far.

    Every line goes to the per-release log file (process.run writes it) and, at debug level, to
    the console; part changes are shown at info level, with a heartbeat during long parts.
    """

    _STEP = re.compile(r"^(Installing|Updating|Uninstalling) (.+)\.$")

    def __init__(self, label: str, heartbeat: float = HEARTBEAT_SECONDS):
        self.label = label
        self.start = time.monotonic()
        self.heartbeat = heartbeat
        self.last_shown = self.start
        self.step = "starting"

    def elapsed(self) -> str:
        return _duration(time.monotonic() - self.start)

    def __call__(self, line: str) -> None:
        line = line.rstrip()
        now = time.monotonic()
        match = self._STEP.match(line)
        if match:
            self.step = f"{match.group(1).lower()} part {match.group(2)}"
            logger.info("[%s] %s (%s)", self.label, self.step, self.elapsed())
            self.last_shown = now
        elif line.startswith("Getting distribution for "):
            logger.info("[%s] %s (%s)", self.label, line.rstrip("."), self.elapsed())
            self.last_shown = now
        else:
            logger.debug("[%s] %s", self.label, line)
            if now - self.last_shown >= self.heartbeat:
                logger.info("[%s] still %s (%s)", self.label, self.step, self.elapsed())
                self.last_shown = now


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    return f"{size / (1 << 20):.1f} MiB"
