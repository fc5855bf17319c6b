"""Client of a master's HATEOAS (REST) API, as `slapos service …` and `slapos computer …` use it.

Speaks what the reference's client sends (SLAP-PROTOCOL §2.4): GET the root document, follow
its `raw_search` and `traverse` link templates (RFC 6570 simple expansion), read documents as
forms (`_embedded._view.my_<field>.default`), and GET `<root>/computer_module/Base_getComputerToken`
for a computer token. Works against our proxy (which answers for the caller's own records) and
against a SlapOS master. Answers are bounded (MAX_ANSWER) and must be JSON objects.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from slapos.base.errors import SlapOSError

MAX_ANSWER = 16 * 1024 * 1024
FORM_FIELD_TYPES = {"StringField", "EmailField", "IntegerField", "FloatField", "TextAreaField"}


class HateoasError(SlapOSError):
    pass


class NotFound(HateoasError):
    """The master has no such document (for this user): exit 2, like the reference."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


def expand(template: str, values: dict[str, Any]) -> str:
    """RFC 6570 level-1 expansion: `{name}` → percent-encoded value; unknown names → empty."""
    return re.sub(r"\{([^{}]+)\}", lambda m: quote(str(values.get(m.group(1), "")), safe=""), template)


@dataclass
class Navigator:
    url: str  # the REST root
    key_file: str | None = None
    cert_file: str | None = None
    ca_file: str | None = None
    timeout: float = 60.0

    def __post_init__(self):
        self._root: dict | None = None
        self._session = None

    def _get(self, url: str, headers: dict[str, str] | None = None) -> dict:
        import requests

        from slapos.base.http import PolicyError, requests_verify

        if self._session is None:
            self._session = requests.Session()
            if self.cert_file:
                self._session.cert = (self.cert_file, self.key_file)
        try:
            # verify= on each call: requests lets $REQUESTS_CA_BUNDLE override a session's verify,
            # which would refuse a master signed by its own CA (master_ca_file)
            verify = requests_verify(self.ca_file)
        except PolicyError as e:
            raise HateoasError(str(e)) from None
        try:
            with self._session.get(url, headers=headers, timeout=self.timeout, stream=True,
                                   verify=verify) as response:
                body = response.raw.read(MAX_ANSWER + 1, decode_content=True)
                status = response.status_code
        except requests.RequestException as e:
            raise HateoasError(f"cannot reach the master's REST API at {url}: {e}", exit_code=3) from None
        if len(body) > MAX_ANSWER:
            raise HateoasError(f"{url} answered more than {MAX_ANSWER} bytes")
        if status == 404:
            raise NotFound(f"{url}: not found")
        if status >= 400:
            reason = body[:300].decode("utf-8", "replace").strip()
            try:
                reason = json.loads(reason).get("error", reason)
            except (ValueError, AttributeError):
                pass
            raise HateoasError(f"the master refused {url.split('?')[0]} (HTTP {status}): {reason}")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HateoasError(f"{url} did not answer JSON: is it the master's REST API?") from None
        if not isinstance(data, dict):
            raise HateoasError(f"{url} answered JSON that is not an object")
        return data

    def root(self) -> dict:
        if self._root is None:
            self._root = self._get(self.url, {"Cache-Control": "no-cache"})
        return self._root

    def _link(self, name: str) -> str:
        try:
            href = self.root()["_links"][name]["href"]
        except (KeyError, TypeError):
            raise HateoasError(f"the master's REST root has no '{name}' link") from None
        if not isinstance(href, str):
            raise HateoasError(f"the master's REST root link '{name}' is not a URL")
        return href

    def search(self, query: str, select_list: list[str]) -> list[dict]:
        url = expand(self._link("raw_search"), {"query": query, "select_list": ",".join(select_list), "limit": 40})
        rows = self._get(url).get("_embedded", {}).get("contents", [])
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    def document(self, relative_url: str) -> dict:
        """A document's form fields (`my_` / `your_` prefixes removed) and `portal_type`."""
        url = expand(self._link("traverse"), {"relative_url": relative_url, "view": "slaposjs_view"})
        data = self._get(url)
        view = data.get("_embedded", {}).get("_view", {})
        fields: dict[str, Any] = {"portal_type": (data.get("_links", {}).get("type") or {}).get("name")}
        for key, field in view.items() if isinstance(view, dict) else ():
            name = key[3:] if key.startswith("my_") else key[5:] if key.startswith("your_") else None
            if name and isinstance(field, dict) and field.get("type") in FORM_FIELD_TYPES:
                fields[name] = field.get("default")
        return fields

    # -- what the commands ask ----------------------------------------------------------------
    def instance_trees(self, title: str | None = None, select: tuple[str, ...] = ("title", "url_string")) -> list[dict]:
        query = 'portal_type:"Instance Tree" AND validation_state:validated'
        if title is not None:
            query += f' AND title:="{title}"'
        return self.search(query, list(select))

    def computers(self, reference: str | None = None, select: tuple[str, ...] = ("title", "reference")) -> list[dict]:
        query = 'portal_type:"Compute Node" AND validation_state:validated'
        if reference is not None:
            query += f' AND reference:="{reference}"'
        return self.search(query, list(select))

    def _one(self, rows: list[dict], key: str, value: str, what: str) -> dict:
        matches = [row for row in rows if row.get(key) == value]
        if not matches:
            raise NotFound(f"{what} '{value}' does not exist (or is not yours)")
        relative = matches[0].get("relative_url")
        if not isinstance(relative, str):
            raise HateoasError(f"the master gave no document for {what} '{value}'")
        return self.document(relative)

    def instance(self, title: str) -> dict:
        return self._one(self.instance_trees(title, ("title", "relative_url")), "title", title, "instance")

    def computer(self, reference: str) -> dict:
        return self._one(self.computers(reference, ("reference", "relative_url")), "reference", reference, "computer")

    def token(self, computer: str | None = None) -> str:
        base = self._link("self").rstrip("/")
        url = base + "/computer_module/Base_getComputerToken"
        if computer:
            url += "?computer_reference=" + quote(computer, safe="")
        token = self._get(url).get("access_token")
        if not isinstance(token, str) or not token:
            raise HateoasError("the master answered no token")
        return token


def connection_parameters(value: Any) -> dict[str, Any]:
    """A master gives `[{connection_key, connection_value}]`, the reference's proxy instance XML."""
    from slapos.slap import wire

    if isinstance(value, list):
        return {str(item.get("connection_key")): item.get("connection_value")
                for item in value if isinstance(item, dict)}
    if isinstance(value, str) and value.strip():
        return wire.loads_instance_xml(value)
    return {}


def instance_parameters(text: Any) -> dict[str, Any]:
    from slapos.slap import wire

    if isinstance(text, str) and text.strip():
        return wire.loads_instance_xml(text)
    return {}
