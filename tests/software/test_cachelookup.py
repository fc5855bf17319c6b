"""`slapos cachelookup binary-sr|url|pypi` against the binary cache a real proxy serves."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys

import pytest
import requests

from slapos.grid.cache import load_private_key, platform_tags, sign
from tests.conftest import REPO, make_traversable

from .conftest import make_signer, start_cache_node

URL = "http://sr.example/cached.cfg"


@pytest.fixture
def cache_node(tmp_path):
    make_traversable(tmp_path)
    proxy, node, _content, _metadata = start_cache_node(tmp_path / "cache")
    try:
        yield proxy, node, tmp_path
    finally:
        proxy.stop()


def publish(proxy, key: str, metadata: dict, key_file) -> None:
    body = os.urandom(64)
    sha512 = hashlib.sha512(body).hexdigest()
    base = proxy.url + "shacache"
    assert requests.put(f"{base}/cache/{sha512}", data=body, timeout=10).status_code == 201
    text = json.dumps({**metadata, "sha512": sha512}, sort_keys=True)
    signature = base64.b64encode(sign(load_private_key(key_file), text.encode())).decode()
    assert requests.put(f"{base}/dir/{key}", data=json.dumps([text, signature]), timeout=10).status_code == 201


def lookup(node, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", "cachelookup", *args, "--cfg",
                           str(node.config_path)], capture_output=True, text=True, env=env, timeout=60)


def test_binary_sr_url_and_pypi(cache_node):
    proxy, node, tmp_path = cache_node
    trusted_key = tmp_path / "cache" / "signer.key"
    stranger_key, _certificate = make_signer(tmp_path, name="stranger")
    tags = platform_tags()
    md5 = hashlib.md5(URL.encode()).hexdigest()
    release = {"software_url": URL, "software_root": str(node.software_root), **tags}
    publish(proxy, md5, release, trusted_key)
    publish(proxy, md5, {**release, "os": ["otheros", "1", "x"]}, trusted_key)
    publish(proxy, md5, {**release, "multiarch": "forged"}, stranger_key)

    done = lookup(node, "binary-sr", URL, "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["compatible"], r["verified"]) for r in rows] == [("no", "no"), ("no", "yes"), ("yes", "yes")]
    assert json.loads(lookup(node, "binary-sr", md5, "--format", "json").stdout) == rows
    table = lookup(node, "binary-sr", URL)
    assert table.returncode == 0 and "COMPATIBLE?" in table.stdout and md5 in table.stdout
    missing = lookup(node, "binary-sr", "http://sr.example/never.cfg")
    assert missing.returncode == 1 and "not in the cache" in missing.stderr

    # the node configures no generic cache: the proxy's own one is used
    page = "https://example.com/dist/foo-1.0.tar.gz"
    publish(proxy, "file-urlmd5:" + hashlib.md5(page.encode()).hexdigest(), {"url": page}, trusted_key)
    [entry] = json.loads(lookup(node, "url", page, "--format", "json").stdout)
    assert entry["url"] == page and entry["verified"] == "yes"

    publish(proxy, "pypi:foo=1.0", {"basename": "foo-1.0.tar.gz"}, stranger_key)
    for args in (("foo", "1.0"), ("foo==1.0",)):
        [entry] = json.loads(lookup(node, "pypi", *args, "--format", "json").stdout)
        assert entry == {"basename": "foo-1.0.tar.gz", "sha512": entry["sha512"], "verified": "no"}
    no_version = lookup(node, "pypi", "foo")
    assert no_version.returncode == 5 and "give the version" in no_version.stderr
