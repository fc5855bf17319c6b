"""Malformed and hostile documents are refused with a clear WireError, cheaply and without side effects."""
from __future__ import annotations

import resource

import pytest

from slapos.slap import wire

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<marshal><string>&lol9;</string></marshal>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE marshal [<!ENTITY passwd SYSTEM "file:///etc/passwd">]>
<marshal><string>&passwd;</string></marshal>"""

XXE_PARAMETER_ENTITY = """<!DOCTYPE marshal [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><marshal><none/></marshal>"""

XXE_ATTRIBUTE = """<?xml version="1.0"?>
<!DOCTYPE marshal [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<marshal><object id="&lol2;" module="slapos.slap.slap" class="Computer"><tuple/><dictionary id="i3"/></object></marshal>"""


def _max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize("document", [BILLION_LAUGHS, XXE, XXE_PARAMETER_ENTITY, XXE_ATTRIBUTE],
                         ids=["billion-laughs", "xxe-file", "xxe-parameter-entity", "entity-in-attribute"])
def test_dtds_are_refused_before_parsing(document):
    before = _max_rss_kb()
    with pytest.raises(wire.WireError, match="document type declaration") as info:
        wire.loads(document)
    assert "root:" not in str(info.value)  # nothing of /etc/passwd leaks into the message
    assert _max_rss_kb() - before < 50_000
    with pytest.raises(wire.WireError, match="document type declaration"):
        wire.loads(document.encode())
    instance = document.replace("marshal", "instance")
    with pytest.raises(wire.WireError, match="document type declaration"):
        wire.loads_instance_xml(instance)


def test_dtd_after_bom_comment_and_declaration_is_still_found():
    document = '\ufeff<?xml version="1.0"?>\n<!-- hello -->\n  <!DOCTYPE x [<!ENTITY a "b">]><marshal><none/></marshal>'
    with pytest.raises(wire.WireError, match="document type declaration"):
        wire.loads(document.encode("utf-8"))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_dtd_hidden_in_another_encoding_is_not_parsed(encoding):
    """The protocol is UTF-8: a document in another encoding cannot smuggle a DTD past the check."""
    document = XXE.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode(encoding)
    with pytest.raises(wire.WireError, match="malformed XML") as info:
        wire.loads(document)
    assert "\n" not in str(info.value)


def test_undefined_entity_is_malformed():
    with pytest.raises(wire.WireError, match="malformed XML"):
        wire.loads("<marshal><string>&passwd;</string></marshal>")


def test_xinclude_is_not_processed():
    document = ('<marshal xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="/etc/passwd" '
                'parse="text"/></marshal>')
    with pytest.raises(wire.WireError, match="namespaced element"):
        wire.loads(document)


@pytest.mark.parametrize("tag", ["tuple", "list"])
def test_very_deep_nesting_is_refused(tag):
    depth = 100_000
    opening = "".join(f'<{tag} id="i{n}">' if tag == "list" else f"<{tag}>" for n in range(depth))
    document = "<marshal>" + opening + f"</{tag}>" * depth + "</marshal>"
    with pytest.raises(wire.WireError, match="nested more than 64 levels"):
        wire.loads(document)
    deep_instance = "<instance>" + "<a>" * depth + "</a>" * depth + "</instance>"
    with pytest.raises(wire.WireError, match="nested more than 64 levels"):
        wire.loads_instance_xml(deep_instance)


def test_nesting_up_to_the_limit_is_fine():
    document = "<marshal>" + "<tuple>" * 63 + "</tuple>" * 63 + "</marshal>"
    value = wire.loads(document)
    for _ in range(62):
        (value,) = value
    assert value == ()


def test_documents_over_the_size_limit_are_refused_unparsed():
    document = "<marshal><string>" + "x" * 2000 + "</string></marshal>"
    with pytest.raises(wire.WireError, match="more than the 1000 bytes allowed"):
        wire.loads(document.encode(), max_size=1000)
    with pytest.raises(wire.WireError, match="larger than the 1000 bytes allowed"):
        wire.loads(document, max_size=1000)
    with pytest.raises(wire.WireError, match="1000 bytes"):
        wire.loads_instance_xml(b"<instance>" + b" " * 1000 + b"</instance>", max_size=1000)


def test_default_size_limit():
    huge = b"<marshal><string>" + b"x" * wire.MAX_SIZE + b"</string></marshal>"
    with pytest.raises(wire.WireError, match=f"more than the {wire.MAX_SIZE} bytes allowed"):
        wire.loads(huge)


def test_too_many_elements_are_refused_while_streaming():
    document = '<marshal><list id="i2">' + "<none/>" * 5000 + "</list></marshal>"
    with pytest.raises(wire.WireError, match="more than 1000 elements"):
        wire.loads(document, max_elements=1000)
    assert len(wire.loads(document, max_elements=5002)) == 5000
    params = "<instance>" + '<parameter id="a">x</parameter>' * 5000 + "</instance>"
    with pytest.raises(wire.WireError, match="more than 1000 elements"):
        wire.loads_instance_xml(params, max_elements=1000)


@pytest.mark.parametrize(
    "module,klass",
    [("os", "system"), ("subprocess", "Popen"), ("slapos.slap.slap", "Popen"), ("builtins", "Computer"),
     ("slapos.slap.slap", "OpenOrder"), (None, "Computer")],
)
def test_objects_outside_the_allow_list_are_refused(module, klass):
    attribute = f' module="{module}"' if module else ""
    document = (f'<marshal><object id="i2"{attribute} class="{klass}"><tuple><string>id</string></tuple>'
                '<dictionary id="i3"/></object></marshal>')
    with pytest.raises(wire.WireError, match=f"refusing to decode an object of class {module}.{klass}"):
        wire.loads(document)


def test_os_system_payload_does_not_run_anything(tmp_path):
    marker = tmp_path / "ran"
    document = (f'<marshal><object id="i2" module="os" class="system"><tuple><string>touch {marker}</string>'
                '</tuple><dictionary id="i3"/></object></marshal>')
    with pytest.raises(wire.WireError):
        wire.loads(document)
    assert not marker.exists()


def test_code_and_complex_are_refused():
    with pytest.raises(wire.WireError, match="<code>.*refused"):
        wire.loads("<marshal><code>YwAAAAAAAAAAAAAAAAAAAAA=</code></marshal>")
    with pytest.raises(wire.WireError, match="<complex>"):
        wire.loads("<marshal><complex>1.0 2.0</complex></marshal>")


@pytest.mark.parametrize(
    "document,message",
    [
        ("", "malformed XML"),
        ("not xml", "malformed XML"),
        ('<marshal><list id="i2">', "malformed XML"),
        ("<marshal/>", "exactly one value"),
        ("<marshal><none/><none/></marshal>", "exactly one value"),
        ("<other><none/></other>", "expected <marshal>"),
        ("<string>x</string>", "expected <marshal>"),
        ("<marshal><frobnicate/></marshal>", "unknown element <frobnicate>"),
        ("<marshal><string><int>1</int></string></marshal>", "not allowed inside <string>"),
        ('<marshal><list id="i2">text</list></marshal>', "unexpected text"),
        ("<marshal><int>one</int></marshal>", "not an integer"),
        ("<marshal><int>" + "9" * 5000 + "</int></marshal>", "not an integer"),
        ("<marshal><float>x</float></marshal>", "not a number"),
        ("<marshal><bool>2</bool></marshal>", "expected 1 or 0"),
        ('<marshal><dictionary id="i2"><string>a</string></dictionary></marshal>', "odd number"),
        ('<marshal><dictionary id="i2"><list id="i3"/><none/></dictionary></marshal>', "not hashable"),
        ('<marshal><set id="i2"><list id="i3"/></set></marshal>', "not hashable"),
        ('<marshal><list id="i2"><reference id="i2"/></list></marshal>', "cyclic"),
        ('<marshal><reference id="i7"/></marshal>', "no earlier element"),
        ('<marshal><tuple><list id="i2"/><list id="i2"/></tuple></marshal>', "used twice"),
        ('<marshal><object id="i2" module="slapos.slap.slap" class="Computer"><tuple/></object></marshal>',
         "must hold a <tuple>"),
        ('<marshal><object id="i2" module="slapos.slap.slap" class="Computer"><tuple/><dictionary id="i3">'
         "<int>1</int><none/></dictionary></object></marshal>", "non-text attribute name"),
        ("<marshal><int>1</int></marshal><marshal/>", "malformed XML"),
        ("<a:marshal xmlns:a='urn:other'><none/></a:marshal>", "namespaced element"),
    ],
)
def test_malformed_documents_raise_one_clear_error(document, message):
    with pytest.raises(wire.WireError, match=message) as info:
        wire.loads(document)
    assert "\n" not in str(info.value)


def test_non_utf8_bytes_and_wrong_types():
    with pytest.raises(wire.WireError, match="malformed XML"):
        wire.loads(b"<marshal><string>caf\xe9</string></marshal>")
    with pytest.raises(wire.WireError, match="must be text or bytes"):
        wire.loads(42)
    with pytest.raises(wire.WireError, match="not valid text"):
        wire.loads("<marshal><string>\ud800</string></marshal>")


def test_wire_error_is_a_value_error_and_a_slapos_error():
    from slapos.base.errors import SlapOSError

    assert issubclass(wire.WireError, ValueError)
    assert issubclass(wire.WireError, SlapOSError)


def test_encoding_refuses_what_xml_cannot_carry():
    with pytest.raises(wire.WireError, match="control character"):
        wire.dumps("bell\x07")
    with pytest.raises(wire.WireError, match="control character"):
        wire.dumps_instance_xml({"k": "nul\x00"})
    with pytest.raises(wire.WireError, match="cannot encode"):
        wire.dumps(object())
    with pytest.raises(wire.WireError, match="not UTF-8"):
        wire.dumps(b"\xff")
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(wire.WireError, match="cyclic"):
        wire.dumps(cyclic)
    with pytest.raises(wire.WireError, match="cannot travel"):
        wire.WireObject("Popen")


def test_instance_xml_reader_rules():
    assert wire.loads_instance_xml(
        '<instance><parameter id="a">x<b>inner</b>tail</parameter><parameter id="e"/>'
        '<other id="z">ignored</other><parameter id="k">1</parameter><parameter id="k">2</parameter></instance>'
    ) == {"a": "x", "e": None, "k": "1 2"}
    with pytest.raises(wire.WireError, match="expected <instance>"):
        wire.loads_instance_xml("<marshal/>")
    with pytest.raises(wire.WireError, match="no id attribute"):
        wire.loads_instance_xml("<instance><parameter>x</parameter></instance>")
    with pytest.raises(wire.WireError, match="malformed"):
        wire.loads_instance_xml("<instance>")
