"""Files that describe the computer: the state file (`computer_xml`, kept stable across runs),
the optional JSON copy, each partition's `.slapos-resource`, and the INI definition files
(`input_definition_file` fixes partitions by hand; `output_definition_file` writes one).

The state file is the reference's: a pretty-printed xml_marshaller document of the computer
dictionary, so a node formatted by the reference keeps its users and addresses with us.
"""
from __future__ import annotations

import configparser
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from slapos.base.errors import ConfigError, SlapOSError

from .model import Address, Computer, IPv6Range
from .system import write_atomic

log = logging.getLogger("slapos.format")


# -- state file ------------------------------------------------------------------------------------
def marshal(computer: Computer) -> str:
    """The computer dictionary as the master receives it (compact xml_marshaller document)."""
    from slapos.slap import wire

    return wire.dumps(computer.to_dict())


def computer_xml(computer: Computer, compact: str | None = None) -> str:
    """The marshalled computer dictionary, indented like the reference writes it."""
    from lxml import etree

    compact = compact if compact is not None else marshal(computer)
    return etree.tostring(etree.fromstring(compact.encode("utf-8")), pretty_print=True, encoding="unicode")


def load_computer(path: Path) -> Computer | None:
    """The computer saved by an earlier run, or None on a first run (no cache involved)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SlapOSError(f"cannot read the computer definition {path}: {e.strerror}") from None
    return parse_computer(path, data)


def parse_computer(path: Path, data: bytes) -> Computer:
    from slapos.slap import wire

    try:
        loaded = wire.loads(data)
        if not isinstance(loaded, dict):
            raise ValueError("it does not hold a computer dictionary")
        return Computer.from_dict(loaded)
    except (ValueError, KeyError, TypeError) as e:
        from .history import archive_path

        archive = archive_path(path)
        raise SlapOSError(
            f"the computer definition {path} is damaged ({e}); restore a good copy (earlier versions are in "
            f"{archive}) or move it away to start over (partitions may then get new addresses)"
        ) from None


def save_computer(path: Path, text: str) -> bool:
    """Write the state file when its content changed, keeping the old one in the history zip.
    Returns whether anything was written."""
    try:
        previous = path.read_bytes()
    except FileNotFoundError:
        previous = None
    new = text.encode("utf-8")
    if previous == new:
        return False
    if previous:
        from . import history  # zipfile only when something changed

        history.keep(path, previous)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, new, 0o644)
    return True


def _digest(data: bytes) -> str:
    """Change detection for the cache (length + CRC-32: cheap, and no adversary writes there)."""
    return f"{len(data)}:{zlib.crc32(data):08x}"


class DefinitionStore:
    """The state file, read and written with a parse cache.

    Decoding the marshalled XML is the biggest cost of a no-change run, so next to the state file
    we keep `.<name>.cache.json`: a digest of the state file and of the marshalled computer,
    and the computer as JSON. The cache is used only while the state file on disk still has the
    recorded digest (a hand edit or a reference run invalidates it); the XML stays the truth.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        hidden = self.path.name if self.path.name.startswith(".") else f".{self.path.name}"
        self.cache_path = self.path.with_name(f"{hidden}.cache.json")
        self._xml_digest: str | None = None
        self._cache: dict | None = None

    def _read_cache(self) -> dict | None:
        try:
            with open(self.cache_path, encoding="utf-8") as f:
                cache = json.load(f)
            return cache if isinstance(cache, dict) else None
        except (OSError, ValueError):
            return None

    def load(self) -> Computer | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SlapOSError(f"cannot read the computer definition {self.path}: {e.strerror}") from None
        self._xml_digest = _digest(data)
        self._cache = self._read_cache()
        if self._cache and self._cache.get("xml") == self._xml_digest:
            try:
                return Computer.from_dict(self._cache["computer"])
            except (KeyError, TypeError, ValueError, AttributeError):
                self._cache = None
        return parse_computer(self.path, data)

    def save(self, computer: Computer, compact: str) -> bool:
        """Write the state file if the computer changed; returns whether it was written."""
        marshal_digest = _digest(compact.encode("utf-8"))
        cache = self._cache or {}
        if self._xml_digest and cache.get("xml") == self._xml_digest and cache.get("marshal") == marshal_digest:
            return False  # same computer, same file: nothing to format into text
        text = computer_xml(computer, compact)
        changed = save_computer(self.path, text)
        cache = {
            "xml": _digest(text.encode("utf-8")),
            "marshal": marshal_digest,
            "computer": computer.to_dict(),
        }
        try:
            write_atomic(self.cache_path, json.dumps(cache, sort_keys=True), 0o644)
        except OSError as e:  # only a speed-up: never fail the run for it
            log.debug("computer: cannot write the definition cache %s: %s", self.cache_path, e)
        self._xml_digest, self._cache = cache["xml"], cache
        return changed


def computer_json(computer: Computer) -> str:
    return json.dumps(computer.to_dict(), indent=2, sort_keys=True)


# -- INI definition files --------------------------------------------------------------------------
@dataclass
class PartitionDefinition:
    index: int
    pathname: str
    user: str
    network_interface: str
    address_list: list[Address] = field(default_factory=list)
    ipv6_range: IPv6Range | None = None
    capability_list: list[str] | None = None


@dataclass
class InputDefinition:
    address: Address | None
    software_user: str | None
    partitions: list[PartitionDefinition]


def read_input_definition(path: Path, partition_amount: int) -> InputDefinition:
    """`[computer]` + `[partition_<i>]` for i < partition_amount (SLAP-PROTOCOL.md §7.1)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"cannot read input_definition_file {path}: {e.strerror}") from None
    except configparser.Error as e:
        raise ConfigError(f"input_definition_file {path} is not valid INI: {str(e).splitlines()[0]}") from None

    def parse_address(text: str, where: str) -> Address:
        try:
            return Address.parse(text)
        except ValueError:
            raise ConfigError(f"{path} [{where}]: {text!r} is not an address (<ip>/<netmask>)") from None

    computer = parser["computer"] if parser.has_section("computer") else {}
    address = computer.get("address", "").strip()
    partitions = []
    for index in range(partition_amount):
        section = f"partition_{index}"
        if not parser.has_section(section):
            raise ConfigError(
                f"{path} has no [{section}] although partition_amount = {partition_amount}: "
                "add the section or lower partition_amount"
            )
        s = parser[section]
        missing = [key for key in ("pathname", "user", "address") if not s.get(key, "").strip()]
        # `network_interface =` (empty) is a partition without a tap, as the reference's standalone
        # node writes it; only a missing key is an error
        if "network_interface" not in s:
            missing.insert(2, "network_interface")
        if missing:
            raise ConfigError(f"{path} [{section}] lacks {', '.join(missing)}")
        rng = s.get("ipv6_range", "").strip()
        try:
            ipv6_range = IPv6Range.parse(rng) if rng else None
        except ValueError:
            raise ConfigError(f"{path} [{section}]: ipv6_range {rng!r} is not <address>/<prefixlen>") from None
        caps = s.get("capability_list")
        partitions.append(PartitionDefinition(
            index=index,
            pathname=s["pathname"].strip(),
            user=s["user"].strip(),
            network_interface=s["network_interface"].strip(),
            address_list=[parse_address(a, section) for a in s["address"].split()],
            ipv6_range=ipv6_range,
            capability_list=[c.strip() for c in caps.splitlines() if c.strip()] if caps is not None else None,
        ))
    return InputDefinition(
        address=parse_address(address, "computer") if address else None,
        software_user=computer.get("software_user", "").strip() or None,
        partitions=partitions,
    )


def output_definition(computer: Computer) -> str:
    """An INI definition file that reproduces this computer (`-o/--output_definition_file`)."""
    lines = ["[computer]"]
    if computer.address:
        lines.append(f"address = {computer.address}/{computer.netmask}")
    lines.append(f"software_user = {computer.software_user}")
    for index, partition in enumerate(computer.partition_list):
        lines += ["", f"[partition_{index}]"]
        lines.append("address = " + " ".join(f"{a.addr}/{a.netmask}" for a in partition.address_list))
        if partition.ipv6_range:
            lines.append(f"ipv6_range = {partition.ipv6_range.network}")
        lines.append(f"user = {partition.user.name}")
        lines.append(f"network_interface = {partition.tap.name if partition.tap else ''}")
        lines.append(f"pathname = {partition.reference}")
        if partition.capability_list:
            lines.append("capability_list =")
            lines += [f"    {c}" for c in partition.capability_list]
    return "\n".join(lines) + "\n"
