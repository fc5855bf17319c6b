"""Every marshalled payload of the reference captures decodes, and re-encodes to the same text."""
from __future__ import annotations

import json

import pytest

from slapos.slap import wire
from slapos.slap.objects import Computer, ComputerPartition, SoftwareInstance, SoftwareRelease, _decode

from .captures import all_captures, capture, captures_dir

if not captures_dir().is_dir():  # pragma: no cover - the captures live next to the checkout
    pytest.skip(f"reference captures not found in {captures_dir()} (set SLAPNODE_CAPTURES)", allow_module_level=True)

CAPTURES = all_captures()


def marshalled_payloads():
    """(capture name, field, text) for every *_xml form field, every marshalled `state`, and every
    `<marshal>` response body."""
    found = []
    for c in CAPTURES:
        for field, value in c.form.items():
            if field.endswith("_xml") or field == "xml" or (field == "state" and value.startswith("<marshal>")):
                found.append((c.name, field, value))
        if c.response.startswith("<marshal>"):
            found.append((c.name, "response", c.response))
    return found


PAYLOADS = marshalled_payloads()
UNSAFE = {("048-loadComputerConfigurationFromXML--error-unsafe-class.txt", "xml")}


def test_the_walk_finds_the_payloads():
    assert len(CAPTURES) == 130
    fields = {field for _, field, _ in PAYLOADS}
    assert fields == {"partition_parameter_xml", "filter_xml", "state", "shared_xml", "connection_xml",
                      "instance_reference_xml", "xml", "response"}
    assert len(PAYLOADS) > 70


@pytest.mark.parametrize("name,field,text", PAYLOADS, ids=[f"{n[:3]}-{f}" for n, f, _ in PAYLOADS])
def test_capture_payload_decodes_and_reencodes_identically(name, field, text):
    if (name, field) in UNSAFE:
        with pytest.raises(wire.WireError, match="os.system"):
            wire.loads(text)
        return
    value = wire.loads(text)
    assert wire.dumps(value) == text
    # and through our own classes (object_hook) too: same attributes, same text
    assert wire.dumps(_decode(None, text, object, name)) == text


def test_004_user_request_instance():
    c = capture(4)
    params = wire.loads(c.form["partition_parameter_xml"])
    assert list(params) == ["_"]
    assert wire.unwrap_json_parameters(params) == {"title": "hello <world> & co", "replicas": 2}
    assert wire.loads(c.form["filter_xml"]) == {}
    assert wire.loads(c.form["state"]) is None
    assert wire.loads(c.form["shared_xml"]) is False
    instance = _decode(None, c.response, SoftwareInstance, "004")
    assert instance.slap_computer_id == "COMP-DEMO"
    assert instance.slap_computer_partition_id == "slappart0"
    assert instance._instance_guid == "COMP-DEMO-slappart0"
    assert instance._requested_state == "started"
    assert instance.connection_xml is None
    assert instance.slap_server_url == "slap_server_url"
    assert instance.ip_list == [("slaptap0", "10.0.0.10"), ("slaptap0", "fd00::2:a")]
    assert instance._parameter_dict["timestamp"] == "1795625296.3328707"
    assert json.loads(instance._parameter_dict["_"])["title"] == "hello <world> & co"


def test_019_full_computer():
    computer = _decode(None, capture(19).response, Computer, "019")
    assert computer.getId() == "COMP-DEMO"
    partitions = computer._computer_partition_list
    assert [p.getId() for p in partitions] == ["slappart0", "slappart1", "slappart2"]
    busy, free, _ = partitions
    assert busy.getState() == "started"
    assert busy.getNeedModification() is True
    assert busy.getInstanceGuid() == "COMP-DEMO-slappart0"
    assert busy.getType() == "default"
    assert busy.getConnectionParameterDict() == {}
    sr = busy.getSoftwareRelease()
    assert isinstance(sr, SoftwareRelease) and sr.getURI() == "/opt/capture/sr/software.cfg"
    parameters = busy.getInstanceParameterDict()
    assert parameters["instance_title"] == "myinstance"
    assert parameters["root_instance_title"] == "myinstance"
    assert parameters["timestamp"] == "1795625303.3630798"
    assert parameters["full_address_list"] == []
    assert parameters["ip_list"] == [("slaptap0", "10.0.0.10"), ("slaptap0", "fd00::2:a")]
    assert parameters["slave_instance_list"] == [{
        "domain": "demo.example", "slap_software_type": "default", "slave_reference": "_myslave",
        "slave_title": "_myslave", "url": "http://[fd00::2:a]:8080/",
    }]
    assert free.getState() == "destroyed"
    assert free.getNeedModification() is False
    assert free.getSoftwareRelease() is None
    assert free.getInstanceParameterDict() == {}
    (software,) = computer._software_release_list
    assert software.getURI() == "/opt/capture/sr/software.cfg"
    assert software.getComputerId() == "COMP-DEMO"
    assert software.getState() == "available"


def test_023_partition_requests_a_child():
    c = capture(23)
    assert c.headers["Authorization"] == "X-SlapPartition computer_id=COMP-DEMO, computer_partition_id=slappart0"
    assert wire.loads(c.form["partition_parameter_xml"]) == {"foo": "bar", "n": 3}
    instance = _decode(None, c.response, SoftwareInstance, "023")
    assert instance.slap_computer_partition_id == "slappart1"
    assert instance._parameter_dict["n"] == "3"  # the master stores parameters as text
    assert instance._parameter_dict["foo"] == "bar"


def test_025_shared_connection_parameters():
    c = capture(25)
    assert c.form["slave_reference"] == "_myslave"
    assert wire.loads(c.form["connection_xml"]) == {"domain": "demo.example", "secure_access": "https://demo.example/"}
    assert capture(24).form["slave_reference"] == "None"


def test_002_formatted_computer_dictionary():
    computer = wire.loads(capture(2).form["xml"])
    assert computer["address"] == "fd00::2"
    assert computer["netmask"] == "ffff:ffff:ffff:ffff::"
    assert computer["partition_has_ipv6_range"] is True
    assert computer["instance_storage_home"] is None
    partitions = computer["partition_list"]
    assert [p["reference"] for p in partitions[:2]] == ["slappart0", "slappart1"]
    first = partitions[0]
    assert first["address_list"] == [
        {"addr": "10.0.0.10", "netmask": "255.255.255.255"},
        {"addr": "fd00::2:a", "netmask": "ffff:ffff:ffff:ffff::"},
    ]
    assert first["ipv6_range"]["prefixlen"] == 80
    assert first["tap"]["name"] == "slaptap0"
    assert first["user"]["name"] == "slapuser0"
    assert first["user"]["additional_group_list"] == ["nobody"]


def test_006_shared_instance_host_partition_and_022_certificate():
    partition = _decode(None, capture(6).response, ComputerPartition, "006")
    assert partition.getId() == "slappart0" and partition.getState() == "started"
    assert wire.loads(capture(22).response) == {"certificate": "", "key": ""}


def test_instance_xml_in_hateoas_captures_decodes():
    """HATEOAS documents carry instance XML (my_text_content): it decodes with our reader."""
    docs = []
    for c in CAPTURES:
        if c.endpoint.startswith("hateoas/") and c.response.startswith("{"):
            body = json.loads(c.response)
            for field in (body.get("_embedded", {}).get("_view", {}) or {}).values():
                if isinstance(field, dict) and isinstance(field.get("default"), str) and "<instance" in field["default"]:
                    docs.append(field["default"])
    assert docs, "no instance XML found in the HATEOAS captures"
    for doc in docs:
        parameters = wire.loads_instance_xml(doc)
        assert parameters and all(isinstance(v, str) for v in parameters.values())
        assert wire.dumps_instance_xml(parameters) == doc  # byte-exact writer
