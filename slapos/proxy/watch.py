"""`/watchComputer`: a node long-polls the proxy and is told at once what changed for it (docs/watch.md).

Where changes come from: SQLite triggers, TEMP (per connection, never written into the file) on
every connection of this process, call back into Python when a committed write changes what a
node must do:

* a partition's `timestamp`, the one change signal a node sees (slapos.proxy.partition_rows): it is
  bumped by an allocation, a parameter / state / software type change, a rename, a shared
  instance added, changed or removed on it, a bang of its tree, a connection parameter published
  by an instance it requested; never by what the node reports (started, stopped, errors,
  destroyed, usage), so a node is never woken by its own reports;
* a software release supplied or its requested state changed (`supplySupply`);
* a computer bang (`computerBang`).

What a trigger saw is kept per thread until the transaction ends (`Database.write`): published
after the COMMIT (and after the document cache moved on, so a woken node reads the new document),
dropped on a rollback. The change log is in memory and bounded (`CAPACITY` entries); a cursor is
`<proxy run id>.<sequence>`, so a cursor of another proxy run, or one older than the log, answers
`reset` (the node reconciles everything). Writes of another process on the same database file
(`slapos proxy` commands) are not seen: the node's periodic full pass covers them.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from slapos.base.promtext import Family

from .access import require_node
from .errors import BadRequest
from .wsgi import Request, Response

SCHEMA = "slapnode.watch/1"
CAPACITY = 4096  # changes kept in memory (a few hundred kB at most)
MAX_CHANGES = 512  # distinct changes in one answer; more answers `reset` (a full reconcile is cheaper)
MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 1.0, 55.0, 30.0
RETRY_AFTER = 5  # seconds a watcher refused for want of room waits before asking again
# waiting watches of one computer: its node needs one (two while a restarted node's old watch
# still waits); a node cannot take every place from the others
MAX_PER_COMPUTER = 2
MAX_CURSOR = 80
# a change names at most this much (a software release URL is not bounded by the protocol): a
# longer one is logged as a change of the whole computer, so neither the log nor an answer grows
# with what a caller sends
MAX_NAME = 2048
MAX_ANSWER = 256 * 1024  # bytes of one answer; a larger one answers reset instead
JSON = "application/json"

# TEMP triggers: they live in this connection only; the database file is never changed (another
# process without our function would fail on a trigger calling it)
TRIGGERS = (
    """CREATE TEMP TRIGGER IF NOT EXISTS slapnode_watch_partition AFTER UPDATE OF timestamp ON main.partition
       WHEN NEW.timestamp IS NOT OLD.timestamp AND NEW.slap_state = 'busy'
       BEGIN SELECT slapnode_watch('partition', NEW.computer_reference, NEW.reference); END""",
    """CREATE TEMP TRIGGER IF NOT EXISTS slapnode_watch_supply AFTER INSERT ON main.software
       BEGIN SELECT slapnode_watch('software', NEW.computer_reference, NEW.url); END""",
    # an upsert that updates fires the UPDATE trigger, not the INSERT one
    """CREATE TEMP TRIGGER IF NOT EXISTS slapnode_watch_resupply AFTER UPDATE OF requested_state ON main.software
       WHEN NEW.requested_state IS NOT OLD.requested_state
       BEGIN SELECT slapnode_watch('software', NEW.computer_reference, NEW.url); END""",
    """CREATE TEMP TRIGGER IF NOT EXISTS slapnode_watch_bang AFTER UPDATE OF bang_at ON main.computer
       WHEN NEW.bang_at IS NOT OLD.bang_at
       BEGIN SELECT slapnode_watch('computer', NEW.reference, ''); END""",
)


@dataclass(frozen=True)
class Change:
    kind: str  # partition, software, computer
    computer: str
    name: str  # partition reference, software release URL, '' for the computer

    def as_json(self) -> dict:
        if self.kind == "partition":
            return {"kind": "partition", "reference": self.name}
        if self.kind == "software":
            return {"kind": "software", "url": self.name}
        return {"kind": self.kind}


class ChangeFeed:
    """The in-memory change log and the watchers waiting on it (one per proxy process)."""

    def __init__(self, run_id: str, max_waiters: int, capacity: int = CAPACITY):
        self.run_id = run_id
        self.max_waiters = max(0, max_waiters)  # 0: every watch is answered at once (retry_after)
        self._cond = threading.Condition()
        self._log: deque[tuple[int, Change]] = deque(maxlen=capacity)
        self._seq = 0
        self._waiting = 0
        self._waiting_by_computer: dict[str, int] = {}
        self._closed = False
        self._pending = threading.local()  # what this thread's open transaction changed
        self.answered: dict[str, int] = {k: 0 for k in ("change", "timeout", "reset", "busy", "shutdown")}

    @property
    def waiting(self) -> int:
        return self._waiting

    # -- feeding ------------------------------------------------------------------------------------
    def attach(self, db) -> None:
        """Install the triggers on every connection of `db` (now and later) and publish at commit."""
        db.add_hooks(self.install, self._end)

    def install(self, conn: sqlite3.Connection) -> None:
        """The triggers and their function on one connection (`attach` does it for all)."""
        conn.create_function("slapnode_watch", 3, self._saw)
        for statement in TRIGGERS:
            conn.execute(statement)

    def _saw(self, kind: str, computer: str | None, name: str | None) -> None:
        pending = getattr(self._pending, "changes", None)
        if pending is None:
            pending = self._pending.changes = []
        if computer is None or len(computer) > MAX_NAME:
            return  # no node can watch it: watchComputer refuses such a computer id
        if name and len(name) > MAX_NAME:
            kind, name = "computer", ""
        pending.append(Change(kind, computer, name or ""))

    def _end(self, committed: bool) -> None:
        pending = getattr(self._pending, "changes", None)
        if not pending:
            return
        self._pending.changes = None
        if committed:
            self.publish(pending)

    def publish(self, changes: list[Change]) -> None:
        with self._cond:
            for change in changes:
                self._seq += 1
                self._log.append((self._seq, change))
            self._cond.notify_all()

    def close(self) -> None:
        """Proxy shutdown: every waiting watch answers now."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- watching -----------------------------------------------------------------------------------
    def cursor(self, seq: int) -> str:
        return f"{self.run_id}.{seq}"

    def _position(self, cursor: str | None) -> int | None:
        """The sequence a cursor stands for, or None if this proxy run cannot answer from it."""
        if not cursor or len(cursor) > MAX_CURSOR:
            return None
        run, _, number = cursor.rpartition(".")
        if run != self.run_id or not (number.isascii() and number.isdigit()) or len(number) > 19:
            return None
        seq = int(number)
        if seq > self._seq or (self._log and seq < self._log[0][0] - 1):
            return None  # from the future, or older than the log: changes may be lost
        return seq

    def _since(self, seq: int, computer: str) -> list[Change]:
        found: list[Change] = []
        for number, change in reversed(self._log):
            if number <= seq:
                break
            if change.computer == computer:
                found.append(change)
        return list(dict.fromkeys(reversed(found)))  # oldest first, each once

    def watch(self, computer: str, cursor: str | None, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            seq = self._position(cursor)
            if seq is None:
                return self._answer("reset", self._seq, reset=True)
            changes = self._since(seq, computer)
            if not changes and not self._closed:
                mine = self._waiting_by_computer.get(computer, 0)
                if self._waiting >= self.max_waiters or mine >= MAX_PER_COMPUTER:
                    return self._answer("busy", seq, retry_after=RETRY_AFTER)
                self._waiting += 1
                self._waiting_by_computer[computer] = mine + 1
                try:
                    scanned = self._seq
                    while not changes and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                        if self._log and scanned < self._log[0][0] - 1:
                            return self._answer("reset", self._seq, reset=True)  # the log ran over us
                        # only what came since the last look is scanned (nothing before it was ours)
                        changes, scanned = self._since(scanned, computer), self._seq
                finally:
                    self._waiting -= 1
                    left = self._waiting_by_computer.pop(computer) - 1
                    if left:
                        self._waiting_by_computer[computer] = left
            if len(changes) > MAX_CHANGES:
                return self._answer("reset", self._seq, reset=True)
            if changes:
                return self._answer("change", self._seq, changes=changes)
            if self._closed:
                return self._answer("shutdown", self._seq, retry_after=1)
            # nothing for this computer up to now: the cursor moves on, so a quiet node's cursor
            # never falls off a log filled by other computers' changes
            return self._answer("timeout", self._seq)

    def _answer(self, outcome: str, seq: int, reset: bool = False, changes: list[Change] | None = None,
                retry_after: int | None = None) -> dict:
        self.answered[outcome] += 1  # under the condition's lock
        answer: dict = {"schema": SCHEMA, "cursor": self.cursor(seq), "reset": reset,
                        "changes": [c.as_json() for c in changes or ()]}
        if retry_after is not None:
            answer["retry_after"] = retry_after
        return answer

    # -- metrics -------------------------------------------------------------------------------------
    def families(self) -> list[Family]:
        waiting = Family("slapproxy_watches_waiting", "gauge",
                         "Nodes waiting in /watchComputer for a change of their computer")
        answered = Family("slapproxy_watches_answered_total", "counter",
                          "Answers of /watchComputer by outcome (change, timeout, reset, busy: no room to "
                          "wait, shutdown)")
        with self._cond:
            waiting.add(self._waiting)
            counts = sorted(self.answered.items())
        for outcome, n in counts:
            answered.add(n, outcome=outcome)
        return [waiting, answered]


def timeout_field(req: Request) -> float:
    raw = req.optional("timeout")
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"field 'timeout' of {req.endpoint} must be a number of seconds") from None
    if not math.isfinite(value):
        raise BadRequest(f"field 'timeout' of {req.endpoint} must be a number of seconds")
    return min(max(value, MIN_TIMEOUT), MAX_TIMEOUT)


def handle(feed: ChangeFeed, req: Request, require_computer: Callable[[str], None]) -> Response:
    """`GET /watchComputer?computer_id=&cursor=&timeout=`: who may read a computer's document may
    watch it (the node, anyone on an open proxy, that computer's certificate). A computer the
    proxy does not know is answered at once (`require_computer`: 404, one line): made-up ids
    must not take the waiting places of the nodes (on an open proxy, any local process watches)."""
    computer_id = req.reference("computer_id")
    require_node(req.identity, req.endpoint, computer_id)  # as getFullComputerInformation
    if len(computer_id) > MAX_NAME:
        raise BadRequest(f"field 'computer_id' of {req.endpoint} is longer than {MAX_NAME} characters")
    require_computer(computer_id)
    timeout = timeout_field(req)
    answer = feed.watch(computer_id, req.fields.get("cursor") or None, timeout)
    body = json.dumps(answer, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_ANSWER:  # (512 long names escaped): the node reconciles everything instead
        answer.update(reset=True, changes=[])
        body = json.dumps(answer, separators=(",", ":")).encode("utf-8")
    return Response(body, content_type=JSON)
