"""slapos.slap: the SLAP client library (talk to a SlapOS master or to our proxy).

    from slapos.slap import slap
    connection = slap()
    connection.initializeConnection("http://127.0.0.1:4000/")
    computer = connection.registerComputer("local_computer")

Importing this package is cheap: the client classes are loaded on first use, the HTTP layer
(`slapos.slap.transport`, standard library `http.client`) on the first call, and `lxml` when the
first document is decoded.
"""
from __future__ import annotations

from .exceptions import (
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    NotFoundError,
    RedirectError,
    ResourceNotReady,
    ServerError,
    SlapException,
)

_LAZY = {
    "slap": "objects",
    "Computer": "objects",
    "ComputerPartition": "objects",
    "SoftwareRelease": "objects",
    "SoftwareInstance": "objects",
    "OpenOrder": "objects",
    "Supply": "objects",
    "WireError": "wire",
}

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (it costs ~7 ms)
if TYPE_CHECKING:  # pragma: no cover
    from .objects import (  # noqa: F401
        Computer,
        ComputerPartition,
        OpenOrder,
        SoftwareInstance,
        SoftwareRelease,
        Supply,
        slap,
    )
    from .wire import WireError  # noqa: F401


_SUBMODULES = ("wire", "connection", "objects", "interface", "exceptions")


def __getattr__(name: str):
    """Load the client classes (and submodules) on first use: importing the package stays cheap."""
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slapos.slap' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def connect(master_url: str, key_file=None, cert_file=None, master_ca_file=None):
    """A `slap` connected to `master_url` with the given identity (paths, str or None).

    `connect_as(settings)` takes the four from any settings object (node or client)."""
    from .objects import slap as _slap

    def text(path):
        return str(path) if path else None

    connection = _slap()
    connection.initializeConnection(
        master_url, key_file=text(key_file), cert_file=text(cert_file), master_ca_file=text(master_ca_file)
    )
    return connection


def connect_as(settings):
    """A `slap` connected with the identity of `settings` (anything with `master_url`, `key_file`,
    `cert_file` and `master_ca_file`: `slapos.base.settings.NodeSettings`, the client's settings)."""
    return connect(settings.master_url, settings.key_file, settings.cert_file, settings.master_ca_file)


__all__ = [
    "connect",
    "connect_as",
    "AuthenticationError",
    "BadRequestError",
    "ConnectionError",
    "NotFoundError",
    "RedirectError",
    "ResourceNotReady",
    "ServerError",
    "SlapException",
    *_LAZY,
]
