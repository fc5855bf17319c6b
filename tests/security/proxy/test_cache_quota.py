"""The proxy's binary cache has a size limit per archive and a quota for all of them, and keeps
nothing of what it refuses. Real `slapos proxy start`, real HTTP."""
from __future__ import annotations

import hashlib
import http.client

from tests.fixtures.proxy import start_proxy


def _post(port: int, body: bytes, chunked: bool = False) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked:
            conn.request("POST", "/shacache/cache", body=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                         encode_chunked=True)
        else:
            conn.request("POST", "/shacache/cache", body=body)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_entry_size_limit_and_quota(tmp_path):
    content, metadata = tmp_path / "content", tmp_path / "metadata"
    proxy = start_proxy(tmp_path / "proxy", extra_config={"slapproxy": {
        "shacache_content_directory": str(content), "shacache_metadata_directory": str(metadata),
        "shacache_max_entry_size": "100000", "shacache_quota": "250000",
    }})
    try:
        status, body = _post(proxy.port, b"a" * 100_001)
        assert status == 413 and "100000 bytes" in body
        status, body = _post(proxy.port, b"b" * 150_000, chunked=True)  # no Content-Length: cut while streaming
        assert status == 413
        first = b"c" * 90_000
        assert _post(proxy.port, first) == (201, hashlib.sha512(first).hexdigest())  # no newline: libnetworkcache compares it exactly
        assert _post(proxy.port, first)[0] == 201  # the same content again takes no more room
        assert _post(proxy.port, b"d" * 90_000)[0] == 201
        status, body = _post(proxy.port, b"e" * 90_000)  # 270 000 > 250 000
        assert status == 507 and "shacache_quota" in body and "\n" not in body.strip()
        assert _post(proxy.port, b"f" * 60_000)[0] == 201  # what fits still fits
        files = sorted(p.name for p in content.iterdir())
        assert len(files) == 3 and not any(name.startswith(".upload") for name in files)
        assert sum(p.stat().st_size for p in content.iterdir()) <= 250_000
    finally:
        proxy.stop()
