"""Attacks on the ownership of instance trees on a shared TLS proxy (docs/join.md, "Users"): the
paths a tenant or a node reaches that the user-certificate checks (users.py) do not pass through.

* `softwareInstanceRename` of a root: the tree's name is its title, and the owner records are
  keyed by it. A partition (its tenant, with the partition's certificate, or the node hosting it)
  renaming its root into a title another user owns would take that user's next request of the
  title (its parameters, its secrets) into the attacker's partition; renaming into a title whose
  tree still has members would join that tree. Refused; a rename keeps the tree's owner.
* Supplies: a user removes only what it supplied first. Supplying again what the node or the
  operator supplied before does not make it the first (it would then uninstall the software of
  everyone's instances on that computer).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.proxy.test_join import SR
from tests.security.proxy.test_user_certs import Pool


def partition_of(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split("edge-a/")[1].split()[0]


def partition_certificate(pool: Pool, partition: str, directory: Path) -> tuple[Path, Path]:
    """What the tenant of `partition` holds: its certificate and key (the node writes them into it)."""
    got = pool.node.slap().registerComputerPartition("edge-a", partition).getCertificate()
    cert, key = directory / f"{partition}.crt", directory / f"{partition}.key"
    cert.write_text(got["certificate"])
    key.write_text(got["key"])
    return cert, key


def rename(pool: Pool, partition: str, new_name: str, cert: tuple[Path, Path]) -> tuple[int, str]:
    return pool.call("POST", "softwareInstanceRename", {"computer_id": "edge-a", "computer_partition_id": partition,
                                                        "new_name": new_name}, cert=cert)


@pytest.fixture
def pool(tmp_path):
    """test_user_certs' TLS proxy with its registered node `edge-a`."""
    made = Pool(tmp_path)
    try:
        yield made
    finally:
        made.proxy.stop()


@pytest.fixture
def alice_and_bob(pool):
    alice, bob = pool.user("alice"), pool.user("bob")
    assert alice.run("supply", SR, "edge-a").returncode == 0
    return alice, bob


def test_a_partition_cannot_rename_its_root_into_a_title_another_user_owns(pool, alice_and_bob, tmp_path):
    alice, bob = alice_and_bob
    mine = partition_of(alice.request("tree-a"))
    theirs = partition_of(bob.request("tree-b"))
    # bob destroys his tree and the node frees its partition: the title stays bob's
    assert bob.request("tree-b", "--state", "destroyed").returncode == 0
    pool.node.slap().registerComputerPartition("edge-a", theirs).destroyed()
    assert bob.trees() == []
    tenant = partition_certificate(pool, mine, tmp_path)
    before = pool.database()
    status, body = rename(pool, mine, "tree-b", tenant)
    assert status == 403, body
    assert "belongs to someone else" in body
    # the node hosting alice's partition (its computer certificate) is refused the same
    status, body = pool.call("POST", "softwareInstanceRename", {
        "computer_id": "edge-a", "computer_partition_id": mine, "new_name": "tree-b"},
        cert=(Path(pool.node.config.get("slapos", "cert_file")), Path(pool.node.config.get("slapos", "key_file"))))
    assert status == 403, body
    assert pool.database() == before
    # bob asks for his tree again, with a secret: it lands on a partition of its own, not in alice's
    again = partition_of(bob.request("tree-b", "--parameters", "password=s3cret"))
    assert again != mine
    assert "s3cret" not in str(alice.slap().registerComputerPartition("edge-a", mine).getInstanceParameterDict())


def test_a_renamed_root_stays_its_owners_tree(pool, alice_and_bob, tmp_path):
    alice, bob = alice_and_bob
    mine = partition_of(alice.request("tree-a"))
    status, body = rename(pool, mine, "tree-a2", partition_certificate(pool, mine, tmp_path))
    assert status == 200, body
    assert alice.trees() == ["tree-a2"]
    # alice still reads and changes it; bob still cannot
    assert alice.slap().registerComputerPartition("edge-a", mine).getInstanceParameterDict()["instance_title"] == "tree-a2"
    assert partition_of(alice.request("tree-a2", "--parameters", "colour=red")) == mine
    refused = bob.run("request", "tree-a2", SR, "--state", "destroyed")
    assert refused.returncode == 1 and "someone else" in refused.stderr, refused.stderr


def test_a_root_is_not_renamed_into_a_tree_that_still_has_members(pool, alice_and_bob, tmp_path):
    alice, bob = alice_and_bob
    mine = partition_of(alice.request("tree-a"))
    assert bob.run("supply", SR, "edge-a").returncode == 0
    # bob's shared instance titled like a tree (a root of its own, on alice's partition as host)
    shared = bob.run("request", "tree-s", SR, "--slave", "--node", "computer_guid=edge-a")
    assert shared.returncode == 0, shared.stderr
    tenant = partition_certificate(pool, mine, tmp_path)
    before = pool.database()
    status, body = rename(pool, mine, "tree-s", tenant)
    assert status == 403, body
    assert pool.database() == before



def test_a_user_supplying_again_what_the_node_supplied_cannot_remove_it(pool):
    alice = pool.user("alice")
    pool.node.slap().registerSupply().supply(SR, "edge-a")  # the node's own supply (its certificate)
    assert alice.run("supply", SR, "edge-a").returncode == 0  # harmless: it is there already
    before = pool.database()
    removed = alice.run("remove", SR, "edge-a")
    assert removed.returncode == 1 and "did not supply" in removed.stderr, removed.stderr
    assert pool.database() == before


def test_a_destroyed_trees_title_is_free_again_and_the_new_tree_is_the_new_requesters(pool, alice_and_bob):
    """bob's tree is destroyed and its partition freed: alice may take the title; the new tree
    is hers, and bob (the former owner) reads nothing of it nor changes it."""
    alice, bob = alice_and_bob
    theirs = partition_of(bob.request("tree-b"))
    assert bob.request("tree-b", "--state", "destroyed").returncode == 0
    pool.node.slap().registerComputerPartition("edge-a", theirs).destroyed()
    mine = partition_of(alice.request("tree-b", "--parameters", "password=s3cret"))
    assert alice.trees() == ["tree-b"] and bob.trees() == []
    info = bob.run("service", "info", "tree-b")
    assert info.returncode == 2 and "s3cret" not in info.stdout + info.stderr
    refused = bob.run("request", "tree-b", SR, "--state", "destroyed")
    assert refused.returncode == 1 and "someone else" in refused.stderr, refused.stderr
    assert alice.slap().registerComputerPartition("edge-a", mine).getInstanceParameterDict()["password"] == "s3cret"


def test_a_title_is_not_free_while_anything_of_its_tree_is_left(pool, alice_and_bob):
    """Destroyed but not yet freed by the node, or a shared instance of that title kept: still
    the owner's (the proxy keeps the shared instance's row and data)."""
    alice, bob = alice_and_bob
    theirs = partition_of(bob.request("tree-b"))
    assert bob.request("tree-b", "--state", "destroyed").returncode == 0  # the node has not freed it yet
    refused = alice.request("tree-b")
    assert refused.returncode == 1 and "someone else" in refused.stderr, refused.stderr
    pool.node.slap().registerComputerPartition("edge-a", theirs).destroyed()
    assert bob.run("supply", SR, "edge-a").returncode == 0
    partition_of(alice.request("host"))
    assert bob.run("request", "shared-b", SR, "--slave", "--node", "computer_guid=edge-a").returncode == 0
    assert bob.run("request", "shared-b", SR, "--slave", "--state", "destroyed",
                   "--node", "computer_guid=edge-a").returncode == 0
    refused = alice.run("request", "shared-b", SR, "--slave", "--node", "computer_guid=edge-a")
    assert refused.returncode == 1 and "someone else" in refused.stderr, refused.stderr


def test_a_supply_owner_key_names_one_computer_and_url_however_they_are_spelled(pool):
    """`<computer> <url>` was the key: a computer's name may hold a space, so alice supplying
    `b SR` to the proxy's default computer `unused` made her the first supplier of SR on the
    computer `unused b`, supplied by the operator: she could then uninstall it under everyone's
    instances."""
    import sqlite3

    # a computer described over the plain listener before TLS was turned on (any name was taken
    # there), and the operator's supply to it (no owner recorded)
    conn = sqlite3.connect(pool.proxy.database)
    with conn:
        conn.execute("INSERT INTO computer (reference, address, netmask) VALUES ('unused b', '127.0.0.2', '255.0.0.0')")
        conn.execute("INSERT INTO software (url, computer_reference) VALUES (?, 'unused b')", (SR,))
    conn.close()
    alice = pool.user("alice")
    status, body = pool.call("POST", "supplySupply", {"url": "b " + SR, "computer_id": "unused", "state": "available"},
                             cert=alice.cert)
    assert status == 200, body
    before = pool.database()
    status, body = pool.call("POST", "supplySupply", {"url": SR, "computer_id": "unused b", "state": "destroyed"},
                             cert=alice.cert)
    assert status == 403 and "did not supply" in body, body
    assert pool.database() == before


def test_supply_owner_records_of_the_first_format_are_rewritten_at_start(pool, tmp_path):
    """A database from before: alice's record `<computer> <url>` still lets her remove what she
    supplied once the proxy restarts; an ambiguous one (two supplies spell it) is dropped."""
    import sqlite3

    from tests.security.proxy.test_join import TLSProxy

    alice = pool.user("alice")
    for url, computer in ((SR, "edge-a"), ("b " + SR, "unused")):
        status, body = pool.call("POST", "supplySupply", {"url": url, "computer_id": computer, "state": "available"},
                                 cert=alice.cert)
        assert status == 200, body
    pool.proxy.stop()
    conn = sqlite3.connect(pool.proxy.database)
    with conn:
        conn.execute("UPDATE owner SET reference = ? WHERE kind = 'supply' AND reference = ?",
                     (f"edge-a {SR}", f'["edge-a","{SR}"]'))
        conn.execute("UPDATE owner SET reference = ? WHERE kind = 'supply' AND reference = ?",
                     (f"unused b {SR}", f'["unused","b {SR}"]'))
        # the operator's supply to a computer `unused b`: the first format cannot tell it apart
        conn.execute("INSERT INTO computer (reference, address, netmask) VALUES ('unused b', '127.0.0.2', '255.0.0.0')")
        conn.execute("INSERT INTO software (url, computer_reference) VALUES (?, 'unused b')", (SR,))
    conn.close()
    pool.proxy = TLSProxy(pool.proxy.directory)
    conn = sqlite3.connect(pool.proxy.database)
    keys = sorted(r[0] for r in conn.execute("SELECT reference FROM owner WHERE kind = 'supply'"))
    conn.close()
    assert keys == [f'["edge-a","{SR}"]']
    status, body = pool.call("POST", "supplySupply", {"url": SR, "computer_id": "edge-a", "state": "destroyed"},
                             cert=alice.cert)
    assert status == 200, body
    status, body = pool.call("POST", "supplySupply", {"url": SR, "computer_id": "unused b", "state": "destroyed"},
                             cert=alice.cert)
    assert status == 403 and "did not supply" in body, body
