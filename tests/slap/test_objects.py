"""The client objects against a loopback master answering with the reference's captured payloads."""
from __future__ import annotations

import logging

import pytest
from zope.interface.verify import verifyClass, verifyObject

from slapos.slap import (
    BadRequestError,
    Computer,
    ComputerPartition,
    NotFoundError,
    OpenOrder,
    ResourceNotReady,
    ServerError,
    SlapException,
    SoftwareInstance,
    SoftwareRelease,
    Supply,
    interface,
    slap,
    wire,
)
from slapos.slap.objects import MAX_ERROR_LOG

from .captures import capture, captures_dir

if not captures_dir().is_dir():  # pragma: no cover
    pytest.skip(f"reference captures not found in {captures_dir()}", allow_module_level=True)

AUTH = "X-SlapPartition computer_id=COMP-DEMO, computer_partition_id=slappart0"
FULL_COMPUTER = capture(19).response
PARTITION0 = capture(21).response  # registerComputerPartition of slappart0


def test_every_class_provides_its_interface(connected):
    instance = SoftwareInstance(slap_computer_id="C", slap_computer_partition_id="slappart0")
    for iface, obj in [
        (interface.ISlap, connected),
        (interface.IComputer, connected.registerComputer("C")),
        (interface.IComputerPartition, connected.registerComputerPartition("C", "slappart0")),
        (interface.ISoftwareRelease, connected.registerSoftwareRelease("http://sr/software.cfg")),
        (interface.IOpenOrder, connected.registerOpenOrder()),
        (interface.ISupply, connected.registerSupply()),
        (interface.ISoftwareInstance, instance),
    ]:
        assert verifyObject(iface, obj)
    for iface, klass in [(interface.IComputer, Computer), (interface.IComputerPartition, ComputerPartition),
                         (interface.ISoftwareRelease, SoftwareRelease), (interface.IOpenOrder, OpenOrder),
                         (interface.ISupply, Supply), (interface.ISlap, slap)]:
        assert verifyClass(iface, klass)


def test_not_connected_is_a_clear_error():
    with pytest.raises(SlapException, match="initializeConnection"):
        slap().registerComputer("C")
    with pytest.raises(SlapException, match="not bound to a master"):
        ComputerPartition("C", "slappart0").started()


# -- Computer ----------------------------------------------------------------------------------


def test_partition_list_comes_from_one_full_information_call(master, connected):
    master.answer("getFullComputerInformation", FULL_COMPUTER)
    computer = connected.registerComputer("COMP-DEMO")
    assert master.requests == []  # registering is free
    partitions = computer.getComputerPartitionList()
    (call,) = master.requests
    assert call.method == "GET" and call.query == {"computer_id": "COMP-DEMO"}
    assert "Authorization" not in call.headers
    assert [p.getId() for p in partitions] == ["slappart0", "slappart1", "slappart2"]
    busy = partitions[0]
    # everything came with the computer: no further call for the partition's information
    assert busy.getInstanceParameterDict()["instance_title"] == "myinstance"
    assert busy.getSoftwareRelease().getURI() == "/opt/capture/sr/software.cfg"
    assert busy.getState() == "started"
    assert len(master.requests) == 1
    (software,) = computer.getSoftwareReleaseList()
    assert software.getURI() == "/opt/capture/sr/software.cfg" and software.getState() == "available"
    assert len(master.requests) == 2


def test_full_information_404_falls_back_to_the_legacy_call_once(master, connected):
    master.answer("getComputerInformation", capture(129).response)
    partitions = connected.registerComputer("COMP-DEMO").getComputerPartitionList()
    assert [r.endpoint for r in master.requests] == ["getFullComputerInformation", "getComputerInformation"]
    assert partitions[0].getInstanceParameterDict()["instance_title"] == "replay-renamed"


def test_unknown_computer(master, connected):
    with pytest.raises(NotFoundError, match="getComputerInformation"):
        connected.registerComputer("NOPE").getComputerPartitionList()
    assert [r.endpoint for r in master.requests] == ["getFullComputerInformation", "getComputerInformation"]
    master.requests.clear()
    master.answer("getFullComputerInformation", capture(46).response, status=500)
    with pytest.raises(ServerError, match="getFullComputerInformation"):
        connected.registerComputer("NOPE").getComputerPartitionList()
    assert len(master.requests) == 1  # a server error is not a reason to try the legacy call


def test_hostile_computer_answer_is_refused_with_context(master, connected):
    master.answer("getFullComputerInformation",
                  '<marshal><object id="i2" module="os" class="system"><tuple><string>id</string></tuple>'
                  '<dictionary id="i3"/></object></marshal>')
    with pytest.raises(wire.WireError, match="computer COMP-DEMO: .*os.system"):
        connected.registerComputer("COMP-DEMO").getComputerPartitionList()


@pytest.mark.parametrize("bad_id", ["../../etc", "a/b", "..", ""])
def test_path_like_partition_ids_from_the_master_are_refused(master, connected, bad_id):
    master.answer("getFullComputerInformation", FULL_COMPUTER.replace(
        "<string>_partition_id</string><string>slappart1</string>",
        f"<string>_partition_id</string><string>{bad_id}</string>"))
    with pytest.raises(wire.WireError, match="not a valid partition id"):
        connected.registerComputer("COMP-DEMO").getComputerPartitionList()


def test_attribute_types_are_checked_and_unknown_ones_ignored(master, connected):
    master.answer("getFullComputerInformation", FULL_COMPUTER.replace(
        "<string>_computer_id</string><string>COMP-DEMO</string><string>_instance_guid</string>",
        "<string>_computer_id</string><string>COMP-DEMO</string><string>__class__</string><string>x</string>"
        "<string>_instance_guid</string>", 1))
    partition = connected.registerComputer("COMP-DEMO").getComputerPartitionList()[0]
    assert partition.__class__ is ComputerPartition
    master.answer("getFullComputerInformation", FULL_COMPUTER.replace(
        "<string>_parameter_dict</string><dictionary id=\"i8\">",
        "<string>_parameter_dict</string><list id=\"i99\"/><string>ignored</string><dictionary id=\"i8\">", 1))
    with pytest.raises(wire.WireError, match="ComputerPartition._parameter_dict must be a dictionary"):
        connected.registerComputer("COMP-DEMO").getComputerPartitionList()


def test_computer_reports(master, connected):
    master.answer("useComputer", "Ignored")
    master.answer("computerBang", "<marshal><string></string></marshal>")
    master.answer("loadComputerConfigurationFromXML", "done")
    computer = connected.registerComputer("COMP-DEMO")
    computer.reportUsage("")
    assert master.requests == []  # an empty journal is not sent
    computer.reportUsage("<journal/>")
    computer.bang("reboot")
    assert computer.updateConfiguration({"reference": "COMP-DEMO", "partition_list": []}) == "done"
    usage, bang, load = master.requests
    assert usage.form == {"computer_id": "COMP-DEMO", "use_string": "<journal/>"}
    assert bang.form == {"computer_id": "COMP-DEMO", "message": "reboot"}
    assert wire.loads(load.form["xml"]) == {"reference": "COMP-DEMO", "partition_list": []}
    assert all("Authorization" not in r.headers for r in master.requests)
    with pytest.raises(NotFoundError, match="getComputerStatus"):
        computer.getStatus()


# -- SoftwareRelease -----------------------------------------------------------------------------


def test_software_release_reports(master, connected):
    for endpoint in ("buildingSoftwareRelease", "availableSoftwareRelease", "destroyedSoftwareRelease",
                     "softwareReleaseError"):
        master.answer(endpoint, "Ignored")
    software = connected.registerSoftwareRelease("/opt/sr/software.cfg", "COMP-DEMO")
    assert software.getURI() == "/opt/sr/software.cfg" and software.getState() == "available"
    software.building()
    software.available()
    software.destroyed()
    software.error("boom")
    assert [r.endpoint for r in master.requests] == [
        "buildingSoftwareRelease", "availableSoftwareRelease", "destroyedSoftwareRelease", "softwareReleaseError"]
    for r in master.requests:
        assert r.form["url"] == "/opt/sr/software.cfg" and r.form["computer_id"] == "COMP-DEMO"
        assert "Authorization" not in r.headers
    assert master.requests[-1].form["error_log"] == "boom"


def test_error_reports_never_raise_and_are_truncated(master, connected, caplog):
    master.answer("softwareReleaseError", "<p>down</p>", status=500)
    master.answer("softwareInstanceError", "<p>down</p>", status=503)
    software = connected.registerSoftwareRelease("/opt/sr/software.cfg", "COMP-DEMO")
    with caplog.at_level(logging.WARNING):
        software.error("x" * (MAX_ERROR_LOG + 500) + "END")
        connected.registerComputerPartition("COMP-DEMO", "slappart0").error("oops")
    sent = master.requests[0].form["error_log"]
    assert sent.endswith("END") and "characters cut" in sent
    assert len(sent) < MAX_ERROR_LOG + 100
    assert "could not report the error" in caplog.text and "slappart0" in caplog.text


# -- ComputerPartition -----------------------------------------------------------------------------


@pytest.mark.parametrize("method,endpoint", [
    ("started", "startedComputerPartition"), ("stopped", "stoppedComputerPartition"),
    ("destroyed", "destroyedComputerPartition"), ("building", "buildingComputerPartition"),
    ("available", "availableComputerPartition"),
])
def test_partition_state_reports_carry_the_partition_header(master, connected, method, endpoint):
    master.answer(endpoint, "Ignored")
    getattr(connected.registerComputerPartition("COMP-DEMO", "slappart0"), method)()
    (call,) = master.requests
    assert call.method == "POST" and call.endpoint == endpoint
    assert call.form == {"computer_id": "COMP-DEMO", "computer_partition_id": "slappart0"}
    assert call.headers["Authorization"] == AUTH


def test_partition_messages(master, connected):
    for endpoint in ("softwareInstanceError", "softwareInstanceBang", "softwareInstanceRename"):
        master.answer(endpoint, "OK")
    partition = connected.registerComputerPartition("COMP-DEMO", "slappart0")
    partition.error("slave error", slave_reference="_myslave")
    partition.error("plain error")
    partition.bang("demo process exited")
    assert partition.rename("replay-renamed") is True
    slave_error, error, bang, rename = master.requests
    assert slave_error.form == {"computer_id": "COMP-DEMO", "computer_partition_id": "slappart0",
                                "error_log": "slave error", "slave_reference": "_myslave"}  # capture 030
    assert "slave_reference" not in error.form  # capture 017
    assert bang.form["message"] == "demo process exited"
    assert rename.form == {"computer_id": "COMP-DEMO", "computer_partition_id": "slappart0",
                           "new_name": "replay-renamed"}  # capture 128
    assert all(r.headers["Authorization"] == AUTH for r in master.requests)


def test_registered_partition_is_fetched_lazily_once(master, connected):
    master.answer("registerComputerPartition", PARTITION0)
    partition = connected.registerComputerPartition("COMP-DEMO", "slappart0")
    assert partition.getId() == "slappart0"
    assert master.requests == []
    assert partition.getInstanceParameter("instance_title") == "myinstance"
    assert partition.getInstanceGuid() == "COMP-DEMO-slappart0"
    assert partition.getState() == partition.getRequestedState() == "started"
    assert partition.getType() == "default"
    assert partition.getSoftwareRelease().getURI() == "/opt/capture/sr/software.cfg"
    (call,) = master.requests
    assert call.method == "GET"
    assert call.query == {"computer_reference": "COMP-DEMO", "computer_partition_reference": "slappart0"}
    assert "Authorization" not in call.headers
    with pytest.raises(NotFoundError, match="instance parameter 'nope' not found"):
        partition.getInstanceParameter("nope")
    with pytest.raises(NotFoundError, match="connection parameter 'nope' not found"):
        partition.getConnectionParameter("nope")


def test_set_connection_dict_skips_unchanged_parameters(master, connected):
    master.answer("registerComputerPartition", PARTITION0)
    master.answer("setComputerPartitionConnectionXml", "done")
    partition = connected.registerComputerPartition("COMP-DEMO", "slappart0")
    partition.setConnectionDict({"url": "http://x/", "port": 8080})
    posts = master.calls("setComputerPartitionConnectionXml")
    assert len(posts) == 1
    assert posts[0].form["slave_reference"] == "None"  # capture 024
    assert wire.loads(posts[0].form["connection_xml"]) == {"url": "http://x/", "port": 8080}
    assert posts[0].headers["Authorization"] == AUTH
    # the same values again (the master stores text): no call
    partition.setConnectionDict({"url": "http://x/", "port": "8080"})
    assert len(master.calls("setComputerPartitionConnectionXml")) == 1
    assert partition.getConnectionParameter("port") == "8080"
    # a change is sent
    partition.setConnectionDict({"url": "http://y/"})
    assert len(master.calls("setComputerPartitionConnectionXml")) == 2
    # shared instance parameters are always sent
    partition.setConnectionDict({"domain": "demo.example"}, slave_reference="_myslave")
    partition.setConnectionDict({"domain": "demo.example"}, slave_reference="_myslave")
    slave_posts = master.calls("setComputerPartitionConnectionXml")[2:]
    assert [p.form["slave_reference"] for p in slave_posts] == ["_myslave", "_myslave"]
    assert len(master.calls("registerComputerPartition")) == 1


def test_set_connection_dict_unchanged_from_the_master_sends_nothing(master, connected):
    master.answer("getFullComputerInformation", FULL_COMPUTER.replace(
        '<string>_connection_dict</string><dictionary id="i7"/>',
        '<string>_connection_dict</string><dictionary id="i7"><string>url</string><string>http://x/</string>'
        "</dictionary>"))
    partition = connected.registerComputer("COMP-DEMO").getComputerPartitionList()[0]
    partition.setConnectionDict({"url": "http://x/"})
    assert [r.endpoint for r in master.requests] == ["getFullComputerInformation"]


def test_set_connection_dict_none_is_stored_as_text(master, connected):
    # a master stores str(value): None comes back as 'None', which must not look like a change
    master.answer("getFullComputerInformation", FULL_COMPUTER.replace(
        '<string>_connection_dict</string><dictionary id="i7"/>',
        '<string>_connection_dict</string><dictionary id="i7"><string>token</string><string>None</string>'
        "<string>url</string><none/></dictionary>"))
    partition = connected.registerComputer("COMP-DEMO").getComputerPartitionList()[0]
    partition.setConnectionDict({"token": None, "url": ""})
    assert [r.endpoint for r in master.requests] == ["getFullComputerInformation"]


def test_get_certificate(master, connected):
    master.answer("getComputerPartitionCertificate", capture(22).response)
    assert connected.registerComputerPartition("COMP-DEMO", "slappart0").getCertificate() == {"certificate": "", "key": ""}
    (call,) = master.requests
    assert call.method == "GET" and "Authorization" not in call.headers
    assert call.query == {"computer_id": "COMP-DEMO", "computer_partition_id": "slappart0"}


def test_related_instance_list(master, connected):
    connected_partition = connected.registerComputerPartition("COMP-DEMO", "slappart0")
    with pytest.raises(NotFoundError):  # the proxy does not serve it (capture 026)
        connected_partition.setComputerPartitionRelatedInstanceList(["mychild"])
    assert wire.loads(master.requests[0].form["instance_reference_xml"]) == ["mychild"]


# -- requests ----------------------------------------------------------------------------------------


def test_open_order_request_sends_the_reference_form(master, connected):
    master.answer("requestComputerPartition", capture(4).response)
    master.answer("registerComputerPartition", PARTITION0)
    parameters = wire.wrap_json_parameters({"title": "hello <world> & co", "replicas": 2})
    partition = connected.registerOpenOrder().request(
        "/opt/capture/sr/software.cfg", "myinstance", partition_parameter_kw=parameters)
    (call,) = master.requests
    assert call.form == capture(4).form
    assert "Authorization" not in call.headers
    assert partition.getId() == "slappart0"
    assert partition.getComputerId() == "COMP-DEMO"
    # a non-shared answer is a partition like any other: its information is fetched on demand
    assert partition.getInstanceGuid() == "COMP-DEMO-slappart0"
    assert partition.getConnectionParameterDict() == {}
    assert [r.endpoint for r in master.requests] == ["requestComputerPartition", "registerComputerPartition"]


def test_request_not_ready_gives_a_placeholder(master, connected):
    master.answer("requestComputerPartition", "Resource not ready", status=408)
    partition = connected.registerOpenOrder().request("/sr.cfg", "late", state="started")
    with pytest.raises(ResourceNotReady, match="'late' is not ready yet"):
        partition.getId()
    with pytest.raises(ResourceNotReady):
        partition.getConnectionParameterDict()
    assert wire.loads(master.requests[0].form["state"]) == "started"


def test_request_errors_are_raised(master, connected):
    master.answer("requestComputerPartition", capture(42).response, status=404)
    with pytest.raises(NotFoundError, match="No free computer partition found for: extra2"):
        connected.registerOpenOrder().request("/sr.cfg", "extra2")
    master.answer("requestComputerPartition", capture(44).response, status=400)
    with pytest.raises(BadRequestError, match="No partition matching the authorization header"):
        connected.registerComputerPartition("COMP-DEMO", "slappart9").request("/sr.cfg", None, "x")


def test_shared_instance_state_is_asked_to_its_host(master, connected):
    master.answer("requestComputerPartition", capture(5).response)
    master.answer("registerComputerPartition", capture(6).response)
    shared = connected.registerOpenOrder().request(
        "/opt/capture/sr/software.cfg", "myslave", shared=True,
        partition_parameter_kw={"domain": "demo.example", "url": "http://[fd00::2:a]:8080/"})
    assert wire.loads(master.requests[0].form["shared_xml"]) is True
    # what the answer carried is kept: no fetch for it
    assert shared.getConnectionParameterDict() == {}
    assert shared.getInstanceParameterDict() == {"domain": "demo.example", "url": "http://[fd00::2:a]:8080/"}
    assert len(master.requests) == 1
    assert shared.getState() == "started"
    host_call = master.requests[-1]
    assert host_call.endpoint == "registerComputerPartition"
    assert host_call.query == {"computer_reference": "COMP-DEMO", "computer_partition_reference": "slappart0"}


def test_partition_requests_a_child_and_records_it(master, connected, tmp_path, monkeypatch):
    master.answer("requestComputerPartition", capture(23).response)
    (tmp_path / "slappart0").mkdir()
    monkeypatch.setenv("SLAPGRID_INSTANCE_ROOT", str(tmp_path))
    parent = connected.registerComputerPartition("COMP-DEMO", "slappart0")
    child = parent.request("/opt/capture/sr/software.cfg", "default", "mychild",
                           partition_parameter_kw={"foo": "bar", "n": 3})
    (call,) = master.requests
    assert call.form == capture(23).form
    assert call.headers["Authorization"] == AUTH
    assert child.getId() == "slappart1"
    transaction = tmp_path / "slappart0" / ".slapos-request-transaction-slappart0"
    assert transaction.read_text() == "mychild\n"


def test_supply(master, connected):
    master.answer("supplySupply", "Supplied '/opt/capture/sr/software.cfg' to be available")
    supply = connected.registerSupply()
    assert supply.supply("/opt/capture/sr/software.cfg", "COMP-DEMO").startswith("Supplied")
    supply.supply("/opt/capture/sr/software.cfg", "COMP-DEMO", state="destroyed")
    assert [r.form for r in master.requests] == [
        capture(3).form, {"url": "/opt/capture/sr/software.cfg", "computer_id": "COMP-DEMO", "state": "destroyed"}]
    with pytest.raises(SlapException, match="'available' or 'destroyed', not 'started'"):
        supply.supply("/sr.cfg", "COMP-DEMO", state="started")
    assert len(master.requests) == 2


def test_software_product_and_hateoas(master, connected):
    master.answer("getSoftwareReleaseListFromSoftwareProduct", capture(39).response)
    urls = connected.getSoftwareReleaseListFromSoftwareProduct("demo")
    assert urls == wire.loads(capture(39).response)
    assert master.requests[0].query == {"software_product_reference": "demo"}
    assert connected.getHateoasUrl() is None  # the proxy does not serve it (404)


def test_state_and_guid_not_given_yet_raise_not_ready(master, connected):
    text = PARTITION0.decode() if isinstance(PARTITION0, bytes) else PARTITION0
    text = text.replace("<string>_requested_state</string><string>started</string>",
                        "<string>_requested_state</string><none/>")
    text = text.replace("<string>_instance_guid</string><string>COMP-DEMO-slappart0</string>",
                        "<string>_instance_guid</string><none/>")
    master.answer("registerComputerPartition", text)
    partition = connected.registerComputerPartition("COMP-DEMO", "slappart0")
    with pytest.raises(ResourceNotReady, match="requested state"):
        partition.getState()
    with pytest.raises(ResourceNotReady, match="instance guid"):
        partition.getInstanceGuid()
    assert partition.getInstanceParameter("instance_title") == "myinstance"  # the rest still reads
