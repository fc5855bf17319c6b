"""A remote master (a loopback HTTP server speaking the protocol) that names things which are not
partitions of this computer: report must refuse them and still do its job for the real ones."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from slapos.slap.wire import WireObject, dumps
from tests.conftest import REPO
from tests.slap.master import start_master

SR = "http://sr.example/software.cfg"
COMPUTER = "COMP-HOSTILE"


def full_computer(partitions: dict[str, str]) -> str:
    def software():
        return WireObject("SoftwareRelease", (SR, COMPUTER), {"_software_release": SR, "_computer_guid": COMPUTER})

    listed = [
        WireObject("ComputerPartition", (COMPUTER, pid, None), {
            "_computer_id": COMPUTER, "_partition_id": pid, "_requested_state": state,
            "_software_release_document": software(), "_parameter_dict": {"timestamp": "1.5"},
            "_connection_dict": {}, "_need_modification": 1,
        })
        for pid, state in partitions.items()
    ]
    return dumps(WireObject("Computer", (COMPUTER,), {
        "_computer_id": COMPUTER, "_computer_partition_list": listed, "_software_release_list": []}))


@pytest.fixture
def master():
    server = start_master()
    for endpoint, answer in (("stoppedComputerPartition", "Ignored"), ("destroyedComputerPartition", "OK"),
                             ("useComputer", "Ignored"), ("softwareInstanceError", "Ignored")):
        server.answer(endpoint, answer)
    try:
        yield server
    finally:
        server.stop()


def test_names_that_are_not_partitions_are_refused(tmp_path, master):
    root = tmp_path / "inst"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "supervisord.conf").write_text("the node's own")
    (root / "slappart0").mkdir(mode=0o750)
    (root / "slappart0" / "data").write_text("tenant")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (root / "alias").symlink_to(outside)
    if os.geteuid() == 0:
        os.chown(root / "slappart0", 65534, 65534)
        (root / "rootowned").mkdir()
        (root / "rootowned" / "keep").write_text("not a partition")
    config = tmp_path / "slapos.cfg"
    config.write_text(textwrap.dedent(f"""\
        [slapos]
        computer_id = {COMPUTER}
        master_url = {master.url}
        software_root = {tmp_path / 'soft'}
        instance_root = {root}
        root_check = false
        pidfile_report = {tmp_path / 'report.pid'}
        """))
    names = {"etc": "destroyed", "alias": "destroyed", "slappart0": "destroyed", "slappart9": "destroyed"}
    if os.geteuid() == 0:
        names["rootowned"] = "destroyed"
    master.answer("getFullComputerInformation", full_computer(names))

    done = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "report", "--cfg", str(config), "--now"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert done.returncode == 1
    assert "'etc'" in done.stderr and "node's own directory" in done.stderr
    assert "alias: no directory" in done.stderr
    assert "slappart9: no directory" in done.stderr
    assert (root / "etc" / "supervisord.conf").read_text() == "the node's own"
    assert (outside / "precious").read_text() == "keep"
    if os.geteuid() == 0:
        assert "is owned by root" in done.stderr
        assert (root / "rootowned" / "keep").exists()
    # the real partition was measured, destroyed and reported
    assert os.listdir(root / "slappart0") == []
    [destroyed] = master.calls("destroyedComputerPartition")
    assert destroyed.form["computer_partition_id"] == "slappart0"
    [sent] = master.calls("useComputer")
    assert "<reference>slappart0</reference>" in sent.form["use_string"]
    assert "<reference>etc</reference>" not in sent.form["use_string"]
