"""The local record of requested instances, and the --wait loop (in-process, no network)."""
from __future__ import annotations

import io
import logging
import os

import pytest

from slapos.client.instance import InstanceStatus, NotReady, ProgressLine, wait_for_connection
from slapos.client.registry import InstanceRegistry

MASTER = "http://127.0.0.1:4000"


def test_entries_are_kept_per_master_and_private(tmp_path):
    registry = InstanceRegistry(tmp_path / "home" / ".slapos" / "instances.json")
    registry.remember(MASTER, "a", software_url="/sr", requested_state="started")
    registry.remember(MASTER + "/", "b", software_url="/sr")  # same master, with the trailing slash
    registry.remember("http://other/", "a", software_url="/other")
    assert sorted(registry.instances(MASTER)) == ["a", "b"]
    assert registry.get("http://other", "a")["software_url"] == "/other"
    registry.remember(MASTER, "a", requested_state="stopped")
    entry = registry.get(MASTER, "a")
    assert entry["software_url"] == "/sr" and entry["requested_state"] == "stopped" and entry["updated"]
    registry.forget(MASTER, "a")
    assert registry.get(MASTER, "a") is None
    assert registry.path.stat().st_mode & 0o777 == 0o600
    assert registry.path.parent.stat().st_mode & 0o777 == 0o700
    assert not [p for p in registry.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_damaged_or_unwritable_records_are_warnings(tmp_path, caplog):
    path = tmp_path / "instances.json"
    path.write_text("{not json")
    registry = InstanceRegistry(path)
    with caplog.at_level(logging.WARNING):
        assert registry.instances(MASTER) == {}
    assert "ignoring unreadable instance record" in caplog.text
    # values JSON cannot hold are written as text, never a failed request
    registry.remember(MASTER, "x", parameters={"obj": object()})
    assert registry.get(MASTER, "x")["parameters"]["obj"].startswith("<object")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with caplog.at_level(logging.WARNING):
            InstanceRegistry(locked / "sub" / "instances.json").remember(MASTER, "y")
        assert "cannot update the instance record" in caplog.text


def _status(connection: dict) -> InstanceStatus:
    return InstanceStatus("i", "/sr", "default", False, "started", "C", "slappart0",
                          connection_parameters=connection)


def test_wait_loop_until_parameters_or_timeout():
    now = [0.0]
    answers = iter([NotReady("x"), _status({}), _status({}), _status({"url": "u"})])
    progress = []

    def request():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    status = wait_for_connection(request, timeout=100, clock=lambda: now[0],
                                 sleep=lambda s: now.__setitem__(0, now[0] + s),
                                 progress=lambda m, done: progress.append((m, done)))
    assert status.connection_parameters == {"url": "u"}
    assert progress[0][0].startswith("waiting: not allocated yet")
    assert "allocated on C/slappart0, no connection parameters yet" in progress[1][0]
    assert progress[-1] == ("", True)

    now[0] = 0.0
    with pytest.raises(NotReady, match="no connection parameters yet after 5 s") as error:
        wait_for_connection(lambda: _status({}), timeout=5, clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert error.value.exit_code == 2


def test_progress_line_rewrites_itself_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    line = ProgressLine(out)
    line("waiting: a long message (1s / 60s)", False)
    line("waiting: short (2s / 60s)", False)
    line("", True)
    text = out.getvalue()
    assert text.startswith("\rwaiting: a long message")
    assert "\rwaiting: short (2s / 60s)" in text and text.endswith("\r")
    plain = io.StringIO()
    ProgressLine(plain)("waiting: x", False)
    assert plain.getvalue() == "waiting: x\n"
