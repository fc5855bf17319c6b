"""Domain errors of the proxy, each mapped to one explicit HTTP status and a one-line reason."""
from __future__ import annotations


class ProxyError(Exception):
    """A request the proxy refuses; `status` is the HTTP answer, the message its plain-text body."""

    status = 400
    reason = "Bad Request"

    def __init__(self, message: str):
        # one line: the body is read by people and by scripts splitting on newlines
        super().__init__(" ".join(str(message).split()))


class BadRequest(ProxyError):
    status, reason = 400, "Bad Request"


class Forbidden(ProxyError):
    status, reason = 403, "Forbidden"


class NotFound(ProxyError):
    status, reason = 404, "Not Found"


class MethodNotAllowed(ProxyError):
    status, reason = 405, "Method Not Allowed"

    def __init__(self, message: str, allowed: str):
        super().__init__(message)
        self.allowed = allowed


class Conflict(ProxyError):
    status, reason = 409, "Conflict"


class PayloadTooLarge(ProxyError):
    status, reason = 413, "Payload Too Large"


class UnsupportedMediaType(ProxyError):
    status, reason = 415, "Unsupported Media Type"


class ServiceUnavailable(ProxyError):
    status, reason = 503, "Service Unavailable"
