"""Property tests: what we encode decodes back to equal values, and our direct string builder
produces exactly what lxml (the reference's serializer) writes for the same tree."""
from __future__ import annotations

import math
from xml.sax.saxutils import escape

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from slapos.slap import wire

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every character XML 1.0 can carry (no surrogates, no C0 controls but tab/newline/CR, no U+FFFE/FFFF).
_BAD = [chr(c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)] + ["\ufffe", "\uffff"]
xml_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=_BAD))
markup_text = st.text(st.sampled_from(list("<>&\"' ab\r\n\té✓😀;#")))
texts = st.one_of(xml_text, markup_text, st.just(""))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False),
    texts,
)
keys = st.one_of(texts, st.integers())
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)


def same(a, b) -> bool:
    """Equality that also checks types (True == 1 and [1] == (1,) must not pass)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@SETTINGS
@given(values)
def test_marshal_round_trip(value):
    assert same(wire.loads(wire.dumps(value)), value)
    assert same(wire.loads(wire.dumps(value).encode("ascii")), value)


@SETTINGS
@given(st.dictionaries(texts, values, max_size=8))
def test_parameter_dicts_round_trip_through_marshal(parameters):
    document = wire.dumps(parameters)
    assert document.isascii()  # non-ASCII always travels as character references
    assert same(wire.loads(document), parameters)


# -- an independent encoder, built the way the reference builds it: an lxml tree ---------------


def _lxml_marshal(value) -> str:
    counter = [1]

    def build(v):
        if v is None:
            return etree.Element("none")
        if isinstance(v, bool):
            e = etree.Element("bool")
            e.text = "1" if v else "0"
            return e
        if isinstance(v, int):
            e = etree.Element("int" if abs(v) < 10**24 else "long")
            e.text = str(v)
            return e
        if isinstance(v, float):
            e = etree.Element("float")
            e.text = str(v)
            return e
        if isinstance(v, str):
            e = etree.Element("string")
            e.text = escape(v)  # the marshaller's own escaping; lxml escapes again on output
            return e
        if isinstance(v, tuple):
            e = etree.Element("tuple")
            e.extend(build(x) for x in v)
            return e
        counter[0] += 1
        if isinstance(v, list):
            e = etree.Element("list", id=f"i{counter[0]}")
            e.extend(build(x) for x in v)
            return e
        e = etree.Element("dictionary", id=f"i{counter[0]}")
        try:
            ordered = sorted(v)
        except TypeError:
            ordered = sorted(v, key=repr)
        for k in ordered:
            e.append(build(k))
            e.append(build(v[k]))
        return e

    root = etree.Element("marshal")
    root.append(build(value))
    return etree.tostring(root, encoding="ascii").decode("ascii")


@SETTINGS
@given(values)
def test_direct_encoder_matches_an_lxml_serialisation(value):
    assert wire.dumps(value) == _lxml_marshal(value)


# -- instance XML -------------------------------------------------------------------------------

instance_values = st.one_of(texts, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False),
                            st.dictionaries(st.text(max_size=5), st.lists(st.integers(), max_size=3), max_size=3))


def _lxml_instance(parameters) -> str:
    root = etree.Element("instance")
    for key in sorted(parameters, key=str):
        element = etree.SubElement(root, "parameter", id=str(key))
        element.text = str(parameters[key])
    return etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="utf-8").decode("utf-8")


@SETTINGS
@given(st.dictionaries(texts, instance_values, max_size=8))
def test_instance_xml_round_trip_and_exact_text(parameters):
    document = wire.dumps_instance_xml(parameters)
    assert document == _lxml_instance(parameters)
    expected = {str(k): (str(v) if str(v) != "" else None) for k, v in parameters.items()}
    assert wire.loads_instance_xml(document) == expected
    assert wire.loads_instance_xml(document.encode("utf-8")) == expected


# -- the `_` (JSON-in-XML) convention -------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), xml_text),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(xml_text, children, max_size=4)),
    max_leaves=20,
)


@SETTINGS
@given(st.dictionaries(xml_text, json_values, max_size=6))
def test_json_parameters_survive_both_formats(parameters):
    wrapped = wire.wrap_json_parameters(parameters)
    assert list(wrapped) == ["_"]
    assert wire.unwrap_json_parameters(wire.loads(wire.dumps(wrapped))) == parameters
    assert wire.unwrap_json_parameters(wire.loads_instance_xml(wire.dumps_instance_xml(wrapped))) == parameters


def test_json_helpers():
    wrapped = wire.wrap_json_parameters({"title": "hello <world> & co", "replicas": 2})
    assert wrapped == {"_": '{\n  "title": "hello <world> & co",\n  "replicas": 2\n}'}  # as in capture 004
    assert wire.wrap_json_parameters(wrapped) == wrapped  # already wrapped: kept
    assert wire.is_json_parameters(wrapped)
    assert not wire.is_json_parameters({"_": "{}", "other": "x"})
    assert wire.unwrap_json_parameters({"a": "1"}) == {"a": "1"}
    assert wire.unwrap_json_parameters(None) == {}
    import pytest

    with pytest.raises(wire.WireError, match="valid JSON"):
        wire.unwrap_json_parameters({"_": "{not json"})
    with pytest.raises(wire.WireError, match="JSON"):
        wire.wrap_json_parameters({"x": object()})
