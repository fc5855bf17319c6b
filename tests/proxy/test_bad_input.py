"""Bad and hostile input: always a 4xx with a one-line plain-text reason, never a 500, never a
crash, and the database stays as it was."""
from __future__ import annotations

import pytest

from .conftest import COMPUTER, SR, marshal

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<marshal><dictionary id="i2"><string>a</string><string>&lol3;</string></dictionary></marshal>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<marshal><dictionary id="i2"><string>a</string><string>&xxe;</string></dictionary></marshal>"""
UNSAFE_CLASS = ('<marshal><object id="i2" module="os" class="system"><tuple><string>id</string></tuple>'
                '<dictionary id="i3"/></object></marshal>')
DEEP = "<marshal>" + "<tuple>" * 5000 + "</tuple>" * 5000 + "</marshal>"


def request_fields(**overrides) -> dict:
    fields = {
        "software_release": SR,
        "partition_reference": "inst",
        "software_type": "default",
        "partition_parameter_xml": marshal({}),
        "filter_xml": marshal({}),
        "state": marshal(None),
        "shared_xml": marshal(False),
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def snapshot(live) -> list:
    return [
        live.rows(f"SELECT * FROM {table} ORDER BY rowid")  # noqa: S608 - fixed names
        for table in ("computer", "software", "partition", "partition_network", "slave", "usage_report")
    ]


@pytest.fixture
def busy(node):
    """The node fixture with one instance, whose database state every case must leave intact."""
    live, connection = node
    connection.registerOpenOrder().request(SR, "existing", {"a": "1"})
    return live


CASES = [
    # (id, method, endpoint, fields, status, words in the reason)
    ("missing software_release", "POST", "requestComputerPartition", request_fields(software_release=None),
     400, "missing field 'software_release'"),
    ("missing title", "POST", "requestComputerPartition", request_fields(partition_reference=None),
     400, "missing field 'partition_reference'"),
    ("empty title", "POST", "requestComputerPartition", request_fields(partition_reference=" "), 400, "is empty"),
    ("invalid state", "POST", "requestComputerPartition", request_fields(state=marshal("running")),
     400, "invalid state 'running'"),
    ("state not a string", "POST", "requestComputerPartition", request_fields(state=marshal(3)), 400, "state"),
    ("billion laughs", "POST", "requestComputerPartition",
     request_fields(partition_parameter_xml=BILLION_LAUGHS), 400, "partition_parameter_xml"),
    ("external entity", "POST", "requestComputerPartition", request_fields(filter_xml=EXTERNAL_ENTITY),
     400, "filter_xml"),
    ("unsafe class", "POST", "loadComputerConfigurationFromXML", {"xml": UNSAFE_CLASS}, 400, "os.system"),
    ("deep nesting", "POST", "requestComputerPartition", request_fields(partition_parameter_xml=DEEP),
     400, "nested"),
    ("malformed xml", "POST", "requestComputerPartition",
     request_fields(partition_parameter_xml="<marshal><dictionary>"), 400, "partition_parameter_xml"),
    ("parameters not a dict", "POST", "requestComputerPartition",
     request_fields(partition_parameter_xml=marshal(["a"])), 400, "dictionary"),
    ("filter guid not text", "POST", "requestComputerPartition",
     request_fields(filter_xml=marshal({"computer_guid": 3})), 400, "computer_guid"),
    ("unknown computer filter", "POST", "requestComputerPartition",
     request_fields(filter_xml=marshal({"computer_guid": "NOPE"})), 404, "unknown computer 'NOPE'"),
    ("forwarding", "POST", "requestComputerPartition",
     request_fields(filter_xml=marshal({"master_url": "http://other/"})), 404, "other masters"),
    ("format not a dict", "POST", "loadComputerConfigurationFromXML", {"xml": marshal(["x"])}, 400, "dictionary"),
    ("format no reference", "POST", "loadComputerConfigurationFromXML", {"xml": marshal({"partition_list": []})},
     400, "computer reference"),
    ("format path partition", "POST", "loadComputerConfigurationFromXML",
     {"xml": marshal({"reference": COMPUTER, "partition_list": [{"reference": "../../etc"}]})},
     400, "not a valid name"),
    ("format missing xml", "POST", "loadComputerConfigurationFromXML", {}, 400, "missing field 'xml'"),
    ("supply bad state", "POST", "supplySupply", {"url": SR, "computer_id": COMPUTER, "state": "installed"},
     400, "invalid state 'installed'"),
    ("supply unknown computer", "POST", "supplySupply", {"url": SR, "computer_id": "NOPE", "state": "available"},
     404, "unknown computer 'NOPE'"),
    ("supply missing url", "POST", "supplySupply", {"computer_id": COMPUTER, "state": "available"},
     400, "missing field 'url'"),
    ("report unsupplied software", "POST", "buildingSoftwareRelease", {"url": "http://x/", "computer_id": COMPUTER},
     404, "not supplied"),
    ("full info unknown computer", "GET", "getFullComputerInformation", {"computer_id": "NOPE"},
     404, "unknown computer 'NOPE'"),
    ("full info missing id", "GET", "getFullComputerInformation", {}, 400, "missing field 'computer_id'"),
    ("register unknown partition", "GET", "registerComputerPartition",
     {"computer_reference": COMPUTER, "computer_partition_reference": "slappart9"}, 404, "unknown partition"),
    ("started unknown partition", "POST", "startedComputerPartition",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart9"}, 404, "unknown partition"),
    ("destroyed unknown partition", "POST", "destroyedComputerPartition",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart9"}, 404, "unknown partition"),
    ("connection missing xml", "POST", "setComputerPartitionConnectionXml",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart0"}, 400, "missing field 'connection_xml'"),
    ("connection on free partition", "POST", "setComputerPartitionConnectionXml",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart3", "connection_xml": marshal({"a": "b"})},
     404, "free"),
    ("connection unknown shared", "POST", "setComputerPartitionConnectionXml",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart0", "connection_xml": marshal({"a": "b"}),
      "slave_reference": "_nope"}, 404, "unknown shared instance"),
    ("bang missing message", "POST", "softwareInstanceBang",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart0"}, 400, "missing field 'message'"),
    ("rename clash", "POST", "softwareInstanceRename",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart0", "new_name": " "}, 400, "is empty"),
    ("error missing log", "POST", "softwareInstanceError",
     {"computer_id": COMPUTER, "computer_partition_id": "slappart0"}, 400, "missing field 'error_log'"),
    ("usage unknown computer", "POST", "useComputer", {"computer_id": "NOPE", "use_string": "<journal/>"},
     404, "unknown computer"),
    ("product without argument", "GET", "getSoftwareReleaseListFromSoftwareProduct", {}, 400, "needs"),
    ("unknown endpoint", "GET", "dropAllTables", {}, 404, "unknown endpoint"),
    ("not served endpoint", "POST", "updateComputerPartitionRelatedInstanceList",
     {"computer_id": COMPUTER}, 404, "not served"),
    ("wrong method", "GET", "requestComputerPartition", {}, 405, "takes POST"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx_and_changes_nothing(busy, case):
    live = busy
    _name, method, endpoint, fields, status, words = case
    before = snapshot(live)
    if method == "GET":
        got, body, content_type = live.http.get(endpoint, **fields)
    else:
        got, body, content_type = live.http.post(endpoint, **fields)
    assert got == status, body
    assert words in body
    assert "\n" not in body and content_type.startswith("text/plain")
    assert "root:" not in body  # no file content leaked by an external entity
    assert snapshot(live) == before
    # still serving
    assert live.http.get("getFullComputerInformation", computer_id=COMPUTER)[0] == 200


def test_bad_partition_header(busy):
    live = busy
    before = snapshot(live)
    for header, words in (
        ("X-SlapPartition computer_id=COMP-0, computer_partition_id=slappart9", "No partition matching"),
        ("X-SlapPartition garbage", "malformed"),
        ("X-SlapPartition computer_id=COMP-0", "needs computer_id and computer_partition_id"),
    ):
        status, body, _ = live.http.post(
            "requestComputerPartition", headers={"Authorization": header}, **request_fields(partition_reference="x")
        )
        assert status == 400 and words in body
    assert snapshot(live) == before


def test_body_over_the_limit_is_413(busy):
    live = busy
    before = snapshot(live)
    big = b"xml=" + b"a" * (17 * 1024 * 1024)
    status, body, _ = live.http.request(
        "POST", "loadComputerConfigurationFromXML", big, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 413 and "exceeds the limit" in body and "\n" not in body
    assert snapshot(live) == before


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (b"url=\xff\xfe", {}, 400, "UTF-8"),
        (b"url=%ff%fe&computer_id=COMP-0&state=available", {}, 400, "UTF-8"),
        (b"&".join(b"f%d=1" % n for n in range(100)), {}, 400, "too many form fields"),
        (b"--x\r\n", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "x-www-form-urlencoded"),
    ],
    ids=["raw non-utf8", "escaped non-utf8", "too many fields", "multipart"],
)
def test_undecodable_bodies(busy, body, headers, status, words):
    live = busy
    before = snapshot(live)
    all_headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    got, text, _ = live.http.request("POST", "supplySupply", body, all_headers)
    assert got == status and words in text
    assert snapshot(live) == before


def test_database_integrity_after_abuse(busy):
    live = busy
    for case in CASES:
        _name, method, endpoint, fields, _status, _words = case
        (live.http.get if method == "GET" else live.http.post)(endpoint, **fields)
    conn = live.db()
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert live.rows("SELECT title FROM partition WHERE slap_state = 'busy'") == [{"title": "existing"}]
