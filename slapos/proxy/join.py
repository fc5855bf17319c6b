"""Joining a TLS proxy (docs/join.md): the token exchanges of `slapos node register`
(`Person_requestComputer`) and of `slapos configure client --token` (`Person_getCertificate`),
and the partitions' certificates (`getComputerPartitionCertificate`).
The certificate authority itself is `ca.py`; turning a certificate into an identity, `access.py`.
"""
from __future__ import annotations

import json
import logging
import time

from . import allocation, ca, ownership
from .access import Identity
from .db import Database
from .errors import BadRequest, Conflict, Forbidden
from .identity import proxy_operators
from .wsgi import Request, Response

log = logging.getLogger("slapos.proxy")


def request_computer(db: Database, authority: ca.CertificateAuthority, req: Request, tls: bool) -> Response:
    """`slapos node register`: the token of `X-Access-Token` for a certificate of computer
    `title` (JSON `certificate`, `key`). The token is spent only when a certificate is issued.

    Only a TLS proxy signs, and only for a token of its operator (root, the proxy's user): on a
    plain proxy every local user (a partition's tenant too) gets computer tokens through HATEOAS,
    and a certificate or a token got there would let a rogue node into the proxy once the
    operator turns TLS on over the same database and CA, where it is allocated everyone's
    instances."""

    token = req.environ.get("HTTP_X_ACCESS_TOKEN", "").strip()
    title = req.reference("title")
    if not tls:
        raise Forbidden("this proxy serves plain HTTP and asks for no certificate: computer certificates are for a "
                        "TLS proxy ([slapproxy] tls = true, docs/join.md)")
    if not token:
        raise Forbidden("no token: send the one-time token of `slapos computer token` in X-Access-Token")
    if not ca.COMPUTER_ID.match(title):
        raise BadRequest("computer name: letters, digits, '.', '_', '-' and '@' only (at most 128)")
    with db.write(documents=False) as conn:
        try:
            grant = ownership.consume_token(conn, token)
        except ownership.TokenRefused as e:
            raise Forbidden(f"token refused: {e}") from None
        if grant.identity not in proxy_operators():  # a local user's token of the proxy's plain-HTTP days
            raise Forbidden(f"token refused: it was issued to {grant.identity}; a computer joins this proxy with a "
                            "token of its operator (slapos proxy token)")
        if grant.computer_reference not in (None, title):
            raise Forbidden(f"token refused: it is for computer {grant.computer_reference}, not {title}")
        active = ca.active_computer_certificate(conn, title)
        if active is not None:
            raise Conflict(f"Certificate still active. computer {title} has certificate {active}: revoke it "
                           "(slapos proxy revoke) to replace that node, or choose another name")
        # the operator's token takes a name a local user reserved (HATEOAS token): that user must
        # not see, nor get tokens for, the operator's node
        conn.execute("DELETE FROM owner WHERE kind = 'computer' AND reference = ? AND identity != ?",
                     (title, grant.identity))
        # signed only for a good token (an anonymous caller must not make the proxy sign for nothing)
        issued = authority.issue(title, "computer")
        ownership.record(conn, "computer", title, grant.identity)
        ca.record(conn, issued, "computer", title)
    log.info("issued computer certificate %s for %s (token of %s)", issued.serial, title, grant.identity)
    body = json.dumps({"certificate": issued.certificate, "key": issued.key}).encode("utf-8")
    return Response(body, content_type="application/json", headers=(("Cache-Control", "no-store"),))


def user_certificate(db: Database, authority: ca.CertificateAuthority, req: Request, tls: bool) -> Response:
    """`slapos configure client --token`: the user token of `X-Access-Token` for a certificate of
    that user (JSON `certificate`, `key`, as a SlapOS Master answers). Only a TLS proxy asks for
    client certificates: a plain-HTTP one refuses, without spending the token."""
    token = req.environ.get("HTTP_X_ACCESS_TOKEN", "").strip()
    if not tls:
        raise Forbidden("this proxy serves plain HTTP and asks for no certificate: user certificates are for a "
                        "TLS proxy ([slapproxy] tls = true, docs/join.md)")
    if not token:
        raise Forbidden("no token: send the one-time token of `slapos proxy token --user NAME` in X-Access-Token")
    with db.write(documents=False) as conn:
        try:
            grant = ownership.consume_token(conn, token, purpose=ownership.USER)
        except ownership.TokenRefused as e:
            raise Forbidden(f"token refused: {e}") from None
        assert grant.user is not None  # consume_token refuses a computer token here
        issued = authority.issue(grant.user, ca.USER)
        ca.record(conn, issued, ca.USER, "", user=grant.user)
    log.info("issued user certificate %s for %s (token of %s)", issued.serial, grant.user, grant.identity)
    body = json.dumps({"certificate": issued.certificate, "key": issued.key}).encode("utf-8")
    return Response(body, content_type="application/json", headers=(("Cache-Control", "no-store"),))


def partition_certificate(db: Database, authority: ca.CertificateAuthority, computer_id: str, partition_id: str) -> dict:
    """The partition's certificate (TLS proxy): issued once per allocation of the partition
    (bound to its credential, which changes when it is freed and allocated again), kept in
    the database so the periodic `getCertificate` of the node costs a look-up."""
    with db.read() as conn:
        allocation.any_partition(conn, computer_id, partition_id)
        row = conn.execute(
            "SELECT c.certificate_pem, c.key_pem FROM certificate c JOIN partition p "
            "ON p.computer_reference = c.computer_reference AND p.reference = c.partition_reference "
            "WHERE c.kind = 'partition' AND c.computer_reference = ? AND c.partition_reference = ? "
            "AND c.revoked IS NULL AND c.expires > ? AND c.credential_hash = p.credential_hash "
            "AND p.slap_state = 'busy'", (computer_id, partition_id, time.time())).fetchone()
    if row is not None:
        return {"certificate": row[0], "key": row[1]}
    issued = authority.issue(f"{computer_id}/{partition_id}", "partition")
    with db.write(documents=False) as conn:
        current = conn.execute("SELECT credential_hash FROM partition WHERE computer_reference = ? AND "
                               "reference = ? AND slap_state = 'busy'", (computer_id, partition_id)).fetchone()
        if current is None or current[0] is None:  # a free partition gets no certificate
            return {"certificate": "", "key": ""}
        ca.revoke_partition(conn, computer_id, partition_id)
        ca.record(conn, issued, "partition", computer_id, partition_id, credential_hash=current[0],
                  pem=(issued.certificate, issued.key))
    return {"certificate": issued.certificate, "key": issued.key}


def require_own_tree(conn, identity: Identity, person: str | None, title: str, filter_kw: dict) -> None:
    """A computer certificate requesting without a partition (`slapos request` with the node's
    configuration) acts as a person kept to its computer: it places instances on that computer
    only (filter `computer_guid` is set to it) and requests again only the trees it requested
    (owner `cert:<computer>`): another node must not change, stop or destroy them by their title."""
    computer_id = identity.computer_id
    guid = filter_kw.get("computer_guid")
    if guid not in (None, computer_id):
        raise Forbidden(f"requesting an instance: the certificate of computer {computer_id} places instances on "
                        f"that computer only, not on {guid}")
    filter_kw["computer_guid"] = computer_id
    owner = ownership.owner_of(conn, "instance", title)
    exists = conn.execute("SELECT 1 FROM partition WHERE slap_state = 'busy' AND title = ? AND requested_by = ''",
                          (title,)).fetchone()
    if (owner is not None and owner != person) or (owner is None and exists is not None):
        raise Forbidden(f"requesting an instance: {title!r} was not requested by computer {computer_id}: its "
                        "certificate changes only the instances it requested")
