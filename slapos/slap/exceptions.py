"""The one exception hierarchy of the SLAP client library.

Every failure of a call to the master is a `SlapException`; the subclass says what happened
(the HTTP status or the network trouble) and the message names the URL and what to check.
`SlapException` is a `SlapOSError`, so the `slapos` command prints it as one line::

    SlapException
      NotFoundError          404: unknown computer/partition/software release, or endpoint not served
      ResourceNotReady       408: the master has not allocated the requested instance yet
      ServerError            5xx: the master failed
      AuthenticationError    401/403: credentials refused
      BadRequestError        any other 4xx: the master refused the request as malformed
      ConnectionError        network, timeout or TLS failure: the master was not reached
        RedirectError        the master redirected somewhere we do not follow (see slapos.base.http)
"""
from __future__ import annotations

from slapos.base.errors import SlapOSError


class SlapException(SlapOSError):
    """Base class of every error raised by `slapos.slap` when talking to a master."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class NotFoundError(SlapException):
    """404: the master does not know the object (or does not serve the endpoint)."""


class ResourceNotReady(SlapException):
    """408: the requested instance exists but is not allocated yet; ask again later."""


class ServerError(SlapException):
    """5xx: the master failed while answering."""


class AuthenticationError(SlapException):
    """401/403: the master refused our credentials."""


class BadRequestError(SlapException):
    """Another 4xx: the master refused the request (missing field, bad partition header, ...)."""


class ConnectionError(SlapException):  # noqa: A001 - the reference's name, kept for compatibility
    """The master could not be reached: refused connection, DNS, timeout, TLS failure."""


class RedirectError(ConnectionError):
    """The master answered with a redirect that is not followed (to http from https, to another
    scheme, a POST turned into a GET, too many): `location` is where it pointed."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None,
                 location: str | None = None):
        super().__init__(message, url=url, status=status)
        self.location = location


__all__ = [
    "SlapException",
    "NotFoundError",
    "ResourceNotReady",
    "ServerError",
    "AuthenticationError",
    "BadRequestError",
    "ConnectionError",
    "RedirectError",
]
