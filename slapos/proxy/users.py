"""What a person may change on the proxy (docs/join.md, "Users"): the instance trees it owns
and the software it supplied.

* **Instance trees.** A person's root instance (partition or shared, `requested_by = ''`) is
  owned by whoever requested it first (ownership.py, kind `instance`). A caller identified by a
  certificate (a user, or a node acting as a person) may request a new title, or change a tree
  it owns; another's tree, or one requested before owners were recorded, is refused. The
  proxy's operators (open access, the node credential) keep acting for everyone, as with the
  reference.
* **Software.** A user may supply a software release to any computer; it may remove only what
  it supplied first (kind `supply`, reference `<computer> <url>`), so that no user uninstalls
  the software of another's instances.

Every refusal is a Forbidden raised inside the caller's write transaction: nothing is kept.
"""
from __future__ import annotations

import sqlite3

from . import identity as callers
from . import ownership
from .access import Identity
from .errors import Forbidden

# identities whose owner records come from their certificate (Identity.owner_id)
CERTIFIED = ("user", "computer")


def _person_instance_exists(conn: sqlite3.Connection, title: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM partition WHERE slap_state = 'busy' AND requested_by = '' AND title = ? "
        "UNION ALL SELECT 1 FROM slave WHERE requested_by = '' AND title = ? LIMIT 1", (title, title)).fetchone() is not None


def claim_tree(conn: sqlite3.Connection, who: Identity, environ: dict, title: str) -> None:
    """Before a person's request of root instance `title`: refuse another's tree, record the
    owner of a new one."""
    owner = ownership.owner_of(conn, "instance", title)
    mine = who.owner_id if who.kind in CERTIFIED else None
    if mine is None:  # operators, loopback users: the Unix user is asked only for a new tree (~50 µs)
        if owner is None:
            ownership.record(conn, "instance", title, callers.caller(environ))
        return
    if owner == mine:
        return
    if owner is not None:
        raise Forbidden(f"requesting instance {title!r}: it belongs to someone else; choose another name")
    if _person_instance_exists(conn, title):
        raise Forbidden(f"requesting instance {title!r}: it was requested before owners were recorded; "
                        "only the proxy's operator may change it")
    ownership.record(conn, "instance", title, mine)


def _supply_reference(computer_id: str, url: str) -> str:
    return f"{computer_id} {url}"


def check_supply(conn: sqlite3.Connection, who: Identity, url: str, computer_id: str, state: str) -> None:
    """A user's supply: installing anywhere, removing only what it supplied first."""
    reference = _supply_reference(computer_id, url)
    owner = ownership.owner_of(conn, "supply", reference)
    if state == "destroyed":
        if owner != who.owner_id:
            raise Forbidden(f"removing {url} from {computer_id}: {who} did not supply it; ask whoever did, or "
                            "the proxy's operator")
        conn.execute("DELETE FROM owner WHERE kind = 'supply' AND reference = ?", (reference,))
    elif owner is None:
        ownership.record(conn, "supply", reference, who.owner_id)
