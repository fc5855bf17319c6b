"""slapnode:config — the partition's configuration, read from the master, as buildout options.

    [slap-configuration]
    recipe = slapnode:config
    # defaults, replaced by the instance parameters of the same name when the requester gave them
    configuration.port = 8080
    configuration.message = Hello

Other sections then use `${slap-configuration:configuration.port}`, `${slap-configuration:ipv4-random}`,
`${slap-configuration:slave-instance-list}`, ... The work happens when the section is first
referenced (one `registerComputerPartition` GET), so the values exist before any part installs.

Options set:
  configuration.<key>     each instance parameter (a name that cannot be an option, e.g. with
                          spaces, is skipped with a warning); a JSON-in-XML `_` parameter is unwrapped into
                          its keys; non-string JSON values are given as JSON text (`3`, `true`, `[...]`)
  computer-id, partition-id, server-url, software-release-url, software-type, instance-guid,
  instance-title, root-instance-title, instance-state (requested state: started / stopped)
  ipv4, ipv6              the partition's addresses (from ip_list), space separated, sorted
  ipv4-random, ipv6-random  one of them (the first: stable across runs), empty if none
  slave-instance-list     JSON list of the shared instances hosted here (their own `_` unwrapped),
                          sorted by slave_reference

Software types: with options `parts.<software-type> = <part names>`, the recipe also sets `parts`
to the list of this instance's software type, so one instance profile serves several types:

    [buildout]
    parts = ${slap-configuration:parts}
    [slap-configuration]
    recipe = slapnode:config
    parts.default = directory request-backend frontend publish
    parts.backend = directory backend publish-backend

Buildout only reads the sections the chosen parts use. An unknown type is a clear error.
"""
from __future__ import annotations

import ipaddress
import json
import re

from slapos.slap.exceptions import ResourceNotReady

from .common import Recipe as _Base
from .common import SlapConnection, slap_errors

# keys the master adds to the instance parameters (SLAP-PROTOCOL §3.2): not user parameters
SERVER_KEYS = frozenset(
    {
        "ip_list",
        "full_ip_list",
        "full_address_list",
        "slap_computer_id",
        "slap_computer_partition_id",
        "slap_software_release_url",
        "slap_software_type",
        "instance_title",
        "root_instance_title",
        "slave_instance_list",
        "timestamp",
    }
)
# parameter names usable in a buildout option name: no spaces, `=`, `:`, brackets or braces, and no
# trailing `+`/`-` (buildout would read `name+ = v` back as `name += v`)
OPTION_NAME = re.compile(r"^\w(?:[\w.@-]*\w)?$")
# what the master sends when the requester gave no software type (legacy spelling included)
LEGACY_DEFAULT_TYPES = frozenset({"", "RootSoftwareInstance"})
# keys that identify a shared instance inside slave_instance_list (kept next to its parameters)
SLAVE_KEYS = ("slave_reference", "slave_title", "slap_software_type")


def as_option(value) -> str:
    """Buildout options are strings: None → '', str unchanged, anything else → JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def wrap_json_in_xml(parameters: dict) -> dict[str, str]:
    """The `_` convention the other way: every parameter in one JSON object under `_` (keys
    sorted, so unchanged values give the same text and the master sees no change)."""
    return {"_": json.dumps(parameters, sort_keys=True)}


def unwrap_json_in_xml(parameters: dict) -> dict:
    """The `_` convention (SLAP-PROTOCOL §3.5): all parameters as one JSON object under `_`.
    Raises ValueError when `_` is not a JSON object."""
    if "_" not in parameters:
        return dict(parameters)
    decoded = json.loads(parameters["_"] or "{}")
    if not isinstance(decoded, dict):
        raise ValueError(f"'_' holds a JSON {type(decoded).__name__}, not an object")
    result = {k: v for k, v in parameters.items() if k != "_"}
    result.update(decoded)
    return result


def split_addresses(ip_list) -> tuple[list[str], list[str]]:
    """(ipv4, ipv6) addresses of an ip_list of (interface, address) pairs, sorted, unique."""
    v4, v6 = set(), set()
    for entry in ip_list or ():
        address = entry[-1] if isinstance(entry, (list, tuple)) else entry
        try:
            ip = ipaddress.ip_address(str(address).split("/")[0])
        except ValueError:
            continue
        (v4 if ip.version == 4 else v6).add(str(ip))
    key = ipaddress.ip_address
    return sorted(v4, key=key), sorted(v6, key=key)


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        connection = SlapConnection.from_recipe(self)
        partition = connection.partition(self)
        with slap_errors(self, f"reading the parameters of {connection.partition_id}"):
            raw = dict(partition.getInstanceParameterDict() or {})
            try:
                instance_guid = partition.getInstanceGuid()
            except ResourceNotReady:  # a master (our proxy) that gives no guid: the key stays empty
                instance_guid = ""

        user = {k: v for k, v in raw.items() if k not in SERVER_KEYS}
        try:
            parameters = unwrap_json_in_xml(user)
        except ValueError as e:
            raise self.error(
                f"instance parameter '_' of {connection.partition_id} is not a JSON object ({e}): "
                "request the instance again with valid JSON parameters"
            ) from None
        for key, value in parameters.items():
            if not OPTION_NAME.match(key):
                # buildout records options in .installed.cfg: such a name would corrupt it
                self.log.warning("instance parameter %r ignored: its name cannot be a buildout option", key)
                continue
            options[f"configuration.{key}"] = as_option(value)

        ipv4, ipv6 = split_addresses(raw.get("ip_list"))
        options.update(
            {
                "computer-id": connection.computer_id,
                "partition-id": connection.partition_id,
                "server-url": connection.server_url,
                "software-release-url": as_option(raw.get("slap_software_release_url"))
                or connection.software_release_url,
                "software-type": as_option(raw.get("slap_software_type")),
                "instance-guid": as_option(instance_guid),
                "instance-title": as_option(raw.get("instance_title")),
                "root-instance-title": as_option(raw.get("root_instance_title")),
                "instance-state": connection.requested_state,
                "ipv4": " ".join(ipv4),
                "ipv6": " ".join(ipv6),
                "ipv4-random": ipv4[0] if ipv4 else "",
                "ipv6-random": ipv6[0] if ipv6 else "",
                "slave-instance-list": json.dumps(self._slaves(raw.get("slave_instance_list")), sort_keys=True),
            }
        )
        self._switch_parts()

    def _switch_parts(self) -> None:
        switch = {k[len("parts.") :]: v for k, v in self.options.items() if k.startswith("parts.")}
        if not switch:
            return
        software_type = self.options["software-type"]
        if software_type in LEGACY_DEFAULT_TYPES:
            software_type = "default"
        if software_type not in switch:
            raise self.error(
                f"software type {software_type!r} is not offered by this software release "
                f"(it offers: {', '.join(sorted(switch))}): request one of those"
            )
        self.options["parts"] = switch[software_type]

    def _slaves(self, slaves) -> list[dict]:
        result = []
        for slave in slaves or ():
            slave = dict(slave)
            try:
                slave = unwrap_json_in_xml(slave)
            except ValueError as e:
                # one broken shared instance must not break its host: keep it as sent
                self.log.warning("shared instance %s: '_' left as is (%s)", slave.get("slave_reference"), e)
            result.append({k: as_option(v) if k in SLAVE_KEYS else v for k, v in slave.items()})
        return sorted(result, key=lambda s: str(s.get("slave_reference", "")))

    def install(self):
        # everything happened in __init__, so other sections could read the values
        return []
