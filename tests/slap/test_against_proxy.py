"""The client library against our real proxy (`slapos proxy start` on loopback): a whole user and
node conversation, as in the reference captures."""
from __future__ import annotations

import pytest

from slapos.slap import NotFoundError, wire

SR = "/opt/test/sr/software.cfg"


def computer_definition(computer_id: str, root: str, partitions: int = 3) -> dict:
    """The formatted-computer dictionary of §7.4 (shape of capture 002)."""
    return {
        "reference": computer_id,
        "address": "fd00::2",
        "netmask": "ffff:ffff:ffff:ffff::",
        "instance_root": root,
        "software_root": root + "/software",
        "partition_list": [
            {
                "reference": f"slappart{i}",
                "path": f"{root}/slappart{i}",
                "address_list": [
                    {"addr": f"10.0.0.{10 + i}", "netmask": "255.255.255.255"},
                    {"addr": f"fd00::2:{10 + i:x}", "netmask": "ffff:ffff:ffff:ffff::"},
                ],
                "tap": {"name": f"slaptap{i}"},
                "user": {"name": f"slapuser{i}"},
                "external_storage_list": [],
            }
            for i in range(partitions)
        ],
    }


@pytest.fixture
def formatted(proxy, tmp_path):
    slap = proxy.connect()
    computer = slap.registerComputer(proxy.computer_id)
    computer.updateConfiguration(wire.dumps(computer_definition(proxy.computer_id, str(tmp_path / "inst"))))
    yield slap, computer
    slap.close()


def test_user_and_node_conversation(proxy, formatted):
    slap, computer = formatted
    assert [p.getState() for p in computer.getComputerPartitionList()] == ["destroyed"] * 3

    slap.registerSupply().supply(SR, proxy.computer_id)
    (software,) = computer.getSoftwareReleaseList()
    assert software.getURI() == SR and software.getState() == "available"
    software.building()
    software.available()

    parameters = wire.wrap_json_parameters({"title": "hello <world> & co", "replicas": 2})
    requested = slap.registerOpenOrder().request(SR, "myinstance", partition_parameter_kw=parameters)
    partition_id = requested.getId()

    busy = {p.getId(): p for p in computer.getComputerPartitionList()}[partition_id]
    assert busy.getState() == "started"
    assert busy.getSoftwareRelease().getURI() == SR
    assert wire.unwrap_json_parameters({"_": busy.getInstanceParameter("_")})["title"] == "hello <world> & co"
    assert busy.getInstanceParameter("instance_title") == "myinstance"
    busy.started()

    # inside the partition: publish, request a child, report
    inside = slap.registerComputerPartition(proxy.computer_id, partition_id)
    inside.setConnectionDict({"url": "http://[fd00::2:a]:8080/", "user": "admin"})
    again = slap.registerOpenOrder().request(SR, "myinstance", partition_parameter_kw=parameters)
    assert again.getConnectionParameter("url") == "http://[fd00::2:a]:8080/"
    child = inside.request(SR, "default", "mychild", partition_parameter_kw={"foo": "bar", "n": 3})
    assert child.getId() != partition_id
    assert child.getInstanceParameterDict()["n"] == "3"  # stored as instance XML: text
    assert inside.getCertificate().keys() == {"certificate", "key"}
    inside.bang("test bang")
    inside.error("test error")


def test_shared_instance_state_comes_from_the_host(proxy, formatted):
    slap, computer = formatted
    slap.registerSupply().supply(SR, proxy.computer_id)
    host = slap.registerOpenOrder().request(SR, "myinstance")
    shared = slap.registerOpenOrder().request(SR, "myslave", shared=True,
                                              partition_parameter_kw={"domain": "demo.example"})
    assert shared.getId() == host.getId()
    assert shared.getState() == "started"
    hosting = slap.registerComputerPartition(proxy.computer_id, host.getId())
    slaves = hosting.getInstanceParameter("slave_instance_list")
    assert [s["slave_title"] for s in slaves] == ["_myslave"]
    hosting.setConnectionDict({"domain": "demo.example"}, slave_reference="_myslave")


def test_proxy_errors_map_onto_the_hierarchy(proxy, formatted):
    slap, _ = formatted
    with pytest.raises(NotFoundError, match="getComputerStatus"):
        slap.registerComputer(proxy.computer_id).getStatus()
    assert slap.getHateoasUrl() == proxy.url + "hateoas/"  # the proxy serves a read-only REST API
