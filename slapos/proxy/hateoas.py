"""The proxy's read-only HATEOAS (REST) API, mounted at `/hateoas/`: what `slapos service
list|info` and `slapos computer list|info|token` ask (SLAP-PROTOCOL §2.4), answered only with
the caller's own instance trees and computers (see identity.py, ownership.py).

    GET /hateoas/                                   root: links raw_search, traverse, self, me
    GET /hateoas/?mode=search&query=Q&select_list=F  {"_embedded": {"contents": [rows]}}
    GET /hateoas/?mode=traverse&relative_url=R&view=V  a document as a form (`my_<field>`)
    GET /hateoas/computer_module/Base_getComputerToken[?computer_reference=ID]  {"access_token": ...}

Queries are the four the reference's client sends (all instance trees or one by title, all
compute nodes or one by reference); anything else is a 400. Nothing else of the database is
reachable here: no raw rows, no other user's records, no partition's secrets but the
connection parameters of the caller's own instances.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl, quote, unquote

from slapos.slap import wire

from . import identity, ownership
from .db import Database
from .values import load_params

log = logging.getLogger("slapos.proxy.hateoas")

_TREE = re.compile(r'^portal_type:"Instance Tree" AND validation_state:validated(?: AND title:="(.*)")?$', re.S)
_NODE = re.compile(r'^portal_type:"Compute Node" AND validation_state:validated'
                   r'(?: AND title:="(.*?)")?(?: AND reference:="(.*)")?$', re.S)
TREE_PREFIX = "instance_tree_module/"
NODE_PREFIX = "compute_node_module/"


class _Error(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def _base(environ: dict) -> str:
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '')}"
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}/hateoas/"


class HateoasApp:
    def __init__(self, db: Database, token_lifetime: float = ownership.DEFAULT_TOKEN_LIFETIME):
        self.db = db
        self.token_lifetime = token_lifetime

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            status, body = self.dispatch(environ)
        except _Error as e:
            status, body = e.status, {"error": str(e)}
        data = json.dumps(body, sort_keys=True).encode("utf-8")
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [data]

    def dispatch(self, environ: dict) -> tuple[str, dict]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD", "POST"):
            raise _Error("405 Method Not Allowed", f"{method} is not served here")
        path = environ.get("PATH_INFO", "")[len("/hateoas/"):]
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True, max_num_fields=16))
        caller = identity.caller(environ)
        base = _base(environ)
        if path == "computer_module/Base_getComputerToken":
            if "slapnode.tls" in environ and caller not in identity.proxy_operators():
                # a computer joining a shared proxy is allocated everyone's instances: only the
                # operator lets one in (a user or node certificate, a local user, could plant a rogue node)
                raise _Error("403 Forbidden", "on a TLS proxy computer tokens come from its operator "
                                              "(slapos proxy token, or root on the proxy's machine)")
            return "200 OK", self.token(caller, query.get("computer_reference") or None)
        if path:
            raise _Error("404 Not Found", f"unknown document {path[:80]}")
        mode = query.get("mode")
        if mode is None:
            return "200 OK", self.root(base, caller)
        if mode == "search":
            return "200 OK", self.search(base, caller, query.get("query", ""), query.get("select_list", ""))
        if mode == "traverse":
            return "200 OK", self.traverse(base, caller, query.get("relative_url", ""))
        raise _Error("400 Bad Request", f"unknown mode {mode[:40]!r}: search or traverse")

    # -- documents ----------------------------------------------------------------------------
    @staticmethod
    def root(base: str, caller: str | None) -> dict:
        return {"_links": {
            "self": {"href": base.rstrip("/")},
            "raw_search": {"href": base + "?mode=search&query={query}&select_list={select_list}"},
            "traverse": {"href": base + "?mode=traverse&relative_url={relative_url}&view={view}"},
            "me": {"href": f"urn:jio:get:{caller or 'anonymous'}"},
        }}

    def search(self, base: str, caller: str | None, query: str, select_list: str) -> dict:
        fields = [f for f in select_list.split(",") if f]
        tree, node = _TREE.match(query), _NODE.match(query)
        if tree:
            rows = [self._row(base, TREE_PREFIX, r, fields) for r in self.trees(caller, tree.group(1))]
        elif node:
            rows = [self._row(base, NODE_PREFIX, r, fields) for r in self.computers(caller, node.group(2), node.group(1))]
        else:
            raise _Error("400 Bad Request", "unsupported query: this proxy answers the instance tree and "
                                            "compute node searches of slapos service/computer commands")
        return {"_embedded": {"contents": rows}}

    @staticmethod
    def _row(base: str, prefix: str, record: dict, fields: list[str]) -> dict:
        relative = prefix + quote(record["reference"], safe="")
        full = {**record, "relative_url": relative}
        row = {f: full.get(f) for f in fields if f in full}
        row["_links"] = {"self": {"href": f"urn:jio:get:{relative}"}}
        return row

    def traverse(self, base: str, caller: str | None, relative_url: str) -> dict:
        if relative_url.startswith(TREE_PREFIX):
            found = self.trees(caller, unquote(relative_url[len(TREE_PREFIX):]))
            kind = "Instance Tree"
        elif relative_url.startswith(NODE_PREFIX):
            found = self.computers(caller, unquote(relative_url[len(NODE_PREFIX):]))
            kind = "Compute Node"
        else:
            raise _Error("404 Not Found", "unknown document")
        if not found:
            raise _Error("404 Not Found", "unknown document")
        record = found[0]
        view = {"form_id": {"key": "form_id", "default": f"{kind.replace(' ', '')}_view"}}
        for key, value in record.items():
            kind_of_field = "IntegerField" if isinstance(value, int) else "StringField"
            view[f"my_{key}"] = {"type": kind_of_field, "key": f"field_my_{key}", "default": value}
        return {"_embedded": {"_view": view},
                "_links": {"type": {"name": kind}, "self": {"href": base + "?mode=traverse&relative_url="
                                                             + quote(relative_url, safe="")}}}

    # -- what the caller may see ----------------------------------------------------------------
    def trees(self, caller: str | None, title: str | None = None) -> list[dict]:
        """The caller's root instances (partitions and shared), one record each."""
        if not caller:
            return []
        where = " AND title = ?" if title is not None else ""
        args = (title,) if title is not None else ()
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT title, software_release, software_type, requested_state, parameters, connection, 0 AS shared"
                " FROM partition WHERE slap_state = 'busy' AND (requested_by = '' OR requested_by IS NULL)"
                f"{where} UNION ALL SELECT title, software_release, software_type, requested_state, parameters,"
                f" connection, 1 FROM slave WHERE requested_by = ''{where} ORDER BY title",  # noqa: S608
                args + args).fetchall()
            visible = [r for r in rows if ownership.may_see(conn, "instance", r[0], caller)]
        records = []
        for title_, url, software_type, state, parameters, connection, shared in visible:
            connection_list = [{"connection_key": k, "connection_value": v}
                               for k, v in sorted(load_params(connection).items())]
            records.append({
                "reference": title_, "title": title_, "url_string": url, "source_reference": software_type,
                "slap_state": state, "root_slave": int(shared),
                "text_content": wire.dumps_instance_xml(load_params(parameters)),
                "connection_parameter_list": connection_list,
            })
        return records

    def computers(self, caller: str | None, reference: str | None = None, title: str | None = None) -> list[dict]:
        if not caller:
            return []
        wanted = reference if reference is not None else title
        with self.db.read() as conn:
            if wanted is not None:
                rows = conn.execute("SELECT reference, address FROM computer WHERE reference = ?",
                                    (wanted,)).fetchall()
            else:
                rows = conn.execute("SELECT reference, address FROM computer ORDER BY reference").fetchall()
            records = []
            for ref, address in rows:
                if not ownership.may_see(conn, "computer", ref, caller):
                    continue
                count = conn.execute("SELECT count(*), sum(slap_state = 'busy') FROM partition "
                                     "WHERE computer_reference = ?", (ref,)).fetchone()
                records.append({"reference": ref, "title": ref, "address": address or "",
                                "partition_count": int(count[0] or 0), "busy_partition_count": int(count[1] or 0)})
        return records

    def token(self, caller: str | None, computer: str | None) -> dict:
        if not caller:
            raise _Error("403 Forbidden", "tokens are issued to identified callers only (loopback or certificate)")
        with self.db.write(documents=False) as conn:
            exists = conn.execute("SELECT 1 FROM computer WHERE reference = ?", (computer,)).fetchone()
            if computer is not None and (exists or ownership.owner_of(conn, "computer", computer)):
                if not ownership.may_see(conn, "computer", computer, caller):
                    raise _Error("403 Forbidden", f"computer {computer} is not yours")
            elif computer is not None:  # a new computer: its name is reserved for the caller
                ownership.record(conn, "computer", computer, caller)
            token = ownership.issue_token(conn, caller, computer, self.token_lifetime)
        log.info("issued a one-time computer token%s to %s", f" for {computer}" if computer else "", caller)
        return {"access_token": token, "computer_reference": computer, "expires_in": self.token_lifetime}
