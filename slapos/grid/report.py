"""`slapos node report`: usage of the partitions to the master, and destruction of the
partitions the master wants destroyed (SLAP-PROTOCOL §6.9).

One run asks the master once (getFullComputerInformation), then:

1. for every used partition (one holding a software release) that exists here: run its
   `etc/report/*` scripts if it has some, measure its CPU, memory and disk (usage.py), and send
   one usage journal for the whole computer (`useComputer`), validated first;
2. for every partition in state `destroyed`: destroy it (destroy.py).

A failure in one partition never stops the others; the exit code is 1 when anything failed.
Software releases are not touched here: `slapos node software` removes the ones the master
marks destroyed.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from slapos.base.errors import EXIT_FAILED, EXIT_OK, SlapOSError

from . import collect, destroy, usage
from .partition import Partition, PartitionError, check_is_partition

if TYPE_CHECKING:  # pragma: no cover
    from slapos.base.settings import NodeSettings

log = logging.getLogger("slapos.grid.report")

REPORT_SCRIPT_TIMEOUT = 120.0
LEDGER = Path("var") / "report" / "cpu-ledger.json"  # under instance_root, root only


@dataclass
class ReportResult:
    usage_sent: bool = False
    usage_partitions: int = 0
    outcomes: list[destroy.DestroyOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    journal: bytes | None = None

    @property
    def exit_code(self) -> int:
        failed = self.errors or any(o.failed for o in self.outcomes)
        return EXIT_FAILED if failed else EXIT_OK

    def summary(self) -> str:
        counts = Counter(o.status for o in self.outcomes)
        parts = [f"{n} {status}" for status, n in sorted(counts.items())]
        usage_text = (f"usage sent for {self.usage_partitions} partition(s)" if self.usage_sent
                      else "no usage sent")
        destroyed = ", ".join(parts) if parts else "nothing to destroy"
        errors = f"; {len(self.errors)} error(s)" if self.errors else ""
        return f"report: {usage_text}; {destroyed}{errors}"


class ReportRun:
    def __init__(self, settings: NodeSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self._supervisor = None

    def supervisor(self):
        """The node's supervisord; report never starts it (nothing it supervises runs then)."""
        if self._supervisor is None:
            from .supervisor import Supervisor

            self._supervisor = Supervisor(self.settings)
        return self._supervisor

    def run(self) -> ReportResult:
        result = ReportResult()
        from slapos.slap import connect_as

        connection = connect_as(self.settings)
        try:
            computer = connection.registerComputer(self.settings.computer_id)
            partitions = computer.getComputerPartitionList()  # the one GET of this run
            used, to_destroy = self.classify(partitions, result)
            if used:
                self.report_usage(computer, used, result)
            else:
                log.debug("no used partition: no usage to send")
            destroyer = destroy.Destroyer(self.settings, self.supervisor, clock=self.clock)
            for cp in to_destroy:
                result.outcomes.append(destroyer.destroy(cp))
        finally:
            connection.close()
        log.info("%s", result.summary())
        return result

    def classify(self, partitions, result: ReportResult) -> tuple[list[tuple[object, Partition]], list]:
        """([(cp, its checked Partition)] for the used partitions present here, the cps among
        them to destroy); free ones skipped."""
        used, to_destroy = [], []
        for cp in partitions:
            try:
                partition = Partition(self.settings, cp.getId())  # refuses a bad id, even of a free one
                software = cp.getSoftwareRelease()
                if software is None or not software.getURI():
                    continue  # free: nothing of a tenant to measure or destroy
                check_is_partition(partition)
                state = cp.getState()
            except PartitionError as e:
                log.error("%s", e)
                result.errors.append(str(e))
                continue
            used.append((cp, partition))
            if state == "destroyed":
                to_destroy.append(cp)
        return used, to_destroy

    # -- usage -------------------------------------------------------------------------------

    def supervised_pids(self) -> dict[str, list[int]]:
        return supervised_pids(self.supervisor())

    def report_usage(self, computer, used: list[tuple[object, Partition]], result: ReportResult) -> None:
        root = Path(self.settings.instance_root)
        pids = self.supervised_pids()
        refs = []
        report_files: list[usage.ReportFile] = []
        extra: dict[str, list[usage.Movement]] = {}
        for cp, partition in used:
            refs.append(usage.PartitionRef(partition.id, partition.path, pids.get(partition.id, [])))
            try:
                failure = run_report_scripts(self.settings, partition, self.supervisor().cgroups)
            except Exception as e:  # one partition's trouble must not stop the report
                failure = f"usage scripts could not run: {e}"
            if failure:
                log.error("%s: %s", partition.id, failure)
                result.errors.append(f"{partition.id}: {failure}")
                cp.error(failure, logger=log)
            files, problems = usage.read_partition_reports(
                partition.id, usage.report_directories(root, partition.path, partition.id))
            for problem in problems:
                log.warning("%s: %s", partition.id, problem)
            for report in files:
                extra.setdefault(partition.id, []).extend(report.movements)
            report_files += files
        ledger = usage.CpuLedger(root / LEDGER)
        usages = usage.measure(refs, ledger)
        stop = self.clock()
        # `node collect` samples every minute: the master gets the mean memory of the period
        collected = collect.period_summary(self.settings, ledger.last_report, stop, [u.partition_id for u in usages])
        for measured in usages:
            measured.extra = extra.get(measured.partition_id, [])
            summary = collected.get(measured.partition_id)
            if summary is not None:
                measured.memory_bytes = round(summary.mean_memory_bytes)
        start = ledger.last_report or min((u.since for u in usages if u.since), default=stop)
        document = usage.build_journal(self.settings.computer_id, start, stop, usages)
        result.journal = document
        try:
            usage.send_journal(computer, document)
        except usage.UsageDocumentError as e:
            message = f"usage journal not sent: {e}"
            log.error("%s", message)
            result.errors.append(message)
            return
        except SlapOSError as e:
            message = f"usage journal could not be sent to the master: {e}"
            log.error("%s", message)
            result.errors.append(message)
            return
        result.usage_sent = True
        result.usage_partitions = len(usages)
        ledger.save(stop)
        usage.remove_sent(report_files)
        log.info("usage of %d partition(s) sent to the master", len(usages))


def supervised_pids(sv) -> dict[str, list[int]]:
    """supervisord group (partition id) → pids of its running programs; {} when it is not running
    (report and collect never start it)."""
    if not sv.is_running():
        return {}
    try:
        infos = sv.all_processes()
    except SlapOSError as e:
        log.warning("usage: cannot ask supervisord for the partitions' processes: %s", e)
        return {}
    pids: dict[str, list[int]] = {}
    for info in infos:
        if info.get("pid"):
            pids.setdefault(info.get("group", ""), []).append(int(info["pid"]))
    return pids


def run_report_scripts(settings: NodeSettings, partition: Partition, cgroups=None) -> str | None:
    """Run each executable of `etc/report/` as the partition user (in the partition's cgroup)
    with one argument, a fresh file path in `var/xml_report/` where it may write a usage report.
    Returns a failure text."""
    directory = partition.path / "etc" / "report"
    try:
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode):
            return None
        scripts = sorted(
            (entry for entry in os.scandir(directory)
             if not entry.name.startswith(".") and entry.is_file() and os.access(entry.path, os.X_OK)),
            key=lambda e: e.name,
        )
    except OSError:
        return None
    if not scripts:
        return None
    from .partition import open_dir
    from .process import clean_environment, identity_for, run

    with open_dir(partition.path, "var", "xml_report", create=True, mode=0o755, owner=partition.file_owner()):
        pass
    identity = identity_for(partition.path, f"the usage scripts of {partition.id}")
    if cgroups is not None:
        identity = cgroups.place(identity, partition.id, partition.path)
    home = identity.home if identity else os.environ.get("HOME", str(partition.path))
    failures = []
    for script in scripts:
        output = partition.path / "var" / "xml_report" / f"{script.name}-{time.time_ns()}.xml"
        try:
            done = run([script.path, str(output)], cwd=directory, env=clean_environment(home, settings.extra_path, user=identity.name if identity else None,
                                                     tmpdir=partition.path / "tmp"),
                       identity=identity, timeout=REPORT_SCRIPT_TIMEOUT)
        except SlapOSError as e:
            failures.append(f"etc/report/{script.name}: {e}")
            continue
        if not done.ok:
            failures.append(f"etc/report/{script.name} exited with code {done.returncode}: {done.tail(5)}")
    return "; ".join(failures) if failures else None
