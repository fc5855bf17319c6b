"""Requesting instances and reading their status, for `slapos request` and `slapos info`.

A request is one `requestComputerPartition` POST: the master answers at once with the partition it
allocated and whatever connection parameters the instance has published so far (often none on the
first call). `wait_for_connection` repeats the same request until parameters appear — repeating an
identical request changes nothing on the master.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from slapos.base.errors import EXIT_PROMISE_FAILED, SlapOSError

from .registry import InstanceRegistry

log = logging.getLogger("slapos.request")

# Keys the master adds to an instance's parameters (SLAP-PROTOCOL.md §3.2): shown apart, not as
# parameters the user gave.
SERVER_KEYS = frozenset({
    "ip_list", "full_address_list", "full_ip_list", "slap_computer_id", "slap_computer_partition_id",
    "slap_software_release_url", "slap_software_type", "instance_title", "root_instance_title",
    "slave_instance_list", "timestamp",
})


class NotReady(SlapOSError):
    """The master has not allocated the instance yet (408): ask again later. Exit 2, as the reference."""

    exit_code = EXIT_PROMISE_FAILED


@dataclass
class RequestSpec:
    name: str
    software_url: str
    software_type: str | None = None
    state: str | None = None
    shared: bool = False
    filter_kw: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InstanceStatus:
    name: str
    software_url: str | None
    software_type: str | None
    shared: bool
    requested_state: str | None
    computer_id: str | None
    partition_id: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    connection_parameters: dict[str, Any] = field(default_factory=dict)
    ip_list: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    source: str = "master"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def partition(self) -> str:
        if not self.partition_id:
            return "-"
        return f"{self.computer_id}/{self.partition_id}" if self.computer_id else self.partition_id


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value not in (None, ""):
            return value
    return default


def _ip_list(value: Any) -> list[list[str]]:
    result = []
    for item in value or ():
        if isinstance(item, (list, tuple)):
            result.append([str(x) for x in item])
    return result


def _user_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (parameters or {}).items() if k not in SERVER_KEYS}


def request_instance(connection: Any, spec: RequestSpec) -> InstanceStatus:
    """One request; raises NotReady when the master has not allocated it yet."""
    order = connection.registerOpenOrder()
    partition = order.request(
        spec.software_url,
        spec.name,
        partition_parameter_kw=spec.parameters,
        software_type=spec.software_type,
        filter_kw=spec.filter_kw,
        state=spec.state,
        shared=spec.shared,
    )
    return status_from_partition(partition, spec)


def status_from_partition(partition: Any, spec: RequestSpec) -> InstanceStatus:
    """What a request's answer says; raises NotReady for the placeholder of a 408 answer."""
    from slapos.slap import ResourceNotReady

    try:
        partition_id = partition.getId()
    except ResourceNotReady:
        raise NotReady(
            f"instance '{spec.name}' is not ready yet: the master is still allocating it; "
            "run the same command again later"
        ) from None
    connection_parameters = dict(_attr(partition, "_connection_dict", default={}) or {})
    parameters = dict(_attr(partition, "_parameter_dict", default={}) or {})
    return InstanceStatus(
        name=spec.name,
        software_url=_attr(partition, "slap_software_release_url", default=spec.software_url),
        software_type=_attr(partition, "slap_software_type", default=spec.software_type or "default"),
        shared=spec.shared,
        requested_state=spec.state or _attr(partition, "_requested_state", default="started"),
        computer_id=_attr(partition, "slap_computer_id", "_computer_id"),
        partition_id=partition_id or None,
        parameters=_user_parameters(parameters) if parameters else dict(spec.parameters),
        connection_parameters=connection_parameters,
        ip_list=_ip_list(_attr(partition, "ip_list", default=None) or parameters.get("ip_list")),
    )


def record_request(registry: InstanceRegistry, master_url: str, spec: RequestSpec,
                   status: InstanceStatus | None, error: str | None = None) -> None:
    """Remember the request (and its outcome) for `slapos list` / `slapos info`."""

    def change(old: dict[str, Any] | None) -> dict[str, Any]:
        entry = dict(old or {})
        entry.update(
            name=spec.name,
            software_url=spec.software_url,
            software_type=spec.software_type or entry.get("software_type") or "default",
            shared=spec.shared,
            filter=spec.filter_kw,
            parameters=spec.parameters,
            last_error=error,
        )
        # a request without --state keeps the state the master has
        entry["requested_state"] = spec.state or entry.get("requested_state") or "started"
        if status is not None:
            entry.update(
                computer_id=status.computer_id,
                partition_id=status.partition_id,
                connection_parameters=status.connection_parameters,
                ip_list=status.ip_list,
            )
        return entry

    registry.update(master_url, spec.name, change)


def wait_for_connection(
    do_request: Callable[[], InstanceStatus],
    timeout: float,
    interval: float = 2.0,
    progress: Callable[[str, bool], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> InstanceStatus:
    """Repeat the request until connection parameters are published or `timeout` passes."""
    start = clock()
    status: InstanceStatus | None = None
    last_reason = ""
    while True:
        try:
            status = do_request()
            if status.connection_parameters:
                if progress:
                    progress("", True)
                return status
            last_reason = f"allocated on {status.partition}, no connection parameters yet"
        except NotReady:
            last_reason = "not allocated yet"
        elapsed = clock() - start
        if progress:
            progress(f"waiting: {last_reason} ({elapsed:.0f}s / {timeout:.0f}s)", False)
        if elapsed >= timeout:
            if progress:
                progress("", True)
            name = status.name if status else "the instance"
            raise NotReady(
                f"{name}: {last_reason} after {timeout:.0f} s; check the node running it "
                "(`slapos node instance`), then run the command again"
            )
        sleep(min(interval, max(0.1, timeout - elapsed)))
        interval = min(interval * 1.5, 10.0)


class ProgressLine:
    """One progress line on stderr: rewritten in place on a terminal, every 30 s otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_print = 0.0
        self.width = 0

    def __call__(self, message: str, done: bool) -> None:
        if self.tty:
            if done:
                if self.width:
                    self.stream.write("\r" + " " * self.width + "\r")
            else:
                self.stream.write("\r" + message.ljust(self.width))
                self.width = max(self.width, len(message))
            self.stream.flush()
        elif message and (time.monotonic() - self.last_print >= 30 or not self.last_print):
            self.last_print = time.monotonic()
            self.stream.write(message + "\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# slapos info


def status_from_record(entry: dict[str, Any], source: str) -> InstanceStatus:
    errors = [f"last request failed: {entry['last_error']}"] if entry.get("last_error") else []
    return InstanceStatus(
        name=entry.get("name", "?"),
        software_url=entry.get("software_url"),
        software_type=entry.get("software_type"),
        shared=bool(entry.get("shared")),
        requested_state=entry.get("requested_state"),
        computer_id=entry.get("computer_id"),
        partition_id=entry.get("partition_id"),
        parameters=dict(entry.get("parameters") or {}),
        connection_parameters=dict(entry.get("connection_parameters") or {}),
        ip_list=list(entry.get("ip_list") or []),
        errors=errors,
        source=source,
    )


def instance_info(connection_factory: Callable[[], Any], entry: dict[str, Any]) -> InstanceStatus:
    """Status of a recorded instance, refreshed from the master when it can be.

    The partition is read with `registerComputerPartition` (read-only: re-requesting could undo
    changes made from elsewhere). A shared instance lives inside its host's partition: the host
    gives the state; parameters and connection parameters are those of the last request."""
    status = status_from_record(entry, source=f"local record of {entry.get('updated', 'the last request')}")
    if not status.partition_id or not status.computer_id:
        status.errors.append("the master never allocated a partition to it")
        return status
    try:
        connection = connection_factory()
        partition = connection.registerComputerPartition(status.computer_id, status.partition_id)
        parameters = dict(partition.getInstanceParameterDict() or {})
        requested_state = partition.getState()
        software = partition.getSoftwareRelease()
        software_url = software.getURI() if software is not None else None
        connection_parameters = dict(partition.getConnectionParameterDict() or {})
        access_status = _attr(partition, "_access_status")
    except SlapOSError as e:
        log.warning("cannot refresh '%s' from the master: %s; showing the local record", status.name, e)
        status.errors.append(f"master not reachable for a refresh: {e}")
        return status
    if status.shared:
        hosted = [
            item for item in parameters.get("slave_instance_list") or ()
            if isinstance(item, dict) and item.get("slave_title") in (status.name, f"_{status.name}")
        ]
        if not hosted and entry.get("requested_state") != "destroyed":
            status.errors.append(f"host partition {status.partition} no longer lists this shared instance")
        # shared instances have no state of their own on a proxy; the record keeps the asked one
        status.source = "master (host partition) and local record (parameters)"
        return status
    title = parameters.get("instance_title")
    if software_url is None or (title is not None and title != status.name):
        status.requested_state = "destroyed"
        status.errors.append(f"partition {status.partition} no longer holds this instance (it was freed)")
        status.source = "master"
        return status
    status.requested_state = requested_state
    status.software_url = software_url
    status.software_type = parameters.get("slap_software_type") or _safe_type(partition) or status.software_type
    status.parameters = _user_parameters(parameters)
    status.connection_parameters = connection_parameters
    status.ip_list = _ip_list(parameters.get("ip_list")) or status.ip_list
    if access_status:
        status.errors.append(str(access_status))
    status.source = "master"
    return status


def _safe_type(partition: Any) -> str | None:
    try:
        return partition.getType()
    except Exception:  # an older master may not send the type: the record has it
        return None
