"""slapformat, plan → validate → apply → save → report.

1. *Define*: compute the wanted computer (model.Computer) from the options, the saved definition
   of the previous run (so every partition keeps its user, tap and addresses) or the input
   definition file, and what the interfaces hold.
2. *Plan*: every resource (system.py) compares itself with the system and returns the actions it
   needs; a formatted computer yields none, at the cost of a few stats.
3. *Validate*: root, binaries and address conflicts are checked before anything changes, so an
   error leaves nothing half-done; `--dry-run` prints the plan and stops here.
4. *Apply* in order (software user before partition users, users before their directories and
   taps); if an action fails, what this run did is undone.
5. *Save* the definition (history of earlier versions in a zip) and each `.slapos-resource`.
6. *Report* the computer dictionary to the master (exit 2 when it cannot be told).

Kept whole: it is one run, the six steps above in that order, each a method of `Formatter` over
the run's shared state (options, what the interfaces and user database hold, the plan); the
resources, the model, addressing and the definition file already live in their own modules.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base.errors import EXIT_FAILED, EXIT_OK, SlapOSError

from . import addressing, definition
from .model import Address, Computer, Interface, IPv6Range, Partition, Tap, User, netmask_of
from .options import FormatOptions
from .system import (
    Action,
    ConfigAccess,
    Directory,
    Executor,
    IPAddress,
    JsonFile,
    NetworkState,
    Route,
    Sysctl,
    SystemUser,
    TapDevice,
    UserDatabase,
)

log = logging.getLogger("slapos.format")

# "prepared but the master could not be told": `slapos node boot` retries on it (reference).
EXIT_NOT_REPORTED = 2
BUSY_MARKERS = ("software_release", "buildout.cfg")


@dataclass
class FormatResult:
    computer: Computer
    actions: list[Action] = field(default_factory=list)
    definition_changed: bool = False
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reported: bool = False
    report_error: str = ""
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        if self.dry_run or self.reported:
            return EXIT_OK
        return EXIT_NOT_REPORTED


def _facts() -> dict[str, str | None]:
    """os_type, python_version, slapos_version as the reference reports them."""
    distro: dict[str, str] = {}
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                distro[key] = value.strip().strip('"')
    except OSError:
        pass
    os_type = json.dumps([platform.platform(), distro.get("ID", ""), distro.get("VERSION_ID", ""),
                          distro.get("NAME", "")])
    try:
        from importlib.metadata import version

        slapos_version = version("slapnode")
    except Exception:  # a source tree that is not installed
        slapos_version = None
    return {"os_type": os_type, "python_version": platform.python_version(), "slapos_version": slapos_version}


class Formatter:
    def __init__(
        self,
        options: FormatOptions,
        dry_run: bool = False,
        net: NetworkState | None = None,
        users: UserDatabase | None = None,
        out=None,
    ):
        self.options = options
        self.dry_run = dry_run
        self.net = net or NetworkState()
        self.users = users or UserDatabase()
        self.out = out or sys.stdout
        self.euid = os.geteuid()
        self._prefix: ipaddress.IPv6Network | None = None
        self._tap_ipv4_taken: list = []
        self._software_groups: dict[str, str] = {}

    # -- 1. define -------------------------------------------------------------------------------
    @property
    def ipv6_interface(self) -> str:
        o = self.options
        return o.ipv6_interface or o.interface_name or "lo"

    @property
    def interface_name(self) -> str:
        return self.options.interface_name or "lo"

    def _check_interfaces(self) -> None:
        o = self.options
        if o.alter_network and not o.interface_name:
            raise SlapOSError("alter_network = true needs [slapformat] interface_name (the interface of the partitions)")
        if o.alter_network and not o.ipv4_local_network and not o.input_definition_file:
            raise SlapOSError(
                "alter_network = true needs [slapformat] ipv4_local_network (e.g. 10.0.0.0/16) to give "
                "partitions their IPv4 addresses"
            )
        for name in dict.fromkeys([self.interface_name, self.ipv6_interface, o.tap_gateway_interface or None]):
            if name and not self.net.has_interface(name):
                known = ", ".join(sorted(self.net.interfaces()))
                raise SlapOSError(f"interface {name!r} does not exist (this machine has: {known}): fix interface_name")

    def define(self, previous: Computer | None) -> tuple[Computer, list[Partition]]:
        """The wanted computer, and the previously defined partitions it no longer lists."""
        o = self.options
        self._check_interfaces()
        computer = Computer(
            reference=o.computer_id,
            software_root=str(o.software_root),
            instance_root=str(o.instance_root),
            software_user=o.software_user,
            tap_gateway_interface=o.tap_gateway_interface,
            tap_ipv6=o.tap_ipv6,
            partition_has_ipv6_range=o.partition_has_ipv6_range and o.alter_network,
            instance_storage_home=str(o.instance_storage_home) if o.instance_storage_home else None,
            public_ipv4_address=o.public_ipv4_address,
            ipv6_interface=o.ipv6_interface,
            **_facts(),
        )
        if o.alter_network and o.ipv4_local_network:
            computer.interface = Interface(o.interface_name, o.ipv4_local_network, o.ipv6_interface,
                                           o.ipv6_prefixshift)
        given = None
        if o.input_definition_file:
            given = definition.read_input_definition(o.input_definition_file, o.partition_amount)
            if given.software_user:
                computer.software_user = given.software_user

        # the computer's own IPv6
        stored = previous.address if previous else None
        if given and given.address:
            stored = given.address.addr
        known = [a.addr for p in (previous.partition_list if previous else []) for a in p.address_list]
        chosen = addressing.pick_computer_ipv6(
            self.net.addresses_of(self.ipv6_interface, 6), stored,
            exclude=[a for a in known if a != stored], allow_host=not o.alter_network,
        )
        if given and given.address and not o.alter_network:
            computer.address, computer.netmask = given.address.addr, given.address.netmask
        elif chosen is None:
            what = "global IPv6 address" if o.alter_network else "IPv6 address"
            raise SlapOSError(
                f"interface {self.ipv6_interface!r} has no {what}: give it one (SlapOS needs IPv6) or set "
                "ipv6_interface / interface_name to an interface that has one"
            )
        else:
            computer.address, computer.netmask = chosen.addr, netmask_of(chosen.prefixlen, 6)
            self._prefix = addressing.prefix_network(chosen)
            if o.alter_network and (o.partition_has_ipv6_range or (o.create_tap and o.tap_ipv6)) and not given:
                addressing.check_prefixshift(self._prefix, o.ipv6_prefixshift, o.partition_amount)

        if given:
            computer.partition_list = [self._given_partition(p, computer) for p in given.partitions]
        else:
            computer.partition_list = self._discovered_partitions(previous, computer)
        wanted = {p.reference for p in computer.partition_list}
        extra = [p for p in (previous.partition_list if previous else []) if p.reference not in wanted]
        return computer, extra

    def _software_group(self, software_user: str) -> str:
        """The group partition users share: the software user's primary group (its own group when
        we create it; e.g. `nogroup` for an existing `nobody`)."""
        if software_user not in self._software_groups:
            account = self.users.user(software_user)
            group = self.users.group_name(account.pw_gid) if account is not None else None
            self._software_groups[software_user] = group or software_user
        return self._software_groups[software_user]

    def _user(self, name: str, path: str, computer: Computer) -> User:
        return User(name=name, path=path, shell="/bin/sh",
                    additional_group_list=[self._software_group(computer.software_user)])

    def _given_partition(self, given: definition.PartitionDefinition, computer: Computer) -> Partition:
        path = str(self.options.instance_root / given.pathname)
        partition = Partition(
            reference=given.pathname,
            path=path,
            user=self._user(given.user, path, computer),
            address_list=list(given.address_list),
            ipv6_range=given.ipv6_range,
            tap=Tap(given.network_interface) if given.network_interface else None,  # empty: no tap
            capability_list=given.capability_list,
        )
        self._add_tap_addresses(partition, given.index)
        return partition

    def _discovered_partitions(self, previous: Computer | None, computer: Computer) -> list[Partition]:
        o = self.options
        partitions = []
        for index in range(o.partition_amount):
            reference = f"{o.partition_base_name}{index}"
            before = previous.partition(reference) if previous else None
            path = str(o.instance_root / reference)
            partitions.append(Partition(
                reference=reference,
                path=path,
                user=self._user(before.user.name if before and before.user.name else f"{o.user_base_name}{index}",
                                path, computer),
                tap=Tap(before.tap.name if before and before.tap and before.tap.name else f"{o.tap_base_name}{index}"),
                address_list=list(before.address_list) if before else [],
                ipv6_range=before.ipv6_range if before else None,
            ))
        if o.alter_network:
            self._allocate_addresses(partitions)
        else:
            # unprivileged: partitions share what the interface already has (loopback: 127.0.0.1, ::1)
            shared = []
            ipv4 = self.net.addresses_of(self.interface_name, 4)
            if ipv4:
                shared.append(Address(ipv4[0].addr, netmask_of(ipv4[0].prefixlen, 4)))
            shared.append(Address(computer.address, computer.netmask))
            for partition in partitions:
                partition.address_list = list(shared)
                partition.ipv6_range = None
        for index, partition in enumerate(partitions):
            self._add_tap_addresses(partition, index)
        return partitions

    def _allocate_addresses(self, partitions: list[Partition]) -> None:
        """Keep each partition's stored addresses while they stay valid, give new ones otherwise."""
        o = self.options
        assert self._prefix is not None
        v4net = ipaddress.IPv4Network(o.ipv4_local_network, strict=False)
        shift = o.ipv6_prefixshift
        taken: set = {ipaddress.ip_address(a.addr) for a in self.net.addresses}
        kept: dict[str, dict[int, Address]] = {}
        for partition in partitions:
            mine: dict[int, Address] = {}
            for address in partition.address_list:
                ip = ipaddress.ip_address(address.addr)
                owner = self.net.owner_of_address(address.addr)
                if ip.version == 4:
                    valid = ip in v4net and owner in (None, self.interface_name)
                else:
                    valid = ip in self._prefix and owner in (None, self.ipv6_interface)
                    present = self.net.address_on(self.ipv6_interface, address.addr)
                    valid = valid and not (present and present.dadfailed)
                if valid and ip.version not in mine and (owner is not None or ip not in taken):
                    mine[ip.version] = address
                    taken.add(ip)
            kept[partition.reference] = mine
        for index, partition in enumerate(partitions):
            mine = kept[partition.reference]
            if 4 not in mine:
                addr = addressing.next_ipv4(v4net, taken)
                mine[4] = Address(addr, "255.255.255.255")
                taken.add(ipaddress.ip_address(addr))
            if 6 not in mine:
                addr = addressing.partition_ipv6(self._prefix, index, taken)
                mine[6] = Address(addr, netmask_of(self._prefix.prefixlen, 6))
                taken.add(ipaddress.ip_address(addr))
            partition.address_list = [mine[4], mine[6]]
            if o.partition_has_ipv6_range:
                rng = partition.ipv6_range
                if not (rng and rng.prefixlen == self._prefix.prefixlen + shift
                        and ipaddress.ip_network(rng.network).subnet_of(self._prefix)):
                    net = addressing.partition_range(self._prefix, shift, index)
                    partition.ipv6_range = IPv6Range(str(net.network_address), net.prefixlen)
            else:
                partition.ipv6_range = None

    def _add_tap_addresses(self, partition: Partition, index: int) -> None:
        o = self.options
        if not (o.alter_network and o.create_tap) or partition.tap is None:
            return
        if o.tap_ipv6 and self._prefix is not None:
            for key, value in addressing.tap_ipv6(self._prefix, o.ipv6_prefixshift, index).items():
                setattr(partition.tap, key, value)
        if o.tap_gateway_interface:
            gateway = self.net.addresses_of(o.tap_gateway_interface, 4)
            if not gateway:
                raise SlapOSError(f"tap_gateway_interface {o.tap_gateway_interface!r} has no IPv4 address")
            gw = gateway[0]
            network = ipaddress.IPv4Network(f"{gw.addr}/{gw.prefixlen}", strict=False)
            taken = {ipaddress.ip_address(a.addr) for a in self.net.addresses}
            taken |= set(self._tap_ipv4_taken)
            start = int(ipaddress.ip_address(gw.addr)) - int(network.network_address)
            addr = partition.tap.ipv4_addr
            if not (addr and ipaddress.ip_address(addr) in network and ipaddress.ip_address(addr) not in taken):
                addr = addressing.next_ipv4(network, taken, start=start)
            self._tap_ipv4_taken.append(ipaddress.ip_address(addr))
            partition.tap.ipv4_addr = addr
            partition.tap.ipv4_netmask = str(network.netmask)
            partition.tap.ipv4_gateway = gw.addr
            partition.tap.ipv4_network = str(network.network_address)

    def _connect(self):
        """A connection to the master with the node's identity ([slapos] key_file, cert_file, master_ca_file)."""
        from slapos.slap import connect_as

        return connect_as(self.options)

    # -- extra partitions (partition_amount lowered) ------------------------------------------------
    def _busy_at_master(self, references: list[str]) -> dict[str, str]:
        """Which of these partitions the master says are in use (reason by reference)."""
        o = self.options
        busy: dict[str, str] = {}
        try:
            for partition in self._connect().registerComputer(o.computer_id).getComputerPartitionList():
                reference = partition.getId()
                if reference not in references:
                    continue
                software = getattr(partition, "_software_release_document", None)
                state = getattr(partition, "_requested_state", None)
                if software is not None or state not in (None, "destroyed"):
                    busy[reference] = f"in use at the master (state {state})"
        except Exception as e:  # the master is only a second opinion here; the files decide
            log.warning("computer: cannot ask the master which partitions are in use (%s); "
                        "judging by their directories only", e)
        return busy

    def sort_extra(self, extra: list[Partition]) -> tuple[list[Partition], list[Partition], dict[str, str]]:
        """Split partitions no longer wanted into (to remove, to keep busy) with reasons."""
        if not extra:
            return [], [], {}
        reasons = self._busy_at_master([p.reference for p in extra]) if not self.dry_run else {}
        for partition in extra:
            for marker in BUSY_MARKERS:
                if os.path.lexists(os.path.join(partition.path, marker)):
                    reasons.setdefault(partition.reference, f"it has {marker}")
        free = [p for p in extra if p.reference not in reasons]
        busy = [p for p in extra if p.reference in reasons]
        return free, busy, reasons

    # -- 2. plan ---------------------------------------------------------------------------------
    def plan(self, computer: Computer, remove: list[Partition]) -> list[Action]:
        o = self.options
        actions: list[Action] = []
        subject = f"computer {computer.reference}"
        if o.alter_user:
            actions += SystemUser(subject, computer.software_user, str(o.software_root),
                                  modify_existing=False).plan(self.users)
        actions += Directory(subject, o.instance_root, 0o755).plan(self.users)
        actions += Directory(subject, o.software_root, 0o755,
                             user=computer.software_user if o.alter_user else None).plan(self.users)
        if o.certificate_repository_path:
            # traversable, not listable: each partition user reads its own 0600 certificate and key
            # there (the slap-connection of its buildout points at them), no one lists them
            actions += Directory(subject, o.certificate_repository_path, 0o711).plan(self.users)
        if o.alter_user and o.config_path is not None:
            from slapos.slap.connection import url_credential

            group = self._software_group(computer.software_user)
            # a configuration holding the node credential (access = credentials) stays root's:
            # the software group has every tenant in it (docs/security-proxy.md)
            secret = url_credential(o.master_url or "") is not None
            actions += ConfigAccess(subject, Path(o.config_path), group, file_too=not secret).plan(self.users)
        if o.alter_network and computer.partition_has_ipv6_range:
            actions += Sysctl(subject, "net.ipv6.ip_nonlocal_bind", "1").plan()
        bridge = self.interface_name if o.alter_network and self.net.is_bridge(self.interface_name) else None
        for partition in computer.partition_list:
            actions += self.plan_partition(partition, bridge)
        for partition in remove:
            actions += self.plan_removal(partition)
        return actions

    def _data_directories(self) -> list[Path]:
        home = self.options.instance_storage_home
        if not home or not home.is_dir():
            return []
        return sorted(p for p in home.iterdir() if p.is_dir() and p.name.startswith("data"))

    def _ip_address(self, ref: str, address: Address, nodad: bool = False) -> IPAddress:
        """A partition address on its interface (IPv4 on interface_name, IPv6 on ipv6_interface)."""
        ifname = self.interface_name if address.version == 4 else self.ipv6_interface
        prefixlen = 32 if address.version == 4 and address.netmask == "255.255.255.255" else address.prefixlen
        return IPAddress(ref, ifname, address.addr, prefixlen, nodad)

    def plan_partition(self, partition: Partition, bridge: str | None) -> list[Action]:
        o = self.options
        ref = partition.reference
        user = partition.user.name
        actions: list[Action] = []
        if o.alter_user:
            actions += SystemUser(ref, user, partition.path, partition.user.shell,
                                  list(partition.user.additional_group_list)).plan(self.users)
        owner = user if o.alter_user else None
        actions += Directory(ref, Path(partition.path), 0o750, user=owner).plan(self.users)
        for data in self._data_directories():
            actions += Directory(ref, data / ref, 0o750, user=owner).plan(self.users)
        if o.alter_network:
            nodad = not o.ipv6_dad
            for address in partition.address_list:
                actions += self._ip_address(ref, address, nodad).plan(self.net)
            if partition.ipv6_range:
                actions += Route(ref, partition.ipv6_range.network, "lo", local=True).plan(self.net)
            if o.create_tap and partition.tap and partition.tap.name:
                tap = partition.tap
                tap_owner = user if (o.alter_user or self.users.user(user)) else "root"
                actions += TapDevice(ref, tap.name, tap_owner, bridge).plan(self.net, self.users)
                if tap.ipv4_addr:
                    actions += Route(ref, f"{tap.ipv4_addr}/32", tap.name).plan(self.net)
                if tap.ipv6_gateway:
                    actions += Route(ref, f"{tap.ipv6_gateway}/128", tap.name).plan(self.net)
                    actions += Route(ref, tap.ipv6_network, tap.name, gateway=tap.ipv6_gateway).plan(self.net)
        actions += JsonFile(ref, os.path.join(partition.path, ".slapos-resource"), partition.to_dict()).plan()
        return actions

    def plan_removal(self, partition: Partition) -> list[Action]:
        o = self.options
        ref = partition.reference
        actions: list[Action] = []
        if o.alter_network:
            if partition.tap and partition.tap.name and self.net.is_tap(partition.tap.name):
                actions += TapDevice(ref, partition.tap.name, partition.user.name).remove(self.net)
            for address in partition.address_list:
                actions += self._ip_address(ref, address).remove(self.net)
            if partition.ipv6_range:
                actions += Route(ref, partition.ipv6_range.network, "lo", local=True).remove(self.net)
        path = Path(partition.path)
        if path.exists():
            actions.append(Action(ref, f"delete the free partition directory {path}",
                                  func=lambda: shutil.rmtree(path)))
        if o.alter_user and partition.user.name:
            actions += SystemUser(ref, partition.user.name, partition.path).remove(self.users)
        return actions

    # -- 3. validate -----------------------------------------------------------------------------
    def validate(self, actions: list[Action]) -> None:
        if self.euid != 0:
            for action in actions:
                if action.needs_root:
                    raise SlapOSError(
                        f"root is needed to {action.description} ({action.subject}): run as root, or set "
                        "alter_user = false and alter_network = false for an unprivileged node"
                    )
        needed = sorted({b for a in actions for b in a.binaries})
        for binary in needed:
            if shutil.which(binary) is None:
                package = "iproute2" if binary == "ip" else "passwd (shadow utilities)"
                raise SlapOSError(
                    f"the program {binary!r} is needed but not found on PATH: install {package}, or set "
                    f"{'alter_network' if binary == 'ip' else 'alter_user'} = false"
                )

    # -- the whole run ---------------------------------------------------------------------------
    def run(self) -> FormatResult:
        o = self.options
        self._tap_ipv4_taken = []
        if o.unprivileged_reason:
            log.info("computer %s: unprivileged format (%s): directories only, addresses from %s",
                     o.computer_id, o.unprivileged_reason, self.interface_name)
        store = definition.DefinitionStore(o.computer_xml)
        previous = store.load()
        computer, extra = self.define(previous)
        free, busy, reasons = self.sort_extra(extra)
        for partition in busy:
            log.warning("%s: kept although partition_amount is %d: %s", partition.reference,
                        o.partition_amount, reasons[partition.reference])
        computer.partition_list += busy
        actions = self.plan(computer, free)
        self.validate(actions)
        result = FormatResult(computer, actions, kept=[p.reference for p in busy],
                              removed=[p.reference for p in free], dry_run=self.dry_run)
        marshalled = definition.marshal(computer)
        if self.dry_run:
            self._print_plan(result, definition.computer_xml(computer, marshalled))
            return result

        executor = Executor()
        try:
            for action in actions:
                executor.apply(action)
            self._wait_dad(executor.done)
        except (SlapOSError, OSError) as e:
            problems = executor.rollback()
            for problem in problems:
                log.error("%s", problem)
            message = str(e) if isinstance(e, SlapOSError) else f"{e}"
            undone = "this run's changes were undone" if not problems else "some changes could not be undone (see above)"
            raise SlapOSError(f"{message} ({undone}; nothing was reported to the master)", EXIT_FAILED) from None

        result.definition_changed = store.save(computer, marshalled)
        if o.computer_json:
            definition.save_computer(o.computer_json, definition.computer_json(computer))
        if o.output_definition_file:
            definition.save_computer(o.output_definition_file, definition.output_definition(computer))
        for reference in result.removed:
            log.info("%s: removed (free, and partition_amount is %d)", reference, o.partition_amount)
        self.report(result, marshalled)
        return result

    def _wait_dad(self, done: list[Action]) -> None:
        if not self.options.ipv6_dad:
            return
        added = []
        for action in done:
            for argv in action.commands:
                if argv[:4] == ["ip", "-6", "addr", "add"]:
                    added.append((argv[-1], argv[4].split("/")[0]))
        if not added:
            return
        failed = self.net.wait_dad(added, self.options.dad_timeout)
        if failed:
            raise SlapOSError(
                f"IPv6 duplicate address detection failed for {', '.join(failed)}: another host uses them; "
                "remove them from the definition so new ones are chosen"
            )

    def _print_plan(self, result: FormatResult, definition_text: str) -> None:
        o = self.options
        write = self.out.write
        if not result.actions:
            write(f"computer {o.computer_id}: nothing to change on this machine\n")
        for action in result.actions:
            write(f"would {action}\n")
        for reference in result.kept:
            write(f"would keep {reference} (busy)\n")
        try:
            current = o.computer_xml.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != definition_text:
            write(f"would write the computer definition {o.computer_xml}\n")
        write(f"would report {len(result.computer.partition_list)} partitions of {o.computer_id} to {o.master_url}\n")

    # -- 6. report -------------------------------------------------------------------------------
    def report(self, result: FormatResult, xml: str) -> None:
        o = self.options
        try:
            self._connect().registerComputer(o.computer_id).updateConfiguration(xml)
        except Exception as e:  # any failure to tell the master is the "offline success" of the reference
            result.report_error = str(e)
            log.error("computer %s: prepared, but the master at %s was not told: %s", o.computer_id, o.master_url, e)
            return
        result.reported = True


def run_format(options: FormatOptions, dry_run: bool = False, out=None) -> FormatResult:
    """Format the computer once (no delay, no lock): the API used by the CLI and the tests."""
    return Formatter(options, dry_run=dry_run, out=out).run()
