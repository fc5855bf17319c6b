"""`slapos node status --daemon` as tables: the runs per kind, the master connection and queue,
then the partitions (the table of `slapos node status --partitions`)."""
from __future__ import annotations

from typing import Any


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def daemon_table(doc: dict[str, Any], width: int | None = None) -> str:
    from slapos.base.table import render

    d = doc["daemon"]
    master = d["master"]
    lines = [f"daemon pid {d['pid']} {d['state']} since {d['started']}; master {master['url']}: {master['mode']}"
             f" (last contact {master['last_contact'] or 'never'}, {master['errors']} error(s)"
             f"{'; last: ' + master['last_error'] if master['last_error'] and master['consecutive_errors'] else ''})"]
    rows = []
    for kind, run in d["runs"].items():
        last = run["last_run"] or {}
        running = run["running"]
        rows.append((kind, "off" if not run["period"] else _seconds(run["period"]),
                     f"yes: {running['scope']}" if running else "-",
                     last.get("started") or "-", _seconds(last.get("duration")),
                     "-" if not last else str(last["exit_code"]), str(run["runs"]), str(run["failed_runs"]),
                     _seconds(run["next_full_pass_in"])))
    lines.append(render(("KIND", "PERIOD", "RUNNING", "LAST START", "DURATION", "EXIT", "RUNS", "FAILED",
                         "NEXT FULL"), rows, width=width).rstrip("\n"))
    queue = d["queue"]
    pending = [*queue["partitions"], *queue["software_releases"], *(f"full {k}" for k in queue["full_passes"])]
    lines.append(f"queue: {', '.join(pending) if pending else 'empty'}")
    partitions = doc.get("partitions") or []
    if partitions:
        rows = []
        for p in partitions:
            backoff = p["backoff"]
            error = (p["last_error"] or "-").strip().splitlines() or ["-"]
            rows.append((p["partition"], p["requested_state"] or "-", p["status"] or "-",
                         f"{backoff['failures']} until {backoff['next_retry']}" if backoff["next_retry"] else "-",
                         error[0][:100]))
        lines.append(render(("PARTITION", "REQUESTED", "STATUS", "BACK-OFF", "LAST ERROR"), rows,
                            width=width).rstrip("\n"))
    return "\n".join(lines)
