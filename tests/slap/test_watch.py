"""`slapos.slap.watch.watch_computer` against a loopback master that plays a master without the
route (any SlapOS master but our proxy) or a hostile one: a clear `WatchUnsupported`, strict and
bounded decoding, the same identity as the SLAP client (client certificate, credential prefix),
and a read timeout that covers the long poll. Behaviour against our real proxy: tests/proxy/test_watch.py."""
from __future__ import annotations

import gzip
import json

import pytest

from slapos.base.errors import SlapOSError
from slapos.slap import AuthenticationError, ConnectionError, ServerError, slap
from slapos.slap.connection import Connection
from slapos.slap.watch import Change, WatchUnsupported, parse_answer, watch_computer

from .master import Answer, start_master

CURSOR = "run.7"


def document(**fields) -> str:
    answer = {"schema": "slapnode.watch/1", "cursor": CURSOR, "reset": False, "changes": []}
    answer.update(fields)
    return json.dumps(answer)


def test_a_master_without_the_route_is_unsupported(master, connected):
    # the loopback master answers 404 for every endpoint it does not know, as the reference does
    with pytest.raises(WatchUnsupported, match="does not serve watchComputer") as info:
        watch_computer(connected.connection, "COMP-0", None, 5)
    assert isinstance(info.value, SlapOSError) and "\n" not in str(info.value)
    for status in (400, 405, 501):
        master.answer("watchComputer", "no such method", status=status)
        with pytest.raises(WatchUnsupported):
            watch_computer(connected.connection, "COMP-0", None, 5)


@pytest.mark.parametrize("body", [
    "<html><body>Welcome to SlapOS Master</body></html>",
    "",
    b"\xff\xfe not utf-8",
    "[1, 2, 3]",
    json.dumps({"schema": "other/1", "cursor": "x", "reset": False, "changes": []}),
    document(cursor=""),
    document(cursor=7),
    document(cursor="x" * 5000),
    document(reset="no"),
    document(changes={"kind": "partition"}),
    document(changes=[{"kind": "partition"}]),
    document(changes=[{"kind": "partition", "reference": 3}]),
    document(changes=[{"kind": "software", "url": ""}]),
    document(changes=["partition"]),
    document(changes=[{"kind": "computer"}] * 5000),
    document(retry_after=-1),
    document(retry_after=True),
    document(retry_after=10 ** 9),
    "[" * 100000 + "]" * 100000,  # nesting a recursive decoder would choke on
])
def test_answers_that_are_not_a_watch_document_are_refused(master, connected, body):
    master.answer("watchComputer", body)
    with pytest.raises(WatchUnsupported, match="not a slapnode watch document"):
        watch_computer(connected.connection, "COMP-0", CURSOR, 5)


def test_a_large_answer_or_a_gzip_bomb_is_refused_before_it_is_read_whole(master, connected):
    master.answer("watchComputer", document(pad="x" * (2 << 20)))
    with pytest.raises(ConnectionError, match="too large"):
        watch_computer(connected.connection, "COMP-0", CURSOR, 5)
    bomb = gzip.compress(b"[" + b" " * (8 << 20) + b"]")
    master.answer("watchComputer", bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(ConnectionError, match="too large"):
        watch_computer(connected.connection, "COMP-0", CURSOR, 5)


def test_a_valid_answer_is_decoded_unknown_kinds_skipped_duplicates_dropped(master, connected):
    master.answer("watchComputer", document(changes=[
        {"kind": "partition", "reference": "slappart3", "extra": "ignored"},
        {"kind": "hologram", "id": 1},
        {"kind": "software", "url": "http://sr/x.cfg"},
        {"kind": "partition", "reference": "slappart3"},
        {"kind": "computer"},
    ], retry_after=2))
    result = watch_computer(connected, "COMP-0", CURSOR, 5)  # the slap itself, or its connection
    assert result.cursor == CURSOR and result.reset is False and result.retry_after == 2.0
    assert result.changes == [Change("partition", reference="slappart3"), Change("software", url="http://sr/x.cfg"),
                              Change("computer")]
    sent = master.calls("watchComputer")[-1]
    assert sent.method == "GET" and sent.query == {"computer_id": "COMP-0", "timeout": "5", "cursor": CURSOR}
    assert "Authorization" not in sent.headers
    # no cursor: none is sent (the proxy answers reset)
    watch_computer(connected.connection, "COMP-0", None, 5)
    assert "cursor" not in master.calls("watchComputer")[-1].query


def test_the_long_poll_outlives_the_connections_read_timeout(master):
    connection = slap()
    connection.initializeConnection(master.url, timeout=1)  # the SLAP calls' own read timeout
    master.answer("watchComputer", document(), delay=2.5)  # a long poll answers late
    try:
        assert watch_computer(connection.connection, "COMP-0", CURSOR, 3).cursor == CURSOR
        # and the connection of the SLAP calls kept its own timeout
        assert connection.connection.timeout == 1
    finally:
        connection.close()


def test_errors_of_the_master_and_the_network_keep_their_kind(master, connected):
    master.answer("watchComputer", "refused", status=403)
    with pytest.raises(AuthenticationError):
        watch_computer(connected.connection, "COMP-0", CURSOR, 5)
    master.answer("watchComputer", "boom", status=500)
    with pytest.raises(ServerError):
        watch_computer(connected.connection, "COMP-0", CURSOR, 5)
    master.answer_with("watchComputer", lambda received: Answer(200, document(), hang_up=True, delay=0))
    assert watch_computer(connected.connection, "COMP-0", CURSOR, 5).cursor == CURSOR
    dead = start_master()
    url = dead.url
    dead.stop()
    with pytest.raises(ConnectionError, match="cannot connect"):
        watch_computer(Connection(url, timeout=5), "COMP-0", CURSOR, 5)


def test_bad_arguments_are_refused_before_any_call(master, connected):
    for computer_id, timeout in (("", 5), ("COMP-0", 0), ("COMP-0", -3), ("COMP-0", float("nan"))):
        with pytest.raises(SlapOSError):
            watch_computer(connected.connection, computer_id, None, timeout)
    assert master.calls("watchComputer") == []


def test_the_credential_prefix_and_client_certificate_are_those_of_the_slap_client(https_master, pki):
    https_master.answer("watchComputer", document())
    credential = "C" * 43
    connection = slap()
    connection.initializeConnection(f"{https_master.url}c/{credential}/", key_file=str(pki.client_key),
                                    cert_file=str(pki.client_cert), master_ca_file=str(pki.ca_cert), timeout=5)
    try:
        watch_computer(connection.connection, "COMP-TEST", CURSOR, 5)
    finally:
        connection.close()
    sent = https_master.calls("watchComputer")[-1]
    assert sent.path == f"/c/{credential}/watchComputer"
    assert dict(x[0] for x in sent.peer_certificate["subject"])["commonName"] == "COMP-TEST"


def test_parse_answer_reset_and_empty():
    result = parse_answer(document(reset=True).encode())
    assert result.reset and result.changes == [] and result.retry_after is None
