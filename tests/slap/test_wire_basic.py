"""xml_marshaller encoding: every sample of captures/xml_marshaller-samples.txt, both ways."""
from __future__ import annotations

import pytest

from slapos.slap import wire

SHARED = ["shared"]

# (python value, exact reference text) from captures/xml_marshaller-samples.txt
SAMPLES = [
    (None, "<marshal><none/></marshal>"),
    (True, "<marshal><bool>1</bool></marshal>"),
    (False, "<marshal><bool>0</bool></marshal>"),
    (42, "<marshal><int>42</int></marshal>"),
    (10**30, "<marshal><long>1000000000000000000000000000000</long></marshal>"),
    (1.5, "<marshal><float>1.5</float></marshal>"),
    ('a<b & "c" > d', '<marshal><string>a&amp;lt;b &amp;amp; "c" &amp;gt; d</string></marshal>'),
    ("café ✓", "<marshal><string>caf&#233; &#10003;</string></marshal>"),
    ("", "<marshal><string></string></marshal>"),
    ({}, '<marshal><dictionary id="i2"/></marshal>'),
    (
        {"b": 1, "a": "x", "c": None},
        '<marshal><dictionary id="i2"><string>a</string><string>x</string><string>b</string><int>1</int>'
        "<string>c</string><none/></dictionary></marshal>",
    ),
    ([1, "two", None], '<marshal><list id="i2"><int>1</int><string>two</string><none/></list></marshal>'),
    (("a", 1), "<marshal><tuple><string>a</string><int>1</int></tuple></marshal>"),
    ({"x"}, '<marshal><set id="i2"><string>x</string></set></marshal>'),
    (
        {"first": SHARED, "second": SHARED},
        '<marshal><dictionary id="i2"><string>first</string><list id="i3"><string>shared</string></list>'
        '<string>second</string><reference id="i3"/></dictionary></marshal>',
    ),
    (
        {"ip_list": [("slaptap0", "10.0.0.10")], "slave_instance_list": [{"slave_reference": "_s"}]},
        '<marshal><dictionary id="i2"><string>ip_list</string><list id="i3"><tuple><string>slaptap0</string>'
        '<string>10.0.0.10</string></tuple></list><string>slave_instance_list</string><list id="i4">'
        '<dictionary id="i5"><string>slave_reference</string><string>_s</string></dictionary></list>'
        "</dictionary></marshal>",
    ),
    (
        wire.WireObject(
            "SoftwareRelease",
            ("http://example.invalid/software.cfg", "COMP-1"),
            {
                "_computer_guid": "COMP-1",
                "_software_instance_list": [],
                "_software_release": "http://example.invalid/software.cfg",
            },
        ),
        '<marshal><object id="i2" module="slapos.slap.slap" class="SoftwareRelease"><tuple>'
        "<string>http://example.invalid/software.cfg</string><string>COMP-1</string></tuple>"
        '<dictionary id="i3"><string>_computer_guid</string><string>COMP-1</string>'
        '<string>_software_instance_list</string><list id="i4"/><string>_software_release</string>'
        "<string>http://example.invalid/software.cfg</string></dictionary></object></marshal>",
    ),
    (
        wire.WireObject(
            "ComputerPartition",
            ("COMP-1", "slappart0", None),
            {"_computer_id": "COMP-1", "_partition_id": "slappart0", "_request_dict": None, "_requested_state": "started"},
        ),
        '<marshal><object id="i2" module="slapos.slap.slap" class="ComputerPartition"><tuple><string>COMP-1</string>'
        '<string>slappart0</string><none/></tuple><dictionary id="i3"><string>_computer_id</string>'
        "<string>COMP-1</string><string>_partition_id</string><string>slappart0</string><string>_request_dict</string>"
        "<none/><string>_requested_state</string><string>started</string></dictionary></object></marshal>",
    ),
]


@pytest.mark.parametrize("value,text", SAMPLES, ids=[t[:60] for _, t in SAMPLES])
def test_reference_samples_encode_exactly(value, text):
    assert wire.dumps(value) == text


@pytest.mark.parametrize("value,text", SAMPLES, ids=[t[:60] for _, t in SAMPLES])
def test_reference_samples_decode(value, text):
    assert wire.loads(text) == value
    assert wire.loads(text.encode()) == value


def test_bytes_travel_as_string():
    assert wire.dumps(b"raw") == "<marshal><string>raw</string></marshal>"
    assert wire.loads("<marshal><string>raw</string></marshal>") == "raw"


def test_legacy_unicode_tag_and_namespaced_variant_decode():
    assert wire.loads("<marshal><unicode>x</unicode></marshal>") == "x"
    ns = (
        '<marshal:marshal xmlns:marshal="http://www.erp5.org/namespaces/marshaller"><marshal:dictionary id="i2">'
        "<marshal:string>a</marshal:string><marshal:int>1</marshal:int></marshal:dictionary></marshal:marshal>"
    )
    assert wire.loads(ns) == {"a": 1}


def test_refuses_unsafe_class():
    text = (
        '<marshal><object id="i2" module="os" class="system"><tuple><string>id</string></tuple>'
        '<dictionary id="i3"/></object></marshal>'
    )
    with pytest.raises(wire.WireError, match="os.system"):
        wire.loads(text)


def test_instance_xml_reference_sample():
    text = wire.dumps_instance_xml({"_": '{"a": "<b>"}', "n": 3, "b": True})
    assert text == (
        "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n"
        '  <parameter id="_">{"a": "&lt;b&gt;"}</parameter>\n'
        '  <parameter id="b">True</parameter>\n'
        '  <parameter id="n">3</parameter>\n'
        "</instance>\n"
    )
    assert wire.loads_instance_xml(text) == {"_": '{"a": "<b>"}', "b": "True", "n": "3"}
    assert wire.dumps_instance_xml({}) == "<?xml version='1.0' encoding='utf-8'?>\n<instance/>\n"
    repeated = '<instance><parameter id="k">a</parameter><parameter id="k">b</parameter><parameter id="e"/></instance>'
    assert wire.loads_instance_xml(repeated) == {"k": "a b", "e": None}


def test_fragments_encode_like_the_values_they_stand_for_at_any_position():
    from slapos.slap.wire import WireObject, dumps, encode_fragment

    shared = {"k": ["v", {"x": 1}]}
    part = WireObject("ComputerPartition", ("C", "p0", None), {"_d": {"a": [1, 2]}, "_s": shared, "_t": shared})
    fragment = encode_fragment(part)
    assert "<reference" in dumps(part)  # the fragment holds a <reference> to its own container
    for before in ([], [{"a": 1}], [[1], {"b": [2, 3]}, {"c": {}}]):
        expected = dumps([*before, part, {"after": [1]}])
        assert dumps([*before, fragment, {"after": [1]}]) == expected
        # placed again at the same position (the cached text) and after moving
        assert dumps([*before, fragment, {"after": [1]}]) == expected
    assert dumps([fragment, fragment]).count("<object") == 2
