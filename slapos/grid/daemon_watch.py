"""The daemon's one connection to the master: long-polls our proxy's `/watchComputer` and turns
what changed into passes (grid/daemon.py).

* a partition changed → an instance pass over that partition (changes close together: one pass);
* a software release changed → a software pass over that release;
* the computer changed, or `reset` (first contact, proxy restarted, cursor forgotten) → full
  instance and software passes;
* a master without the route (any other SLAP master: `WatchUnsupported`) → polling mode: the
  instance and software passes run every `run_poll_period`; push is tried again every
  `PUSH_RETRY` seconds (the master may be upgraded);
* network errors → reconnect after 1, 2, 4 ... `MAX_BACKOFF` seconds; the periodic full passes go
  on meanwhile, so a lost master never stalls the loop.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("slapos.daemon")

WATCH_TIMEOUT = 50.0  # seconds the master may hold one long-poll (below common proxy idle limits)
MAX_BACKOFF = 30.0
PUSH_RETRY = 600.0
MAX_RETRY_AFTER = 60.0


class Watcher:
    def __init__(self, daemon, enabled: bool = True):
        self.daemon = daemon
        self.enabled = enabled
        self.mode = "connecting" if enabled else "polling"  # push | polling | connecting | offline
        self.cursor: str | None = None
        self.last_contact: float | None = None  # epoch of the last answer
        self.errors = 0  # consecutive failures
        self.total_errors = 0
        self.last_error: str | None = None
        self.changes = 0
        self._stop = threading.Event()
        self._connection = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.enabled:
            log.info("push disabled (--poll): polling the master every %.0f s", self.daemon.config.poll_period)
            return
        self._thread = threading.Thread(target=self._loop, name="run-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def reconnect(self) -> None:
        """New settings (SIGHUP): a new connection, a new cursor."""
        self._connection = None
        self.cursor = None

    def snapshot(self) -> dict:
        return {"mode": self.mode, "url": _redact(self.daemon.settings.master_url), "last_contact": self.last_contact,
                "consecutive_errors": self.errors, "errors": self.total_errors, "last_error": self.last_error,
                "changes": self.changes}

    def _connect(self):
        if self._connection is None:
            from slapos.slap.connection import Connection

            s = self.daemon.settings
            self._connection = Connection(s.master_url, s.key_file, s.cert_file, s.master_ca_file,
                                          timeout=WATCH_TIMEOUT + 30)
        return self._connection

    def _loop(self) -> None:
        from slapos.slap.watch import WatchUnsupported, watch_computer

        delay = 1.0
        while not self._stop.is_set():
            try:
                result = watch_computer(self._connect(), self.daemon.settings.computer_id, self.cursor,
                                        WATCH_TIMEOUT)
            except WatchUnsupported as e:
                self._set_polling(str(e) or "the master cannot push")
                if self._stop.wait(PUSH_RETRY):
                    return
                continue
            except Exception as e:  # offline: retry with a capped back-off; full passes go on
                self.errors += 1
                self.total_errors += 1
                self.last_error = str(e).splitlines()[0][:500] if str(e) else type(e).__name__
                if self.errors == 1:
                    log.warning("lost the master's push connection (%s); reconnecting", self.last_error)
                self.mode = "offline"
                self._connection = None
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if self.errors:
                log.info("push connection to the master back after %d failed attempt(s)", self.errors)
            delay, self.errors = 1.0, 0
            self.last_contact = time.time()
            if self.mode != "push":
                log.info("the master pushes changes: passes run as soon as something changes")
                self.mode = "push"
            self._dispatch(result)
            self.cursor = result.cursor
            if result.retry_after and self._stop.wait(min(float(result.retry_after), MAX_RETRY_AFTER)):
                return

    def _dispatch(self, result) -> None:
        if result.reset:
            log.debug("master: reset, full passes")
            self.daemon.wake("instance")
            self.daemon.wake("software")
            return
        partitions: set[str] = set()
        releases: set[str] = set()
        full = False
        for change in result.changes:
            self.changes += 1
            if change.kind == "partition" and change.reference:
                partitions.add(change.reference)
            elif change.kind == "software" and change.url:
                releases.add(change.url)
            else:  # the computer, or a kind this version does not know: everything
                full = True
        if full:
            self.daemon.wake("instance")
            self.daemon.wake("software")
            return
        if partitions:
            log.info("master: %s changed", ", ".join(sorted(partitions)))
            self.daemon.wake("instance", partitions)
        if releases:
            log.info("master: software release(s) %s changed", ", ".join(sorted(releases)))
            self.daemon.wake("software", releases)

    def _set_polling(self, why: str) -> None:
        if self.mode != "polling":
            log.info("%s: polling the master every %.0f s", why, self.daemon.config.poll_period)
        self.mode = "polling"
        with self.daemon.cond:
            self.daemon.cond.notify_all()  # the instance and software periods just changed


def _redact(url: str) -> str:
    from slapos.slap.connection import redact_url

    return redact_url(url)
