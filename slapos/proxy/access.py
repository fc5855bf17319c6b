"""Who is calling the proxy, and for whom it may act (docs/security-proxy.md).

With `[slapproxy] access = open` (the default, a standalone node whose partitions all run as one
user) every caller may do everything, as with the reference. With `access = credentials` (a node
whose partitions have their own users) every call carries a credential as the first segment of
its path, `/c/<credential>/<endpoint>`: SLAP clients only append endpoint names to `master_url`,
so `master_url = http://127.0.0.1:8080/c/<credential>/` works with every client, the reference's
included. Two kinds of credential:

* the **node credential**, written by the operator in `[slapos] master_url` of the node's
  slapos.cfg (mode 0600): root's node commands and the operator's client act as the node;
* a **partition credential**, created by the proxy when it allocates a partition, revoked when
  it frees it, handed to the node in the computer document (`_slapnode_master_url`, a URL
  relative to the node's own) and written by the node into the partition's `[slap-connection]`.
  A call with it acts only for that partition: its own documents, and requests in its own tree.

A call without a credential gets 403, except the harmless ones (`getRunId`, the index, product
lookups, binary cache downloads). Resolution of a credential to an identity happens here and only
here.

On a TLS proxy (`[slapproxy] tls = true`, docs/join.md) a verified client certificate of the
proxy's CA is the other source of the same `Identity`: the TLS server puts its serial in the
environ (`PEER_SERIAL_KEY`), resolved here against the `certificate` table on every call (so a
revocation is refused at once): a **computer certificate** acts as the node of that computer only
(kind `computer`), a **partition certificate** as that partition, a **user certificate** as
that person (kind `user`): client calls only (requests as a person, supplies, reading the
partitions of the instance trees it owns), never the node's. A call without a certificate is
anonymous whatever the access mode: only the token exchange and the harmless calls answer it.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass

from slapos.slap.connection import CREDENTIAL_PREFIX as PREFIX
from slapos.slap.connection import CREDENTIAL_RE as _CREDENTIAL

from .errors import Forbidden

log = logging.getLogger("slapos.proxy")

OPEN_MODE, CREDENTIALS_MODE = "open", "credentials"
# the environ key holding the credential prefix a call came with (`/c/<credential>`): pages that
# link to the proxy itself (the dashboard) keep it in their links
BASE_KEY = "slapnode.base"
# set by the TLS server (tls.py) from the verified client certificate: its serial, lowercase hex
PEER_SERIAL_KEY = "slapnode.peer_serial"
MODES = (OPEN_MODE, CREDENTIALS_MODE)
_CACHE_MAX = 4096


def new_credential() -> str:
    """A fresh credential: 256 random bits, URL-safe (it travels in a path segment)."""
    return secrets.token_urlsafe(32)


def credential_hash(credential: str) -> str:
    """What the database indexes: a lookup by hash takes the same time whatever the guess."""
    return hashlib.sha256(credential.encode("ascii")).hexdigest()


def partition_url(credential: str) -> str:
    """The partition's master URL, relative to the node's (`…/c/<node>/` → `…/c/<partition>/`)."""
    return f"../{credential}/"


@dataclass(frozen=True)
class Identity:
    """The caller. `kind`: `open` (access = open: anyone acts for anyone), `node` (the node
    credential: the node and its operator), `partition` (a partition credential or certificate),
    `computer` (a computer certificate), `user` (a user certificate: a person) or `anonymous`
    (no credential, access = credentials)."""

    kind: str
    computer_id: str | None = None
    partition_id: str | None = None
    user: str | None = None

    @property
    def owner_id(self) -> str | None:
        """The identity a certificate's caller owns records under (ownership.py, identity.caller);
        None for the others (the socket's Unix user is asked instead)."""
        if self.kind == "user":
            return f"user:{self.user}"
        if self.kind == "computer":
            return f"cert:{self.computer_id}"
        if self.kind == "partition":
            return f"cert:{self.computer_id}/{self.partition_id}"
        return None

    @property
    def trusted(self) -> bool:
        """May act for every partition and computer (the node, or anyone on an open proxy)."""
        return self.kind in (OPEN_MODE, "node")

    def __str__(self) -> str:
        if self.kind == "partition":
            return f"partition {self.partition_id} of {self.computer_id}"
        if self.kind == "computer":
            return f"computer {self.computer_id}"
        if self.kind == "user":
            return f"user {self.user}"
        return self.kind

    def owns(self, computer_id: str | None) -> bool:
        """May act as the node of `computer_id` (the node credential, anyone when open, or that
        computer's certificate)."""
        return self.trusted or (self.kind == "computer" and computer_id is not None
                                and computer_id == self.computer_id)


OPEN = Identity(OPEN_MODE)
NODE = Identity("node")
ANONYMOUS = Identity("anonymous")


def require_node(identity: Identity, what: str, computer_id: str | None = None) -> None:
    """Only the node (or anyone, on an open proxy) may `what`; a computer certificate only for
    its own computer (`computer_id`: the computer the call is about; None: the whole proxy)."""
    if identity.owns(computer_id):
        return
    if identity.kind == "computer":
        target = f"computer {computer_id}" if computer_id else "the whole proxy"
        raise Forbidden(f"{what}: the certificate of {identity} cannot act for {target}")
    if identity.kind == "anonymous":
        raise Forbidden(
            f"{what} needs a credential: this proxy runs with access = credentials; use the "
            "master_url of the node's slapos.cfg"
        )
    raise Forbidden(f"{what} is for the node only, not for {identity}")


def require_partition(identity: Identity, computer_id: str | None, partition_id: str | None, what: str) -> None:
    """The node may act for every partition (a computer certificate for those of its computer),
    a partition credential only for its own partition."""
    if identity.owns(computer_id):
        return
    if identity.kind == "anonymous":
        raise Forbidden(
            f"{what} needs a credential: this proxy runs with access = credentials; use the "
            "server-url of the partition's [slap-connection]"
        )
    if identity.kind == "user":  # a person is no partition, whatever the call names
        raise Forbidden(f"{what} is for the node and its partitions, not for {identity}")
    if (computer_id, partition_id) != (identity.computer_id, identity.partition_id):
        raise Forbidden(
            f"{what}: the credential of {identity} cannot act for partition {partition_id} of {computer_id}"
        )


def _tree(conn: sqlite3.Connection, computer_id: str | None, partition_id: str | None) -> str | None:
    row = conn.execute(
        "SELECT title, requested_by FROM partition WHERE computer_reference = ? AND reference = ? "
        "AND slap_state = 'busy'",
        (computer_id, partition_id),
    ).fetchone()
    return None if row is None else (row[1] or row[0])


def require_tree(
    conn: sqlite3.Connection, identity: Identity, computer_id: str, partition_id: str, what: str
) -> None:
    """Reading: the node reads everything; a partition credential reads its own partition and
    the other partitions of its instance tree (a parent reads what its children published, as
    the SLAP client does after a request), nothing else."""
    if identity.owns(computer_id) or (computer_id, partition_id) == (identity.computer_id, identity.partition_id):
        return
    if identity.kind == "user":  # a person reads the partitions of the trees it requested
        from .ownership import owner_of

        root = _tree(conn, computer_id, partition_id)
        if root is None or owner_of(conn, "instance", root) != identity.owner_id:
            raise Forbidden(f"{what}: the certificate of {identity} cannot read partition {partition_id} of "
                            f"{computer_id}: it is not in an instance tree that user requested")
        return
    if identity.kind != "partition":
        require_partition(identity, computer_id, partition_id, what)  # refuses, with the anonymous' message
    mine = _tree(conn, identity.computer_id, identity.partition_id)
    if mine is None or _tree(conn, computer_id, partition_id) != mine:
        raise Forbidden(
            f"{what}: the credential of {identity} cannot read partition {partition_id} of {computer_id}: "
            "it is not in its instance tree"
        )


class Access:
    """Turns a WSGI environ into an `Identity`, stripping the credential from PATH_INFO."""

    def __init__(self, mode: str, node_credential: str | None, db):
        if mode not in MODES:
            raise ValueError(f"access mode {mode!r}: use {' or '.join(MODES)}")
        self.mode = mode
        self.node_credential = node_credential
        self.db = db
        self._known: dict[str, tuple[int, Identity]] = {}  # credential hash -> (generation, identity)
        self._lock = threading.Lock()

    @property
    def credentials(self) -> bool:
        return self.mode == CREDENTIALS_MODE

    def resolve(self, environ: dict) -> Identity:
        path = environ.get("PATH_INFO") or "/"
        tls = "slapnode.tls" in environ
        if not path.startswith(PREFIX):
            if tls:
                return self._certificate(environ)
            return ANONYMOUS if self.credentials else OPEN
        credential, _, rest = path[len(PREFIX):].partition("/")
        # the endpoint is what follows the credential (which so stays out of the endpoint logged)
        environ["PATH_INFO"] = "/" + rest
        environ[BASE_KEY] = PREFIX + credential
        if not _CREDENTIAL.match(credential):
            raise Forbidden("malformed credential in the URL: use the master_url you were given")
        if tls and environ.get(PEER_SERIAL_KEY):  # the certificate wins over a URL credential
            return self._certificate(environ)
        if self.node_credential and hmac.compare_digest(credential, self.node_credential):
            return NODE
        identity = self._partition(credential_hash(credential))
        if identity is None:
            raise Forbidden("unknown or revoked credential: the partition it belonged to was freed, or it never existed")
        return identity

    def _certificate(self, environ: dict) -> Identity:
        """The identity of the verified client certificate (TLS), looked up on every call."""
        serial = environ.get(PEER_SERIAL_KEY)
        if not serial:
            return ANONYMOUS
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT c.kind, c.computer_reference, c.partition_reference, c.credential_hash, p.credential_hash, "
                "c.user_reference FROM certificate c LEFT JOIN partition p ON p.computer_reference = c.computer_reference "
                "AND p.reference = c.partition_reference AND p.slap_state = 'busy' "
                "WHERE c.serial = ? AND c.revoked IS NULL AND c.expires > ?", (serial, time.time()),
            ).fetchone()
        if row is None:
            raise Forbidden(f"certificate {serial} is revoked, expired or unknown to this proxy")
        kind, computer_id, partition_id, issued_for, current, user = row
        if kind == "computer":
            identity = Identity("computer", computer_id)
        elif kind == "user" and user:
            identity = Identity("user", user=user)
        elif kind == "partition" and issued_for is not None and issued_for == current:
            identity = Identity("partition", computer_id, partition_id)
        else:  # a partition certificate of a partition since freed (its credential changed)
            raise Forbidden(f"certificate {serial} belonged to partition {partition_id} of {computer_id}, since freed")
        # who calls, for the user API's owner records (identity.caller): the certificate, never the socket
        environ["slapos.identity"] = identity.owner_id
        return identity

    def _partition(self, digest: str) -> Identity | None:
        generation = self.db.generation
        known = self._known.get(digest)
        if known is not None and known[0] == generation:
            return known[1]
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT computer_reference, reference FROM partition "
                "WHERE credential_hash = ? AND slap_state = 'busy'",
                (digest,),
            ).fetchone()
        if row is None:
            return None  # unknown credentials are not remembered: guesses must not fill memory
        identity = Identity("partition", row[0], row[1])
        with self._lock:
            if len(self._known) >= _CACHE_MAX:
                self._known.clear()
            self._known[digest] = (generation, identity)
        return identity


def issue(conn: sqlite3.Connection, computer_id: str, partition_id: str) -> None:
    """Give a partition a fresh credential (on allocation): whatever a former tenant of the
    partition kept of the previous one is dead from now on."""
    credential = new_credential()
    conn.execute(
        "UPDATE partition SET credential = ?, credential_hash = ? WHERE computer_reference = ? AND reference = ?",
        (credential, credential_hash(credential), computer_id, partition_id),
    )


def issue_missing(conn: sqlite3.Connection) -> int:
    """Credentials for busy partitions that have none (a database from before credentials)."""
    rows = conn.execute(
        "SELECT computer_reference, reference FROM partition WHERE slap_state = 'busy' AND credential IS NULL"
    ).fetchall()
    for computer_id, partition_id in rows:
        issue(conn, computer_id, partition_id)
    return len(rows)
