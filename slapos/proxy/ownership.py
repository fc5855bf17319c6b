"""Who owns what on the proxy, and one-time computer tokens.

* `owner`: (kind, reference) → identity (see identity.py). Recorded when a user requests a root
  instance (kind `instance`, the title) and when a computer is described to the proxy (kind
  `computer`); the first one to do so owns it, later calls never change it. Records from before
  (no owner row) are shown to the proxy's operators only (root, the proxy's own user).
* `computer_token`: one-time tokens `slapos computer token` issues; only their SHA-256 is
  stored. `consume_token` is the single-use exchange (issue 16 trades a token for a certificate).

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
        created REAL NOT NULL, expires REAL NOT NULL, used REAL)""",
)


def ensure_tables(conn: sqlite3.Connection) -> None:
    for statement in TABLES:
        conn.execute(statement)


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
                lifetime: float = DEFAULT_TOKEN_LIFETIME, now: float | None = None) -> str:
    """A new one-time token (returned once, stored hashed), bound to `computer_reference` when given."""
    now = time.time() if now is None else now
    token = new_token()
    conn.execute("DELETE FROM computer_token WHERE expires < ?", (now - 86400,))  # keep the table small
    conn.execute(
        "INSERT INTO computer_token (digest, computer_reference, identity, created, expires) VALUES (?, ?, ?, ?, ?)",
        (_digest(token), computer_reference, identity, now, now + lifetime))
    return token


@dataclass
class TokenGrant:
    computer_reference: str | None
    identity: str  # who issued it: the computer joining with it gets that owner


class TokenRefused(Exception):
    """Unknown, used or expired token: the message says which (for a 403)."""


def consume_token(conn: sqlite3.Connection, token: str, now: float | None = None) -> TokenGrant:
    """Mark the token used and return what it grants; raises TokenRefused. Call inside a write
    transaction: the check and the marking are then one atomic step (a replay finds it used)."""
    now = time.time() if now is None else now
    row = conn.execute("SELECT computer_reference, identity, expires, used FROM computer_token WHERE digest = ?",
                       (_digest(token),)).fetchone()
    if row is None:
        raise TokenRefused("unknown token")
    if row[3] is not None:
        raise TokenRefused("this token was already used: ask for a new one (slapos computer token)")
    if row[2] < now:
        raise TokenRefused("this token has expired: ask for a new one (slapos computer token)")
    conn.execute("UPDATE computer_token SET used = ? WHERE digest = ?", (now, _digest(token)))
    return TokenGrant(row[0], row[1])
