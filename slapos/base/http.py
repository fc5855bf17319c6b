"""The one HTTP policy of every outgoing request: the SLAP client (`slapos.slap.transport`), the
binary cache client (`slapos.grid.cache`), schema and certificate downloads (`fetch` below).

* **Proxies**: the standard variables, lowercase first as curl and requests do: `http_proxy` /
  `HTTP_PROXY` for http URLs, `https_proxy` / `HTTPS_PROXY` for https URLs, `all_proxy` /
  `ALL_PROXY` for both; `no_proxy` / `NO_PROXY` lists hosts reached directly (`*`, a host name and
  its subdomains with or without a leading dot, `host:port`, an IP address, a CIDR network).
  Loopback addresses (127.0.0.0/8, ::1, localhost) never go through a proxy: a proxy elsewhere
  cannot reach them. Proxies are http:// (an https URL is tunnelled with CONNECT); credentials in
  the proxy URL are sent as `Proxy-Authorization`.
* **CA certificates**, the first that applies: the file the configuration names (`master_ca_file`,
  the binary cache's CA options), then `REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE` / `SSL_CERT_DIR`, then
  the system store (OpenSSL's default paths), then the `certifi` bundle if it is installed (a
  machine without the ca-certificates package). Host names are always checked.
* **Timeouts**: `CONNECT_TIMEOUT` seconds to connect (at most the read timeout), then the caller's
  read timeout (`DEFAULT_TIMEOUT` unless configured) for each read.
* **Redirects**: followed when safe — to http(s) only, same scheme or an upgrade from http to
  https, at most `MAX_REDIRECTS`; 307/308 keep the method and body; 301/302/303 turn a GET or HEAD
  into a GET and are refused for other methods (a POST must not silently become a GET). The
  `Authorization` header is dropped when the host changes. Anything else is refused as what it is:
  "redirected to X", never "the server failed".

Standard library only, and cheap to import: `ssl`, `ipaddress` and `urllib.request` load when used
(the periodic `slapos node instance` imports this module).
"""
from __future__ import annotations

import os
from urllib.parse import unquote, urljoin, urlsplit

CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 60.0
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class PolicyError(ValueError):
    """A request the policy will not make (an unsupported proxy, an unsafe redirect, a CA variable
    naming no file); the message says what happened and what to change. `kind`: "proxy",
    "redirect" or "ca"."""

    def __init__(self, kind: str, message: str, location: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.location = location


# -- proxies ----------------------------------------------------------------------------------


def _env(name: str) -> str:
    """The lowercase variable first (curl ignores uppercase HTTP_PROXY; requests prefers lowercase)."""
    return (os.environ.get(name.lower()) or os.environ.get(name.upper()) or "").strip()


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bypasses_proxy(host: str, port: int | None, no_proxy: str | None = None) -> bool:
    """Whether `host` is reached directly: loopback, or matched by NO_PROXY."""
    host = host.strip("[]").lower().rstrip(".")
    if _is_loopback(host):
        return True
    entries = [e.strip().lower() for e in (_env("no_proxy") if no_proxy is None else no_proxy).split(",")]
    for entry in filter(None, entries):
        if entry == "*":
            return True
        name, wanted_port = entry, None
        if entry.startswith("[") and "]" in entry:  # [::1]:8080
            name, _, rest = entry[1:].partition("]")
            wanted_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, wanted_port = entry.split(":")
        if wanted_port and str(port) != wanted_port:
            continue
        if "/" in name or _is_ip(name):
            if _in_network(host, name):
                return True
            continue
        name = name.lstrip("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _in_network(host: str, network: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


class Proxy:
    """A forward proxy: where to connect and the `Proxy-Authorization` header, if any."""

    __slots__ = ("url", "host", "port", "authorization")

    def __init__(self, url: str, host: str, port: int, authorization: str | None):
        self.url = url
        self.host = host
        self.port = port
        self.authorization = authorization

    @property
    def display(self) -> str:
        """The proxy without its credentials, for messages."""
        return f"http://{self.host}:{self.port}" if ":" not in self.host else f"http://[{self.host}]:{self.port}"


def proxy_for(url: str) -> Proxy | None:
    """The proxy a request to `url` goes through, or None (direct)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    value = _env(f"{scheme}_proxy") or _env("all_proxy")
    if not value:
        return None
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    if bypasses_proxy(parts.hostname, port):
        return None
    return parse_proxy(value)


def parse_proxy(value: str) -> Proxy:
    if "://" not in value:
        value = "http://" + value  # `proxy:3128`, as curl accepts it
    parts = urlsplit(value)
    if parts.scheme.lower() != "http":
        raise PolicyError(
            "proxy",
            f"proxy {parts.scheme}://{parts.hostname}: only http:// proxies are supported (an https URL "
            f"goes through them with CONNECT); fix HTTP_PROXY/HTTPS_PROXY/ALL_PROXY",
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise PolicyError("proxy", f"proxy {value!r} has an invalid port; fix HTTP_PROXY/HTTPS_PROXY") from None
    if not parts.hostname:
        raise PolicyError("proxy", f"proxy {value!r} has no host; fix HTTP_PROXY/HTTPS_PROXY")
    authorization = None
    if parts.username is not None:
        import base64

        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    return Proxy(value, parts.hostname, port, authorization)


# -- TLS --------------------------------------------------------------------------------------


def ca_locations(ca_file: str | None = None) -> tuple[str | None, str | None]:
    """(cafile, capath) to verify servers with; (None, None) means OpenSSL's default store."""
    if ca_file:
        return str(ca_file), None
    for name, kind in (("REQUESTS_CA_BUNDLE", "file"), ("SSL_CERT_FILE", "file"), ("SSL_CERT_DIR", "dir")):
        value = os.environ.get(name)
        if not value:
            continue
        if not (os.path.isfile(value) if kind == "file" else os.path.isdir(value)):
            raise PolicyError("ca", f"{name}={value} is not a readable {kind} of CA certificates; fix or unset it")
        return (value, None) if kind == "file" else (None, value)
    import ssl

    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return paths.cafile, None
    if paths.capath and os.path.isdir(paths.capath) and any(True for _ in os.scandir(paths.capath)):
        return None, paths.capath
    try:
        import certifi
    except ImportError:
        return None, None
    return certifi.where(), None


def ssl_context(ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                insecure: bool = False):
    """A client `ssl.SSLContext` by the policy (raises `ssl.SSLError`/`OSError` on unreadable files)."""
    import ssl

    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        cafile, capath = ca_locations(ca_file)
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def requests_verify(ca_file: str | None = None) -> str | bool:
    """`verify=` for `requests`, by the same policy (requests alone would use certifi only)."""
    cafile, capath = ca_locations(ca_file)
    return cafile or capath or True


# -- timeouts ---------------------------------------------------------------------------------


def timeouts(read: float | None = None) -> tuple[float, float]:
    """(connect, read) seconds."""
    read = DEFAULT_TIMEOUT if read is None else float(read)
    return min(CONNECT_TIMEOUT, read), read


# -- redirects --------------------------------------------------------------------------------


def redirect(method: str, status: int, url: str, location: str | None, hops: int) -> tuple[str, str]:
    """Where a redirect leads: (new method, absolute URL); `hops` counts the redirects already
    followed. Raises PolicyError("redirect") when it must not be followed."""
    if not location:
        raise PolicyError("redirect", f"{url} answered {status} (a redirect) without a Location", None)
    target = urljoin(url, location.strip())
    said = f"{url} redirected {method} to {target} (HTTP {status})"
    if hops >= MAX_REDIRECTS:
        raise PolicyError("redirect", f"{said}: more than {MAX_REDIRECTS} redirects; use the final URL", target)
    old, new = urlsplit(url).scheme.lower(), urlsplit(target).scheme.lower()
    if new not in ("http", "https") or not urlsplit(target).hostname:
        raise PolicyError("redirect", f"{said}: not an http(s) URL, not followed", target)
    if old == "https" and new == "http":
        raise PolicyError("redirect", f"{said}: a downgrade from https to http is not followed; "
                                      f"use the https URL or fix the server", target)
    if status in (307, 308):
        return method, target
    if method in ("GET", "HEAD"):
        return "GET" if method == "GET" else "HEAD", target
    raise PolicyError("redirect", f"{said}: a {method} is not repeated as a GET; use the URL it points to",
                      target)


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname or "").lower() == (pb.hostname or "").lower()


# -- small downloads --------------------------------------------------------------------------


class Answer:
    __slots__ = ("status", "url", "body", "headers")

    def __init__(self, status: int, url: str, body: bytes, headers):
        self.status = status
        self.url = url
        self.body = body
        self.headers = headers


def fetch(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None,
          timeout: float | None = None, ca_file: str | None = None, max_bytes: int = 4 << 20) -> Answer:
    """One small request by the policy (schemas, software descriptions, certificates): the whole
    answer, at most `max_bytes` (more is refused). An HTTP error status is an Answer too; network
    failures raise OSError, an unsafe redirect or a bad proxy PolicyError, an oversized answer
    ValueError."""
    import http.client

    connect, read = timeouts(timeout)
    headers = dict(headers or {})
    for hops in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        https = parts.scheme.lower() == "https"
        host, port = parts.hostname or "", parts.port or (443 if https else 80)
        proxy = proxy_for(url)
        context = ssl_context(ca_file) if https else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = {}
        if proxy is None:
            conn = (http.client.HTTPSConnection(host, port, timeout=connect, context=context) if https
                    else http.client.HTTPConnection(host, port, timeout=connect))
        elif https:
            conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=connect, context=context)
            conn.set_tunnel(host, port, headers={"Proxy-Authorization": proxy.authorization}
                            if proxy.authorization else None)
        else:
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=connect)
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
            if proxy.authorization:
                extra["Proxy-Authorization"] = proxy.authorization
        try:
            conn.connect()
            conn.sock.settimeout(read)
            conn.request(method, target, body=data, headers={**headers, **extra})
            response = conn.getresponse()
            if response.status in REDIRECT_STATUSES:
                new_method, new_url = redirect(method, response.status, url, response.getheader("Location"), hops)
                if new_method != method:
                    data = None
                    headers.pop("Content-Type", None)
                if not same_origin(url, new_url):
                    headers.pop("Authorization", None)
                    headers.pop("X-Access-Token", None)
                method, url = new_method, new_url
                continue
            body = response.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise ValueError(f"{url}: the answer is larger than {max_bytes} bytes")
            return Answer(response.status, url, body, response.headers)
        except (TimeoutError, http.client.HTTPException) as e:
            raise OSError(f"{type(e).__name__}: {e}") from None
        finally:
            conn.close()
    raise AssertionError("unreachable")  # pragma: no cover - redirect() stops the loop
