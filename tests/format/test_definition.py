"""Compatibility of the definition files with the reference's captured ones."""
from __future__ import annotations

import json
from pathlib import Path

from slapos.format import definition
from slapos.format.model import Address, Computer, IPv6Range, Partition, Tap, User
from slapos.format.system import JsonFile
from slapos.slap import wire

HERE = Path(__file__).parent
DATA = HERE / "data"


def test_reference_state_file_round_trips_byte_for_byte():
    text = (DATA / "format-computer.xml").read_text()
    computer = Computer.from_dict(wire.loads(text))
    assert computer.reference == "COMP-DEMO"
    assert [p.reference for p in computer.partition_list] == ["slappart0", "slappart1", "slappart2"]
    assert computer.partition_list[1].ipv6_range == IPv6Range("fd00::2:0:0:0", 80)
    assert definition.computer_xml(computer) == text


def test_resource_file_matches_the_reference_shape(tmp_path):
    computer = Computer.from_dict(wire.loads((DATA / "format-computer.xml").read_text()))
    expected = (DATA / "partition-.slapos-resource.json").read_text()
    resource = JsonFile("slappart0", str(tmp_path / ".slapos-resource"), computer.partition_list[0].to_dict())
    (action,) = resource.plan()
    action.func()
    assert (tmp_path / ".slapos-resource").read_text() == expected
    assert resource.plan() == []
    assert json.loads(definition.computer_json(computer)) == json.loads((DATA / "format-computer.json").read_text())


def test_input_definition_file_gives_the_captured_partitions():
    given = definition.read_input_definition(DATA / "format-input-definition.cfg", 3)
    captured = json.loads((DATA / "format-computer.json").read_text())
    assert given.address == Address("fd00::2", "ffff:ffff:ffff:ffff::")
    assert given.software_user == "nobody"
    for spec, expected in zip(given.partitions, captured["partition_list"], strict=True):
        assert spec.pathname == expected["reference"]
        assert spec.user == expected["user"]["name"]
        assert spec.network_interface == expected["tap"]["name"]
        assert [a.to_dict() for a in spec.address_list] == expected["address_list"]
        assert spec.ipv6_range.to_dict() == expected["ipv6_range"]


def test_output_definition_reads_back_the_same(tmp_path):
    partition = Partition(
        reference="p0", path="/srv/p0", user=User("u0", "/srv/p0", additional_group_list=["soft"]),
        address_list=[Address("10.0.0.2", "255.255.255.255"), Address("fd00::2", "ffff:ffff:ffff:ffff::")],
        ipv6_range=IPv6Range("fd00::4001:0:0:0", 80), tap=Tap("tap0"), capability_list=["a", "b"],
    )
    computer = Computer("C", "/opt/soft", "/srv", address="fd00::1", netmask="ffff:ffff:ffff:ffff::",
                        software_user="soft", partition_list=[partition])
    path = tmp_path / "out.cfg"
    path.write_text(definition.output_definition(computer))
    given = definition.read_input_definition(path, 1)
    assert given.address == Address("fd00::1", "ffff:ffff:ffff:ffff::")
    spec = given.partitions[0]
    assert (spec.pathname, spec.user, spec.network_interface) == ("p0", "u0", "tap0")
    assert spec.address_list == partition.address_list
    assert spec.ipv6_range == partition.ipv6_range
    assert spec.capability_list == ["a", "b"]


def test_save_keeps_history_and_skips_identical_content(tmp_path):
    from slapos.format import history

    path = tmp_path / "slapos.xml"
    assert definition.save_computer(path, "one\n")
    assert not definition.save_computer(path, "one\n")
    assert history.versions(path) == []  # first version: nothing earlier to keep
    assert definition.save_computer(path, "two\n")
    assert definition.save_computer(path, "three\n")
    members = history.versions(path)
    assert len(members) == 2 and all(m.startswith("slapos.xml.") for m in members)
    assert [history.read_version(path, m) for m in members] == [b"one\n", b"two\n"]
    assert path.read_text() == "three\n"
