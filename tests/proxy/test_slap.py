"""The proxy's behaviours, driven through our SLAP client library on a real loopback proxy."""
from __future__ import annotations

import pytest

from slapos.proxy import show
from slapos.slap import NotFoundError

from .conftest import COMPUTER, OTHER_SR, SR, format_computer, start_live


def timestamp(connection, partition_id: str, computer_id: str = COMPUTER) -> str:
    return connection.registerComputerPartition(computer_id, partition_id).getInstanceParameterDict()["timestamp"]


def partitions_by_id(connection, computer_id: str = COMPUTER) -> dict:
    return {p.getId(): p for p in connection.registerComputer(computer_id).getComputerPartitionList()}


def test_format_then_full_computer_information(node):
    live, connection = node
    computer = connection.registerComputer(COMPUTER)
    partitions = computer.getComputerPartitionList()
    assert [p.getId() for p in partitions] == ["slappart0", "slappart1", "slappart2", "slappart3"]
    assert all(p.getRequestedState() == "destroyed" and p.getSoftwareRelease() is None for p in partitions)
    assert [(s.getURI(), s.getState()) for s in computer.getSoftwareReleaseList()] == [(SR, "available")]
    # a partition that holds an instance shows its addresses as (tap name, address)
    connection.registerOpenOrder().request(SR, "inst")
    busy = partitions_by_id(connection)["slappart0"]
    assert busy.getInstanceParameterDict()["ip_list"] == [("slaptap0", "10.0.0.10"), ("slaptap0", "fd00::0:0")]
    assert busy.getNeedModification()


def test_own_computer_answers_before_format_and_unknown_is_404(live):
    connection = live.connect()
    computer = connection.registerComputer(COMPUTER)
    assert computer.getComputerPartitionList() == []
    with pytest.raises(NotFoundError, match="unknown computer"):
        connection.registerComputer("COMP-UNKNOWN").getComputerPartitionList()


def test_reformat_keeps_instances_adds_and_removes_partitions(node):
    live, connection = node
    connection.registerOpenOrder().request(SR, "inst", {"a": "1"})
    format_computer(connection, COMPUTER, 6)
    partitions = partitions_by_id(connection)
    assert len(partitions) == 6
    assert partitions["slappart0"].getInstanceParameterDict()["instance_title"] == "inst"
    format_computer(connection, COMPUTER, 2)
    assert sorted(partitions_by_id(connection)) == ["slappart0", "slappart1"]


def test_request_allocates_then_repeat_updates_same_partition(node):
    live, connection = node
    order = connection.registerOpenOrder()
    first = order.request(SR, "inst", {"n": 3, "flag": True, "empty": ""}, software_type="default")
    assert (first.getComputerId(), first.getId()) == (COMPUTER, "slappart0")
    guid = first.getInstanceGuid()
    params = partitions_by_id(connection)["slappart0"].getInstanceParameterDict()
    # values come back as the reference stores them: text, '' → None
    assert (params["n"], params["flag"], params["empty"]) == ("3", "True", None)
    stamp = timestamp(connection, "slappart0")

    same = order.request(SR, "inst", {"n": 3, "flag": True, "empty": ""}, software_type="default")
    assert same.getId() == "slappart0" and same.getInstanceGuid() == guid
    assert timestamp(connection, "slappart0") == stamp  # nothing changed: the node has nothing to do

    updated = order.request(SR, "inst", {"n": 4}, software_type="other", state="stopped")
    assert updated.getId() == "slappart0" and updated.getInstanceGuid() == guid
    partition = partitions_by_id(connection)["slappart0"]
    assert partition.getRequestedState() == "stopped"
    assert partition.getInstanceParameterDict()["n"] == "4"
    assert "flag" not in partition.getInstanceParameterDict()
    assert partition.getType() == "other"
    assert float(timestamp(connection, "slappart0")) > float(stamp)
    # no state given: the stored one is kept
    assert order.request(SR, "inst", {"n": 4}, software_type="other").getRequestedState() == "stopped"


def test_no_free_partition_is_404_and_changes_nothing(node):
    live, connection = node
    order = connection.registerOpenOrder()
    for n in range(4):
        order.request(SR, f"inst{n}")
    before = live.rows("SELECT * FROM partition ORDER BY rowid")
    with pytest.raises(NotFoundError, match="No free computer partition found for: inst4"):
        order.request(SR, "inst4")
    assert live.rows("SELECT * FROM partition ORDER BY rowid") == before


def test_software_must_be_supplied_to_allocate(node):
    live, connection = node
    with pytest.raises(NotFoundError, match="not supplied to any computer"):
        connection.registerOpenOrder().request(OTHER_SR, "inst")
    assert live.rows("SELECT count(*) AS n FROM partition WHERE slap_state = 'busy'") == [{"n": 0}]


def test_several_computers_and_computer_guid_filter(node):
    live, connection = node
    format_computer(connection, "COMP-1", 2, network=1)
    supply = connection.registerSupply()
    supply.supply(OTHER_SR, "COMP-1")
    order = connection.registerOpenOrder()
    # only COMP-1 has OTHER_SR: that is where it goes
    assert order.request(OTHER_SR, "a").getComputerId() == "COMP-1"
    with pytest.raises(NotFoundError, match="not supplied to computer COMP-0"):
        order.request(OTHER_SR, "b", filter_kw={"computer_guid": COMPUTER})
    supply.supply(SR, "COMP-1")
    # the proxy's own computer is preferred, unless the request names another one
    assert order.request(SR, "c").getComputerId() == COMPUTER
    placed = order.request(SR, "d", filter_kw={"computer_guid": "COMP-1"})
    assert (placed.getComputerId(), placed.getId()) == ("COMP-1", "slappart1")
    with pytest.raises(NotFoundError, match="unknown computer 'COMP-9'"):
        order.request(SR, "e", filter_kw={"computer_guid": "COMP-9"})
    assert partitions_by_id(connection, "COMP-1")["slappart1"].getInstanceParameterDict()["ip_list"][0] == (
        "slaptap1", "10.1.0.11"
    )


def test_supply_destroy_and_software_reports_are_kept(node, tmp_path):
    live, connection = node
    software = connection.registerSoftwareRelease(SR, COMPUTER)
    software.building()
    software.error("build failed\nline 2: no compiler")
    [row] = live.rows("SELECT * FROM software")
    assert row["reported_state"] == "error" and "no compiler" in row["error_log"]
    software.available()
    assert live.rows("SELECT reported_state FROM software") == [{"reported_state": "available"}]
    connection.registerSupply().supply(SR, COMPUTER, state="destroyed")
    [listed] = connection.registerComputer(COMPUTER).getSoftwareReleaseList()
    assert listed.getState() == "destroyed"
    software.destroyed()
    assert connection.registerComputer(COMPUTER).getSoftwareReleaseList() == []
    data = show.collect(live.database, ["software"])
    assert data["software"] == []


def test_destroyed_report_for_available_software_keeps_it(node):
    live, connection = node
    connection.registerSoftwareRelease(SR, COMPUTER).destroyed()
    assert live.rows("SELECT requested_state, reported_state FROM software") == [
        {"requested_state": "available", "reported_state": "destroyed"}
    ]


def test_connection_parameters_published_by_node_reach_requester(node):
    live, connection = node
    order = connection.registerOpenOrder()
    order.request(SR, "inst")
    partition = connection.registerComputerPartition(COMPUTER, "slappart0")
    partition.setConnectionDict({"url": "http://[fd00::1]:8080/", "port": 8080})
    again = order.request(SR, "inst")
    assert again.getConnectionParameterDict() == {"url": "http://[fd00::1]:8080/", "port": "8080"}
    assert again.getConnectionParameter("port") == "8080"
    assert connection.registerComputerPartition(COMPUTER, "slappart0").getConnectionParameterDict()["port"] == "8080"


def test_instance_tree_child_requests_connection_and_destruction(node):
    live, connection = node
    order = connection.registerOpenOrder()
    order.request(SR, "root")
    root = connection.registerComputerPartition(COMPUTER, "slappart0")
    child = root.request(SR, "default", "child", partition_parameter_kw={"foo": "bar"})
    assert child.getId() == "slappart1"
    params = partitions_by_id(connection)["slappart1"].getInstanceParameterDict()
    assert params["root_instance_title"] == "root" and params["instance_title"] == "child"
    [row] = live.rows("SELECT requested_by, requester_id, requester_computer FROM partition WHERE title = 'child'")
    assert row == {"requested_by": "root", "requester_id": "slappart0", "requester_computer": COMPUTER}
    # a child of another tree may reuse the title: titles are unique per tree
    assert order.request(SR, "child").getId() == "slappart2"

    # the child publishes: its requester (the root) is processed again
    root_stamp = timestamp(connection, "slappart0")
    connection.registerComputerPartition(COMPUTER, "slappart1").setConnectionDict({"secret": "s3"})
    assert float(timestamp(connection, "slappart0")) > float(root_stamp)
    assert root.request(SR, "default", "child", partition_parameter_kw={"foo": "bar"}).getConnectionParameterDict() == {"secret": "s3"}

    # stopping the root: the child follows when it is requested again
    order.request(SR, "root", state="stopped")
    assert root.request(SR, "default", "child", partition_parameter_kw={"foo": "bar"}).getRequestedState() == "stopped"

    # destroying: the root is freed only after its children
    order.request(SR, "root", state="destroyed")
    answer = connection.registerComputerPartition(COMPUTER, "slappart0").destroyed()
    assert answer == "Not destroying yet because this partition has child partitions: child"
    assert partitions_by_id(connection)["slappart1"].getRequestedState() == "destroyed"
    assert connection.registerComputerPartition(COMPUTER, "slappart1").destroyed() == "OK"
    assert connection.registerComputerPartition(COMPUTER, "slappart0").destroyed() == "OK"
    partitions = partitions_by_id(connection)
    assert partitions["slappart0"].getRequestedState() == "destroyed"  # free
    assert partitions["slappart0"].getSoftwareRelease() is None
    # the freed partition is reused by the next request
    assert order.request(SR, "next").getId() == "slappart0"


def test_unknown_requester_partition_is_refused(node):
    live, connection = node
    from slapos.slap import BadRequestError

    free = connection.registerComputerPartition(COMPUTER, "slappart3")
    with pytest.raises(BadRequestError, match="No partition matching the authorization header"):
        free.request(SR, "default", "child")


def test_shared_instance_lives_in_its_host(node):
    live, connection = node
    order = connection.registerOpenOrder()
    order.request(SR, "frontend", software_type="custom-personal")
    host_stamp = timestamp(connection, "slappart0")
    shared = order.request(SR, "myslave", {"url": "http://backend/"}, software_type="custom-personal", shared=True)
    assert (shared.getComputerId(), shared.getId()) == (COMPUTER, "slappart0")
    host = partitions_by_id(connection)["slappart0"]
    assert host.getInstanceParameterDict()["slave_instance_list"] == [
        {"slave_reference": "_myslave", "slave_title": "_myslave", "slap_software_type": "custom-personal",
         "url": "http://backend/"}
    ]
    assert float(timestamp(connection, "slappart0")) > float(host_stamp)
    # only a partition of the same software release and type may host it
    with pytest.raises(NotFoundError, match="No partition corresponding to slave request"):
        order.request(SR, "other", software_type="default", shared=True)
    # the host publishes the shared instance's connection parameters
    connection.registerComputerPartition(COMPUTER, "slappart0").setConnectionDict(
        {"site": "https://myslave.example/"}, slave_reference="_myslave"
    )
    again = order.request(SR, "myslave", {"url": "http://backend/"}, software_type="custom-personal", shared=True)
    assert again.getConnectionParameterDict() == {"site": "https://myslave.example/"}
    assert again.getState() == "started"  # asks the hosting partition
    # destroying removes it from its host
    host_stamp = timestamp(connection, "slappart0")
    order.request(SR, "myslave", software_type="custom-personal", shared=True, state="destroyed")
    assert partitions_by_id(connection)["slappart0"].getInstanceParameterDict()["slave_instance_list"] == []
    assert float(timestamp(connection, "slappart0")) > float(host_stamp)


def test_shared_instance_requested_by_an_instance(node):
    live, connection = node
    order = connection.registerOpenOrder()
    order.request(SR, "frontend", software_type="front")
    order.request(SR, "app")
    app = connection.registerComputerPartition(COMPUTER, "slappart1")
    app.request(SR, "front", "web", shared=True, partition_parameter_kw={"backend": "x"})
    [entry] = partitions_by_id(connection)["slappart0"].getInstanceParameterDict()["slave_instance_list"]
    assert entry["slave_reference"] == "app_web"
    # the host publishes for it: the requesting instance is processed again
    app_stamp = timestamp(connection, "slappart1")
    connection.registerComputerPartition(COMPUTER, "slappart0").setConnectionDict({"u": "1"}, "app_web")
    assert float(timestamp(connection, "slappart1")) > float(app_stamp)
    tree = show.collect(live.database, ["tree"])["tree"]
    app_node = next(n for n in tree if n["title"] == "app")
    assert [(c["title"], c["kind"]) for c in app_node["children"]] == [("web", "shared")]


def test_rename_root_renames_tree(node):
    live, connection = node
    order = connection.registerOpenOrder()
    order.request(SR, "old")
    connection.registerComputerPartition(COMPUTER, "slappart0").request(SR, "default", "kid")
    connection.registerComputerPartition(COMPUTER, "slappart0").rename("new")
    partitions = partitions_by_id(connection)
    assert partitions["slappart0"].getInstanceParameterDict()["instance_title"] == "new"
    assert partitions["slappart1"].getInstanceParameterDict()["root_instance_title"] == "new"
    # the renamed instance is found under its new name
    assert order.request(SR, "new").getId() == "slappart0"


def test_bang_bumps_the_tree_and_computer_bang_bumps_all(node):
    live, connection = node
    order = connection.registerOpenOrder()
    order.request(SR, "a")
    connection.registerComputerPartition(COMPUTER, "slappart0").request(SR, "default", "a-kid")
    order.request(SR, "b")
    before = {p: timestamp(connection, p) for p in ("slappart0", "slappart1", "slappart2")}
    connection.registerComputerPartition(COMPUTER, "slappart1").bang("kid crashed")
    after = {p: timestamp(connection, p) for p in before}
    assert float(after["slappart0"]) > float(before["slappart0"])
    assert float(after["slappart1"]) > float(before["slappart1"])
    assert after["slappart2"] == before["slappart2"]
    connection.registerComputer(COMPUTER).bang("reboot")
    assert all(float(timestamp(connection, p)) > float(after[p]) for p in after)
    [computer] = show.collect(live.database, ["computers"])["computers"]
    assert computer["last_bang_message"] == "reboot"


def test_node_reports_and_errors_are_kept_and_shown(node):
    live, connection = node
    connection.registerOpenOrder().request(SR, "inst")
    partition = connection.registerComputerPartition(COMPUTER, "slappart0")
    partition.error("buildout failed: boom")
    [row] = show.collect(live.database, ["partitions"])["partitions"][:1]
    assert row["reported_state"] == "error" and "boom" in row["error"]
    partition.started()
    [row] = show.collect(live.database, ["partitions"])["partitions"][:1]
    assert row["reported_state"] == "started" and "boom" in row["error"]
    partition.stopped()
    assert live.rows("SELECT reported_state FROM partition WHERE reference = 'slappart0'") == [
        {"reported_state": "stopped"}
    ]


def test_usage_reports_are_stored(node):
    live, connection = node
    journal = '<?xml version="1.0"?><journal><transaction/></journal>'
    connection.registerComputer(COMPUTER).reportUsage(journal)
    [usage] = show.collect(live.database, ["usage"])["usage"]
    assert usage["computer"] == COMPUTER and usage["xml"] == journal and usage["date"].startswith("20")


def test_certificate_run_id_and_unserved_endpoints(node):
    live, connection = node
    connection.registerOpenOrder().request(SR, "inst")
    assert connection.registerComputerPartition(COMPUTER, "slappart0").getCertificate() == {
        "certificate": "", "key": ""
    }
    # unlike the reference (404), the proxy serves a read-only HATEOAS API (service/computer commands)
    assert connection.getHateoasUrl() == live.url + "hateoas/"
    status, run_id, _ = live.http.get("getRunId")
    assert status == 200 and len(run_id) == 32 and run_id.isalnum()
    with pytest.raises(NotFoundError):
        connection.registerComputer(COMPUTER).getStatus()


def test_unknown_partition_is_404(node):
    live, connection = node
    with pytest.raises(NotFoundError, match="unknown partition 'slappart9'"):
        connection.registerComputerPartition(COMPUTER, "slappart9").getInstanceParameterDict()
    with pytest.raises(NotFoundError):
        connection.registerComputerPartition(COMPUTER, "slappart9").setConnectionDict({"a": "b"})


def test_software_product_list(tmp_path):
    live = start_live(tmp_path, software_products={"kvm": ["http://kvm/2.cfg", "http://kvm/1.cfg"]})
    try:
        connection = live.connect()
        assert connection.getSoftwareReleaseListFromSoftwareProduct("kvm") == ["http://kvm/2.cfg", "http://kvm/1.cfg"]
        assert connection.getSoftwareReleaseListFromSoftwareProduct("none") == []
        assert connection.getSoftwareReleaseListFromSoftwareProduct(
            software_release_url="http://kvm/1.cfg"
        ) == ["http://kvm/2.cfg", "http://kvm/1.cfg"]
    finally:
        live.http.close()
        live.server.stop()


def test_shared_instance_outlives_its_host(node):
    live, connection = node
    order = connection.registerOpenOrder()
    order.request(SR, "frontend")
    order.request(SR, "myslave", {"a": "1"}, shared=True)
    order.request(SR, "frontend", state="destroyed")
    assert connection.registerComputerPartition(COMPUTER, "slappart0").destroyed() == "OK"
    # kept (as the reference keeps it) but without a host; a new host takes it when requested again
    assert live.rows("SELECT reference, hosted_by FROM slave") == [{"reference": "_myslave", "hosted_by": None}]
    with pytest.raises(NotFoundError, match="No partition corresponding to slave request"):
        order.request(SR, "myslave", {"a": "1"}, shared=True)
    gone = order.request(SR, "myslave", shared=True, state="destroyed")
    assert gone.getComputerId() is None and gone.getRequestedState() == "destroyed"
    order.request(SR, "frontend2")
    placed = order.request(SR, "myslave", {"a": "1"}, shared=True, state="started")
    assert placed.getId() == "slappart0"  # the freed partition now hosts frontend2
    [entry] = partitions_by_id(connection)["slappart0"].getInstanceParameterDict()["slave_instance_list"]
    assert entry["slave_reference"] == "_myslave" and entry["a"] == "1"
