"""Long-poll our proxy for what changed on a computer (`/watchComputer`, docs/watch.md).

    from slapos.slap.watch import watch_computer, WatchUnsupported
    result = watch_computer(slap.connection, "COMP-0", cursor=None, timeout=30)
    # result.reset: reconcile everything; else result.changes; next call with result.cursor

The call goes to the same master with the same identity as the SLAP client (TLS client
certificate, CA, credential in master_url), on its own pool of connections whose read timeout
covers the long poll (`timeout` + `READ_MARGIN`). A master that does not serve the route (any
SlapOS master but our proxy) raises `WatchUnsupported`: the caller falls back to polling. Network
failures raise the usual `slapos.slap.ConnectionError`. The answer is checked strictly and
bounded; change kinds this client does not know are skipped (a newer proxy may add some).
"""
from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field

from .connection import Connection
from .exceptions import BadRequestError, NotFoundError, ServerError, SlapException

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (as slapos.slap does)
if TYPE_CHECKING:  # pragma: no cover
    from .objects import slap

SCHEMA = "slapnode.watch/1"
READ_MARGIN = 15.0  # seconds beyond the poll's timeout before the answer counts as lost
MAX_BODY = 1 << 20  # an answer is a few kB (at most MAX_CHANGES of them); refuse more
MAX_CHANGES = 4096
MAX_TEXT = 4096  # a cursor, a partition reference, a software release URL
KINDS = ("partition", "software", "computer")
# our proxy's 404 for a computer it does not know yet (the node formats it soon): not a master
# without the route, so no fall back to polling for PUSH_RETRY; the caller retries with back-off
UNKNOWN_COMPUTER = "unknown computer"


class WatchUnsupported(SlapException):
    """The master does not serve /watchComputer (it is not our proxy, or an older one): poll instead."""


@dataclass(frozen=True)
class Change:
    """`kind` partition (`reference` set), software (`url` set) or computer (the whole computer)."""

    kind: str
    reference: str | None = None
    url: str | None = None


@dataclass
class WatchResult:
    cursor: str
    reset: bool
    changes: list[Change] = field(default_factory=list)
    retry_after: float | None = None


_siblings: weakref.WeakKeyDictionary[Connection, tuple[float, Connection]] = weakref.WeakKeyDictionary()
_siblings_lock = threading.Lock()


def _long_poll_connection(connection: Connection, read_timeout: float) -> Connection:
    """A connection like `connection` (same URL, certificate, CA) whose reads wait `read_timeout`:
    kept per connection, so successive watches reuse its kept-alive socket."""
    with _siblings_lock:
        known = _siblings.get(connection)
        if known is not None and known[0] == read_timeout:
            return known[1]
    sibling = Connection(connection.master_url, key_file=connection.key_file, cert_file=connection.cert_file,
                         master_ca_file=connection.master_ca_file, timeout=read_timeout,
                         insecure=connection.insecure)
    sibling.transport.max_body = MAX_BODY  # an answer is a few kB: refuse more before it is read whole
    with _siblings_lock:
        old = _siblings.get(connection)
        _siblings[connection] = (read_timeout, sibling)
    if old is not None:
        old[1].close()
    return sibling


def watch_computer(connection: Connection | slap, computer_id: str, cursor: str | None, timeout: float) -> WatchResult:
    """Wait up to `timeout` seconds (the proxy clamps it to 1..55) for a change of `computer_id`
    after `cursor` (None: a first call, answered at once with `reset`). `connection`: the SLAP
    client's `Connection` (`slap().connection`), or the connected `slap` itself."""
    if not isinstance(connection, Connection):
        connection = connection.connection  # a slap(): its connection (SlapException if not connected)
    if not computer_id:
        raise SlapException("watch_computer needs a computer id")
    timeout = float(timeout)
    if not 0 < timeout < 3600:
        raise SlapException(f"watch timeout must be a number of seconds between 0 and 3600, not {timeout!r}")
    params = {"computer_id": computer_id, "timeout": f"{timeout:g}"}
    if cursor:
        params["cursor"] = cursor
    poll = _long_poll_connection(connection, timeout + READ_MARGIN)
    url = poll.url("watchComputer")
    try:
        body = poll.get("watchComputer", params)
    except ServerError as e:
        if e.status != 501:
            raise
        raise WatchUnsupported(f"{url}: the master does not implement watchComputer (501): poll it instead",
                               url=url, status=501) from None
    except NotFoundError as e:
        if UNKNOWN_COMPUTER in str(e):  # the route is served; the computer is not formatted yet: retry
            raise
        raise WatchUnsupported(f"{url}: the master does not serve watchComputer (404): poll it instead",
                               url=url, status=404) from None
    except BadRequestError as e:
        if e.status not in (400, 405):
            raise
        raise WatchUnsupported(f"{url}: the master refused watchComputer ({e.status}): poll it instead",
                               url=url, status=e.status) from None
    return parse_answer(body, url)


def parse_answer(body: bytes, url: str = "watchComputer") -> WatchResult:
    """The checked answer; anything else than a `slapnode.watch/1` document is WatchUnsupported."""

    def bad(why: str) -> WatchUnsupported:
        return WatchUnsupported(f"{url}: the answer is not a slapnode watch document ({why}): poll the master instead",
                                url=url)

    if len(body) > MAX_BODY:
        raise bad(f"{len(body)} bytes, more than {MAX_BODY}")
    try:
        # json decodes a bounded body into at most a proportional structure; nesting is checked below
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise bad(f"schema is not {SCHEMA}")
    cursor, reset, changes = document.get("cursor"), document.get("reset"), document.get("changes")
    if not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_TEXT:
        raise bad("cursor must be a non-empty string")
    if not isinstance(reset, bool):
        raise bad("reset must be true or false")
    if not isinstance(changes, list) or len(changes) > MAX_CHANGES:
        raise bad(f"changes must be a list of at most {MAX_CHANGES}")
    retry_after = document.get("retry_after")
    if retry_after is not None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or not 0 <= retry_after <= 3600:
            raise bad("retry_after must be a number of seconds up to 3600")
        retry_after = float(retry_after)
    result = WatchResult(cursor, reset, [], retry_after)
    seen: set[Change] = set()
    for entry in changes:
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise bad("a change must be an object with a kind")
        kind = entry["kind"]
        if kind not in KINDS:
            continue  # a kind of a newer proxy: the node's periodic pass covers it
        if kind == "computer":
            change = Change("computer")
        else:
            key = "reference" if kind == "partition" else "url"
            value = entry.get(key)
            if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
                raise bad(f"a {kind} change needs a non-empty {key} string")
            change = Change(kind, **{key: value})
        if change not in seen:
            seen.add(change)
            result.changes.append(change)
    return result
