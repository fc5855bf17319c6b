"""The status vocabulary shared by the node and the proxy (schema `slapnode.status/1`).

`slapos node status --partitions --format json`, the report the node posts to the proxy after a
run, the proxy's `/status.json` and its dashboard all speak it, so a tool reading one reads the
others. docs/dashboard.md documents each field. One partition record:

    computer, partition          ids
    slap_state                   free | busy (master's allocation; null on the node)
    title                        instance title (master; null on the node)
    software_release, software_type
    requested_state              started | stopped | destroyed
    reported_state               last state told to the master: started | stopped | error
    status                       the node's verdict: new | ok | error | promise-error | waiting
    last_error                   text of the last failure, or null
    last_attempt, last_success   ISO 8601 UTC dates, or null
    timestamp                    the master's timestamp of the deployed inputs
    backoff                      {"failures": n, "next_retry": date or null}
    promises                     [{"title", "failed", "message", "date"}]
    usage                        {resource: quantity} from the last usage report, or null

Dates are ISO 8601 in UTC. Unknown fields of a posted report are dropped, strings are cut to a
bound and lists to a length: the proxy keeps what it can show, never what a client invents.
"""
from __future__ import annotations

import datetime
from typing import Any

SCHEMA = "slapnode.status/1"
STATUSES = ("new", "ok", "error", "promise-error", "waiting")
MAX_TEXT = 4096  # last_error and promise messages: the end of the text is what tells
MAX_SHORT = 1024
MAX_PROMISES = 200
MAX_PARTITIONS = 10000


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="seconds")


def partition_record(computer: str | None, partition: str, **fields: Any) -> dict[str, Any]:
    """A record with every field present (null when unknown), in the documented order."""
    record: dict[str, Any] = {
        "computer": computer,
        "partition": partition,
        "slap_state": None,
        "title": None,
        "software_release": None,
        "software_type": None,
        "requested_state": None,
        "reported_state": None,
        "status": None,
        "last_error": None,
        "last_attempt": None,
        "last_success": None,
        "timestamp": None,
        "backoff": {"failures": 0, "next_retry": None},
        "promises": [],
        "usage": None,
        # the partition's cgroup: memory/pids current and max, cpu seconds and quota (or null)
        "resources": None,
    }
    unknown = set(fields) - set(record)
    if unknown:
        raise KeyError(f"not fields of the status vocabulary: {', '.join(sorted(unknown))}")
    record.update(fields)
    return record


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    return _cut(value if isinstance(value, str) else str(value), limit)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else 0


def clean_partition(raw: Any, computer: str) -> dict[str, Any] | None:
    """A posted partition record reduced to the vocabulary, or None when it names no partition."""
    if not isinstance(raw, dict):
        return None
    partition = raw.get("partition")
    if not isinstance(partition, str) or not partition:
        return None
    raw_backoff = raw.get("backoff")
    backoff = raw_backoff if isinstance(raw_backoff, dict) else {}
    raw_promises = raw.get("promises")
    promises = []
    for p in (raw_promises if isinstance(raw_promises, list) else [])[:MAX_PROMISES]:
        if isinstance(p, dict) and isinstance(p.get("title"), str):
            promises.append({
                "title": _text(p["title"], MAX_SHORT),
                "failed": bool(p.get("failed")),
                "message": _text(p.get("message"), MAX_TEXT),
                "date": _text(p.get("date"), 64),
            })
    status = raw.get("status")
    return partition_record(
        computer, _cut(partition, MAX_SHORT),
        software_release=_text(raw.get("software_release"), MAX_SHORT),
        software_type=_text(raw.get("software_type"), MAX_SHORT),
        requested_state=_text(raw.get("requested_state"), 32),
        reported_state=_text(raw.get("reported_state"), 32),
        status=status if status in STATUSES else None,
        last_error=_text(raw.get("last_error"), MAX_TEXT),
        last_attempt=_text(raw.get("last_attempt"), 64),
        last_success=_text(raw.get("last_success"), 64),
        timestamp=_text(raw.get("timestamp"), 64),
        backoff={"failures": _int(backoff.get("failures")), "next_retry": _text(backoff.get("next_retry"), 64)},
        promises=promises,
    )


def clean_report(raw: Any, computer: str) -> list[dict[str, Any]]:
    """The partitions of a posted node report (`{"schema", "partitions": [...]}`)."""
    if not isinstance(raw, dict):
        raise ValueError("the status report must be a JSON object")
    if raw.get("schema") not in (None, SCHEMA):
        raise ValueError(f"unknown status schema {str(raw.get('schema'))[:40]!r}: this proxy reads {SCHEMA}")
    partitions = raw.get("partitions")
    if not isinstance(partitions, list):
        raise ValueError("the status report needs a 'partitions' list")
    if len(partitions) > MAX_PARTITIONS:
        raise ValueError(f"the status report lists more than {MAX_PARTITIONS} partitions")
    cleaned = [clean_partition(p, computer) for p in partitions]
    return [p for p in cleaned if p is not None]
