"""Binary cache end to end: the proxy serves as cache server on loopback, the node uploads after a
build and fetches instead of building on a fresh software root; tampered, truncated or badly signed
archives are refused and the release is built instead.

The tests share one node and run in file order (each later one starts from a fresh software root
at the same path: binaries are only valid where they were built).
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from slapos.grid.cache import load_private_key, sign
from slapos.grid.software import COMPLETED, LOG_DIRECTORY, software_key
from tests.conftest import IS_ROOT, make_traversable
from tests.fixtures.node import give_to_nobody

from .conftest import (
    HELLO,
    make_signer,
    run_software,
    software_dir,
    software_states,
    start_cache_node,
    supply,
)


@pytest.fixture(scope="module")
def cache_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    make_traversable(root)
    os.chmod(root, 0o755)
    proxy, node, content, metadata = start_cache_node(root)
    try:
        supply(node, HELLO)
        yield node, content, metadata
    finally:
        proxy.stop()


def fresh_software_root(node, name: str) -> Path:
    """Move the software root away and start again with an empty one at the same path."""
    previous = node.software_root.with_name(node.software_root.name + "-" + name)
    node.software_root.rename(previous)
    node.software_root.mkdir()
    give_to_nobody(node)
    return previous


def was_built(node) -> bool:
    return (software_dir(node, HELLO) / LOG_DIRECTORY).exists()


def test_build_then_upload(cache_node):
    node, content, metadata = cache_node
    run = run_software(node.config_path)
    assert run.returncode == 0, run.output
    assert "uploaded to the binary cache" in run.output
    assert len(list(content.iterdir())) == 1
    entries = json.loads((metadata / f"{software_key(HELLO)}.json").read_text())
    assert json.loads(entries[0][0])["software_url"] == HELLO


def test_fresh_root_fetches_instead_of_building(cache_node):
    node, _, _ = cache_node
    previous = fresh_software_root(node, "built")
    run = run_software(node.config_path)
    assert run.returncode == 0, run.output
    assert "fetched from the binary cache" in run.output
    path = software_dir(node, HELLO)
    assert not was_built(node), "buildout ran although the archive was in the cache"
    assert (path / COMPLETED).exists()
    assert (path / "greeting.txt").read_text() == (previous / software_key(HELLO) / "greeting.txt").read_text()
    assert not (path / ".netrc").exists()
    assert software_states(node.proxy.database)[HELLO]["reported"] == "available"
    if IS_ROOT:
        assert (path / "greeting.txt").stat().st_uid == node.software_root.stat().st_uid != 0
    # nothing left behind by the download
    assert sorted(p.name for p in node.software_root.iterdir()) == [software_key(HELLO)]


def test_tampered_archive_is_refused_and_built(cache_node):
    node, content, _ = cache_node
    fresh_software_root(node, "fetched")
    [archive] = content.iterdir()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    archive.write_bytes(bytes(data))
    run = run_software(node.config_path)
    assert run.returncode == 0, run.output
    assert "does not match its signed SHA-512" in run.output
    assert was_built(node)
    assert "built" in run.output


def test_truncated_archive_is_refused_and_built(cache_node):
    node, content, metadata = cache_node
    fresh_software_root(node, "tampered")
    entries = json.loads((metadata / f"{software_key(HELLO)}.json").read_text())
    newest = json.loads(entries[-1][0])["sha512"]
    archive = content / newest
    archive.write_bytes(archive.read_bytes()[:100])
    run = run_software(node.config_path)
    assert run.returncode == 0, run.output
    assert "truncated" in run.output
    assert was_built(node)


def test_bad_signature_is_refused_and_built(cache_node, tmp_path):
    node, _, metadata = cache_node
    fresh_software_root(node, "truncated")
    # a well-formed entry naming a good archive, signed by a key the node does not trust
    intruder, _ = make_signer(tmp_path, "ed25519", "intruder")
    index = metadata / f"{software_key(HELLO)}.json"
    entries = json.loads(index.read_text())
    forged = [[text, base64.b64encode(sign(load_private_key(intruder), text.encode())).decode()]
              for text, _signature in entries]
    index.write_text(json.dumps(forged))
    run = run_software(node.config_path)
    assert run.returncode == 0, run.output
    assert "signature does not verify" in run.output
    assert was_built(node)
