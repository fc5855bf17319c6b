"""A one-time token exchanged for a certificate and its key at a master's web site: what
`slapos node register` (`Person_requestComputer`) and `slapos configure client --token`
(`Person_getCertificate`) both do, through the one HTTP policy (slapos.base.http)."""
from __future__ import annotations

import json
import re
from collections.abc import Callable

from slapos.base.errors import SlapOSError

MAX_ANSWER = 256 * 1024  # a certificate and a key: a few kilobytes


def first_line(body: bytes) -> str:
    """What a refusal says, in one line: our proxy's JSON `error`, an HTML page's first words."""
    text = body.decode("utf-8", "replace").strip()
    try:  # our proxy (and JSON APIs) answer {"error": ...}
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            text = data["error"]
    except ValueError:
        pass
    text = re.sub(r"<[^>]*>", " ", text)  # an HTML error page: its words
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:200]


def exchange(url: str, token: str, refusal: Callable[[int, str, bytes], str], *, fields: dict | None = None,
             timeout: float = 60.0, ca_file: str | None = None, option: str = "--master-url-web") -> tuple[str, str]:
    """POST `fields` to `url` with the token in `X-Access-Token`; (certificate, key) as PEM text.
    `refusal(status, said, body)` words a non-200 answer; every failure is one SlapOSError line."""
    from urllib.parse import urlencode

    from slapos.base import http

    data = urlencode(fields).encode("utf-8") if fields else b""
    headers = {"X-Access-Token": token}
    if fields:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        answer = http.fetch(url, method="POST", data=data, headers=headers, timeout=timeout, ca_file=ca_file,
                            max_bytes=MAX_ANSWER)
    except http.PolicyError as e:
        raise SlapOSError(f"{e}; check {option}") from None
    except (OSError, ValueError) as e:
        raise SlapOSError(f"cannot reach {url}: {e}; check {option}") from None
    if answer.status != 200:
        raise SlapOSError(refusal(answer.status, first_line(answer.body), answer.body))
    try:
        result = json.loads(answer.body.decode("utf-8"))
    except ValueError:
        raise SlapOSError(f"{url} did not answer JSON: is {option} the master's web site?") from None
    if not isinstance(result, dict) or not isinstance(result.get("certificate"), str) \
            or not isinstance(result.get("key"), str) or not result["certificate"] or not result["key"]:
        raise SlapOSError(f"{url} answered without a certificate and a key: ask the master for a new token")
    return result["certificate"], result["key"]
