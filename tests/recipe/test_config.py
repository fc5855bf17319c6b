"""slapnode:config: the partition's configuration from a real proxy, as buildout options."""
from __future__ import annotations

import json
import textwrap

from .conftest import run_buildout, write_profile

DUMP = textwrap.dedent("""
    [buildout]
    parts = dump
    [slap-configuration]
    recipe = slapnode:config
    {defaults}
    [dump]
    recipe = slapnode:template
    inline = {{{{ conf | tojson }}}}
    output = conf.json
    context = section conf slap-configuration
    """)


def dump_configuration(directory, instance, defaults: str = "") -> dict:
    write_profile(directory, DUMP.format(defaults=defaults), connection=instance.connection)
    run_buildout(directory)
    return json.loads((directory / "conf.json").read_text())


def test_parameters_defaults_identity_addresses_and_shared_instances(request_instance, tmp_path):
    instance = request_instance("main", {"port": "8081", "message": "a <b> & 'c'", "empty": ""})
    order = instance.node.proxy.connect().registerOpenOrder()
    order.request(instance.software_url, "web", partition_parameter_kw={"domain": "example.org"}, shared=True)
    order.request(instance.software_url, "json", shared=True,
                  partition_parameter_kw={"_": json.dumps({"paths": ["/a", "/b"], "weight": 2})})

    conf = dump_configuration(tmp_path / "p", instance, "configuration.port = 1\nconfiguration.colour = red")

    assert conf["configuration.port"] == "8081"  # the instance's value wins over the default
    assert conf["configuration.colour"] == "red"  # a default the instance did not override
    assert conf["configuration.message"] == "a <b> & 'c'"
    assert conf["configuration.empty"] == ""
    assert not any(k.startswith("configuration.slap_") or k == "configuration.ip_list" for k in conf)
    assert {k: conf[k] for k in ("computer-id", "partition-id", "server-url", "software-release-url",
                                 "software-type", "instance-title", "root-instance-title", "instance-state",
                                 "instance-guid")} == {
        "computer-id": instance.node.computer_id,
        "partition-id": instance.partition_id,
        "server-url": instance.node.master_url,
        "software-release-url": instance.software_url,
        "software-type": "default",
        "instance-title": "main",
        "root-instance-title": "main",
        "instance-state": "started",
        "instance-guid": instance.partition().getInstanceGuid(),
    }
    # the test node's partitions share the loopback addresses (unprivileged format)
    assert conf["ipv4"] == conf["ipv4-random"] == "127.0.0.1"
    assert conf["ipv6"] == conf["ipv6-random"] == "::1"

    slaves = json.loads(conf["slave-instance-list"])
    assert [s["slave_title"] for s in slaves] == ["_json", "_web"]  # sorted by reference
    assert slaves[1]["domain"] == "example.org" and slaves[1]["slave_reference"] == "_web"
    assert slaves[0]["paths"] == ["/a", "/b"] and slaves[0]["weight"] == 2 and "_" not in slaves[0]


def test_json_in_xml_parameters_unwrapped(request_instance, tmp_path):
    document = {"port": 8080, "names": ["x", "y"], "enabled": True, "title": "t", "nothing": None}
    instance = request_instance("json", {"_": json.dumps(document)})
    conf = dump_configuration(tmp_path / "p", instance)
    assert conf["configuration.port"] == "8080"
    assert json.loads(conf["configuration.names"]) == ["x", "y"]
    assert conf["configuration.enabled"] == "true"
    assert conf["configuration.title"] == "t"
    assert conf["configuration.nothing"] == ""
    assert "configuration._" not in conf


SWITCH = """
    [buildout]
    parts = ${slap-configuration:parts}
    [slap-configuration]
    recipe = slapnode:config
    parts.default = a
    parts.backend = b
    [a]
    recipe = slapnode:mkdir
    a = made-by-default
    [b]
    recipe = slapnode:mkdir
    b = made-by-backend
    [never]
    recipe = slapnode:mkdir
    x = ${this-section:does-not-exist}
    """


def test_parts_chosen_by_software_type(request_instance, tmp_path):
    backend = request_instance("backend", software_type="backend")
    write_profile(tmp_path / "backend", SWITCH, connection=backend.connection)
    run_buildout(tmp_path / "backend")
    assert (tmp_path / "backend" / "made-by-backend").is_dir()
    assert not (tmp_path / "backend" / "made-by-default").exists()

    other = request_instance("other", software_type="unknown")
    write_profile(tmp_path / "other", SWITCH, connection=other.connection)
    result = run_buildout(tmp_path / "other", check=False)
    assert result.returncode != 0
    assert ("[slap-configuration] software type 'unknown' is not offered by this software release "
            "(it offers: backend, default): request one of those") in result.stdout


def test_clear_errors_without_connection_or_master(tmp_path):
    write_profile(tmp_path / "none", DUMP.format(defaults=""))
    result = run_buildout(tmp_path / "none", check=False)
    assert result.returncode != 0
    assert "[slap-configuration] no computer-id, partition-id, server-url in [slap-connection]" in result.stdout

    connection = {"computer-id": "C", "partition-id": "slappart0", "server-url": "http://127.0.0.1:9/"}
    write_profile(tmp_path / "down", DUMP.format(defaults=""), connection=connection)
    result = run_buildout(tmp_path / "down", check=False)
    assert result.returncode != 0
    assert ("[slap-configuration] reading the parameters of slappart0: ConnectionError: "
            "GET http://127.0.0.1:9/registerComputerPartition: cannot connect to the master") in result.stdout
    assert "Traceback" not in result.stdout


def test_hostile_parameter_names_and_values(request_instance, tmp_path):
    """Values are data (no buildout substitution, multi-line kept); names that cannot be buildout
    options are left out instead of corrupting the partition's .installed.cfg."""
    values = {"sub": "${buildout:directory}", "dollar": "$$ $(id) `id`", "lines": "one\n  two\nthree",
              "unicode": "héllo ☃"}
    instance = request_instance("hostile", {**values, "bad name": "x", "a=b": "x", "ok.name-1_x": "y"})
    for _ in range(2):  # the second run reads back what the first recorded in .installed.cfg
        conf = dump_configuration(tmp_path / "p", instance)
        for key, value in values.items():
            assert conf[f"configuration.{key}"] == value, key
        assert conf["configuration.ok.name-1_x"] == "y"
        assert "configuration.bad name" not in conf and "configuration.a=b" not in conf
