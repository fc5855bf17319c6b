"""HTTP side of the SLAP protocol (SLAP-PROTOCOL.md §1), over the light keep-alive transport of
`slapos.slap.transport` (standard library `http.client` + `ssl`; `requests` is not used).

* GET with query parameters, POST with a url-encoded form (`application/x-www-form-urlencoded`,
  UTF-8, spaces as `+`: byte-for-byte what `requests` sent); `None` form values travel as `'None'`.
* POSTs made on behalf of a partition carry `Authorization: X-SlapPartition computer_id=…,
  computer_partition_id=…`; GETs never carry it.
* The client certificate is sent to `https` masters only. Unlike the reference, the server
  certificate **is verified**, host name included (against `master_ca_file`, else the system CAs
  of OpenSSL, which honours `SSL_CERT_FILE`/`SSL_CERT_DIR`); `insecure=True` is an explicit opt-out
  meant for tests.
* Status codes and network failures become the `slapos.slap.exceptions` hierarchy; each message
  names the URL and says what to check. Nothing else escapes.
* One `Connection` may be used from several threads (the transport pools connections).
* The HTTP policy of `slapos.base.http` (proxies from HTTP_PROXY/HTTPS_PROXY/NO_PROXY, the CA
  source, connect and read timeouts, redirects): a safe redirect is followed (a permanent one is
  logged once, to fix master_url), another is a `RedirectError` naming where the master pointed.

`http.client` (and `ssl`) are imported on the first call, not when this module is imported.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

from slapos.base.errors import ConfigError

from .exceptions import (
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    NotFoundError,
    RedirectError,
    ResourceNotReady,
    ServerError,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import cost)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from .transport import Transport

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # slapos.base.http.DEFAULT_TIMEOUT (the module is imported on the first call)
USER_AGENT = "slapnode/0.1 (slapos.core compatible)"
_MAX_REASON = 300  # characters of a reason or cause quoted in a message
_REDIRECTS = (301, 302, 303, 307, 308)  # slapos.base.http.REDIRECT_STATUSES


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


# A master URL may carry a credential as the first segment of its path, `…/c/<credential>/`: our
# proxy with `access = credentials` (docs/security-proxy.md). Clients only append endpoint names to
# master_url, so every SLAP client sends it; these helpers keep it out of what is shown or logged.
CREDENTIAL_PREFIX = "/c/"
CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def url_credential(url: str) -> str | None:
    """The credential a master URL carries (`…/c/<credential>/`), or None."""
    path = urlsplit(url.strip()).path
    if not path.startswith(CREDENTIAL_PREFIX):
        return None
    credential = path[len(CREDENTIAL_PREFIX):].split("/", 1)[0]
    return credential if CREDENTIAL_RE.match(credential) else None


def redact_url(url: str) -> str:
    """`url` with its credential (if any) replaced by `…`: fit for logs and error messages."""
    credential = url_credential(url)
    return url.replace(credential, "…", 1) if credential else url


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


def encode_form(fields: Mapping[str, str | bytes]) -> str:
    """`k=v&...` exactly as `requests` encodes a form or query: UTF-8, `quote_plus` (space → `+`)."""
    return urlencode([
        (k.encode("utf-8") if isinstance(k, str) else k, v.encode("utf-8") if isinstance(v, str) else v)
        for k, v in fields.items()
    ])


class Connection:
    """A connection to one master: base URL, credentials, timeout and pooled keep-alive connections."""

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
        self._parse_target()
        self._transport = None
        self._lock = threading.Lock()
        self._elsewhere: dict[tuple[str, str, int], Transport] = {}  # transports of redirect targets
        self._moved_logged = False

    def _parse_target(self) -> None:
        parts = urlsplit(self.master_url)
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"master_url {self.master_url!r} has an invalid port; fix master_url") from None
        host = unquote(parts.hostname or "")
        if not host:
            raise ConfigError(f"master_url {self.master_url!r} has no host; fix master_url in the configuration")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise ConfigError(f"master_url {self.master_url!r}: invalid host name {host!r}") from None
        self.host = host
        self.port = port or (443 if self.https else 80)
        # requests re-quoted the URL: characters unsafe in a request line are %-escaped
        self._prefix = quote(parts.path, safe="!#$%&'()*+,/:;=?@[]~")
        self._auth = None
        self._display = redact_url(self.master_url)
        if parts.username is not None:
            # http://user:password@host/: HTTP basic authentication, like requests did; the
            # password is kept out of the URLs that error messages show.
            import base64

            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            try:
                raw = credentials.encode("latin-1")
            except UnicodeEncodeError:
                raw = credentials.encode("utf-8")
            self._auth = "Basic " + base64.b64encode(raw).decode("ascii")
            self._display = redact_url(
                urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, ""))
            )

    # -- transport -----------------------------------------------------------------------------

    @property
    def transport(self):
        """The `transport.Transport` (pool of keep-alive connections), created on first use."""
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    self._transport = self._new_transport(self.master_url, self.host, self.port, self.https)
        return self._transport

    def _new_transport(self, url: str, host: str, port: int, https: bool):
        from slapos.base import http

        from .transport import Transport

        try:
            proxy = http.proxy_for(url)
        except http.PolicyError as e:
            raise ConnectionError(f"{self._display}: {e}", url=self._display) from None
        context = self._ssl_context() if https else None
        connect, read = http.timeouts(self.timeout)
        return Transport(host, port, read, context, proxy=proxy, connect_timeout=connect)

    def _transport_for(self, url: str):
        """The transport of the origin of `url` (a redirect target): ours, or one kept for it."""
        parts = urlsplit(url)
        https = parts.scheme == "https"
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if https else 80)
        if (https, host, port) == (self.https, self.host.lower(), self.port):
            return self.transport
        key = (parts.scheme, host, port)
        with self._lock:
            transport = self._elsewhere.get(key)
            if transport is None:
                transport = self._elsewhere[key] = self._new_transport(url, host, port, https)
        return transport

    def _ssl_context(self):
        import ssl

        from slapos.base.http import PolicyError, ssl_context

        try:
            # verification on, host name checked; master_ca_file alone replaces the system CAs
            context = ssl_context(self.master_ca_file, insecure=self.insecure)
        except PolicyError as e:
            raise ConnectionError(f"{self._display}: {e}", url=self._display) from None
        except (ssl.SSLError, OSError) as e:
            raise ConnectionError(
                f"{self._display}: cannot load master_ca_file {self.master_ca_file} ({_short(e)}); it must be "
                f"a readable PEM file holding the CA that signed the master's certificate",
                url=self._display,
            ) from None
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as e:
                raise ConnectionError(
                    f"{self._display}: cannot load the client certificate (cert_file {self.cert_file}, key_file "
                    f"{self.key_file}: {_short(e)}); they must be readable PEM files and the key must match "
                    f"the certificate",
                    url=self._display,
                ) from None
        return context

    def close(self) -> None:
        """Close the idle connections; the connection stays usable (a later call reconnects)."""
        if self._transport is not None:
            self._transport.close()
        for transport in list(self._elsewhere.values()):
            transport.close()

    def url(self, endpoint: str) -> str:
        return self._display + endpoint.lstrip("/")

    # -- calls ---------------------------------------------------------------------------------

    def get(self, endpoint: str, params: Mapping[str, Any] | None = None) -> bytes:
        """GET `<master>/<endpoint>?params`; never carries the partition header (§1.2)."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        return self._call("GET", endpoint, query, None)

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
        return self._call("POST", endpoint, form, partition)

    def _call(self, method: str, endpoint: str, fields: dict, partition: tuple[str, str] | None) -> bytes:
        url = self.url(endpoint)
        target = self._prefix + endpoint.lstrip("/")
        headers = {
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "gzip, deflate",
            "Accept": "*/*",
            "Connection": "keep-alive",
        }
        body = None
        if method == "GET":
            if fields:
                target += "?" + encode_form(fields)
        elif fields:
            body = encode_form(fields).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        # (a POST without fields goes out with `Content-Length: 0` and no Content-Type, as before)
        if partition:
            # the protocol's identity header; URL credentials cannot share the Authorization header
            headers.update(partition_header(*partition))
        elif self._auth:
            headers["Authorization"] = self._auth
        response = self._send(self.transport, method, url, target, body, headers)
        if response.status in _REDIRECTS:
            response, url = self._follow(response, method, url, body, headers)
        status = response.status
        if 200 <= status < 300:
            return response.body
        raise self._error(method, url, status, response.body, fields, len(body or b""))

    def _send(self, transport, method: str, url: str, target: str, body: bytes | None, headers: dict):
        from .transport import TransportError

        try:
            return transport.request(method, target, body, headers)
        except TransportError as e:
            if e.kind == "invalid":
                raise BadRequestError(
                    f"{method} {url}: request not sent, it is invalid ({_short(e.cause)}); check the "
                    f"computer and partition ids (no control characters)",
                    url=url,
                ) from None
            raise ConnectionError(self._network_advice(method, url, e, transport), url=url) from None

    def _follow(self, response, method: str, url: str, body: bytes | None, headers: dict):
        """Follow the master's redirects while the policy calls them safe; returns the final answer
        and its URL, or raises RedirectError saying where the master pointed."""
        from slapos.base import http

        hops = 0
        while response.status in _REDIRECTS:
            try:
                new_method, new_url = http.redirect(method, response.status, url, response.location, hops)
            except http.PolicyError as e:
                raise RedirectError(f"{e}; check master_url", url=url, status=response.status,
                                    location=e.location) from None
            if response.status in (301, 308) and not self._moved_logged:
                self._moved_logged = True
                logger.warning("the master moved %s permanently to %s: set master_url accordingly", url, new_url)
            else:
                logger.debug("the master redirected %s %s to %s", method, url, new_url)
            if new_method != method:
                body = None
                headers = {k: v for k, v in headers.items() if k != "Content-Type"}
            if not http.same_origin(url, new_url):
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
            parts = urlsplit(new_url)
            target = quote(parts.path or "/", safe="!#$%&'()*+,/:;=?@[]~") + (f"?{parts.query}" if parts.query else "")
            method, url, hops = new_method, new_url, hops + 1
            response = self._send(self._transport_for(new_url), method, url, target, body, headers)
        return response, url

    def _network_advice(self, method: str, url: str, error, transport=None) -> str:
        """One line: what failed on the way to the master, and what to check."""
        cause = error.cause
        text = _short(cause) if isinstance(cause, BaseException) else str(cause)
        kind = error.kind
        proxy = getattr(transport, "proxy", None)
        if proxy is not None and kind in ("connect", "dns", "proxy", "timeout"):
            return (f"{method} {url}: through the proxy {proxy.display} (from HTTP_PROXY/HTTPS_PROXY): "
                    f"{text}; check the proxy, or list the master's host in NO_PROXY")
        if kind == "timeout":
            return (f"{method} {url}: no answer within {self.timeout:g} s; check that the master is up "
                    f"and reachable, or raise the timeout")
        if kind == "tls":
            return self._tls_advice(url, cause)
        if kind == "dns":
            return (f"{method} {url}: cannot connect to the master: cannot resolve its host name {self.host!r} "
                    f"({text}); check master_url and the DNS")
        if kind == "connect":
            return (f"{method} {url}: cannot connect to the master ({text}); check master_url and that "
                    f"the master (or `slapos proxy start`) is running")
        if kind == "closed":
            hint = (" (an https master also does this when it refuses our client certificate: check "
                    "cert_file/key_file)") if self.https else ""
            return (f"{method} {url}: the master closed the connection without answering ({text}){hint}; "
                    f"check that the master is up and see its log")
        if kind == "too-large":
            return f"{method} {url}: the master's answer is too large ({text}); check master_url"
        # protocol, decode
        return (f"{method} {url}: the master's answer is not valid HTTP ({text}); check master_url "
                f"(is it a SlapOS master?) and any proxy in between")

    def _tls_advice(self, url: str, error: BaseException) -> str:
        text = _short(error)
        verify_message = getattr(error, "verify_message", None)
        if verify_message or "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            where = (
                f"the CA in master_ca_file ({self.master_ca_file})"
                if self.master_ca_file
                else "the system CAs (set master_ca_file to the CA that signed the master's certificate)"
            )
            return f"{url}: the master's TLS certificate could not be verified against {where}: {text}"
        if "WRONG_VERSION_NUMBER" in text:
            return (f"{url}: TLS handshake failed ({text}): the master does not speak TLS on this port; "
                    f"check the scheme of master_url (http:// or https://) and its port")
        return (
            f"{url}: TLS handshake failed ({text}); check cert_file/key_file (the client certificate "
            f"the master expects) and master_ca_file"
        )

    @staticmethod
    def _error(method: str, url: str, status: int, body: bytes, fields: Mapping[str, Any],
               sent: int = 0) -> Exception:
        reason = _reason(body)
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
        if status == 407:
            return ConnectionError(
                f"{where} answered 407: the proxy (HTTP_PROXY) wants credentials{said}; put them in its URL "
                f"(http://user:password@proxy:port) or list the master's host in NO_PROXY",
                url=url, status=status,
            )
        if status == 413:
            return BadRequestError(
                f"{where} answered 413: the request ({sent} bytes) is larger than the master accepts{said}; "
                f"send smaller parameters (or raise [slapproxy] max_request_size on a local proxy)",
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


def _short(error: BaseException | str) -> str:
    """The cause of a network or TLS failure in a few words (without the ssl module's file:line)."""
    verify_message = getattr(error, "verify_message", None)
    if verify_message:
        return f"certificate verify failed: {verify_message}"
    text = " ".join(str(error).split()) or type(error).__name__
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    return text[:_MAX_REASON]
