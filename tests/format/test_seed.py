"""Behaviours documented by the seed release (slapos.core 1.0.4) that `node format` keeps."""
from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import uuid

import pytest

from slapos.format.definition import load_computer, read_input_definition
from slapos.format.formatter import run_format
from slapos.format.system import ConfigAccess, Executor, SystemUser, UserDatabase

from .conftest import load_options, write_config

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (users, groups, ownership)")


def test_create_tap_defaults_to_true(node_root):
    path = write_config(node_root, 1)
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith("create_tap")))
    assert load_options(path, euid=0).create_tap is True
    off = load_options(write_config(node_root, 1, slapformat={"create_tap": "false"}), euid=0)
    assert off.create_tap is False


def test_empty_network_interface_is_a_partition_without_tap(node_root, tmp_path):
    definition = tmp_path / "definition.cfg"
    definition.write_text(
        "[computer]\naddress = fd00::2/64\nsoftware_user = nobody\n\n"
        "[partition_0]\naddress = 10.0.0.10/32\nuser = alice\nnetwork_interface =\npathname = web\n"
    )
    assert read_input_definition(definition, 1).partitions[0].network_interface == ""
    options = load_options(write_config(node_root, 1, slapformat={"input_definition_file": str(definition)}))
    run_format(options)
    (web,) = load_computer(options.computer_xml).partition_list
    assert web.reference == "web" and web.tap is None
    # the key itself stays required: a typo must not silently drop a tap
    definition.write_text(definition.read_text().replace("network_interface =\n", ""))
    with pytest.raises(Exception, match="lacks network_interface"):
        read_input_definition(definition, 1)


@pytest.fixture
def test_user():
    name = "tops" + uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/bin/bash", "-U", name], check=True)
    yield name
    subprocess.run(["userdel", name], check=False)
    subprocess.run(["groupdel", name], check=False, capture_output=True)


@root_only
def test_shell_set_by_hand_is_kept(test_user):
    users = UserDatabase()
    account = users.user(test_user)
    user = SystemUser("slappart0", test_user, account.pw_dir, shell="/bin/sh")
    assert user.plan(users) == []  # only the shell differs: nothing to do
    moved = SystemUser("slappart0", test_user, "/srv/elsewhere", shell="/bin/sh")
    (action,) = moved.plan(users)
    Executor().apply(action)
    assert pwd.getpwnam(test_user).pw_shell == "/bin/bash"
    assert pwd.getpwnam(test_user).pw_dir == "/srv/elsewhere"


@root_only
def test_configuration_directory_readable_by_the_software_group(world_tmp, test_user):
    etc = world_tmp / "etc"
    etc.mkdir(mode=0o700)
    os.chmod(etc, 0o700)
    config = etc / "slapos.cfg"
    config.write_text("[slapos]\n")
    os.chmod(config, 0o600)
    key = etc / "key"
    key.write_text("secret")
    os.chmod(key, 0o600)
    users = UserDatabase()
    actions = ConfigAccess("computer", config, test_user).plan(users)
    assert len(actions) == 2
    executor = Executor()
    for action in actions:
        executor.apply(action)
    gid = grp.getgrnam(test_user).gr_gid
    assert (etc.stat().st_gid, stat.S_IMODE(etc.stat().st_mode)) == (gid, 0o750)
    assert (config.stat().st_gid, stat.S_IMODE(config.stat().st_mode)) == (gid, 0o640)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_gid == 0  # never widened
    assert ConfigAccess("computer", config, test_user).plan(UserDatabase()) == []  # idempotent
    # readable by the group member, not by others
    check = subprocess.run(["setpriv", f"--reuid={pwd.getpwnam(test_user).pw_uid}", f"--regid={gid}",
                            "--clear-groups", "cat", str(config)], capture_output=True, text=True)
    assert check.returncode == 0 and "[slapos]" in check.stdout
    nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(config)],
                            capture_output=True)
    assert nobody.returncode != 0


@root_only
def test_configuration_access_refuses_a_planted_symlink(tmp_path, test_user):
    victim = tmp_path / "victim"
    victim.write_text("root only")
    os.chmod(victim, 0o600)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    link = etc / "slapos.cfg"
    link.symlink_to(victim)
    assert [a.description for a in ConfigAccess("computer", link, test_user).plan(UserDatabase())] == [
        f"let group {test_user} read {etc}"]
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.stat().st_gid == 0


@root_only
def test_a_configuration_holding_the_node_credential_stays_root_only(world_tmp, test_user):
    """With access = credentials slapos.cfg holds the node credential: the software group (every
    tenant is in it) may list the directory, never read the file (docs/security-proxy.md)."""
    etc = world_tmp / "etc-secret"
    etc.mkdir(mode=0o700)
    config = etc / "slapos.cfg"
    config.write_text("[slapos]\nmaster_url = http://127.0.0.1:1/c/" + "x" * 43 + "/\n")
    os.chmod(config, 0o600)
    actions = ConfigAccess("computer", config, test_user, file_too=False).plan(UserDatabase())
    assert [a.description for a in actions] == [f"let group {test_user} read {etc}"]
    for action in actions:
        Executor().apply(action)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and config.stat().st_gid == 0
    gid = grp.getgrnam(test_user).gr_gid
    check = subprocess.run(["setpriv", f"--reuid={pwd.getpwnam(test_user).pw_uid}", f"--regid={gid}",
                            "--clear-groups", "cat", str(config)], capture_output=True, text=True)
    assert check.returncode != 0 and "/c/" not in check.stdout
