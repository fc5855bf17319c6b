"""The proxy as a binary cache server for a small group of nodes (`[slapproxy]
shacache_content_directory` and `shacache_metadata_directory`), mounted under `/shacache/`:

    GET  /shacache/cache/<sha512>   the stored bytes (404 if unknown)
    POST /shacache/cache            store the body; answers its SHA-512 hex (201)
    PUT  /shacache/cache/<sha512>   store the body under its SHA-512 (400 if it does not match)
    GET  /shacache/dir/<key>        JSON list of signed entries [metadata_json, signature] (404 if none)
    PUT  /shacache/dir/<key>        add one entry (400 if malformed or naming unknown content)

Not configured → 503. The server checks content hashes and entry shapes; it does not check
signatures (clients do, against the certificates *they* trust). Content is streamed to disk, never
held in memory; directory files are replaced atomically. Node side: slapos/grid/cache.py.

Limits (`[slapproxy] shacache_max_entry_size`, `shacache_quota`, bytes): a body larger than the
first gets 413 (from its Content-Length, else as soon as the stream passes it); a body that would
take the content store past the quota gets 507 Insufficient Storage, and nothing is kept of it.
With `access = credentials` only the node may store (403 for anyone else).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from slapos.base import tenantfs

log = logging.getLogger("slapos.proxy")

PREFIX = "/shacache/"
TEXT = "text/plain; charset=utf-8"
CHUNK = 1 << 20
MAX_ENTRY = 64 * 1024  # one signed entry (metadata + signature) is well under 4 KiB
MAX_ENTRIES = 256  # per key: older entries are dropped first
DEFAULT_MAX_CACHE_ENTRY = 4 << 30  # one archive: a big software release is a few hundred MB
DEFAULT_MAX_CACHE_TOTAL = 64 << 30  # the whole content store
_SHA512 = re.compile(r"^[0-9a-f]{128}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=-]{0,199}$")  # "=": pypi:NAME=VERSION keys


def cache_directories(section: Mapping[str, str]) -> tuple[Path, Path] | None:
    """(content, metadata) directories from `[slapproxy]` (underscore or dash spellings), or None."""

    def get(name: str) -> str:
        return (section.get(name) or section.get(name.replace("_", "-")) or "").strip()

    content, metadata = get("shacache_content_directory"), get("shacache_metadata_directory")
    if not content and not metadata:
        return None
    if not (content and metadata):
        from slapos.base.errors import ConfigError

        raise ConfigError(
            "[slapproxy] shacache_content_directory and shacache_metadata_directory go together: set both"
        )
    return Path(content).expanduser(), Path(metadata).expanduser()


class HTTPError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class CacheServer:
    """WSGI application serving a content store and a signed-entry directory."""

    def __init__(
        self,
        content_directory: Path | None,
        metadata_directory: Path | None,
        max_entry_size: int = DEFAULT_MAX_CACHE_ENTRY,
        quota: int = DEFAULT_MAX_CACHE_TOTAL,
    ):
        self.content = Path(content_directory) if content_directory else None
        self.metadata = Path(metadata_directory) if metadata_directory else None
        self.max_entry_size = max_entry_size
        self.quota = quota
        self._used: int | None = None  # bytes in the content store: counted at each upload, then kept up to date
        for directory in (self.content, self.metadata):
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.content is not None and self.metadata is not None

    # -- WSGI ---------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        try:
            if not self.configured:
                raise HTTPError(
                    "503 Service Unavailable",
                    "binary cache not configured: set shacache_content_directory and "
                    "shacache_metadata_directory in [slapproxy]",
                )
            rest = path[len(PREFIX):] if path.startswith(PREFIX) else ""
            kind, _, name = rest.partition("/")
            if kind == "cache":
                return self._content(environ, start_response, method, name)
            if kind == "dir":
                return self._directory(environ, start_response, method, name)
            raise HTTPError("404 Not Found", f"unknown binary cache path {path[:100]}")
        except HTTPError as e:
            if not e.status.startswith("404"):
                log.info("%s %s → %s: %s", method, path[:100], e.status, e)
            return self._text(start_response, e.status, str(e))
        except Exception:
            log.exception("%s %s failed", method, path[:100])
            return self._text(start_response, "500 Internal Server Error", "internal error in the binary cache")

    @staticmethod
    def _text(start_response: Callable, status: str, body: str, extra: tuple = (), newline: bool = True) -> list[bytes]:
        data = (body + ("\n" if newline else "")).encode()
        start_response(status, [("Content-Type", TEXT), ("Content-Length", str(len(data))), *extra])
        return [data]

    # -- content (shacache) -------------------------------------------------------------------
    def _content(self, environ, start_response, method: str, name: str):
        assert self.content is not None
        if method in ("GET", "HEAD"):
            if not _SHA512.match(name):
                raise HTTPError("404 Not Found", "not a SHA-512 hex digest")
            path = self.content / name
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                raise HTTPError("404 Not Found", f"no content {name[:16]}…") from None
            size = os.fstat(f.fileno()).st_size
            start_response(
                "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
            )
            if method == "HEAD":
                f.close()
                return [b""]
            wrapper = environ.get("wsgi.file_wrapper")
            return wrapper(f, CHUNK) if wrapper else _iter_file(f)
        if method == "POST" and name == "":
            # the digest alone, as shacache answers: slapos.libnetworkcache compares the body exactly
            digest = self._store(environ, expected=None)
            return self._text(start_response, "201 Created", digest, newline=False)
        if method == "PUT" and _SHA512.match(name):
            digest = self._store(environ, expected=name)
            return self._text(start_response, "201 Created", digest, newline=False)
        raise HTTPError("405 Method Not Allowed", f"{method} not allowed here")

    def used(self) -> int:
        """Bytes held by the content store (uploads in progress included: they take room too)."""
        assert self.content is not None
        with self._lock:
            if self._used is None:
                total = 0
                with os.scandir(self.content) as entries:
                    for entry in entries:
                        try:
                            if entry.is_file(follow_symlinks=False):
                                total += entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            pass
                self._used = total
            return self._used

    def _reserve(self, size: int) -> None:
        """Count `size` more bytes against the quota, or refuse with 507."""
        self.used()
        with self._lock:
            assert self._used is not None
            if self._used + size > self.quota:
                raise HTTPError(
                    "507 Insufficient Storage",
                    f"binary cache quota reached: {self._used} of {self.quota} bytes used "
                    "([slapproxy] shacache_quota); remove old content or raise the quota",
                )
            self._used += size

    def _release(self, size: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used = max(0, self._used - size)

    def _store(self, environ: dict, expected: str | None) -> str:
        assert self.content is not None
        tmp = self.content / f".upload-{secrets.token_hex(8)}"
        digest = hashlib.sha512()
        reserved = 0
        kept = False
        with self._lock:  # count again at each upload: other worker processes store too
            self._used = None
        try:
            with open(tmp, "xb") as out:
                for chunk in _read_body(environ, limit=self.max_entry_size, what="archive"):
                    self._reserve(len(chunk))  # counted as it comes: a body without length cannot overrun
                    reserved += len(chunk)
                    digest.update(chunk)
                    out.write(chunk)
            name = digest.hexdigest()
            if expected is not None and name != expected:
                raise HTTPError("400 Bad Request", "checksum mismatch: the body's SHA-512 is not the one in the URL")
            os.chmod(tmp, 0o644)
            final = self.content / name
            try:
                replaced = final.stat().st_size  # the same content again: it takes no more room
            except FileNotFoundError:
                replaced = 0
            os.replace(tmp, final)
            kept = True
            self._release(replaced)
            log.info("binary cache: stored %s…", name[:16])
            return name
        finally:
            if not kept:
                self._release(reserved)
            tmp.unlink(missing_ok=True)

    # -- directory (shadir) -------------------------------------------------------------------
    def _directory(self, environ, start_response, method: str, key: str):
        assert self.metadata is not None and self.content is not None
        if not _KEY.match(key):
            raise HTTPError("400 Bad Request", "directory key must be 1-200 characters of A-Z a-z 0-9 . _ : + = -")
        path = self.metadata / f"{key}.json"
        if method in ("GET", "HEAD"):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise HTTPError("404 Not Found", f"no entry for {key}") from None
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [b"" if method == "HEAD" else data]
        if method not in ("PUT", "POST"):
            raise HTTPError("405 Method Not Allowed", f"{method} not allowed here")
        body = b"".join(_read_body(environ, limit=MAX_ENTRY))
        entry = _parse_entry(body)
        sha512 = json.loads(entry[0])["sha512"]
        if not (self.content / sha512).is_file():
            raise HTTPError("400 Bad Request", f"entry names content {sha512[:16]}… that this cache does not hold")
        with self._lock, _locked_directory(self.metadata):
            try:
                entries = json.loads(path.read_bytes())
            except FileNotFoundError:
                entries = []
            if entry not in entries:
                entries.append(entry)
            entries = entries[-MAX_ENTRIES:]
            tenantfs.write_small(path, json.dumps(entries).encode())
        log.info("binary cache: entry added for %s", key)
        return self._text(start_response, "201 Created", "stored")


class _locked_directory:
    """An flock on the directory itself: two uploads (threads of the proxy, or a second proxy on
    the same cache directories) may add entries to one key at once, and each rewrites the whole file."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the lock


def _parse_entry(body: bytes) -> list[str]:
    try:
        entry = json.loads(body)
    except ValueError:
        raise HTTPError("400 Bad Request", "entry must be JSON: [metadata_json, signature]") from None
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise HTTPError("400 Bad Request", "entry must be a JSON list of two strings: [metadata_json, signature]")
    try:
        metadata = json.loads(entry[0])
    except ValueError:
        raise HTTPError("400 Bad Request", "entry metadata is not JSON") from None
    if not isinstance(metadata, dict) or not _SHA512.match(str(metadata.get("sha512", ""))):
        raise HTTPError("400 Bad Request", "entry metadata must be a JSON object with a sha512 hex digest")
    return entry


def _read_body(environ: dict, limit: int | None = None, what: str = "body") -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or ""
    remaining = int(length) if length.isdigit() else None
    if limit is not None and remaining is not None and remaining > limit:
        raise HTTPError("413 Payload Too Large", f"{what} of {remaining} bytes is larger than the {limit} bytes allowed")
    total = 0
    while remaining is None or remaining > 0:
        chunk = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            if remaining:
                raise HTTPError("400 Bad Request", "body shorter than its Content-Length")
            break
        total += len(chunk)
        if limit is not None and total > limit:
            raise HTTPError("413 Payload Too Large", f"{what} larger than the {limit} bytes allowed")
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


def _iter_file(f) -> Iterable[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk
