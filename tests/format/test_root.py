"""The privileged path, for real: users, taps, bridges, addresses and routes inside a network
namespace of the test's own (a veth pair: the kernel has no dummy links), checked with `ip`,
`getent` and `stat`. Users are global: every name carries a random suffix and is deleted after.
"""
from __future__ import annotations

import grp
import pwd
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from slapos.format.definition import load_computer

from .conftest import slapos_cli, write_config

pytestmark = pytest.mark.root


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@dataclass
class Namespace:
    name: str
    tag: str  # random prefix of every user, group and tap of this test

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.name, *args)

    def format(self, config: Path, *extra: str) -> subprocess.CompletedProcess:
        # netifaces and /proc/net read the namespace of the process: run the whole format inside it
        return slapos_cli("node", "format", "--cfg", str(config), "--now", *extra,
                          prefix=("ip", "netns", "exec", self.name))


@pytest.fixture
def netns():
    tag = "f" + secrets.token_hex(3)
    name = f"slapformat-{tag}"
    sh("ip", "netns", "add", name)
    ns = Namespace(name, tag)
    try:
        ns.ip("link", "set", "lo", "up")
        ns.ip("link", "add", "fa0", "type", "veth", "peer", "name", "fb0")
        ns.ip("link", "set", "fa0", "up")
        ns.ip("link", "set", "fb0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        for user in [u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(tag)]:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        for group in [g.gr_name for g in grp.getgrall() if g.gr_name.startswith(tag)]:
            subprocess.run(["groupdel", group], capture_output=True, check=False)
        leftovers = [u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(tag)]
        assert not leftovers, f"test users not cleaned up: {leftovers}"


def privileged_config(root: Path, ns: Namespace, partitions: int = 3, **slapformat: str) -> Path:
    keys = {
        "interface_name": "fa0",
        "ipv4_local_network": "10.201.0.0/16",
        "user_base_name": f"{ns.tag}u",
        "software_user": f"{ns.tag}s",
        "tap_base_name": f"{ns.tag}t",
        "alter_user": "true",
        "alter_network": "true",
        "create_tap": "true",
        "ipv6_dad": "false",
    }
    keys.update(slapformat)
    return write_config(root, partitions, slapos={"root_check": "true"}, slapformat=keys)


def getent(user: str) -> list[str] | None:
    done = subprocess.run(["getent", "passwd", user], capture_output=True, text=True)
    return done.stdout.strip().split(":") if done.returncode == 0 else None


def global_addresses(ip_addr_output: str) -> list[str]:
    return sorted(line.split()[1] for line in ip_addr_output.splitlines() if "scope global" in line)


def owner_and_mode(path: Path) -> str:
    return sh("stat", "-c", "%U:%G %a", str(path)).strip()


def test_privileged_format_creates_users_taps_and_addresses(netns, open_tmp_path):
    netns.ip("-6", "addr", "add", "fd00:cafe:1:2::1/64", "dev", "fa0", "nodad")
    root = open_tmp_path / "node"
    config = privileged_config(root, netns, 3)
    done = netns.format(config)
    # formatted; the master (loopback of the host namespace) cannot be reached from inside: exit 2
    assert done.returncode == 2, done.stderr
    assert "master NOT told" in done.stderr
    computer = load_computer(root / "slapos.xml")
    assert computer.address == "fd00:cafe:1:2::1"
    software_user = f"{netns.tag}s"
    assert getent(software_user)[5] == str(root / "soft")
    assert owner_and_mode(root / "soft") == f"{software_user}:{software_user} 755"

    addresses = netns.ip("addr", "show", "dev", "fa0")
    local_routes = netns.ip("-6", "route", "show", "table", "local")
    for index, partition in enumerate(computer.partition_list):
        user = f"{netns.tag}u{index}"
        tap = f"{netns.tag}t{index}"
        assert partition.user.name == user
        entry = getent(user)
        assert entry[5] == partition.path and entry[6] == "/bin/sh"
        assert software_user in sh("id", "-nG", user).split()
        assert owner_and_mode(Path(partition.path)) == f"{user}:{user} 750"
        ipv4, ipv6 = (a.addr for a in partition.address_list)
        assert ipv6 == f"fd00:cafe:1:2::{index + 2:x}"  # prefix + index + 2 (§7.3)
        assert ipv4.startswith("10.201.")
        assert f"inet {ipv4}/32 " in addresses and f"inet6 {ipv6}/64 " in addresses
        assert f"local {partition.ipv6_range.network} dev lo" in local_routes
        link = netns.ip("-d", "link", "show", "dev", tap)
        assert "tun type tap" in link and f"user {user}" in link and ",UP" in link
        routes = netns.ip("-6", "route", "show", "dev", tap)
        assert f"{partition.tap.ipv6_network} via {partition.tap.ipv6_gateway}" in routes
        assert (Path(partition.path) / ".slapos-resource").read_text().count(ipv6) == 1

    # a second run finds everything in place
    definition_mtime = (root / "slapos.xml").stat().st_mtime_ns
    again = netns.format(config)
    assert again.returncode == 2, again.stderr
    assert "nothing to change, definition unchanged" in again.stderr
    assert (root / "slapos.xml").stat().st_mtime_ns == definition_mtime
    assert global_addresses(netns.ip("addr", "show", "dev", "fa0")) == global_addresses(addresses)
    dry = netns.format(config, "--dry-run")
    assert dry.returncode == 0 and "nothing to change on this machine" in dry.stdout

    # more partitions, then fewer: the busy one stays, the free one goes with its user and network
    config = privileged_config(root, netns, 5)
    assert netns.format(config).returncode == 2
    grown = load_computer(root / "slapos.xml")
    assert grown.partition_list[:3] == computer.partition_list  # same users and addresses
    (Path(grown.partition_list[3].path) / "buildout.cfg").write_text("[buildout]\n")
    config = privileged_config(root, netns, 3)
    shrunk = netns.format(config)
    assert shrunk.returncode == 2, shrunk.stderr
    assert "slappart3: kept although partition_amount is 3: it has buildout.cfg" in shrunk.stderr
    gone = grown.partition_list[4]
    assert getent(gone.user.name) is None
    assert not Path(gone.path).exists()
    assert gone.tap.name not in netns.ip("link", "show")
    remaining = netns.ip("addr", "show", "dev", "fa0")
    assert all(f" {a.addr}/" not in remaining for a in gone.address_list)
    assert getent(grown.partition_list[3].user.name) is not None


def test_taps_join_the_interface_when_it_is_a_bridge(netns, open_tmp_path):
    bridge = f"{netns.tag}br"
    netns.ip("link", "add", bridge, "type", "bridge")
    netns.ip("link", "set", "fa0", "master", bridge)
    netns.ip("link", "set", bridge, "up")
    netns.ip("-6", "addr", "add", "fd00:beef::1/64", "dev", bridge, "nodad")
    root = open_tmp_path / "node"
    # with duplicate address detection on: the run waits for the new addresses to be usable
    config = privileged_config(root, netns, 2, interface_name=bridge, ipv6_dad="true")
    done = netns.format(config)
    assert done.returncode == 2, done.stderr
    for index in range(2):
        link = netns.ip("-d", "link", "show", "dev", f"{netns.tag}t{index}")
        assert f"master {bridge}" in link
    addresses = netns.ip("-6", "addr", "show", "dev", bridge)
    assert "fd00:beef::2/64" in addresses and "tentative" not in addresses.split("fd00:beef::2/64")[1].split("\n")[0]


def assert_untouched(root: Path, ns: Namespace) -> None:
    assert not (root / "inst").exists()
    assert not [u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(ns.tag)]
    assert f"{ns.tag}t" not in ns.ip("link", "show")


def test_no_ipv6_on_the_interface(netns, open_tmp_path):
    root = open_tmp_path / "node"
    done = netns.format(privileged_config(root, netns, 2))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: interface 'fa0' has no global IPv6 address: give it one (SlapOS needs IPv6) or set "
        "ipv6_interface / interface_name to an interface that has one"
    )
    assert_untouched(root, netns)


def test_address_used_elsewhere(netns, open_tmp_path, tmp_path):
    netns.ip("-6", "addr", "add", "fd00:d::1/64", "dev", "fa0", "nodad")
    netns.ip("addr", "add", "10.202.0.7/32", "dev", "fb0")
    definition = tmp_path / "definition.cfg"
    definition.write_text(
        f"[computer]\nsoftware_user = {netns.tag}s\n\n"
        f"[partition_0]\naddress = 10.202.0.7/32 fd00:d::7/64\nuser = {netns.tag}u0\n"
        f"network_interface = {netns.tag}t0\npathname = web\n"
    )
    root = open_tmp_path / "node"
    done = netns.format(privileged_config(root, netns, 1, input_definition_file=str(definition)))
    assert done.returncode == 1
    assert done.stderr.startswith("error: web: address 10.202.0.7 is already used on fb0")
    assert len(done.stderr.strip().splitlines()) == 1
    assert_untouched(root, netns)


def test_missing_binary(netns, open_tmp_path):
    netns.ip("-6", "addr", "add", "fd00:e::1/64", "dev", "fa0", "nodad")
    root = open_tmp_path / "node"
    config = privileged_config(root, netns, 1)
    done = subprocess.run(
        ["ip", "netns", "exec", netns.name, "env", "PATH=/nonexistent",
         *slapos_cli_argv("node", "format", "--cfg", str(config), "--now")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "error: the program 'groupadd' is needed but not found on PATH" in done.stderr
    assert_untouched(root, netns)


def slapos_cli_argv(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "slapos.cli.main", *args]


def test_failure_midway_is_undone(netns, open_tmp_path):
    netns.ip("-6", "addr", "add", "fd00:f::1/64", "dev", "fa0", "nodad")
    root = open_tmp_path / "node"
    # a tap name longer than the kernel's 15 characters fails only when `ip tuntap add` runs,
    # after the users, directories and addresses of the partition were made
    config = privileged_config(root, netns, 1, tap_base_name=f"{netns.tag}tapnametoolong")
    done = netns.format(config)
    assert done.returncode == 1
    assert "tuntap" in done.stderr and "changes were undone" in done.stderr
    assert not (root / "inst" / "slappart0").exists()
    assert not [u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(netns.tag)]
    assert not [g.gr_name for g in grp.getgrall() if g.gr_name.startswith(netns.tag)]
    assert "10.201." not in netns.ip("addr", "show", "dev", "fa0")
    assert not (root / "slapos.xml").exists()


def test_unprivileged_node_refuses_explicit_alter_user_as_non_root(world_tmp):
    nobody = pwd.getpwnam("nobody")
    root = world_tmp / "node"
    root.mkdir()
    import os

    os.chown(root, nobody.pw_uid, nobody.pw_gid)
    config = write_config(root, 1, slapformat={"alter_user": "true"})
    done = slapos_cli("node", "format", "--cfg", str(config), "--now",
                      prefix=("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: alter_user = true needs root")
    assert not (root / "inst").exists()


def test_existing_software_user_is_used_as_it_is(netns, open_tmp_path):
    netns.ip("-6", "addr", "add", "fd00:a::1/64", "dev", "fa0", "nodad")
    before = getent("nobody")
    root = open_tmp_path / "node"
    done = netns.format(privileged_config(root, netns, 1, software_user="nobody", create_tap="false"))
    assert done.returncode == 2, done.stderr
    assert getent("nobody") == before  # never usermod-ed
    assert owner_and_mode(root / "soft") == "nobody:nogroup 755"
    user = f"{netns.tag}u0"
    assert "nogroup" in sh("id", "-nG", user).split()
    assert load_computer(root / "slapos.xml").partition_list[0].user.additional_group_list == ["nogroup"]
