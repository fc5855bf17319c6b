"""Helpers for the `slapos node software` tests: run the real CLI, read what the proxy recorded."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slapos.grid.software import software_key
from tests.conftest import REPO, make_traversable
from tests.fixtures.node import build_node
from tests.fixtures.proxy import start_proxy

DATA = REPO / "tests" / "data" / "software"
HELLO = str(DATA / "hello" / "software.cfg")
BROKEN = str(DATA / "broken" / "software.cfg")


@dataclass
class Run:
    returncode: int
    output: str  # stdout + stderr of the command


def run_software(config_path: Path, *args: str, timeout: float = 180) -> Run:
    """`slapos node software --cfg <config> --now <args>` as a subprocess (the real CLI)."""
    proc = subprocess.run(
        [sys.executable, "-m", "slapos.cli.main", "node", "software", "--cfg", str(config_path), "--now", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout, text=True,
        cwd=str(REPO),
    )
    return Run(proc.returncode, proc.stdout)


def software_states(database: Path) -> dict[str, dict]:
    """{url: {requested, reported, error_log}} as the proxy stored the node's reports."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT url, requested_state, reported_state, error_log FROM software").fetchall()
    finally:
        conn.close()
    return {url: {"requested": req, "reported": rep, "error_log": err} for url, req, rep, err in rows}


def software_dir(node, url: str) -> Path:
    return node.software_root / software_key(url)


def supply(node, url: str, state: str = "available") -> None:
    node.proxy.connect().registerSupply().supply(url, node.computer_id, state)


def copy_release(source: str, destination: Path, replacements: dict[str, str] | None = None) -> str:
    """Copy a test release directory (with its templates) elsewhere: a new URL, same content.
    The copy extends the shared `common.cfg` by absolute path."""
    src = Path(source).parent
    shutil.copytree(src, destination)
    profile = destination / "software.cfg"
    text = profile.read_text().replace("extends = ../common.cfg", f"extends = {DATA / 'common.cfg'}")
    for old, new in (replacements or {}).items():
        text = text.replace(old, new)
    profile.write_text(text)
    make_traversable(destination)
    for path in [destination, *destination.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return str(profile)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One proxy + formatted node for a whole test module (buildout runs cost ~1 s each)."""
    root = tmp_path_factory.mktemp("software")
    make_traversable(root)
    os.chmod(root, 0o755)
    proxy = start_proxy(root / "proxy")
    try:
        yield build_node(root / "node", proxy, partitions=2)
    finally:
        proxy.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on loopback; yields the base URL (no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def make_signer(directory: Path, kind: str = "rsa", name: str = "signer") -> tuple[Path, str]:
    """A PEM private key file (0600) and its self-signed PEM certificate, for cache signatures."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import NameOID

    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algorithm = hashes.SHA256()
    elif kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        algorithm = hashes.SHA256()
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        algorithm = None
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30)).sign(key, algorithm)
    )
    key_path = directory / f"{name}.key"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    os.chmod(key_path, 0o600)
    return key_path, certificate.public_bytes(serialization.Encoding.PEM).decode()


def start_cache_node(root: Path, partitions: int = 1):
    """A proxy that serves as binary cache on loopback, and a node that downloads from it, uploads
    to it and signs with a fresh key. Returns (proxy, node, content_dir, metadata_dir); the caller
    stops the proxy."""
    root.mkdir(parents=True, exist_ok=True)
    key_file, certificate = make_signer(root)
    content, metadata = root / "shacache" / "content", root / "shacache" / "metadata"
    proxy = start_proxy(root / "proxy", extra_config={
        "slapproxy": {"shacache_content_directory": str(content), "shacache_metadata_directory": str(metadata)},
    })
    try:
        base = proxy.url + "shacache"
        node = build_node(root / "node", proxy, partitions=partitions, extra_config={"networkcache": {
            "download-binary-cache-url": f"{base}/cache",
            "download-binary-dir-url": f"{base}/dir",
            "upload-binary-cache-url": f"{base}/cache",
            "upload-binary-dir-url": f"{base}/dir",
            "signature-private-key-file": str(key_file),
            "signature-certificate-list": certificate,
        }})
    except BaseException:
        proxy.stop()
        raise
    return proxy, node, content, metadata
