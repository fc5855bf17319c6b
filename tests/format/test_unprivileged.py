"""The unprivileged path: directories only, addresses the interface already has (loopback)."""
from __future__ import annotations

import io
import logging
import os
import stat
import zipfile

import pytest

from slapos.base.errors import SlapOSError
from slapos.format import history
from slapos.format.definition import load_computer
from slapos.format.formatter import Formatter, run_format

from .conftest import load_options, slapos_cli, write_config


def test_first_run_creates_directories_and_definition(node_root):
    options = load_options(write_config(node_root, 3))
    result = run_format(options)
    assert result.exit_code == 2 and not result.reported  # nobody listens at master_url
    assert result.report_error
    for index in range(3):
        path = node_root / "inst" / f"slappart{index}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o750
        assert stat.S_IMODE((path / ".slapos-resource").stat().st_mode) == 0o644
    assert stat.S_IMODE((node_root / "soft").stat().st_mode) == 0o755
    saved = load_computer(options.computer_xml)
    assert [p.reference for p in saved.partition_list] == ["slappart0", "slappart1", "slappart2"]
    # loopback node: every partition shares 127.0.0.1 and ::1
    assert {a.addr for a in saved.partition_list[0].address_list} == {"127.0.0.1", "::1"}
    assert saved.address == "::1"
    assert saved.partition_list[2].user.name == "slapuser2"
    assert saved.partition_list[2].tap.name == "slaptap2"


def test_rerun_changes_nothing(node_root):
    options = load_options(write_config(node_root, 4))
    run_format(options)
    before = {p: p.stat().st_mtime_ns for p in (node_root / "inst").rglob("*")}
    result = run_format(options)
    assert result.actions == []
    assert not result.definition_changed
    assert {p: p.stat().st_mtime_ns for p in (node_root / "inst").rglob("*")} == before
    assert history.versions(options.computer_xml) == []


def test_rerun_repairs_a_wrong_mode_and_a_missing_directory(node_root):
    options = load_options(write_config(node_root, 2))
    run_format(options)
    os.chmod(node_root / "inst" / "slappart0", 0o777)
    (node_root / "inst" / "slappart1" / ".slapos-resource").unlink()
    (node_root / "inst" / "slappart1").rmdir()
    result = run_format(options)
    assert sorted(a.subject for a in result.actions) == ["slappart0", "slappart1", "slappart1"]
    assert stat.S_IMODE((node_root / "inst" / "slappart0").stat().st_mode) == 0o750
    assert (node_root / "inst" / "slappart1" / ".slapos-resource").is_file()


def test_dry_run_prints_and_changes_nothing(node_root):
    options = load_options(write_config(node_root, 2))
    out = io.StringIO()
    result = Formatter(options, dry_run=True, out=out).run()
    assert result.exit_code == 0
    text = out.getvalue()
    assert f"would slappart1: create directory {node_root / 'inst' / 'slappart1'} (mode 0750)" in text
    assert "would write the computer definition" in text
    assert "would report 2 partitions of COMP-TEST" in text
    assert not (node_root / "inst").exists()
    assert not options.computer_xml.exists()


def test_raising_partition_amount_adds_and_keeps_the_others(node_root):
    run_format(load_options(write_config(node_root, 2)))
    first = load_computer(node_root / "slapos.xml")
    options = load_options(write_config(node_root, 4))
    run_format(options)
    second = load_computer(options.computer_xml)
    assert [p.reference for p in second.partition_list] == [f"slappart{i}" for i in range(4)]
    assert second.partition_list[:2] == first.partition_list
    # the earlier definition went to the history archive
    members = history.versions(options.computer_xml)
    assert len(members) == 1
    assert load_computer_bytes(history.read_version(options.computer_xml, members[0])) == first


def load_computer_bytes(data: bytes):
    from slapos.format.model import Computer
    from slapos.slap import wire

    return Computer.from_dict(wire.loads(data))


def test_lowering_partition_amount_removes_only_free_partitions(node_root, caplog):
    run_format(load_options(write_config(node_root, 5)))
    inst = node_root / "inst"
    (inst / "slappart3" / "buildout.cfg").write_text("[buildout]\n")
    (inst / "slappart4" / "software_release").symlink_to(node_root / "soft")
    options = load_options(write_config(node_root, 2))
    with caplog.at_level(logging.WARNING, logger="slapos.format"):
        result = run_format(options)
    assert result.removed == ["slappart2"]
    assert sorted(result.kept) == ["slappart3", "slappart4"]
    assert not (inst / "slappart2").exists()
    assert (inst / "slappart3" / "buildout.cfg").exists()
    assert "slappart3: kept although partition_amount is 2: it has buildout.cfg" in caplog.text
    assert "slappart4: kept although partition_amount is 2: it has software_release" in caplog.text
    saved = load_computer(options.computer_xml)
    assert [p.reference for p in saved.partition_list] == ["slappart0", "slappart1", "slappart3", "slappart4"]
    # once freed, the next run removes it
    (inst / "slappart3" / "buildout.cfg").unlink()
    result = run_format(options)
    assert result.removed == ["slappart3"] and result.kept == ["slappart4"]


def test_corrupted_history_archive_is_set_aside(node_root, caplog):
    run_format(load_options(write_config(node_root, 1)))
    archive = history.archive_path(node_root / "slapos.xml")
    archive.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with caplog.at_level(logging.WARNING, logger="slapos.format"):
        run_format(load_options(write_config(node_root, 2)))
    assert "is damaged" in caplog.text
    aside = [p for p in archive.parent.iterdir() if p.name.startswith(archive.name + ".corrupted-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"PK\x03\x04 this")
    with zipfile.ZipFile(archive) as zf:
        assert len(zf.namelist()) == 1


def test_damaged_definition_is_a_clear_error(node_root):
    options = load_options(write_config(node_root, 1))
    options.computer_xml.parent.mkdir(parents=True, exist_ok=True)
    options.computer_xml.write_text("<marshal><dictionary id='i2'><string>oops")
    with pytest.raises(SlapOSError, match="is damaged .*restore a good copy"):
        run_format(options)
    assert not (node_root / "inst").exists()


def test_missing_interface_fails_before_changing_anything(node_root):
    options = load_options(write_config(node_root, 2, slapformat={"interface_name": "nosuchif0"}))
    with pytest.raises(SlapOSError, match="interface 'nosuchif0' does not exist"):
        run_format(options)
    assert not (node_root / "inst").exists()


def test_not_root_falls_back_to_unprivileged_unless_asked_explicitly(node_root):
    # keys absent: the reference's defaults (true) give way to the unprivileged mode
    config = write_config(node_root, 1, slapformat={"alter_user": "", "alter_network": ""})
    options = load_options(config, euid=1000)
    assert not options.alter_user and not options.alter_network
    assert options.unprivileged_reason
    with pytest.raises(SlapOSError, match="alter_user = true needs root"):
        load_options(write_config(node_root / "b", 1, slapformat={"alter_user": "true"}), euid=1000)
    with pytest.raises(SlapOSError, match="alter_network = true needs root"):
        load_options(config, euid=1000, alter_network=True)


def test_obsolete_and_unsupported_options_are_refused(node_root):
    with pytest.raises(SlapOSError, match="bridge_name is obsolete"):
        load_options(write_config(node_root, 1, slapformat={"bridge_name": "br0"}))
    with pytest.raises(SlapOSError, match="create_tun = true is not supported"):
        load_options(write_config(node_root, 1, slapformat={"create_tun": "true"}))


def test_input_definition_file_fixes_paths_users_and_addresses(node_root, tmp_path):
    definition = tmp_path / "definition.cfg"
    definition.write_text(
        "[computer]\naddress = fd00::2/64\nsoftware_user = nobody\n\n"
        "[partition_0]\naddress = 10.0.0.10/255.255.255.255 fd00::2:a/64\nuser = alice\n"
        "network_interface = tapA\npathname = web\n\n"
        "[partition_1]\naddress = 10.0.0.11/32 fd00::2:b/64\nuser = bob\nnetwork_interface = tapB\npathname = db\n"
    )
    options = load_options(write_config(node_root, 2, slapformat={"input_definition_file": str(definition)}))
    run_format(options)
    saved = load_computer(options.computer_xml)
    assert saved.software_user == "nobody"
    assert (saved.address, saved.netmask) == ("fd00::2", "ffff:ffff:ffff:ffff::")
    web, db = saved.partition_list
    assert (web.reference, web.user.name, web.tap.name) == ("web", "alice", "tapA")
    assert [a.addr for a in db.address_list] == ["10.0.0.11", "fd00::2:b"]
    assert (node_root / "inst" / "web").is_dir() and (node_root / "inst" / "db").is_dir()


def test_cli_help_and_exit_codes(node_root):
    assert slapos_cli("node", "format", "--help").returncode == 0
    config = write_config(node_root, 2)
    done = slapos_cli("node", "format", "--cfg", str(config), "--now")
    assert done.returncode == 2, done.stderr
    assert "was not told" in done.stderr
    assert (node_root / "inst" / "slappart1").is_dir()
    bad = write_config(node_root / "bad", 2, slapformat={"interface_name": "nosuchif0"})
    failed = slapos_cli("node", "format", "--cfg", str(bad), "--now")
    assert failed.returncode == 1
    assert len(failed.stderr.strip().splitlines()) == 1
    assert failed.stderr.startswith("error: interface 'nosuchif0' does not exist")
    assert not (node_root / "bad" / "inst").exists()


def test_cli_dry_run_output(node_root):
    config = write_config(node_root, 1)
    done = slapos_cli("node", "format", "--cfg", str(config), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "would slappart0: create directory" in done.stdout
    assert not (node_root / "inst").exists()


@pytest.mark.root
def test_format_as_nobody(world_tmp):
    """An ordinary user formats a node of its own (run as nobody through setpriv)."""
    import pwd

    root = world_tmp / "node"
    root.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(root, nobody.pw_uid, nobody.pw_gid)
    config = write_config(root, 2, slapformat={"alter_user": "", "alter_network": ""})
    prefix = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups")
    done = slapos_cli("node", "format", "--cfg", str(config), "--now", "-v", prefix=prefix,
                      env={**os.environ, "HOME": str(root)})
    assert done.returncode == 2, done.stderr  # formatted; the master (closed port) was not told
    assert "unprivileged format" in done.stderr
    for index in range(2):
        st = (root / "inst" / f"slappart{index}").stat()
        assert st.st_uid == nobody.pw_uid and stat.S_IMODE(st.st_mode) == 0o750
    again = slapos_cli("node", "format", "--cfg", str(config), "--now", prefix=prefix,
                       env={**os.environ, "HOME": str(root)})
    assert again.returncode == 2 and "nothing to change" in again.stderr


def test_cli_log_file_and_random_delay(node_root, tmp_path):
    import time

    log_file = tmp_path / "format.log"
    config = write_config(node_root, 1, slapformat={"log_file": str(log_file), "random_delay": "3600"})
    start = time.monotonic()
    done = slapos_cli("node", "format", "--cfg", str(config), "--delay", "1")
    assert time.monotonic() - start < 30  # --delay replaced the hour of random_delay
    assert done.returncode == 2, done.stderr
    text = log_file.read_text()
    assert "before formatting (use --now to skip)" in text
    assert "slappart0: create directory" in text
