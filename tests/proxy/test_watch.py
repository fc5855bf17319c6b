"""`/watchComputer` on a real proxy (docs/watch.md): a watcher thread blocked in `watch_computer`
wakes with exactly the change another client made, never with the node's own reports, never for
another computer; a cursor of another proxy run resets; the waiters are bounded; shutdown does
not wait for them. Timings are never asserted beyond "answered before the watch's timeout"."""
from __future__ import annotations

import threading
import time

import pytest

from slapos.proxy.watch import ChangeFeed
from slapos.slap.watch import Change, WatchResult, watch_computer

from .conftest import COMPUTER, SR, format_computer, start_live

LONG = 50.0  # a watch that must be woken: it would time out only after this
QUIET = 1.0  # a watch that must not be woken: it times out after this


class Watcher:
    """`watch_computer` in a thread; `result()` is its answer (or the exception it raised)."""

    def __init__(self, connection, computer_id: str, cursor: str | None, timeout: float = LONG):
        self.timeout = timeout
        self.answer: WatchResult | BaseException | None = None
        self.started = time.monotonic()
        self.finished: float | None = None

        def run() -> None:
            try:
                self.answer = watch_computer(connection, computer_id, cursor, timeout)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.answer = e
            self.finished = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> WatchResult:
        self.thread.join(self.timeout + 20)
        assert not self.thread.is_alive(), "the watch never answered"
        if isinstance(self.answer, BaseException):
            raise self.answer
        assert isinstance(self.answer, WatchResult)
        return self.answer

    def woke_early(self) -> bool:
        """Answered before its timeout: woken, not timed out."""
        return self.finished is not None and self.finished - self.started < self.timeout


def wait_waiting(app, count: int) -> None:
    """Until `count` watches wait in the proxy (so a change made now is one they must see)."""
    deadline = time.monotonic() + 20
    while app.watch.waiting < count:
        assert time.monotonic() < deadline, "the watch did not start waiting"
        time.sleep(0.01)


def cursor_of(connection, computer_id: str = COMPUTER) -> str:
    first = watch_computer(connection, computer_id, None, 5)
    assert first.reset and first.changes == []
    return first.cursor


def woken_by(live, connection, action, computer_id: str = COMPUTER, cursor: str | None = None) -> WatchResult:
    """Start a watch, make the change, return the watch's answer (it must come before the timeout)."""
    cursor = cursor or cursor_of(connection, computer_id)
    watcher = Watcher(connection, computer_id, cursor)
    wait_waiting(live.server.app, 1)
    action()
    answer = watcher.result()
    assert watcher.woke_early(), "the change did not wake the watch"
    assert not answer.reset and answer.cursor != cursor
    return answer


def quiet_after(connection, cursor: str, computer_id: str = COMPUTER) -> WatchResult:
    """A watch from `cursor` that must find nothing (it times out)."""
    answer = watch_computer(connection, computer_id, cursor, QUIET)
    assert answer.changes == [] and not answer.reset
    return answer


@pytest.fixture
def two_computers(tmp_path):
    """A proxy with COMP-0 and COMP-1 (4 partitions each), SR supplied to both."""
    live = start_live(tmp_path, threads=8)
    connection = live.connect()
    format_computer(connection, COMPUTER, 4)
    format_computer(connection, "COMP-1", 4, network=1)
    for computer in (COMPUTER, "COMP-1"):
        connection.registerSupply().supply(SR, computer)
    try:
        yield live, connection
    finally:
        connection.close()
        live.http.close()
        live.server.stop()


def partition(reference: str) -> Change:
    return Change("partition", reference=reference)


def test_first_watch_and_unknown_cursors_reset_at_once(node):
    live, connection = node
    first = watch_computer(connection.connection, COMPUTER, None, LONG)
    assert first.reset and first.changes == [] and first.retry_after is None
    run_id = live.http.get("getRunId")[1]
    assert first.cursor.startswith(run_id)
    for cursor in ("garbage", "x" * 500, f"{'A' * 32}.0", f"{run_id}.999999", f"{run_id}.-1", f"{run_id}.",
                   f"{run_id}.²", f"{run_id}.٣"):  # digits to isdigit(), not to int()
        answer = watch_computer(connection.connection, COMPUTER, cursor, LONG)
        assert answer.reset and answer.changes == [], cursor
    # the raw answer is the documented JSON
    status, body, content_type = live.http.get("watchComputer", computer_id=COMPUTER)
    assert status == 200 and content_type == "application/json"
    assert body.startswith('{"schema":"slapnode.watch/1"')


def test_request_parameters_state_and_destroy_wake_the_node_of_the_partition(two_computers):
    live, slap = two_computers
    conn = slap.connection
    order = slap.registerOpenOrder()
    answer = woken_by(live, conn, lambda: order.request(SR, "inst", {"a": "1"}, filter_kw={"computer_guid": COMPUTER}))
    assert answer.changes == [partition("slappart0")]
    answer = woken_by(live, conn, lambda: order.request(SR, "inst", {"a": "2"}), cursor=answer.cursor)
    assert answer.changes == [partition("slappart0")]
    answer = woken_by(live, conn, lambda: order.request(SR, "inst", {"a": "2"}, state="stopped"), cursor=answer.cursor)
    assert answer.changes == [partition("slappart0")]
    answer = woken_by(live, conn, lambda: order.request(SR, "inst", {"a": "2"}, software_type="other",
                                                         state="stopped"), cursor=answer.cursor)
    assert answer.changes == [partition("slappart0")]
    # the same request again changes nothing: nothing to wake for
    order.request(SR, "inst", {"a": "2"}, software_type="other", state="stopped")
    quiet_after(conn, answer.cursor)
    answer = woken_by(live, conn, lambda: order.request(SR, "inst", {"a": "2"}, software_type="other",
                                                         state="destroyed"), cursor=answer.cursor)
    assert answer.changes == [partition("slappart0")]
    # the node destroys it and says so: its own report never wakes it
    slap.registerComputerPartition(COMPUTER, "slappart0").destroyed()
    quiet_after(conn, answer.cursor)


def test_the_nodes_own_reports_never_wake_it(two_computers):
    live, slap = two_computers
    conn = slap.connection
    slap.registerOpenOrder().request(SR, "inst", filter_kw={"computer_guid": COMPUTER})
    cursor = cursor_of(conn)
    node_partition = slap.registerComputerPartition(COMPUTER, "slappart0")
    node_partition.started()
    node_partition.stopped()
    node_partition.error("the build failed")
    node_partition.setConnectionDict({"url": "http://[::1]:8080/"})  # requested by a person: nobody reads it
    computer = slap.registerComputer(COMPUTER)
    software = slap.registerSoftwareRelease(SR, COMPUTER)
    software.building()
    software.available()
    software.error("cannot build")
    computer.reportUsage("<journal/>")
    format_computer(slap, COMPUTER, 4)  # the node formats itself again
    status, _, _ = live.http.post("reportNodeStatus", computer_id=COMPUTER, status_json='{"partitions": []}')
    assert status == 200
    quiet_after(conn, cursor)


def test_a_change_on_another_computer_does_not_wake_this_one(two_computers):
    live, slap = two_computers
    conn = slap.connection
    cursor_a = cursor_of(conn, COMPUTER)
    answer = woken_by(live, conn, lambda: slap.registerOpenOrder().request(
        SR, "b-inst", {"x": "1"}, filter_kw={"computer_guid": "COMP-1"}), computer_id="COMP-1")
    assert answer.changes == [partition("slappart0")]
    quiet = quiet_after(conn, cursor_a, COMPUTER)
    # the quiet node's cursor moved past the other computer's change: it never falls behind
    assert quiet.cursor != cursor_a


def test_a_huge_software_url_is_logged_as_a_change_of_the_computer(two_computers):
    live, slap = two_computers
    huge = "http://sr.example/" + "x" * 100_000 + ".cfg"
    answer = woken_by(live, slap.connection, lambda: slap.registerSupply().supply(huge, COMPUTER))
    assert answer.changes == [Change("computer")]


def test_supply_and_removal_wake_with_the_software_release(two_computers):
    live, slap = two_computers
    other = "http://sr.example/watched.cfg"
    answer = woken_by(live, slap.connection, lambda: slap.registerSupply().supply(other, COMPUTER))
    assert answer.changes == [Change("software", url=other)]
    slap.registerSupply().supply(other, COMPUTER)  # supplied again: nothing new to do
    quiet_after(slap.connection, answer.cursor)
    answer = woken_by(live, slap.connection, lambda: slap.registerSupply().supply(other, COMPUTER, "destroyed"),
                      cursor=answer.cursor)
    assert answer.changes == [Change("software", url=other)]
    slap.registerSoftwareRelease(other, COMPUTER).destroyed()  # the node removed it: its own report
    quiet_after(slap.connection, answer.cursor)


def test_shared_instances_wake_the_node_of_their_host(two_computers):
    live, slap = two_computers
    order = slap.registerOpenOrder()
    host = order.request(SR, "host", filter_kw={"computer_guid": "COMP-1"})
    assert (host.getComputerId(), host.getId()) == ("COMP-1", "slappart0")
    cursor_a = cursor_of(slap.connection, COMPUTER)
    answer = woken_by(live, slap.connection, lambda: order.request(SR, "site", {"domain": "a.example"}, shared=True),
                      computer_id="COMP-1")
    assert answer.changes == [partition("slappart0")]
    answer = woken_by(live, slap.connection, lambda: order.request(SR, "site", {"domain": "b.example"}, shared=True),
                      computer_id="COMP-1", cursor=answer.cursor)
    assert answer.changes == [partition("slappart0")]
    answer = woken_by(live, slap.connection, lambda: order.request(SR, "site", {"domain": "b.example"}, shared=True,
                                                                   state="destroyed"),
                      computer_id="COMP-1", cursor=answer.cursor)
    assert answer.changes == [partition("slappart0")]
    quiet_after(slap.connection, cursor_a, COMPUTER)


def test_a_published_connection_wakes_the_requester_on_its_computer(two_computers):
    live, slap = two_computers
    order = slap.registerOpenOrder()
    parent = order.request(SR, "parent", filter_kw={"computer_guid": COMPUTER})
    # the parent's instance requests a child on the other computer
    child = slap.registerComputerPartition(COMPUTER, parent.getId()).request(
        SR, "child", "default", filter_kw={"computer_guid": "COMP-1"})
    assert child.getComputerId() == "COMP-1"
    cursor_b = cursor_of(slap.connection, "COMP-1")
    child_partition = slap.registerComputerPartition("COMP-1", child.getId())
    answer = woken_by(live, slap.connection, lambda: child_partition.setConnectionDict({"url": "http://child/"}))
    assert answer.changes == [partition(parent.getId())]
    # publishing is the child's node's own report: its node is not woken
    quiet_after(slap.connection, cursor_b, "COMP-1")


def test_bang_rename_and_computer_bang_wake(two_computers):
    live, slap = two_computers
    order = slap.registerOpenOrder()
    root = order.request(SR, "root", filter_kw={"computer_guid": COMPUTER})
    child = slap.registerComputerPartition(COMPUTER, root.getId()).request(
        SR, "leaf", "default", filter_kw={"computer_guid": COMPUTER})
    answer = woken_by(live, slap.connection, lambda: slap.registerComputerPartition(COMPUTER, child.getId()).bang("x"))
    assert sorted(c.reference for c in answer.changes) == sorted([root.getId(), child.getId()])
    answer = woken_by(live, slap.connection, lambda: slap.registerComputerPartition(COMPUTER, child.getId()).rename(
        "leaf2"), cursor=answer.cursor)
    assert answer.changes == [partition(child.getId())]
    answer = woken_by(live, slap.connection, lambda: slap.registerComputer(COMPUTER).bang("check everything"),
                      cursor=answer.cursor)
    # the computer, and every busy partition of it (the bang bumps them all)
    assert answer.changes == [Change("computer"), partition(root.getId()), partition(child.getId())]


def test_changes_between_two_watches_are_all_answered_once(two_computers):
    live, slap = two_computers
    cursor = cursor_of(slap.connection)
    order = slap.registerOpenOrder()
    for value in ("1", "2", "3"):  # no watch in flight: the log keeps them
        order.request(SR, "inst", {"v": value}, filter_kw={"computer_guid": COMPUTER})
    order.request(SR, "other", filter_kw={"computer_guid": COMPUTER})
    answer = watch_computer(slap.connection, COMPUTER, cursor, LONG)
    assert answer.changes == [partition("slappart0"), partition("slappart1")]
    quiet_after(slap.connection, answer.cursor)


def test_a_restarted_proxy_resets_the_watch(tmp_path):
    live = start_live(tmp_path)
    connection = live.connect()
    format_computer(connection, COMPUTER, 2)
    cursor = cursor_of(connection.connection)
    live.server.stop()
    again = start_live(tmp_path)  # same database, a new run
    try:
        connection.initializeConnection(again.url)
        answer = watch_computer(connection.connection, COMPUTER, cursor, LONG)
        assert answer.reset and answer.changes == [] and answer.cursor != cursor
    finally:
        again.server.stop()


def test_waiting_watches_are_bounded_and_other_calls_still_answer(tmp_path):
    live = start_live(tmp_path, threads=4)  # room for two waiting watches
    try:
        slap = live.connect()
        format_computer(slap, COMPUTER, 2)
        cursor = cursor_of(slap.connection)
        watchers = [Watcher(slap.connection, COMPUTER, cursor) for _ in range(2)]
        wait_waiting(live.server.app, 2)
        refused = watch_computer(slap.connection, COMPUTER, cursor, LONG)
        assert refused.changes == [] and not refused.reset
        assert refused.cursor == cursor and refused.retry_after and refused.retry_after > 0
        # the proxy still answers the other calls, and the change wakes both waiting watches
        slap.registerSupply().supply(SR, COMPUTER)
        for watcher in watchers:
            assert watcher.result().changes == [Change("software", url=SR)]
            assert watcher.woke_early()
        metrics = live.http.get("metrics")[1]
        assert 'slapproxy_watches_answered_total{outcome="busy"} 1' in metrics
        assert 'slapproxy_watches_answered_total{outcome="change"} 2' in metrics
        assert "slapproxy_watches_waiting 0" in metrics
    finally:
        live.server.stop()


def test_a_one_thread_proxy_never_lets_a_watch_wait(tmp_path):
    live = start_live(tmp_path, threads=1)  # a waiting watch would hold back every other call
    try:
        slap = live.connect()
        format_computer(slap, COMPUTER, 2)
        cursor = cursor_of(slap.connection)
        answer = watch_computer(slap.connection, COMPUTER, cursor, LONG)
        assert answer.retry_after and answer.changes == [] and answer.cursor == cursor
        slap.registerSupply().supply(SR, COMPUTER)  # then the change is in the log for the next call
        assert watch_computer(slap.connection, COMPUTER, cursor, LONG).changes == [Change("software", url=SR)]
    finally:
        live.server.stop()


def test_one_computer_cannot_take_every_waiting_place(tmp_path):
    live = start_live(tmp_path, threads=16)  # 8 places
    try:
        slap = live.connect()
        format_computer(slap, COMPUTER, 2)
        format_computer(slap, "COMP-1", 2, network=1)
        cursor_a, cursor_b = cursor_of(slap.connection, COMPUTER), cursor_of(slap.connection, "COMP-1")
        watchers = [Watcher(slap.connection, COMPUTER, cursor_a) for _ in range(2)]
        wait_waiting(live.server.app, 2)
        third = watch_computer(slap.connection, COMPUTER, cursor_a, LONG)
        assert third.retry_after and third.changes == [] and third.cursor == cursor_a
        other = Watcher(slap.connection, "COMP-1", cursor_b)  # another computer still has room
        wait_waiting(live.server.app, 3)
        slap.registerSupply().supply(SR, COMPUTER)
        slap.registerSupply().supply(SR, "COMP-1")
        for watcher in (*watchers, other):
            assert watcher.result().changes == [Change("software", url=SR)] and watcher.woke_early()
    finally:
        live.server.stop()


def test_stopping_the_proxy_answers_waiting_watches(tmp_path):
    live = start_live(tmp_path, threads=4)
    slap = live.connect()
    format_computer(slap, COMPUTER, 2)
    cursor = cursor_of(slap.connection)
    watcher = Watcher(slap.connection, COMPUTER, cursor)
    wait_waiting(live.server.app, 1)
    live.server.stop()
    watcher.thread.join(LONG)
    assert watcher.woke_early(), "stopping the proxy left the watch waiting"


def test_timeout_and_computer_fields_are_checked(node):
    live, _ = node
    for timeout in ("abc", "nan", "inf"):
        status, body, _ = live.http.get("watchComputer", computer_id=COMPUTER, timeout=timeout)
        assert status == 400 and "timeout" in body
    status, body, _ = live.http.get("watchComputer", timeout="1")
    assert status == 400 and "computer_id" in body
    status, _, _ = live.http.request("POST", "watchComputer")
    assert status == 405
    # a timeout out of range is clamped, not refused (a cursor first, so the watch waits)
    cursor = watch_computer(node[1].connection, COMPUTER, None, 5).cursor
    status, body, _ = live.http.get("watchComputer", computer_id=COMPUTER, cursor=cursor, timeout="0.001")
    assert status == 200 and '"changes":[]' in body


def test_the_change_log_is_bounded_and_a_cursor_that_fell_off_resets():
    from slapos.proxy.watch import Change as Entry

    feed = ChangeFeed("run", max_waiters=1, capacity=4)
    cursor = feed.watch("A", None, 1)["cursor"]
    feed.publish([Entry("partition", "A", f"slappart{i}") for i in range(3)])
    kept = feed.watch("A", cursor, 1)
    assert [c["reference"] for c in kept["changes"]] == ["slappart0", "slappart1", "slappart2"]
    assert not kept["reset"]
    feed.publish([Entry("partition", "B", f"slappart{i}") for i in range(5)])
    # the log (4 entries) no longer reaches back to either cursor: reconcile everything
    assert feed.watch("A", cursor, 1)["reset"]
    assert feed.watch("A", kept["cursor"], 1)["reset"]


def test_an_answer_too_large_or_too_long_resets_instead(two_computers):
    live, slap = two_computers
    cursor = cursor_of(slap.connection)
    supply = slap.registerSupply()
    for i in range(150):  # 150 names of 2000 characters: over the answer's 256 kB
        supply.supply(f"http://sr.example/{i:03d}/" + "y" * 1970, COMPUTER)
    answer = watch_computer(slap.connection, COMPUTER, cursor, LONG)
    assert answer.reset and answer.changes == []
    quiet_after(slap.connection, answer.cursor)  # the new cursor is good
    from slapos.proxy.watch import MAX_CHANGES
    from slapos.proxy.watch import Change as Entry

    feed = ChangeFeed("run", max_waiters=1)
    cursor = feed.watch("A", None, 1)["cursor"]
    feed.publish([Entry("partition", "A", f"slappart{i}") for i in range(MAX_CHANGES + 1)])
    assert feed.watch("A", cursor, 1)["reset"]


def test_a_rolled_back_write_wakes_nobody(node):
    live, slap = node
    slap.registerOpenOrder().request(SR, "inst")
    cursor = cursor_of(slap.connection)
    app = live.server.app
    with pytest.raises(RuntimeError), app.db.write() as conn:
        conn.execute("UPDATE partition SET timestamp = timestamp + 1 WHERE reference = 'slappart0'")
        raise RuntimeError("the request failed after the bump")
    quiet_after(slap.connection, cursor)
    with app.db.write() as conn:  # the same write committed is seen
        conn.execute("UPDATE partition SET timestamp = timestamp + 1 WHERE reference = 'slappart0'")
    assert watch_computer(slap.connection, COMPUTER, cursor, LONG).changes == [partition("slappart0")]
