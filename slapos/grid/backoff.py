"""Back-off for partitions that keep failing on the same inputs.

The node runs every minute. A partition whose buildout fails for a reason that will not go away
by itself (a typo in a parameter, a missing software release) would otherwise be rebuilt at full
speed forever. After the n-th consecutive failure on unchanged inputs the next attempt waits
1, 2, 4, ... minutes, at most an hour. New inputs from the master (new parameters, state,
software release, a bang) or `--force` retry at once.
"""
from __future__ import annotations

from dataclasses import dataclass

FIRST_DELAY = 60.0  # seconds
MAX_DELAY = 3600.0
# cron starts runs about a minute apart: a retry due a few seconds after the next run starts
# would otherwise wait a whole extra minute
GRACE = 5.0


def delay_after(failures: int) -> float:
    """Seconds to wait after the n-th consecutive failure (n >= 1)."""
    if failures <= 0:
        return 0.0
    return min(FIRST_DELAY * 2 ** (failures - 1), MAX_DELAY)


@dataclass(frozen=True)
class Verdict:
    wait: bool
    until: float | None = None
    reason: str = ""


def check(state, inputs: str, now: float, force: bool = False) -> Verdict:
    """Whether a partition in `state` (a PartitionState) must wait before its next attempt."""
    if force or state.status not in ("error", "promise-error") or not state.failures:
        return Verdict(False)
    if state.failed_inputs != inputs:
        return Verdict(False, reason="inputs changed")
    if state.next_retry is None or now + GRACE >= state.next_retry:
        return Verdict(False)
    return Verdict(True, state.next_retry,
                   f"failed {state.failures} time(s) on the same inputs; next attempt after back-off")


def record_failure(state, inputs: str, started: float) -> None:
    """Count a failure on `inputs` (a change of inputs starts counting again)."""
    if state.failed_inputs != inputs:
        state.failures = 0
    state.failures += 1
    state.failed_inputs = inputs
    state.next_retry = started + delay_after(state.failures)


def record_success(state) -> None:
    state.failures = 0
    state.failed_inputs = None
    state.next_retry = None
