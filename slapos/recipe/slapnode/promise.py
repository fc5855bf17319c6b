"""slapnode:promise — an `etc/promise/` executable checking that a port listens or a URL answers.

    [hello-promise]
    recipe = slapnode:promise
    path = ${directory:promise}/hello-web-url
    url = http://${slap-configuration:ipv4-random}:8080/
    contains = Hello        # optional: the body must contain this text
    # or, for a TCP check:  host = 127.0.0.1  and  port = 8080
    timeout = 5             # optional, seconds (default 5; keep it below the node's promise_timeout)

The node runs every executable of `etc/promise/` after processing the partition (and in
`slapos node promise`): exit 0 = kept, anything else = failed, the output being the message. The
generated script prints one line, `OK: ...` or `FAILED: ...`. A URL check accepts 2xx and 3xx
answers (redirects are not followed), ignores proxy environment variables and verifies TLS
certificates unless `insecure = true`.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from .common import Recipe as _Base
from .common import python_script, write_file

_CHECK_PORT = """\
import socket
import sys

host, port, timeout = {host!r}, {port!r}, {timeout!r}
try:
    socket.create_connection((host, port), timeout=timeout).close()
except OSError as e:
    print(f"FAILED: nothing accepts connections on {{host}} port {{port}}: {{e}}")
    sys.exit(1)
print(f"OK: {{host}} port {{port}} accepts connections")
"""

_CHECK_URL = """\
import ssl
import sys
import urllib.error
import urllib.request

url, contains, timeout, insecure = {url!r}, {contains!r}, {timeout!r}, {insecure!r}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None


context = ssl._create_unverified_context() if insecure else ssl.create_default_context()
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({{}}), urllib.request.HTTPSHandler(context=context), NoRedirect()
)
try:
    with opener.open(url, timeout=timeout) as response:
        status, body = response.status, response.read(1 << 20)
except urllib.error.HTTPError as e:
    status, body = e.code, b""
except (OSError, ValueError) as e:
    reason = getattr(e, "reason", e)
    print(f"FAILED: {{url}} does not answer: {{reason}}")
    sys.exit(1)
if not 200 <= status < 400:
    print(f"FAILED: {{url}} answered HTTP {{status}}")
    sys.exit(1)
if contains and contains.encode() not in body:
    print(f"FAILED: {{url}} answered HTTP {{status}} without {{contains!r}}")
    sys.exit(1)
print(f"OK: {{url}} answered HTTP {{status}}")
"""


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        self.promise_path = self.path("path")
        options["path"] = str(self.promise_path)
        self.timeout = self.number("timeout", 5.0)
        url = options.get("url", "").strip()
        port = options.get("port", "").strip()
        if bool(url) == bool(port):
            raise self.error("give either 'url' (HTTP check) or 'host' and 'port' (TCP check)")
        if url:
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise self.error(f"url = {url!r}: expected http://host[:port]/path or https://...")
            self.body = _CHECK_URL.format(
                url=url, contains=options.get("contains", ""), timeout=self.timeout, insecure=self.flag("insecure")
            )
        else:
            host = options.get("host", "").strip() or "127.0.0.1"
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise self.error(f"port = {port!r}: expected a TCP port number")
            self.body = _CHECK_PORT.format(host=host, port=int(port), timeout=self.timeout)

    def install(self):
        write_file(self.promise_path, python_script(self.python, f"slapnode:promise [{self.name}]", self.body), 0o750)
        return [str(self.promise_path)]
