"""What a person may change on the proxy (docs/join.md, "Users"): the instance trees it owns
and the software it supplied.

* **Instance trees.** A person's root instance (partition or shared, `requested_by = ''`) is
  owned by whoever requested it first (ownership.py, kind `instance`). A caller identified by a
  certificate (a user, or a node acting as a person) may request a new title, or change a tree
  it owns; another's tree, or one requested before owners were recorded, is refused. The
  proxy's operators (open access, the node credential) keep acting for everyone, as with the
  reference. A title whose tree is gone (every partition of it destroyed and freed, no shared
  instance of it kept) is free again: whoever requests it next, a user or an operator, owns the
  new tree; the former owner's record goes (else it would read the newcomer's instance).
* **Renaming a root** (`softwareInstanceRename`, by its partition or its node): the tree's name
  is its title, which the owner records are keyed by. The new title must be free of another's
  owner record and of any instance (a root, or members of a tree of that name): else the next
  request of that title by its owner (its parameters, its secrets) would land in the renamed
  partition, or the partition would join that tree. The tree keeps its owner under the new title.
* **Software.** A user may supply a software release to any computer; it may remove only what
  it supplied first (kind `supply`, reference the JSON array `[computer, url]`), so that no user
  uninstalls the software of another's instances; supplying again what is supplied already (by
  the node or the operator, who record no owner) makes no one first. The first format,
  `<computer> <url>`, was ambiguous (a computer's name may hold spaces: `a` + `b c` and `a b` +
  `c` were one key); its records are rewritten at the proxy's start when one supply matches,
  dropped otherwise (the operator removes those).

Every refusal is a Forbidden raised inside the caller's write transaction: nothing is kept.
"""
from __future__ import annotations

import json
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


def _tree_exists(conn: sqlite3.Connection, title: str) -> bool:
    """Whether anything of tree `title` is left: a busy partition (its root or a member), or a
    shared instance row (kept, destroyed or not: re-requested, it would carry its old data)."""
    return conn.execute(
        "SELECT 1 FROM partition WHERE slap_state = 'busy' AND ((requested_by = '' AND title = ?) OR requested_by = ?) "
        "UNION ALL SELECT 1 FROM slave WHERE (requested_by = '' AND title = ?) OR requested_by = ? LIMIT 1",
        (title, title, title, title)).fetchone() is not None


def claim_tree(conn: sqlite3.Connection, who: Identity, environ: dict, title: str) -> None:
    """Before a person's request of root instance `title`: refuse another's tree, record the
    owner of a new one."""
    owner = ownership.owner_of(conn, "instance", title)
    mine = who.owner_id if who.kind in CERTIFIED else None
    if owner is not None and owner != mine and not _tree_exists(conn, title):
        # the former owner's tree is gone: the title is free, the new tree the requester's
        conn.execute("DELETE FROM owner WHERE kind = 'instance' AND reference = ?", (title,))
        owner = None
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


def check_rename(conn: sqlite3.Connection, computer_id: str, partition_id: str, new_name: str) -> None:
    """Before `softwareInstanceRename`: a root takes no title another owns or another tree uses;
    its owner record follows it (the old title stays recorded: a title is never handed on)."""
    row = conn.execute("SELECT title, requested_by FROM partition WHERE computer_reference = ? AND reference = ? "
                       "AND slap_state = 'busy'", (computer_id, partition_id)).fetchone()
    if row is None or row[1] or row[0] == new_name:
        return  # not busy (allocation says so), a member renamed inside its tree, or no change
    owner = ownership.owner_of(conn, "instance", row[0])
    taken = ownership.owner_of(conn, "instance", new_name)
    if taken is not None and taken != owner:
        raise Forbidden(f"renaming instance {row[0]!r} to {new_name!r}: that title belongs to someone else")
    used = conn.execute(
        "SELECT 1 FROM partition WHERE slap_state = 'busy' AND requested_by = ? "
        "UNION ALL SELECT 1 FROM slave WHERE requested_by = ? OR (requested_by = '' AND title = ?) LIMIT 1",
        (new_name, new_name, new_name)).fetchone()
    if used is not None:
        raise Forbidden(f"renaming instance {row[0]!r} to {new_name!r}: instances of that name exist; choose another")
    ownership.record(conn, "instance", new_name, owner)


def _supply_reference(computer_id: str, url: str) -> str:
    return json.dumps([computer_id, url], ensure_ascii=False, separators=(",", ":"))


def _is_pair(reference: str) -> bool:
    try:
        value = json.loads(reference)
    except ValueError:
        return False
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def migrate_supply_owners(conn: sqlite3.Connection) -> None:
    """At the proxy's start: supply owner records of the first format (`<computer> <url>`) get
    the JSON key of the one supply they can name; a stale or ambiguous one is dropped (no user
    may then remove that supply: the safe side)."""
    rows = conn.execute("SELECT reference, identity, created FROM owner WHERE kind = 'supply'").fetchall()
    for reference, identity, created in rows:
        if _is_pair(reference):
            continue
        matches = conn.execute("SELECT computer_reference, url FROM software WHERE computer_reference || ' ' || url = ?",
                               (reference,)).fetchall()
        conn.execute("DELETE FROM owner WHERE kind = 'supply' AND reference = ?", (reference,))
        if len(matches) == 1:
            conn.execute("INSERT OR IGNORE INTO owner (kind, reference, identity, created) VALUES ('supply', ?, ?, ?)",
                         (_supply_reference(*matches[0]), identity, created))


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
        # first only if it was not supplied already (by the node or the operator, who record no
        # owner): else supplying it again would let this user uninstall everyone's software
        present = conn.execute("SELECT 1 FROM software WHERE url = ? AND computer_reference = ? "
                               "AND requested_state = 'available'", (url, computer_id)).fetchone()
        if present is None:
            ownership.record(conn, "supply", reference, who.owner_id)
