"""Who owns what on the proxy, and one-time computer tokens.

* `owner`: (kind, reference) → identity (see identity.py). Recorded when a user requests a root
  instance (kind `instance`, the title) and when a computer is described to the proxy (kind
  `computer`); the first one to do so owns it, later calls never change it. Records from before
  (no owner row) are shown to the proxy's operators only (root, the proxy's own user).
* `computer_token`: one-time tokens `slapos computer token` and `slapos proxy token` issue; only
  their SHA-256 is stored. `consume_token` is the single-use exchange (a token for a certificate,
  docs/join.md). A token with a `user_reference` is for that user's certificate (`slapos proxy
  token --user NAME`, exchanged by `slapos configure client --token`), never for a computer's,
  and the other way round.

Both tables are created on the proxy's start (`ensure_tables`), so they need no schema migration.
"""
from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .identity import proxy_operators

DEFAULT_TOKEN_LIFETIME = 3600.0

TABLES = (
    """CREATE TABLE IF NOT EXISTS owner (
        kind TEXT NOT NULL, reference TEXT NOT NULL, identity TEXT NOT NULL, created REAL NOT NULL,
        PRIMARY KEY (kind, reference))""",
    """CREATE TABLE IF NOT EXISTS computer_token (
        digest TEXT PRIMARY KEY, computer_reference TEXT, identity TEXT NOT NULL,
        created REAL NOT NULL, expires REAL NOT NULL, used REAL, user_reference TEXT)""",
)
USER, COMPUTER = "user", "computer"
_HINTS = {USER: "slapos proxy token --user NAME", COMPUTER: "slapos computer token, or slapos proxy token"}


def ensure_tables(conn: sqlite3.Connection) -> None:
    for statement in TABLES:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(computer_token)")}
    if "user_reference" not in columns:  # a database from before user certificates
        conn.execute("ALTER TABLE computer_token ADD COLUMN user_reference TEXT")


def record(conn: sqlite3.Connection, kind: str, reference: str, identity: str | None) -> None:
    if identity:
        conn.execute("INSERT OR IGNORE INTO owner (kind, reference, identity, created) VALUES (?, ?, ?, ?)",
                     (kind, reference, identity, time.time()))


def owner_of(conn: sqlite3.Connection, kind: str, reference: str) -> str | None:
    row = conn.execute("SELECT identity FROM owner WHERE kind = ? AND reference = ?", (kind, reference)).fetchone()
    return row[0] if row else None


def may_see(conn: sqlite3.Connection, kind: str, reference: str, identity: str | None) -> bool:
    if not identity:
        return False
    owner = owner_of(conn, kind, reference)
    return owner == identity or (owner is None and identity in proxy_operators())


def visible(conn: sqlite3.Connection, kind: str, references: Iterable[str], identity: str | None) -> list[str]:
    return [r for r in references if may_see(conn, kind, r, identity)]


# -- tokens -------------------------------------------------------------------------------------

def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """256 random bits, URL-safe, never starting with "-".

    People paste tokens after an option (`--token TOKEN`): one starting with "-" would be read
    as an option and refused, about once in 32 tokens.
    """
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def issue_token(conn: sqlite3.Connection, identity: str, computer_reference: str | None,
                lifetime: float = DEFAULT_TOKEN_LIFETIME, now: float | None = None, user: str | None = None) -> str:
    """A new one-time token (returned once, stored hashed), bound to `computer_reference` when
    given; with `user`, a token for that user's certificate instead (no computer)."""
    if user is not None and computer_reference is not None:
        raise ValueError("a token is for a computer or for a user, not both")
    now = time.time() if now is None else now
    token = new_token()
    conn.execute("DELETE FROM computer_token WHERE expires < ?", (now - 86400,))  # keep the table small
    conn.execute(
        "INSERT INTO computer_token (digest, computer_reference, identity, created, expires, user_reference) "
        "VALUES (?, ?, ?, ?, ?, ?)", (_digest(token), computer_reference, identity, now, now + lifetime, user))
    return token


@dataclass
class TokenGrant:
    computer_reference: str | None
    identity: str  # who issued it: the computer joining with it gets that owner
    user: str | None = None  # a user token: the user the certificate is for


class TokenRefused(Exception):
    """Unknown, used or expired token: the message says which (for a 403)."""


def consume_token(conn: sqlite3.Connection, token: str, now: float | None = None,
                  purpose: str = COMPUTER) -> TokenGrant:
    """Mark the token used and return what it grants; raises TokenRefused. Call inside a write
    transaction: the check and the marking are then one atomic step (a replay finds it used).
    `purpose`: COMPUTER (a computer certificate) or USER; a token of the other kind is refused
    and stays usable for its own purpose."""
    now = time.time() if now is None else now
    row = conn.execute("SELECT computer_reference, identity, expires, used, user_reference FROM computer_token "
                       "WHERE digest = ?", (_digest(token),)).fetchone()
    if row is None:
        raise TokenRefused("unknown token")
    if purpose == COMPUTER and row[4] is not None:
        raise TokenRefused(f"this token is for the certificate of user {row[4]} (slapos configure client --token), "
                           "not for a computer")
    if purpose == USER and row[4] is None:
        raise TokenRefused("this token is for a computer (slapos node register), not for a user certificate: "
                           f"ask for one made by {_HINTS[USER]}")
    if row[3] is not None:
        raise TokenRefused(f"this token was already used: ask for a new one ({_HINTS[purpose]})")
    if row[2] < now:
        raise TokenRefused(f"this token has expired: ask for a new one ({_HINTS[purpose]})")
    conn.execute("UPDATE computer_token SET used = ? WHERE digest = ?", (now, _digest(token)))
    return TokenGrant(row[0], row[1], row[4])
