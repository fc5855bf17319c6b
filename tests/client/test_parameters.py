"""Instance parameters: `k=v`, JSON / YAML / instance XML files, the `_` convention, schema warnings."""
from __future__ import annotations

import json
import logging

import pytest

from slapos.base.errors import UsageError
from slapos.client.parameters import (
    ParameterError,
    build_parameters,
    parse_key_values,
    read_parameter_file,
    schema_problems,
)

from .conftest import one_line_error


def software(tmp_path, description: dict | None, schema: dict | None = None):
    """A software release directory with its `software.cfg.json` (and a request schema)."""
    directory = tmp_path / "sr"
    directory.mkdir(exist_ok=True)
    url = directory / "software.cfg"
    url.write_text("[buildout]\nparts =\n")
    if description is not None:
        (directory / "software.cfg.json").write_text(json.dumps(description))
    if schema is not None:
        (directory / "instance-default-input-schema.json").write_text(json.dumps(schema))
    return str(url)


JSON_IN_XML = {
    "name": "demo",
    "serialisation": "json-in-xml",
    "software-type": {"default": {"request": "instance-default-input-schema.json", "title": "Default"}},
}


def test_key_values():
    assert parse_key_values(["a=1", "b=x=y", "c="], "--parameters") == {"a": "1", "b": "x=y", "c": ""}
    assert parse_key_values(None, "--parameters") == {}
    for bad in ("a", "=1"):
        with pytest.raises(UsageError, match="--parameters expects key=value pairs"):
            parse_key_values([bad], "--parameters")


def test_key_values_are_never_wrapped(tmp_path):
    url = software(tmp_path, JSON_IN_XML)
    assert build_parameters(["a=1"], None, url, None) == {"a": "1"}


def test_json_file_wrapped_for_json_in_xml_releases(tmp_path):
    url = software(tmp_path, JSON_IN_XML)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"title": "hello <world> & co", "replicas": 2}))
    sent = build_parameters(None, str(params), url, None)
    assert list(sent) == ["_"]
    assert json.loads(sent["_"]) == {"title": "hello <world> & co", "replicas": 2}
    assert sent["_"].startswith('{\n  "title"')  # indent 2, as the reference sends it
    # already wrapped: sent as it is
    params.write_text(json.dumps({"_": '{"a": 1}'}))
    assert build_parameters(None, str(params), url, None) == {"_": '{"a": 1}'}


def test_json_file_sent_flat_for_xml_releases(tmp_path):
    url = software(tmp_path, {"serialisation": "xml"})
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"a": "1", "n": 2}))
    assert build_parameters(None, str(params), url, None) == {"a": "1", "n": 2}
    # the per-type serialisation wins over the top-level one
    url = software(tmp_path, {"serialisation": "xml", "software-type": {"special": {"serialisation": "json-in-xml"}}})
    assert list(build_parameters(None, str(params), url, "special")) == ["_"]


def test_undeclared_serialisation_needs_force(tmp_path):
    params = tmp_path / "p.json"
    params.write_text('{"a": "1"}')
    url = software(tmp_path, None)
    with pytest.raises(ParameterError, match="pass --force-serialisation xml or json-in-xml"):
        build_parameters(None, str(params), url, None)
    assert build_parameters(None, str(params), url, None, "xml") == {"a": "1"}
    assert list(build_parameters(None, str(params), url, None, "json-in-xml")) == ["_"]
    url = software(tmp_path, {"name": "no serialisation"})
    with pytest.raises(ParameterError, match="declares no serialisation"):
        build_parameters(None, str(params), url, None)


def test_xml_file_sent_as_is(tmp_path):
    params = tmp_path / "p.xml"
    params.write_text(
        "<?xml version='1.0' encoding='utf-8'?>\n<instance>\n"
        '  <parameter id="a">1 &amp; 2</parameter>\n  <parameter id="b"></parameter>\n</instance>\n'
    )
    # no software description needed for instance XML
    assert build_parameters(None, str(params), str(tmp_path / "none.cfg"), None) == {"a": "1 & 2", "b": None}


def test_file_errors(tmp_path):
    cases = {
        "missing.json": (None, "not found"),
        "bad.json": ("{oops", "is not valid JSON: Expecting property name"),
        "list.json": ("[1, 2]", "must hold an object"),
        "bad.xml": ("<instance><parameter>", "is not instance XML"),
        "strange.txt": ("hello", "cannot tell its format"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(ParameterError, match=message):
            read_parameter_file(path)


def test_yaml_without_pyyaml_says_what_to_do(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: 1\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ParameterError, match="needs PyYAML"):
            read_parameter_file(path)
    else:
        assert read_parameter_file(path).parameters == {"a": 1}


def test_schema_warnings_never_refuse(tmp_path, caplog):
    schema = {
        "type": "object",
        "required": ["title"],
        "additionalProperties": False,
        "properties": {"title": {"type": "string"}, "replicas": {"type": "integer"},
                       "mode": {"type": "string", "enum": ["a", "b"]}},
    }
    assert schema_problems(schema, {"title": "x", "replicas": 2, "mode": "a"}) == []
    problems = schema_problems(schema, {"replicas": "2", "mode": "c", "other": True})
    assert sorted(problems) == sorted([
        "parameter 'title' is required by the software release",
        "parameter 'replicas' should be integer, got str",
        "parameter 'mode' should be one of ['a', 'b'], got 'c'",
        "parameter 'other' is not known to the software release",
    ])
    assert schema_problems({"properties": {"n": {"type": "integer"}}}, {"n": True}) == [
        "parameter 'n' should be integer, got bool"
    ]
    url = software(tmp_path, JSON_IN_XML, schema)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"replicas": 2}))
    with caplog.at_level(logging.WARNING, logger="slapos.request"):
        sent = build_parameters(None, str(params), url, None)
    assert list(sent) == ["_"]
    assert "parameter 'title' is required by the software release" in caplog.text


def test_request_with_parameter_files(client, tmp_path):
    """End to end: what the proxy stores for a JSON file and an XML file."""
    url = software(tmp_path, JSON_IN_XML, {"required": ["title"], "properties": {"title": {"type": "string"}}})
    assert client.run("supply", url).returncode == 0
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"title": "hello <world> & co", "replicas": 2}))
    result = client.run("request", "j", url, "--parameters-file", str(params), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # valid for the schema: no warning
    stored = json.loads(result.stdout)["parameters"]
    assert json.loads(stored["_"]) == {"title": "hello <world> & co", "replicas": 2}
    # the table shows the `_` document unpacked
    partition = client.proxy.connect().registerComputerPartition("local_computer", "slappart0")
    partition.setConnectionDict({"_": json.dumps({"url": "http://x/", "port": 80})})
    text = client.run("request", "j", url, "--parameters-file", str(params)).stdout
    assert "connection parameters:\n  port  80\n  url   http://x/\n" in text

    xml = tmp_path / "p.xml"
    xml.write_text('<instance><parameter id="k">v</parameter></instance>')
    result = client.run("request", "x", url, "--parameters-file", str(xml), "--format", "json")
    assert json.loads(result.stdout)["parameters"] == {"k": "v"}

    # a release without description and no --force-serialisation: refused before anything is sent
    bare = tmp_path / "bare.cfg"
    bare.write_text("[buildout]\n")
    result = client.run("request", "b", str(bare), "--parameters-file", str(params))
    assert result.returncode == 1
    assert "--force-serialisation" in one_line_error(result)
    listed = json.loads(client.run("list", "--format", "json").stdout)
    names = [entry["name"] for entry in listed]
    assert "x" in names and "b" not in names


def test_schema_checked_with_jsonschema_refs_and_combinators(tmp_path):
    """The release's real schema: a `$ref` to a file next to it, allOf/oneOf, pattern, minimum."""
    pytest.importorskip("jsonschema")
    (tmp_path / "common.json").write_text(json.dumps({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"port": {"type": "integer", "minimum": 1024}},
    }))
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "allOf": [{"properties": {"port": {"$ref": "common.json#/definitions/port"}}}],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z]+$"},
            "mode": {"oneOf": [{"const": "fast"}, {"const": "safe"}]},
        },
    }
    url = str(tmp_path / "instance-input-schema.json")
    assert schema_problems(schema, {"port": 8080, "name": "abc", "mode": "safe"}, url) == []
    problems = schema_problems(schema, {"port": 80, "name": "ABC", "mode": "other"}, url)
    assert any(p.startswith("parameter 'port'") and "1024" in p for p in problems), problems
    assert any(p.startswith("parameter 'name'") and "does not match" in p for p in problems), problems
    assert any(p.startswith("parameter 'mode'") for p in problems), problems
    missing = schema_problems({"properties": {"p": {"$ref": "absent.json"}}}, {"p": 1}, url)
    assert missing and "cannot be applied" in missing[0]
