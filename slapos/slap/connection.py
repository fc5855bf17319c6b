"""HTTP transport of the SLAP protocol (SLAP-PROTOCOL.md §1): one `requests` session per connection.

* GET with query parameters, POST with a url-encoded form; `None` form values travel as `'None'`.
* POSTs made on behalf of a partition carry `Authorization: X-SlapPartition computer_id=…,
  computer_partition_id=…`; GETs never carry it.
* The client certificate is sent to `https` masters only. Unlike the reference, the server
  certificate **is verified** (against `master_ca_file`, else the system CAs); `insecure=True` is an
  explicit opt-out meant for tests.
* Status codes and network failures become the `slapos.slap.exceptions` hierarchy; each message
  names the URL and says what to check.

`requests` is imported on the first call, not when this module is imported.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from slapos.base.errors import ConfigError

from .exceptions import (
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    NotFoundError,
    ResourceNotReady,
    ServerError,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import cost)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
USER_AGENT = "slapnode/0.1 (slapos.core compatible)"
# Statuses the reference treats as "the server failed" besides every other 5xx.
_MAX_REASON = 300


def normalize_master_url(url: str) -> str:
    """Base URL with a trailing `/` (endpoints are joined to it); bracket a bare IPv6 host."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"master_url {url!r} is not an http:// or https:// URL; fix master_url in the configuration")
    netloc = parts.netloc
    host = netloc.rpartition("@")[2]
    # An IPv6 literal without brackets ("fd00::1" or "fd00::1:8080" is ambiguous, so only
    # bracket when the host part holds two or more colons and no bracket at all).
    if host.count(":") >= 2 and "[" not in host:
        userinfo = netloc[: len(netloc) - len(host)]
        netloc = f"{userinfo}[{host}]"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


def partition_header(computer_id: str, partition_id: str) -> dict[str, str]:
    """The partition identity header of §1.2 (exact spacing: comma + one space)."""
    return {
        "Authorization": f"X-SlapPartition computer_id={computer_id}, computer_partition_id={partition_id}"
    }


def _reason(body: bytes) -> str:
    """A short human reason from an error page: the `<p>` of Flask-style pages, else the text."""
    text = body[:4096].decode("utf-8", "replace")
    match = re.search(r"<p>(.*?)</p>", text, re.S | re.I)
    if match:
        text = match.group(1)
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text[:_MAX_REASON]


class Connection:
    """A connection to one master: base URL, credentials, timeout and a reused HTTP session."""

    def __init__(
        self,
        master_url: str,
        key_file: str | None = None,
        cert_file: str | None = None,
        master_ca_file: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        insecure: bool = False,
    ):
        self.master_url = normalize_master_url(master_url)
        self.https = self.master_url.startswith("https:")
        self.key_file = str(key_file) if key_file else None
        self.cert_file = str(cert_file) if cert_file else None
        self.master_ca_file = str(master_ca_file) if master_ca_file else None
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.insecure = bool(insecure)
        if (self.key_file is None) != (self.cert_file is None):
            raise ConfigError("key_file and cert_file go together: set both or neither")
        for name, path in (("key_file", self.key_file), ("cert_file", self.cert_file),
                           ("master_ca_file", self.master_ca_file)):
            if path is not None and not os.path.exists(path):
                raise ConfigError(f"{name} {path} does not exist; fix {name} in the configuration")
        self._session = None
        self._lock = threading.Lock()

    # -- session -------------------------------------------------------------------------------

    @property
    def session(self):
        """The `requests.Session`, created (and `requests` imported) on first use."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import requests

                    session = requests.Session()
                    session.headers["User-Agent"] = USER_AGENT
                    session.headers["Accept"] = "*/*"
                    # The client certificate goes to https masters only (§1.3).
                    if self.https and self.cert_file:
                        session.cert = (self.cert_file, self.key_file)
                    if self.insecure:
                        session.verify = False
                    elif self.master_ca_file:
                        session.verify = self.master_ca_file
                    else:
                        session.verify = True
                    # The master decides; environment proxies and netrc must not change the target.
                    session.trust_env = False
                    self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def url(self, endpoint: str) -> str:
        return self.master_url + endpoint.lstrip("/")

    # -- calls ---------------------------------------------------------------------------------

    def get(self, endpoint: str, params: Mapping[str, Any] | None = None) -> bytes:
        """GET `<master>/<endpoint>?params`; never carries the partition header (§1.2)."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        return self._call("GET", endpoint, params=query)

    def post(
        self,
        endpoint: str,
        data: Mapping[str, Any] | None = None,
        partition: tuple[str, str] | None = None,
    ) -> bytes:
        """POST a url-encoded form; `partition=(computer_id, partition_id)` adds the identity header."""
        form = {
            k: "None" if v is None else v if isinstance(v, (str, bytes)) else str(v)
            for k, v in (data or {}).items()
        }
        headers = partition_header(*partition) if partition else None
        return self._call("POST", endpoint, data=form, headers=headers)

    def _call(self, method: str, endpoint: str, **kwargs) -> bytes:
        import requests

        url = self.url(endpoint)
        session = self.session
        try:
            response = session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.exceptions.SSLError as e:
            raise ConnectionError(self._tls_advice(url, e), url=url) from None
        except requests.exceptions.Timeout:
            raise ConnectionError(
                f"{method} {url}: no answer within {self.timeout:g} s; check that the master is up "
                f"and reachable, or raise the timeout",
                url=url,
            ) from None
        except requests.exceptions.ConnectionError as e:
            raise ConnectionError(
                f"{method} {url}: cannot connect to the master ({_short(e)}); check master_url and that "
                f"the master (or `slapos proxy start`) is running",
                url=url,
            ) from None
        except (requests.exceptions.RequestException, OSError) as e:
            raise ConnectionError(
                f"{method} {url}: request failed ({_short(e)}); check master_url and the key/certificate files",
                url=url,
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            return response.content
        raise self._error(method, url, status, response.content, kwargs)

    def _tls_advice(self, url: str, error: Exception) -> str:
        text = _short(error)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            where = (
                f"the CA in master_ca_file ({self.master_ca_file})"
                if self.master_ca_file
                else "the system CAs (set master_ca_file to the CA that signed the master's certificate)"
            )
            return f"{url}: the master's TLS certificate could not be verified against {where}: {text}"
        return (
            f"{url}: TLS handshake failed ({text}); check cert_file/key_file (the client certificate "
            f"the master expects) and master_ca_file"
        )

    @staticmethod
    def _error(method: str, url: str, status: int, body: bytes, kwargs: dict) -> Exception:
        reason = _reason(body)
        fields = kwargs.get("params") or kwargs.get("data") or {}
        # name the identifying fields, never the (possibly large or secret) parameter documents
        ids = ", ".join(
            f"{k}={v}" for k, v in fields.items()
            if not k.endswith("_xml") and k not in ("xml", "state", "error_log", "use_string", "message")
        )
        where = f"{method} {url}" + (f" ({ids})" if ids else "")
        said = f": {reason}" if reason else ""
        if status == 404:
            return NotFoundError(
                f"{where} answered 404 Not Found{said}; check the computer/partition/software release "
                f"ids, and that this master serves this call",
                url=url, status=status,
            )
        if status == 408:
            return ResourceNotReady(
                f"{where} answered 408: the instance is not ready (not allocated yet); ask again later",
                url=url, status=status,
            )
        if status in (401, 403):
            return AuthenticationError(
                f"{where} answered {status}: the master refused our credentials{said}; check "
                f"key_file/cert_file and that the certificate belongs to this computer or partition",
                url=url, status=status,
            )
        if 400 <= status < 500:
            return BadRequestError(
                f"{where} answered {status}{said}; the master refused the request as invalid",
                url=url, status=status,
            )
        return ServerError(
            f"{where} answered {status}{said}; the master failed, see its log",
            url=url, status=status,
        )


def _short(error: Exception) -> str:
    """The root cause of a requests/urllib3 error, without the nested wrapper reprs."""
    text = " ".join(str(error).split())
    match = re.search(r"\[SSL: [A-Z0-9_]+\] [^()'\"]+", text)
    if match:
        return match.group(0).strip()
    match = re.search(r"SSL\w*Error\(\d+, '([^']+?)(?: \(_ssl\.c:\d+\))?'", text)
    if match:
        return match.group(1).strip()
    match = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if match:
        return match.group(0).strip()
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    return text[:_MAX_REASON]
