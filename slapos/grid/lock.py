"""One run at a time: a pidfile held with flock.

The file holds our pid (for people and for the reference's own check). The flock is what
makes it safe: the kernel drops it when the holder dies, even on kill -9, so a stale pidfile
is simply taken over. A second run finds the lock held and exits with code 10.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from slapos.base.errors import LockedError


class RunLock:
    def __init__(self, pidfile: str | Path, what: str = "slapos node"):
        self.pidfile = Path(pidfile)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.pidfile, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LockedError(
                f"cannot create the lock file {self.pidfile}: {e.strerror}; "
                "set pidfile_software/pidfile_instance/pidfile_report in [slapos] to a writable path",
                exit_code=1,
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockedError(
                f"another {self.what} is already running (pid {holder}, lock {self.pidfile}); try again later"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.pidfile.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
