"""The master receives the description: tested against a real proxy (`slapos proxy start`)."""
from __future__ import annotations

import grp
import logging
import os
import pwd
import stat

from slapos.format.definition import load_computer

from .conftest import load_options, slapos_cli, write_config


def partition_ids(proxy, computer_id: str) -> list[str]:
    computer = proxy.connect().registerComputer(computer_id)
    return sorted(p.getId() for p in computer.getComputerPartitionList())


def test_make_node_gives_a_formatted_node_known_to_the_proxy(make_node):
    node = make_node(partitions=3)
    assert node.partition_ids == ["slappart0", "slappart1", "slappart2"]
    assert node.computer_id == node.proxy.computer_id and node.master_url == node.proxy.url
    assert partition_ids(node.proxy, node.computer_id) == node.partition_ids
    for partition_id in node.partition_ids:
        path = node.instance_root / partition_id
        assert stat.S_IMODE(path.stat().st_mode) == 0o750
        if os.geteuid() == 0:  # buildout must never run as root: partitions belong to nobody
            assert pwd.getpwuid(path.stat().st_uid).pw_name == "nobody"
            assert grp.getgrgid(path.stat().st_gid).gr_name == "nogroup"
    assert node.config_path.is_file() and node.software_root.is_dir()
    # a second node in the same test gets its own proxy
    other = make_node(partitions=1, extra_config={"slapformat": {"partition_base_name": "part"}})
    assert other.proxy.url != node.proxy.url
    assert partition_ids(other.proxy, other.computer_id) == ["part0"]


def test_cli_reports_the_computer_to_the_proxy(proxy, tmp_path):
    config = write_config(tmp_path / "node", 4, master_url=proxy.url, computer_id=proxy.computer_id)
    done = slapos_cli("node", "format", "--cfg", str(config), "--now")
    assert done.returncode == 0, done.stderr
    assert "master told" in done.stderr
    assert partition_ids(proxy, proxy.computer_id) == [f"slappart{i}" for i in range(4)]
    again = slapos_cli("node", "format", "--cfg", str(config), "--now")
    assert again.returncode == 0 and "nothing to change" in again.stderr


def test_partition_busy_at_the_master_is_kept(proxy, tmp_path, caplog):
    from slapos.format.formatter import run_format

    root = tmp_path / "node"
    options = load_options(write_config(root, 3, master_url=proxy.url, computer_id=proxy.computer_id))
    assert run_format(options).reported
    slap = proxy.connect()
    software = str(tmp_path / "software.cfg")
    slap.registerSupply().supply(software, proxy.computer_id)
    requested = slap.registerOpenOrder().request(software, "myinstance")
    busy = requested.getId()

    options = load_options(write_config(root, 0, master_url=proxy.url, computer_id=proxy.computer_id))
    with caplog.at_level(logging.WARNING, logger="slapos.format"):
        result = run_format(options)
    assert result.reported
    assert result.kept == [busy]
    assert sorted(result.removed) == sorted({"slappart0", "slappart1", "slappart2"} - {busy})
    assert f"{busy}: kept although partition_amount is 0: in use at the master" in caplog.text
    assert partition_ids(proxy, proxy.computer_id) == [busy]
    assert [p.reference for p in load_computer(options.computer_xml).partition_list] == [busy]


def test_master_identity_includes_the_ca_file(tmp_path):
    """format talks to the master with the node's whole identity, like every other node command."""
    ca = tmp_path / "ca.pem"
    options = load_options(write_config(tmp_path / "node", 1, slapos={"master_ca_file": str(ca)}))
    assert options.master_ca_file == ca
    assert load_options(write_config(tmp_path / "other", 1)).master_ca_file is None
