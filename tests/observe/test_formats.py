"""The status vocabulary's input cleaning and the Prometheus text writer."""
from __future__ import annotations

import os
import stat

import pytest

from slapos.base import promtext, statusdoc


def test_a_posted_report_keeps_only_the_vocabulary_within_bounds():
    huge = "x" * 100_000
    partitions = statusdoc.clean_report({
        "schema": statusdoc.SCHEMA,
        "partitions": [
            {"partition": "slappart0", "status": "sideways", "last_error": huge, "secret": "dropped",
             "backoff": {"failures": True, "next_retry": 3}, "promises": [{"title": "p", "failed": 1}] * 500},
            {"partition": ""}, "not a dict", {"partition": ["a list"]},
        ],
    }, "COMP-1")
    assert len(partitions) == 1
    record = partitions[0]
    assert list(record) == list(statusdoc.partition_record("c", "p"))
    assert record["computer"] == "COMP-1" and record["status"] is None  # not one of STATUSES
    assert len(record["last_error"]) == statusdoc.MAX_TEXT and record["last_error"].startswith("…")
    assert record["backoff"] == {"failures": 0, "next_retry": "3"}
    assert len(record["promises"]) == statusdoc.MAX_PROMISES and record["promises"][0]["failed"] is True
    with pytest.raises(ValueError, match="more than"):
        statusdoc.clean_report({"partitions": [{}] * (statusdoc.MAX_PARTITIONS + 1)}, "c")
    with pytest.raises(KeyError, match="invented"):
        statusdoc.partition_record("c", "p", invented=1)


def test_prometheus_text_escapes_labels_and_is_written_whole(tmp_path):
    family = promtext.Family("slapos_x", "gauge", "help\nwith a newline")
    family.add(1.5, partition='sla"pp\\art\n0')
    family.add(float("inf"), "_bucket", le="+Inf")
    family.add(True)
    text = promtext.render([family])
    assert text == (
        "# HELP slapos_x help with a newline\n# TYPE slapos_x gauge\n"
        'slapos_x{partition="sla\\"pp\\\\art\\n0"} 1.5\n'
        'slapos_x_bucket{le="+Inf"} +Inf\nslapos_x 1\n'
    )
    path = tmp_path / "metrics" / "a.prom"
    promtext.write_atomic(path, text)
    assert path.read_text() == text and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["a.prom"]  # no temporary file left
