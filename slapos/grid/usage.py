"""Resource usage of partitions and the usage journal sent to the master (`useComputer`).

What is measured, per used partition, once per `slapos node report` run:

* CPU time (seconds) consumed since the previous report by the partition's processes;
* memory (bytes, resident set size) used by those processes now;
* disk (bytes allocated) used by the partition's files now.

A partition's processes are the ones supervisord runs in its group (and their descendants),
plus every process of the partition's user when that user owns no other partition (it is
then a reliable marker, including for daemons that left supervisord's process group).
Software releases may add their own movements: files `var/xml_report/*.xml` valid against
`schemas/partition_consumption.xsd`, produced by `etc/report/*` scripts the node runs first.

The journal (`schemas/computer_consumption.xsd`) has one transaction for the period between
two reports, with one movement per (partition, resource); see "The usage journal" in the README.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

log = logging.getLogger("slapos.grid.usage")

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
COMPUTER_SCHEMA = SCHEMA_DIR / "computer_consumption.xsd"
PARTITION_SCHEMA = SCHEMA_DIR / "partition_consumption.xsd"

# Resources of the movements the node measures itself (quantity unit in the category).
CPU_RESOURCE = "CPU Time"
MEMORY_RESOURCE = "Memory"
DISK_RESOURCE = "Disk"

REPORT_FILE_LIMIT = 4 * 1024 * 1024  # a partition's report file larger than this is refused
MAX_MOVEMENTS_PER_FILE = 10_000


class UsageDocumentError(SlapOSError):
    """A usage document does not match its schema; it is not sent."""


@dataclass
class Movement:
    """One consumption line of the journal."""

    resource: str
    reference: str  # the partition id
    quantity: float
    title: str = ""
    price: float = 0.0
    vat: str = ""
    categories: list[str] = field(default_factory=list)


@dataclass
class PartitionUsage:
    partition_id: str
    cpu_seconds: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0
    process_count: int = 0
    since: float | None = None  # start of the oldest process measured
    extra: list[Movement] = field(default_factory=list)  # from the partition's own reports

    def movements(self) -> list[Movement]:
        pid = self.partition_id
        measured = [
            Movement(CPU_RESOURCE, pid, round(self.cpu_seconds, 3), f"CPU time used by {pid}",
                     categories=["unit/second"]),
            Movement(MEMORY_RESOURCE, pid, float(self.memory_bytes), f"Memory used by {pid}",
                     categories=["unit/byte"]),
            Movement(DISK_RESOURCE, pid, float(self.disk_bytes), f"Disk space used by {pid}",
                     categories=["unit/byte"]),
        ]
        return measured + self.extra


# -- processes ------------------------------------------------------------------------------

@dataclass
class _Proc:
    pid: int
    create_time: float
    cpu: float  # user + system seconds of this process alone
    rss: int


class ProcessTable:
    """One pass over the process table per run: uid index and parent→children links.

    CPU time counts each process's own user+system time (not its reaped children's: a
    long-lived child reaped by a wrapper would otherwise be counted twice). Processes that
    start and end between two reports are therefore not counted.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.by_uid: dict[int, list[int]] = {}
        self.children: dict[int, list[int]] = {}
        self._handles: dict[int, object] = {}
        self._measured: dict[int, _Proc | None] = {}
        for p in psutil.process_iter(["ppid", "uids"]):
            uids = p.info.get("uids")
            if uids is not None:
                self.by_uid.setdefault(uids.real, []).append(p.pid)
            if p.info.get("ppid") is not None:
                self.children.setdefault(p.info["ppid"], []).append(p.pid)
            self._handles[p.pid] = p

    def _measure(self, pid: int) -> _Proc | None:
        """CPU and memory of one process, read only for the processes a partition owns."""
        if pid not in self._measured:
            p = self._handles.get(pid)
            proc = None
            if p is not None:
                try:
                    with p.oneshot():
                        times = p.cpu_times()
                        proc = _Proc(pid, p.create_time(), times.user + times.system, p.memory_info().rss)
                except (self._psutil.Error, OSError):
                    proc = None  # it ended meanwhile
            self._measured[pid] = proc
        return self._measured[pid]

    def name(self, pid: int) -> str:
        """The process's name ("" when it ended meanwhile)."""
        p = self._handles.get(pid)
        try:
            return p.name() if p is not None else ""
        except (self._psutil.Error, OSError):
            return ""

    def descendants(self, pids: Iterable[int]) -> set[int]:
        found: set[int] = set()
        stack = [pid for pid in pids if pid]
        while stack:
            pid = stack.pop()
            if pid in found:
                continue
            found.add(pid)
            stack.extend(self.children.get(pid, ()))
        return found

    def select(self, uid: int | None, root_pids: Iterable[int]) -> list[_Proc]:
        pids = self.descendants(root_pids)
        if uid is not None:
            pids.update(self.by_uid.get(uid, ()))
        measured = (self._measure(pid) for pid in sorted(pids))
        return [proc for proc in measured if proc is not None]


class CpuLedger:
    """CPU seconds already reported per process (keyed by pid and start time, so a reused pid
    is a new process), kept between runs in `<instance_root>/var/report/cpu-ledger.json`."""

    def __init__(self, path: Path):
        self.path = path
        self.previous: dict[str, float] = {}
        self.current: dict[str, float] = {}
        self.last_report: float | None = None
        data = tenantfs.read_small(path, 16 * 1024 * 1024)
        if data:
            try:
                loaded = json.loads(data)
                self.previous = {str(k): float(v) for k, v in loaded.get("processes", {}).items()}
                self.last_report = float(loaded["time"]) if loaded.get("time") else None
            except (ValueError, TypeError, AttributeError):
                log.warning("usage: ignoring unreadable CPU ledger %s", path)

    def consumed(self, procs: Iterable[_Proc]) -> float:
        total = 0.0
        for proc in procs:
            key = f"{proc.pid}-{proc.create_time:.2f}"
            before = self.previous.get(key, 0.0)
            self.current[key] = proc.cpu
            total += max(0.0, proc.cpu - before)
        return total

    def save(self, now: float) -> None:
        """Called once the journal reached the master: what it reported is now 'previous'."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = json.dumps({"time": now, "processes": self.current}, sort_keys=True)
        tenantfs.write_small(self.path, document.encode(), mode=0o600)


# -- measuring a partition -----------------------------------------------------------------

@dataclass
class PartitionRef:
    """What usage needs to know of a local partition."""

    partition_id: str
    path: Path
    supervisor_pids: list[int] = field(default_factory=list)


def dedicated_uid(path: Path) -> int | None:
    """The uid of the partition's own user, when it has one: the owner of the directory, whose
    home is that directory (as `slapos node format` makes partition users). Never root, never
    ourselves, never a shared user such as nobody or a standalone node's owner: their processes
    have nothing to do with one partition in particular."""
    import pwd

    try:
        uid = os.lstat(path).st_uid
    except OSError:
        return None
    if uid in (0, os.geteuid()):
        return None
    try:
        home = Path(pwd.getpwuid(uid).pw_dir).resolve()
    except (KeyError, OSError):
        return None
    return uid if home == Path(path).resolve() else None


def exclusive_uids(partitions: Iterable[PartitionRef]) -> dict[str, int | None]:
    """partition id → the uid that marks its processes (see dedicated_uid), or None: then only
    supervisord's view of the partition is used."""
    return {ref.partition_id: dedicated_uid(ref.path) for ref in partitions}


def partition_roots(partitions: Iterable[PartitionRef]) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every partition directory (see disk_used)."""
    roots = set()
    for ref in partitions:
        try:
            st = os.stat(ref.path, follow_symlinks=False)
            roots.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return roots


def disk_used(ref: PartitionRef, roots: set[tuple[int, int]]) -> int:
    """Disk used below the partition, not counting another partition (`roots`) reachable from it."""
    own = os.stat(ref.path, follow_symlinks=False)
    return tenantfs.space_used(ref.path, skip=roots - {(own.st_dev, own.st_ino)})


def measure(
    partitions: list[PartitionRef],
    ledger: CpuLedger,
    table: ProcessTable | None = None,
) -> list[PartitionUsage]:
    """Measure every partition; a failure in one is logged and does not stop the others."""
    table = table or ProcessTable()
    uids = exclusive_uids(partitions)
    roots = partition_roots(partitions)
    usages = []
    for ref in partitions:
        try:
            procs = table.select(uids.get(ref.partition_id), ref.supervisor_pids)
            usage = PartitionUsage(
                ref.partition_id,
                cpu_seconds=ledger.consumed(procs),
                memory_bytes=sum(p.rss for p in procs),
                disk_bytes=disk_used(ref, roots),
                process_count=len(procs),
                since=min((p.create_time for p in procs), default=None),
            )
        except Exception as e:  # one broken partition must not hide the others' usage
            log.error("%s: usage measurement failed: %s", ref.partition_id, e)
            continue
        log.debug(
            "%s: usage cpu=%.2fs memory=%dB disk=%dB processes=%d", ref.partition_id,
            usage.cpu_seconds, usage.memory_bytes, usage.disk_bytes, usage.process_count,
        )
        usages.append(usage)
    return usages


# -- the journal ----------------------------------------------------------------------------

def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).replace(microsecond=0).isoformat()


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def build_journal(computer_id: str, start: float, stop: float, usages: Iterable[PartitionUsage]) -> bytes:
    """The usage journal of one report run, as UTF-8 XML bytes."""
    from lxml import etree

    journal = etree.Element("journal")
    transaction = etree.SubElement(journal, "transaction", type="Sale Packing List")
    for tag, text in (
        ("title", "Resource consumptions"),
        ("start_date", _iso(min(start, stop))),
        ("stop_date", _iso(stop)),
        ("reference", computer_id),
        ("currency", ""),
        ("payment_mode", ""),
        ("category", ""),
    ):
        etree.SubElement(transaction, tag).text = text
    arrow = etree.SubElement(transaction, "arrow", type="Administration")
    etree.SubElement(arrow, "source")
    etree.SubElement(arrow, "destination")
    for usage in usages:
        for movement in usage.movements():
            element = etree.SubElement(transaction, "movement")
            etree.SubElement(element, "resource").text = movement.resource
            etree.SubElement(element, "title").text = movement.title
            etree.SubElement(element, "reference").text = movement.reference
            etree.SubElement(element, "quantity").text = _number(movement.quantity)
            etree.SubElement(element, "price").text = _number(movement.price)
            etree.SubElement(element, "VAT").text = movement.vat
            for category in movement.categories or [""]:
                etree.SubElement(element, "category").text = category
    return etree.tostring(journal, xml_declaration=True, encoding="utf-8", pretty_print=True)


@cache
def _schema(path: Path):
    from lxml import etree

    return etree.XMLSchema(etree.parse(str(path), _parser()))


def _parser():
    from lxml import etree

    # no DTD, no entities, no network: a partition's file is tenant input
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _parse(document: bytes, what: str):
    from lxml import etree

    try:
        root = etree.fromstring(document, _parser())
    except etree.XMLSyntaxError as e:
        raise UsageDocumentError(f"{what} is not well-formed XML: {e}") from None
    if root.getroottree().docinfo.doctype:
        raise UsageDocumentError(f"{what} declares a DOCTYPE: DTDs and entities are not accepted")
    return root


def validate(document: bytes, schema: Path = COMPUTER_SCHEMA, what: str = "usage journal"):
    """Parse and validate; return the root element, or raise UsageDocumentError saying why."""
    root = _parse(document, what)
    from lxml import etree

    xsd = _schema(schema)
    try:
        valid = xsd.validate(root)
    except etree.XMLSchemaValidateError as e:
        raise UsageDocumentError(f"{what} cannot be validated against {schema.name}: {e}") from None
    if not valid:
        first = xsd.error_log.filter_from_errors()[0] if xsd.error_log.filter_from_errors() else None
        reason = f"line {first.line}: {first.message}" if first else "it does not match the schema"
        raise UsageDocumentError(f"{what} does not match {schema.name}: {reason}")
    return root


# -- movements reported by the partition itself ----------------------------------------------

@dataclass(frozen=True)
class ReportDirectory:
    """`base/parts...`: `base` is trusted (a partition directory, the instance root), the parts
    below it may be a tenant's and are never followed through a symlink."""

    base: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.base.joinpath(*self.parts)


@dataclass
class ReportFile:
    directory: ReportDirectory
    name: str
    movements: list[Movement]

    @property
    def path(self) -> Path:
        return self.directory.path / self.name


def report_directories(instance_root: Path, partition_path: Path, partition_id: str) -> list[ReportDirectory]:
    return [ReportDirectory(partition_path, ("var", "xml_report")),
            ReportDirectory(instance_root, ("var", "xml_report", partition_id))]


def read_partition_reports(partition_id: str, directories: Iterable[ReportDirectory]
                           ) -> tuple[list[ReportFile], list[str]]:
    """Movements of the `*.xml` files in `directories` (the partition's `var/xml_report/` and
    `<instance_root>/var/xml_report/<id>/`). Invalid files are left in place and reported
    (second value: one line per refused file); each movement's reference becomes the partition id."""
    files: list[ReportFile] = []
    problems: list[str] = []
    for directory in directories:
        fd = tenantfs.open_below(directory.base, *directory.parts)
        if fd is None:
            continue
        try:
            with os.scandir(fd) as entries:
                names = sorted(entry.name for entry in entries if entry.name.endswith(".xml"))
            for name in names:
                data = tenantfs.read_small(name, REPORT_FILE_LIMIT + 1, dir_fd=fd)
                if data is None:
                    continue
                report = ReportFile(directory, name, [])
                problem = _read_report(partition_id, report, data)
                if problem:
                    problems.append(problem)
                else:
                    files.append(report)
        except OSError as e:
            problems.append(f"{directory.path}: cannot be read: {e.strerror}")
        finally:
            os.close(fd)
    return files, problems


def _read_report(partition_id: str, report: ReportFile, data: bytes) -> str | None:
    """Fill `report.movements` from `data`; return why the file is refused, if it is."""
    path = report.path
    if len(data) > REPORT_FILE_LIMIT:
        return f"{path}: larger than {REPORT_FILE_LIMIT} bytes, not sent"
    try:
        root = validate(data, PARTITION_SCHEMA, f"usage report {path}")
    except UsageDocumentError as e:
        return str(e)
    movements = []
    for element in root.iter("movement"):
        movements.append(Movement(
            resource=element.findtext("resource") or "",
            reference=partition_id,
            quantity=float(element.findtext("quantity")),
            title=element.findtext("title") or "",
            price=float(element.findtext("price") or 0),
            vat=element.findtext("VAT") or "",
            categories=[c.text or "" for c in element.findall("category")],
        ))
        if len(movements) > MAX_MOVEMENTS_PER_FILE:
            return f"{path}: more than {MAX_MOVEMENTS_PER_FILE} movements, not sent"
    if not all(math.isfinite(m.quantity) and math.isfinite(m.price) for m in movements):
        # INF and NaN are valid xs:double, but one of them would spoil the whole journal
        return f"{path}: a quantity or price is not a finite number, not sent"
    report.movements = movements
    return None


def remove_sent(files: Iterable[ReportFile]) -> None:
    for report in files:
        fd = tenantfs.open_below(report.directory.base, *report.directory.parts)
        if fd is None:
            continue
        try:
            os.unlink(report.name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("usage: cannot remove sent report %s: %s", report.path, e.strerror)
        finally:
            os.close(fd)


# -- sending --------------------------------------------------------------------------------

def send_journal(computer, document: bytes) -> None:
    """Validate, then POST `useComputer` once. An invalid document is never sent: the
    UsageDocumentError says why (the caller logs it)."""
    validate(document)
    computer.reportUsage(document.decode("utf-8"))


def partition_movement_totals(document: bytes) -> Mapping[tuple[str, str], float]:
    """(partition id, resource) → quantity, summed: for displays and tests."""
    root = _parse(document, "usage journal")
    totals: dict[tuple[str, str], float] = {}
    for element in root.iter("movement"):
        key = (element.findtext("reference") or "", element.findtext("resource") or "")
        totals[key] = totals.get(key, 0.0) + float(element.findtext("quantity") or 0)
    return totals
