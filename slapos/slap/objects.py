"""The SLAP client objects: slap, Computer, ComputerPartition, SoftwareRelease, OpenOrder, Supply.

The API (method names and behaviour) is the reference client's (SLAP-PROTOCOL.md §2, §3.2), so
software release recipes and tools written for slapos.core work unchanged. What differs is
how objects come off the wire: `wire.loads` hands us `WireObject` records and `_from_wire` builds
our own classes from a fixed table, keeping only the known attributes after checking their types.
Nothing named in a payload is imported, and constructors have no side effects.

Kept whole: one closed object model. The classes refer to each other (a partition decodes
releases and instances, a computer its partitions, `slap` all of them) and `_FACTORIES`, the fixed
table of what may come off the wire, must see every class: split, it would need a registry
filled at import time, which loosens the one guarantee this module is about.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from zope.interface import implementer

from . import interface, wire
from .connection import DEFAULT_TIMEOUT, Connection
from .exceptions import NotFoundError, ResourceNotReady, SlapException
from .wire import WireError, WireObject

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import cost)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, ClassVar

logger = logging.getLogger(__name__)
_log = logger  # methods taking a `logger` argument shadow the module logger

DEFAULT_SOFTWARE_TYPE = "default"
# Error texts posted to the master are cut to their end (the useful part of a build log):
# unbounded tracebacks and buildout outputs are not the master's business (SLAP-PROTOCOL §5 S12).
MAX_ERROR_LOG = 64 * 1024
REQUEST_TRANSACTION_TEMPLATE = ".slapos-request-transaction-{}"


def _truncate_log(text: Any) -> str:
    text = "" if text is None else str(text)
    if len(text) <= MAX_ERROR_LOG:
        return text
    cut = len(text) - MAX_ERROR_LOG
    return f"[... {cut} characters cut ...]\n" + text[cut:]


# --------------------------------------------------------------------------------------------
# Attribute checks for objects coming off the wire


def _text(klass: str, name: str, value: Any) -> str:
    if type(value) is not str:
        raise WireError(f"{klass}.{name} must be text, not {type(value).__name__}")
    return value


def _opt_text(klass: str, name: str, value: Any) -> str | None:
    return None if value is None else _text(klass, name, value)


def _partition_id(klass: str, name: str, value: Any) -> str | None:
    """Partition ids become directory and file names on the node: refuse anything path-like."""
    if value is None:
        return None
    value = _text(klass, name, value)
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise WireError(f"{klass}.{name} {value!r} is not a valid partition id")
    return value


def _dict(klass: str, name: str, value: Any) -> dict:
    if type(value) is not dict:
        raise WireError(f"{klass}.{name} must be a dictionary, not {type(value).__name__}")
    return value


def _opt_dict(klass: str, name: str, value: Any) -> dict | None:
    return None if value is None else _dict(klass, name, value)


def _list(klass: str, name: str, value: Any) -> list:
    if type(value) not in (list, tuple):
        raise WireError(f"{klass}.{name} must be a list, not {type(value).__name__}")
    return list(value)


def _flag(klass: str, name: str, value: Any) -> int:
    if type(value) not in (int, bool):
        raise WireError(f"{klass}.{name} must be 0 or 1, not {value!r}")
    return int(value)


def _list_of(kind: str) -> Callable[[str, str, Any], list]:
    def check(klass: str, name: str, value: Any) -> list:
        items = _list(klass, name, value)
        for item in items:
            if type(item).__name__ != kind:
                raise WireError(f"{klass}.{name} must hold {kind} objects, not {type(item).__name__}")
        return items

    return check


def _opt_software_release(klass: str, name: str, value: Any) -> SoftwareRelease | None:
    if value is not None and not isinstance(value, SoftwareRelease):
        raise WireError(f"{klass}.{name} must be a SoftwareRelease, not {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# Base


class _SlapObject:
    """Common plumbing: the connection, and conversion from/to the wire record."""

    _wire_class: ClassVar[str]
    # attribute name -> check(klass, name, value) -> value; also the attributes __wire__ emits
    _wire_fields: ClassVar[dict[str, Callable[[str, str, Any], Any]]]

    _connection: Connection | None = None

    def _wire_args(self) -> tuple:
        return ()

    def __wire__(self) -> WireObject:
        attrs = {name: self.__dict__[name] for name in self._wire_fields if name in self.__dict__}
        return WireObject(self._wire_class, self._wire_args(), attrs)

    def _apply_wire_attrs(self, attrs: Mapping[str, Any]) -> None:
        for name, value in attrs.items():
            check = self._wire_fields.get(name)
            if check is None:
                logger.debug("ignoring unknown attribute %s of %s from the master", name, self._wire_class)
                continue
            setattr(self, name, check(self._wire_class, name, value))

    def _conn(self) -> Connection:
        if self._connection is None:
            raise SlapException(
                f"this {type(self).__name__} is not bound to a master; get it from "
                "slap().initializeConnection(master_url) and slap().register...()"
            )
        return self._connection


def _object_hook(connection: Connection | None) -> Callable[[WireObject], Any]:
    """Build our objects from wire records, bound to `connection`."""

    def hook(record: WireObject) -> Any:
        factory = _FACTORIES[record.klass]
        obj = factory(record.args)
        obj._connection = connection
        obj._apply_wire_attrs(record.attrs)
        if isinstance(obj, ComputerPartition):
            # objects sent whole (full computer, registerComputerPartition) need no extra fetch
            obj._synced = True
        return obj

    return hook


def _decode(connection: Connection | None, body: bytes | str, expected: type, what: str) -> Any:
    try:
        value = wire.loads(body, object_hook=_object_hook(connection))
    except WireError as e:
        raise WireError(f"{what}: the master's answer is not a valid SLAP document: {e}") from None
    if not isinstance(value, expected):
        raise WireError(f"{what}: expected a {expected.__name__} from the master, got {type(value).__name__}")
    return value


def _arg(args: tuple, index: int, klass: str, check=_opt_text) -> Any:
    return check(klass, f"argument {index}", args[index]) if len(args) > index else None


# --------------------------------------------------------------------------------------------
# SoftwareRelease


@implementer(interface.ISoftwareRelease)
class SoftwareRelease(_SlapObject):
    """A software release URL on a computer, with the state the master wants for it."""

    _wire_class = "SoftwareRelease"
    _wire_fields = {
        "_software_release": _opt_text,
        "_computer_guid": _opt_text,
        "_software_instance_list": _list,
        "_requested_state": _opt_text,
    }

    def __init__(self, software_release: str | None = None, computer_guid: str | None = None,
                 connection: Connection | None = None):
        self._software_release = software_release
        self._computer_guid = computer_guid
        self._software_instance_list: list = []
        self._connection = connection

    @classmethod
    def _from_args(cls, args: tuple) -> SoftwareRelease:
        return cls(_arg(args, 0, cls._wire_class), _arg(args, 1, cls._wire_class))

    def _wire_args(self) -> tuple:
        return (self._software_release, self._computer_guid)

    def __repr__(self) -> str:
        return f"<SoftwareRelease {self._software_release} on {self._computer_guid}>"

    def getURI(self) -> str | None:
        return self._software_release

    def getComputerId(self) -> str | None:
        return self._computer_guid

    def getState(self) -> str:
        return getattr(self, "_requested_state", None) or "available"

    def _post(self, endpoint: str, **extra: Any) -> bytes:
        return self._conn().post(
            endpoint, {"url": self._software_release, "computer_id": self._computer_guid, **extra}
        )

    def building(self) -> None:
        self._post("buildingSoftwareRelease")

    def available(self) -> None:
        self._post("availableSoftwareRelease")

    def destroyed(self) -> None:
        self._post("destroyedSoftwareRelease")

    def error(self, error_log: Any, logger: logging.Logger | None = None) -> None:
        """Report a build failure. Never raises: failing to report must not hide the failure."""
        try:
            self._post("softwareReleaseError", error_log=_truncate_log(error_log))
        except Exception as e:  # noqa: BLE001 - reporting is best effort by contract
            (logger or _log).warning(
                "software release %s: could not report the error to the master: %s", self._software_release, e
            )


# --------------------------------------------------------------------------------------------
# SoftwareInstance (the raw answer of requestComputerPartition)


@implementer(interface.ISoftwareInstance)
class SoftwareInstance(_SlapObject):
    """What `requestComputerPartition` answers; `request()` turns it into a ComputerPartition."""

    _wire_class = "SoftwareInstance"
    _wire_fields = {
        "_connection_dict": _dict,
        "_parameter_dict": _dict,
        "_filter_dict": _dict,
        "_instance_guid": _opt_text,
        "_requested_state": _opt_text,
        "_access_status": _opt_text,
        "connection_xml": _opt_text,
        "ip_list": _list,
        "full_ip_list": _list,
        "slap_computer_id": _opt_text,
        "slap_computer_partition_id": _partition_id,
        "slap_software_release_url": _opt_text,
        "slap_software_type": _opt_text,
        "slap_server_url": _opt_text,
    }

    def __init__(self, connection: Connection | None = None, **attrs: Any):
        self._connection = connection
        self._apply_wire_attrs(attrs)

    @classmethod
    def _from_args(cls, args: tuple) -> SoftwareInstance:
        return cls()

    def __repr__(self) -> str:
        return (f"<SoftwareInstance on {getattr(self, 'slap_computer_id', None)}/"
                f"{getattr(self, 'slap_computer_partition_id', None)}>")


# --------------------------------------------------------------------------------------------
# ComputerPartition


@implementer(interface.IComputerPartition)
class ComputerPartition(_SlapObject):
    """A partition of a computer, i.e. an instance (or a shared instance hosted in one)."""

    _wire_class = "ComputerPartition"
    _wire_fields = {
        "_computer_id": _opt_text,
        "_partition_id": _partition_id,
        "_request_dict": _opt_dict,
        "_instance_guid": _opt_text,
        "_requested_state": _opt_text,
        "_need_modification": _flag,
        "_software_release_document": _opt_software_release,
        "_parameter_dict": _dict,
        "_connection_dict": _dict,
        "_filter_dict": _dict,
        "_access_status": _opt_text,
        # our proxy with access = credentials: the partition's own master URL, relative to the
        # node's (the node writes it into [slap-connection]; docs/security-proxy.md)
        "_slapnode_master_url": _opt_text,
    }
    # attributes of a request() answer copied onto the partition (not re-encoded)
    _instance_fields = SoftwareInstance._wire_fields

    def __init__(self, computer_id: str | None = None, partition_id: str | None = None,
                 request_dict: dict | None = None, connection: Connection | None = None):
        self._computer_id = computer_id
        self._partition_id = _partition_id(self._wire_class, "partition_id", partition_id)
        self._request_dict = request_dict
        self._connection = connection
        self._synced = False
        self._shared = False
        self._not_ready = False

    @classmethod
    def _from_args(cls, args: tuple) -> ComputerPartition:
        klass = cls._wire_class
        return cls(_arg(args, 0, klass), _arg(args, 1, klass, _partition_id), _arg(args, 2, klass, _opt_dict))

    def _wire_args(self) -> tuple:
        return (self._computer_id, self._partition_id, self._request_dict)

    def __repr__(self) -> str:
        return f"<ComputerPartition {self._computer_id}/{self._partition_id}>"

    # -- identity and lazy information ---------------------------------------------------------

    def _ensure_ready(self) -> None:
        if self._not_ready:
            title = (self._request_dict or {}).get("partition_reference", "?")
            raise ResourceNotReady(
                f"instance {title!r} is not ready yet (the master has not allocated it); request it again later"
            )

    def _identity(self) -> tuple[str, str]:
        self._ensure_ready()
        if not self._computer_id or not self._partition_id:
            raise SlapException("this ComputerPartition has no computer id or partition id")
        return (self._computer_id, self._partition_id)

    def _sync(self) -> None:
        """Fetch the partition once (GET registerComputerPartition) unless it came whole."""
        self._ensure_ready()
        if self._synced:
            return
        fresh = _register_partition(self._conn(), *self._identity())
        for name in self._wire_fields:
            if name in fresh.__dict__:
                setattr(self, name, fresh.__dict__[name])
        self._synced = True

    def getId(self) -> str:
        self._ensure_ready()
        return self._partition_id  # type: ignore[return-value]  # a registered partition has an id

    def getComputerId(self) -> str | None:
        self._ensure_ready()
        return self._computer_id

    def getInstanceGuid(self) -> str:
        """The instance's guid; ResourceNotReady while the master has not given one."""
        self._sync()
        guid = getattr(self, "_instance_guid", None)
        if guid is None:
            raise ResourceNotReady(f"the master has not given partition {self._partition_id} an instance guid yet")
        return guid

    def getRequestedState(self) -> str | None:
        self._sync()
        return getattr(self, "_requested_state", None)

    def getState(self) -> str:
        """Requested state; a shared instance has none of its own: ask its hosting partition.
        ResourceNotReady while the master has not said (as the seed release documents)."""
        if self._shared:
            self._ensure_ready()
            host = _register_partition(self._conn(), *self._identity())
            state = getattr(host, "_requested_state", None)
        else:
            state = self.getRequestedState()
        if state is None:
            raise ResourceNotReady(f"the master has not given partition {self._partition_id} a requested state yet")
        return state

    def getType(self) -> str | None:
        software_type = getattr(self, "slap_software_type", None)
        if software_type:
            return software_type
        self._sync()
        return self.getInstanceParameterDict().get("slap_software_type")

    def getSoftwareRelease(self) -> SoftwareRelease | None:
        self._sync()
        return getattr(self, "_software_release_document", None)

    def getNeedModification(self) -> bool:
        self._sync()
        return bool(getattr(self, "_need_modification", 0))

    def getInstanceParameterDict(self) -> dict:
        self._sync()
        return getattr(self, "_parameter_dict", None) or {}

    def getInstanceParameter(self, key: str) -> Any:
        parameters = self.getInstanceParameterDict()
        if key not in parameters:
            raise NotFoundError(f"instance parameter {key!r} not found on partition {self._partition_id}")
        return parameters[key]

    def getConnectionParameterDict(self) -> dict:
        self._sync()
        return getattr(self, "_connection_dict", None) or {}

    def getConnectionParameter(self, key: str) -> Any:
        parameters = self.getConnectionParameterDict()
        if key not in parameters:
            raise NotFoundError(f"connection parameter {key!r} not found on partition {self._partition_id}")
        return parameters[key]

    # -- reports (POST with the partition header) ------------------------------------------------

    def _post(self, endpoint: str, **extra: Any) -> bytes:
        computer_id, partition_id = self._identity()
        data = {"computer_id": computer_id, "computer_partition_id": partition_id, **extra}
        return self._conn().post(endpoint, data, partition=(computer_id, partition_id))

    def building(self) -> None:
        self._post("buildingComputerPartition")

    def available(self) -> None:
        self._post("availableComputerPartition")

    def started(self) -> None:
        self._post("startedComputerPartition")

    def stopped(self) -> None:
        self._post("stoppedComputerPartition")

    def destroyed(self) -> str:
        """Report local destruction; returns the master's answer (the proxy may refuse in text)."""
        return self._post("destroyedComputerPartition").decode("utf-8", "replace")

    def error(self, error_log: Any, logger: logging.Logger | None = None,
              slave_reference: str | None = None) -> None:
        """Report an error of this instance. Never raises: reporting must not hide the failure."""
        extra: dict[str, Any] = {"error_log": _truncate_log(error_log)}
        if slave_reference is not None:
            extra["slave_reference"] = slave_reference
        try:
            self._post("softwareInstanceError", **extra)
        except Exception as e:  # noqa: BLE001 - best effort by contract
            (logger or _log).warning(
                "partition %s: could not report the error to the master: %s", self._partition_id, e
            )

    def bang(self, message: str) -> None:
        self._post("softwareInstanceBang", message=message)

    def rename(self, new_name: str, slave_reference: str | None = None) -> bool:
        extra: dict[str, Any] = {"new_name": new_name}
        if slave_reference is not None:
            extra["slave_reference"] = slave_reference
        self._post("softwareInstanceRename", **extra)
        return True

    def setConnectionDict(self, connection_dict: Mapping[str, Any], slave_reference: str | None = None) -> None:
        """Publish connection parameters; skipped when they equal what the master already has
        (compared as the master stores them: text values, empty → None)."""
        normalized = _as_stored(connection_dict)
        if slave_reference is None and self.getConnectionParameterDict() == normalized:
            logger.debug("partition %s: connection parameters unchanged, not sent", self._partition_id)
            return
        self._post(
            "setComputerPartitionConnectionXml",
            connection_xml=wire.dumps(dict(connection_dict)),
            slave_reference=slave_reference,
        )
        if slave_reference is None:
            self._connection_dict = normalized

    def setComputerPartitionRelatedInstanceList(self, instance_reference_list: list[str]) -> None:
        self._post("updateComputerPartitionRelatedInstanceList",
                   instance_reference_xml=wire.dumps(list(instance_reference_list)))

    def getCertificate(self) -> dict:
        computer_id, partition_id = self._identity()
        body = self._conn().get(
            "getComputerPartitionCertificate",
            {"computer_id": computer_id, "computer_partition_id": partition_id},
        )
        return _decode(self._connection, body, dict, f"certificate of partition {partition_id}")

    def getFullHostingIpAddressList(self) -> list:
        computer_id, partition_id = self._identity()
        body = self._conn().get(
            "getHostingSubscriptionIpList",
            {"computer_id": computer_id, "computer_partition_id": partition_id},
        )
        return _decode(self._connection, body, list, f"addresses of the tree of partition {partition_id}")

    # -- requesting children -----------------------------------------------------------------------

    def request(self, software_release: str, software_type: str | None, partition_reference: str,
                shared: bool = False, partition_parameter_kw: Mapping[str, Any] | None = None,
                filter_kw: Mapping[str, Any] | None = None, state: str | None = None) -> ComputerPartition:
        """Request a child instance on behalf of this partition."""
        computer_id, partition_id = self._identity()
        self._record_request(partition_reference)
        data = {
            "computer_id": computer_id,
            "computer_partition_id": partition_id,
            "software_release": software_release,
            "software_type": software_type or DEFAULT_SOFTWARE_TYPE,
            "partition_reference": partition_reference,
            "shared_xml": wire.dumps(bool(shared)),
            "partition_parameter_xml": wire.dumps(dict(partition_parameter_kw or {})),
            "filter_xml": wire.dumps(dict(filter_kw or {})),
            "state": wire.dumps(state),
        }
        return _request(self._conn(), data, shared, state, partition=(computer_id, partition_id))

    def _record_request(self, partition_reference: str) -> None:
        """Append the title to `<instance_root>/<id>/.slapos-request-transaction-<id>` when run by the
        node (SLAPGRID_INSTANCE_ROOT set): the node tells the master which children are still wanted."""
        instance_root = os.environ.get("SLAPGRID_INSTANCE_ROOT")
        if not instance_root or not self._partition_id:
            return
        directory = os.path.join(instance_root, self._partition_id)
        if not os.path.isdir(directory):
            return
        path = os.path.join(directory, REQUEST_TRANSACTION_TEMPLATE.format(self._partition_id))
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{partition_reference}\n")
        except OSError as e:
            logger.warning("partition %s: cannot record the request of %r: %s", self._partition_id,
                           partition_reference, e)


def _as_stored(parameters: Mapping[str, Any]) -> dict[str, str | None]:
    """Parameters as a master stores and returns them (through instance XML, SLAP-PROTOCOL §10.2):
    str() of each value (None → 'None'), '' → None."""
    return {str(k): str(v) or None for k, v in parameters.items()}


def _register_partition(connection: Connection, computer_id: str, partition_id: str) -> ComputerPartition:
    body = connection.get(
        "registerComputerPartition",
        {"computer_reference": computer_id, "computer_partition_reference": partition_id},
    )
    return _decode(connection, body, ComputerPartition, f"partition {computer_id}/{partition_id}")


def _request(connection: Connection, data: dict[str, Any], shared: bool, state: str | None,
             partition: tuple[str, str] | None = None) -> ComputerPartition:
    """POST requestComputerPartition and turn the answer into a ComputerPartition (§2.3)."""
    title = data["partition_reference"]
    try:
        body = connection.post("requestComputerPartition", data, partition=partition)
    except ResourceNotReady:
        placeholder = ComputerPartition(request_dict=data, connection=connection)
        placeholder._not_ready = True
        return placeholder
    instance = _decode(connection, body, SoftwareInstance, f"request of {title!r}")
    result = ComputerPartition(
        getattr(instance, "slap_computer_id", None),
        getattr(instance, "slap_computer_partition_id", None),
        request_dict=data,
        connection=connection,
    )
    for name in ComputerPartition._instance_fields:
        if name in instance.__dict__:
            setattr(result, name, instance.__dict__[name])
    if shared:
        # A shared instance is not a partition of its own: keep what the answer says and let
        # getState() ask the hosting partition.
        result._shared = True
        result._synced = True
        if "_requested_state" not in result.__dict__:
            setattr(result, "_requested_state", state)  # noqa: B010  (a wire field, not declared)
    return result


# --------------------------------------------------------------------------------------------
# Computer


@implementer(interface.IComputer)
class Computer(_SlapObject):
    """The node as the master sees it: its partitions and software releases."""

    _wire_class = "Computer"
    _wire_fields = {
        "_computer_id": _opt_text,
        "_software_release_list": _list_of("SoftwareRelease"),
        "_computer_partition_list": _list_of("ComputerPartition"),
    }

    def __init__(self, computer_id: str | None = None, connection: Connection | None = None):
        self._computer_id = computer_id
        self._connection = connection

    @classmethod
    def _from_args(cls, args: tuple) -> Computer:
        return cls(_arg(args, 0, cls._wire_class))

    def _wire_args(self) -> tuple:
        return (self._computer_id,)

    def __repr__(self) -> str:
        return f"<Computer {self._computer_id}>"

    def getId(self) -> str | None:
        return self._computer_id

    def _fetch(self) -> None:
        """One GET for everything (getFullComputerInformation; the legacy name on 404)."""
        connection = self._conn()
        params = {"computer_id": self._computer_id}
        try:
            body = connection.get("getFullComputerInformation", params)
        except NotFoundError:
            body = connection.get("getComputerInformation", params)
        fresh = _decode(connection, body, Computer, f"computer {self._computer_id}")
        self._software_release_list = getattr(fresh, "_software_release_list", [])
        self._computer_partition_list = getattr(fresh, "_computer_partition_list", [])

    def getComputerPartitionList(self) -> list[ComputerPartition]:
        self._fetch()
        return list(self._computer_partition_list)

    def getSoftwareReleaseList(self) -> list[SoftwareRelease]:
        self._fetch()
        return list(self._software_release_list)

    def reportUsage(self, computer_usage: str) -> None:
        if not computer_usage:
            return
        self._conn().post("useComputer", {"computer_id": self._computer_id, "use_string": computer_usage})

    def bang(self, message: str) -> None:
        self._conn().post("computerBang", {"computer_id": self._computer_id, "message": message})

    def updateConfiguration(self, xml: str | Mapping[str, Any]) -> str:
        """Send the formatted computer (a dict, or its marshalled XML) → the master's answer."""
        document = xml if isinstance(xml, str) else wire.dumps(dict(xml))
        body = self._conn().post("loadComputerConfigurationFromXML", {"xml": document})
        return body.decode("utf-8", "replace")

    def getStatus(self) -> Any:
        body = self._conn().get("getComputerStatus", {"computer_id": self._computer_id})
        return _decode(self._connection, body, object, f"status of computer {self._computer_id}")

    def generateCertificate(self) -> dict:
        body = self._conn().post("generateComputerCertificate", {"computer_id": self._computer_id})
        return _decode(self._connection, body, dict, f"certificate of computer {self._computer_id}")

    def revokeCertificate(self) -> None:
        self._conn().post("revokeComputerCertificate", {"computer_id": self._computer_id})


_FACTORIES: dict[str, Callable[[tuple], _SlapObject]] = {
    "Computer": Computer._from_args,
    "ComputerPartition": ComputerPartition._from_args,
    "SoftwareRelease": SoftwareRelease._from_args,
    "SoftwareInstance": SoftwareInstance._from_args,
}
assert set(_FACTORIES) == wire.ALLOWED_CLASSES


# --------------------------------------------------------------------------------------------
# OpenOrder, Supply, slap


@implementer(interface.IOpenOrder)
class OpenOrder:
    """Requests instances as a user (`slapos request`)."""

    def __init__(self, connection: Connection | None = None):
        self._connection = connection

    def request(self, software_release: str, partition_reference: str,
                partition_parameter_kw: Mapping[str, Any] | None = None, software_type: str | None = None,
                filter_kw: Mapping[str, Any] | None = None, state: str | None = None,
                shared: bool = False) -> ComputerPartition:
        if self._connection is None:
            raise SlapException("OpenOrder is not bound to a master; use slap().registerOpenOrder()")
        data = {
            "software_release": software_release,
            "partition_reference": partition_reference,
            "partition_parameter_xml": wire.dumps(dict(partition_parameter_kw or {})),
            "filter_xml": wire.dumps(dict(filter_kw or {})),
            "software_type": software_type or DEFAULT_SOFTWARE_TYPE,
            "state": wire.dumps(state),
            "shared_xml": wire.dumps(bool(shared)),
        }
        return _request(self._connection, data, shared, state)

    def requestComputer(self, computer_reference: str) -> Computer:
        if self._connection is None:
            raise SlapException("OpenOrder is not bound to a master; use slap().registerOpenOrder()")
        body = self._connection.post("requestComputer", {"computer_title": computer_reference})
        return _decode(self._connection, body, Computer, f"computer {computer_reference}")


SUPPLY_STATES = ("available", "destroyed")


@implementer(interface.ISupply)
class Supply:
    """Asks a computer to install (`available`) or remove (`destroyed`) a software release."""

    def __init__(self, connection: Connection | None = None):
        self._connection = connection

    def supply(self, software_release: str, computer_guid: str | None = None, state: str = "available") -> str:
        if state not in SUPPLY_STATES:
            raise SlapException(f"supply state must be 'available' or 'destroyed', not {state!r}")
        if self._connection is None:
            raise SlapException("Supply is not bound to a master; use slap().registerSupply()")
        body = self._connection.post(
            "supplySupply", {"url": software_release, "computer_id": computer_guid, "state": state}
        )
        return body.decode("utf-8", "replace")


@implementer(interface.ISlap)
class slap:  # noqa: N801 - the reference's class name, used by every recipe
    """Entry point of the library: `slap().initializeConnection(master_url)` then `register…()`."""

    def __init__(self) -> None:
        self._connection: Connection | None = None
        self._hateoas_url: str | None = None

    def initializeConnection(self, slapgrid_uri: str, key_file: str | None = None, cert_file: str | None = None,
                             master_ca_file: str | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                             slapgrid_rest_uri: str | None = None, insecure: bool = False) -> None:
        """Remember where the master is and how to authenticate; no network traffic here."""
        if self._connection is not None:
            self._connection.close()
        self._connection = Connection(slapgrid_uri, key_file=key_file, cert_file=cert_file,
                                      master_ca_file=master_ca_file, timeout=timeout, insecure=insecure)
        self._hateoas_url = slapgrid_rest_uri

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            raise SlapException("not connected: call slap().initializeConnection(master_url) first")
        return self._connection

    def registerComputer(self, computer_guid: str) -> Computer:
        return Computer(computer_guid, connection=self.connection)

    def registerComputerPartition(self, computer_guid: str, partition_id: str) -> ComputerPartition:
        """The partition, fetched from the master on first use of its information."""
        return ComputerPartition(computer_guid, partition_id, connection=self.connection)

    def registerSoftwareRelease(self, software_release: str, computer_guid: str | None = None) -> SoftwareRelease:
        return SoftwareRelease(software_release, computer_guid, connection=self.connection)

    def registerOpenOrder(self) -> OpenOrder:
        return OpenOrder(connection=self.connection)

    def registerSupply(self) -> Supply:
        return Supply(connection=self.connection)

    def getSoftwareReleaseListFromSoftwareProduct(self, software_product_reference: str | None = None,
                                                  software_release_url: str | None = None) -> list:
        if (software_product_reference is None) == (software_release_url is None):
            raise SlapException("give either a software product reference or a software release URL")
        params = {"software_product_reference": software_product_reference,
                  "software_release_url": software_release_url}
        body = self.connection.get("getSoftwareReleaseListFromSoftwareProduct", params)
        return _decode(self._connection, body, list, "software release list")

    def getHateoasUrl(self) -> str | None:
        """The master's REST API URL (configured, or asked once); None when it has none (proxy: 404)."""
        if self._hateoas_url is None:
            try:
                body = self.connection.get("getHateoasUrl")
            except NotFoundError:
                return None
            self._hateoas_url = body.decode("utf-8", "replace").strip() or None
        return self._hateoas_url

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
