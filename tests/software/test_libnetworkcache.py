"""Binary caches the SlapOS world already runs: an entry written by slapos.libnetworkcache's own
upload code (installed from PyPI for this test), signed the legacy way (RSA PKCS#1 v1.5 over
SHA-1, with the `openssl` command as libnetworkcache does), for an archive laid out as slapos.core
lays it out (`tar.add(software_path, arcname=<md5 of the URL>)`, metadata `software_url`,
`software_root`, `multiarch`, `os`). The node refuses it until the operator lists that
certificate in `legacy-sha1-certificate-list`; then it fetches instead of building."""
from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from slapos.grid.cache import platform_tags
from slapos.grid.software import COMPLETED, LOG_DIRECTORY, software_key
from tests.conftest import make_traversable
from tests.fixtures.node import give_to_nobody

from .conftest import HELLO, make_signer, run_software, software_dir, start_cache_node, supply

pytestmark = [pytest.mark.registry, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="libnetworkcache signs with openssl")]

UPLOAD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from slapos.libnetworkcache import NetworkcacheClient
config = json.loads(sys.argv[2])
client = NetworkcacheClient(config)
with open(sys.argv[3], "rb") as f:
    print(client.upload(f, sys.argv[4], **json.loads(sys.argv[5])))
"""


@pytest.fixture(scope="module")
def libnetworkcache(tmp_path_factory):
    """slapos.libnetworkcache from PyPI, in a directory of its own (not in our environment)."""
    target = tmp_path_factory.mktemp("libnetworkcache")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    "slapos.libnetworkcache==0.30"], check=True, timeout=300)
    return target


def set_networkcache(node, **values: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(node.config_path)
    for key, value in values.items():
        if value is None:
            parser.remove_option("networkcache", key)
        else:
            parser["networkcache"][key] = value
    with open(node.config_path, "w") as f:
        parser.write(f)


def fresh_software_root(node, name: str) -> None:
    node.software_root.rename(node.software_root.with_name(node.software_root.name + "-" + name))
    node.software_root.mkdir()
    give_to_nobody(node)


def test_a_legacy_entry_is_fetched_only_from_an_opted_in_certificate(tmp_path, libnetworkcache):
    root = tmp_path / "cache"
    make_traversable(tmp_path)
    proxy, node, _content, metadata = start_cache_node(root)
    try:
        supply(node, HELLO)
        set_networkcache(node, **{"upload-binary-dir-url": None, "upload-binary-cache-url": None})
        run = run_software(node.config_path)  # built here, not uploaded: the cache is empty
        assert run.returncode == 0, run.output
        built = software_dir(node, HELLO)
        key = software_key(HELLO)

        # what slapos.core uploads after a build, through slapos.libnetworkcache
        archive = tmp_path / "software.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(built, arcname=key, filter=lambda i: None if i.name.split("/")[1:2] in (
                [COMPLETED], [".slapgrid"], [".netrc"]) else i)
        legacy_key, legacy_certificate = make_signer(tmp_path, "rsa", "legacy")
        base = proxy.url + "shacache"
        tags = platform_tags()
        metadata_kw = {"software_url": HELLO, "software_root": str(node.software_root),
                       "multiarch": tags["multiarch"], "os": tags["os"]}
        config = {"download-cache-url": f"{base}/cache", "upload-cache-url": f"{base}/cache",
                  "download-dir-url": f"{base}/dir", "upload-dir-url": f"{base}/dir",
                  "signature-private-key-file": str(legacy_key), "signature-certificate-list": legacy_certificate}
        upload = subprocess.run([sys.executable, "-c", UPLOAD, str(libnetworkcache), json.dumps(config), str(archive),
                                 key, json.dumps(metadata_kw)], capture_output=True, text=True, timeout=120)
        assert upload.returncode == 0, upload.stderr
        [entry] = json.loads((metadata / f"{key}.json").read_text())
        assert json.loads(entry[0])["software_url"] == HELLO

        # not opted in: the SHA-1 signature is refused, the release is built
        fresh_software_root(node, "first")
        run = run_software(node.config_path)
        assert run.returncode == 0, run.output
        assert "signature does not verify" in run.output
        assert (software_dir(node, HELLO) / LOG_DIRECTORY).exists()

        # the operator trusts that certificate for legacy signatures: fetched, not built
        fresh_software_root(node, "refused")
        set_networkcache(node, **{"legacy-sha1-certificate-list": legacy_certificate})
        run = run_software(node.config_path)
        assert run.returncode == 0, run.output
        assert "fetched from the binary cache" in run.output, run.output
        path = software_dir(node, HELLO)
        assert not (path / LOG_DIRECTORY).exists()
        assert (path / "greeting.txt").read_text() == (built.parent.with_name(
            node.software_root.name + "-first") / key / "greeting.txt").read_text()
        assert (path / COMPLETED).exists()
    finally:
        proxy.stop()
