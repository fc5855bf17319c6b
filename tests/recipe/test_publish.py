"""slapnode:publish: connection parameters to the proxy, for the instance and its shared instances."""
from __future__ import annotations

import json

from .conftest import run_buildout, write_profile


def publish(directory, instance, options: str):
    write_profile(directory, f"[buildout]\nparts = publish\n[publish]\nrecipe = slapnode:publish\n{options}\n",
                  connection=instance.connection)
    return run_buildout(directory)


def test_publishes_and_bumps_the_requester_only_on_change(request_instance, tmp_path):
    parent = request_instance("parent")
    child_partition = parent.partition().request(parent.software_url, "default", "child")
    child = type(parent)(parent.node, child_partition.getId(), "child", parent.software_url)

    def parent_stamp():
        return parent.partition().getInstanceParameterDict()["timestamp"]

    before = parent_stamp()
    publish(tmp_path / "child", child, "url = http://127.0.0.1:1234/\nuser = me\n-hidden = not published")
    assert child.partition().getConnectionParameterDict() == {"url": "http://127.0.0.1:1234/", "user": "me"}
    published = parent_stamp()
    assert published != before  # the requester is told (the node processes it again)

    result = publish(tmp_path / "child", child, "url = http://127.0.0.1:1234/\nuser = me\n-hidden = x")
    assert f"connection parameters of {child.partition_id}: url, user" in result.stdout
    assert parent_stamp() == published  # unchanged values: no reprocessing loop

    publish(tmp_path / "child", child, "url = http://127.0.0.1:4321/\nuser = me")
    assert child.partition().getConnectionParameterDict()["url"] == "http://127.0.0.1:4321/"
    assert parent_stamp() != published


def test_json_in_xml(request_instance, tmp_path):
    instance = request_instance("main")
    publish(tmp_path / "p", instance, "-serialisation = json-in-xml\nurl = http://x/\nport = 80")
    published = instance.partition().getConnectionParameterDict()
    assert list(published) == ["_"] and json.loads(published["_"]) == {"port": "80", "url": "http://x/"}


def test_for_each_shared_instance(request_instance, tmp_path):
    host = request_instance("host")
    order = host.node.proxy.connect().registerOpenOrder()
    for title, parameters in (("one", {"path": "/1"}), ("two", {"path": "/2"}), ("bare", {})):
        order.request(host.software_url, title, partition_parameter_kw=parameters, shared=True)

    directory = tmp_path / "host"
    write_profile(directory, """
        [buildout]
        parts = publish-shared single
        [slap-configuration]
        recipe = slapnode:config
        [publish-shared]
        recipe = slapnode:publish
        -for-each-slave = ${slap-configuration:slave-instance-list}
        url = http://host{path}?ref={slave_reference}
        literal = {{braces}}
        [single]
        recipe = slapnode:publish
        -slave-reference = _bare
        url = http://host/bare
        """, connection=host.connection)
    result = run_buildout(directory)
    assert "shared instance _bare: not published, it lacks 'path'" in result.stdout

    def shared_connection(title):  # what the requester of a shared instance sees
        return order.request(host.software_url, title, shared=True).getConnectionParameterDict()

    assert shared_connection("one") == {"url": "http://host/1?ref=_one", "literal": "{braces}"}
    assert shared_connection("two")["url"] == "http://host/2?ref=_two"
    assert shared_connection("bare") == {"url": "http://host/bare"}
    assert host.partition().getConnectionParameterDict() == {}  # nothing published for the host itself


def test_bad_format_field_is_a_profile_error(tmp_path):
    write_profile(tmp_path, """
        [buildout]
        parts = p
        [p]
        recipe = slapnode:publish
        -for-each-slave = []
        url = http://host/{unclosed
        """)
    result = run_buildout(tmp_path, check=False)
    assert result.returncode != 0
    assert "[p] option 'url': expected '}' before end of string (write {{ and }} for literal braces)" in result.stdout
