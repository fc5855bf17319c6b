"""Binary cache of built software releases: fetch a signed archive instead of building, publish
one after a build (SLAP-PROTOCOL.md §6.2 step 2 and 4, §8.3).

Two HTTP stores, as in SlapOS' networkcache:

* the content store (shacache), content-addressed by SHA-512:
  `POST <cache-url>` with the bytes → answers their SHA-512 hex; `GET <cache-url>/<sha512>`;
* the directory (shadir), keyed by the md5 of the software release URL:
  `GET <dir-url>/<key>` → JSON list of `[metadata_json, signature_base64]`;
  `PUT <dir-url>/<key>` with one `[metadata_json, signature_base64]`.

The metadata says which archive (`sha512`, `size`) holds which build (`software_url`,
`software_root`, `os`, `multiarch`, `python`). An entry is used only when its signature verifies
against one of the trusted certificates or public keys (`signature-certificate-list`) and it was
built for the same software root, OS, architecture and Python. Then the archive is downloaded
while hashing, refused on any size or checksum mismatch, and unpacked member by member with
checks (no absolute names, no `..`, links must stay inside the tree, no devices, no set-uid bits)
into a staging directory that is renamed into place only when complete.

Signatures: RSA (PSS, SHA-256), Ed25519 or ECDSA (SHA-256), from a PEM private key. Unlike the
reference, downloads without any trusted certificate are not attempted: an unsigned directory
would let whoever can write to it choose the binaries this node runs.

Entries written by slapos.libnetworkcache (the reference's caches) carry legacy signatures, RSA
PKCS#1 v1.5 over SHA-1, which a collision can forge: they are accepted only from the certificates
the operator lists in `legacy-sha1-certificate-list` (one opt-in per certificate, on top of the
modern signatures of `signature-certificate-list`). Their metadata (`software_url`,
`software_root`, `multiarch`, `os` as (id, version, codename)) is read as ours.

Signatures live in slapos.grid.cache_sign, archives (make, unpack safely, remove) in
slapos.grid.cache_unpack; their names stay importable from here.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import stat
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from slapos.base import tenantfs
from slapos.base.errors import ConfigError

from .cache_archive import LOCAL_ONLY  # noqa: F401 - part of our API
from .cache_sign import (  # noqa: F401 - these names are part of our API
    _is_rsa,
    load_private_key,
    load_trusted_keys,
    sign,
    verify,
    verify_legacy_sha1,
)
from .cache_unpack import (  # noqa: F401 - these names are part of our API
    CHUNK,
    MAX_LINK_HOPS,
    CacheError,
    CacheRefused,
    archive_as,
    make_archive,
    remove_tree,
    safe_extract,
)
from .process import Identity

logger = logging.getLogger("slapos.software")

# Files of a software directory that are local state, never published.
MAX_DIRECTORY_ANSWER = 8 << 20  # a shadir answer is a small JSON list
_SHA512 = re.compile(r"^[0-9a-f]{128}$")


# -- configuration ----------------------------------------------------------------------------

def _lines(value: str | None) -> list[str]:
    return [item for item in (value or "").split() if item]


def _opt(options: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = (options.get(name) or "").strip()
        if value:
            return value
    return None


@dataclass
class CacheConfig:
    """The `[networkcache]` keys the node uses for binary software releases."""

    download_cache_url: str | None = None
    download_dir_url: str | None = None
    upload_cache_url: str | None = None
    upload_dir_url: str | None = None
    signature_private_key_file: Path | None = None
    trusted_keys: list[Any] = field(default_factory=list)
    legacy_sha1_keys: list[Any] = field(default_factory=list)  # opt-in: libnetworkcache's SHA-1 signatures
    download_blacklist: list[str] = field(default_factory=list)
    upload_blacklist: list[str] = field(default_factory=list)
    force_url_list: list[str] = field(default_factory=list)
    shacache_tls: tuple[str | None, str | None, str | None] = (None, None, None)  # ca, cert, key
    shadir_tls: tuple[str | None, str | None, str | None] = (None, None, None)
    timeout: float = 60.0

    @classmethod
    def from_options(cls, options: Mapping[str, str], lookup: bool = False) -> CacheConfig | None:
        """None when no binary cache is configured at all (the common, cheap case); with
        `lookup` (for `slapos cachelookup`), a configuration whatever is set."""
        o = {k.replace("_", "-"): v for k, v in options.items()}
        config = cls(
            download_cache_url=_opt(o, "download-binary-cache-url"),
            download_dir_url=_opt(o, "download-binary-dir-url"),
            upload_cache_url=_opt(o, "upload-binary-cache-url"),
            upload_dir_url=_opt(o, "upload-binary-dir-url"),
            signature_private_key_file=Path(v) if (v := _opt(o, "signature-private-key-file")) else None,
            download_blacklist=_lines(o.get("download-from-binary-cache-url-blacklist"))
            + _lines(o.get("binary-cache-url-blacklist")),
            upload_blacklist=_lines(o.get("upload-to-binary-cache-url-blacklist")),
            force_url_list=_lines(o.get("download-from-binary-cache-force-url-list")),
            shacache_tls=(_opt(o, "shacache-ca-file"), _opt(o, "shacache-cert-file"), _opt(o, "shacache-key-file")),
            shadir_tls=(_opt(o, "shadir-ca-file"), _opt(o, "shadir-cert-file"), _opt(o, "shadir-key-file")),
        )
        if not (config.download_dir_url or config.upload_dir_url) and not lookup:
            return None
        certificates = _opt(o, "signature-certificate-list")
        if certificates:
            config.trusted_keys = load_trusted_keys(certificates)
        legacy = _opt(o, "legacy-sha1-certificate-list")
        if legacy:
            config.legacy_sha1_keys = [k for k in load_trusted_keys(legacy) if _is_rsa(k)]
            if not config.legacy_sha1_keys:
                raise ConfigError("[networkcache] legacy-sha1-certificate-list holds no RSA certificate")
        key_file = config.signature_private_key_file
        if key_file is not None and not key_file.is_file():
            raise ConfigError(f"[networkcache] signature-private-key-file {key_file} does not exist")
        for tls in (config.shacache_tls, config.shadir_tls):
            for path in tls:
                if path and not os.path.isfile(path):
                    raise ConfigError(f"[networkcache] TLS file {path} does not exist")
        return config

    def can_download(self, url: str) -> bool:
        return bool(
            self.download_cache_url and self.download_dir_url and (self.trusted_keys or self.legacy_sha1_keys)
            and not any(url.startswith(prefix) for prefix in self.download_blacklist)
        )

    def can_upload(self, url: str) -> bool:
        return bool(
            self.upload_cache_url and self.upload_dir_url and self.signature_private_key_file
            and not any(url.startswith(prefix) for prefix in self.upload_blacklist)
        )

    def forced(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.force_url_list)


def _same_os(theirs: Any, ours: Any) -> bool:
    """(id, version, codename) as we or slapos.core (distro) write it: same id and version."""
    if not (isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple))) or len(theirs) < 2:
        return False
    return [str(x).strip().lower() for x in theirs[:2]] == [str(x).strip().lower() for x in ours[:2]]


# -- what a binary is built for ----------------------------------------------------------------

def platform_tags() -> dict[str, Any]:
    """OS, architecture and Python of this node: an archive built elsewhere must match them."""
    try:
        release = platform.freedesktop_os_release()
        os_tag = [release.get("ID", ""), release.get("VERSION_ID", ""), release.get("VERSION_CODENAME", "")]
    except OSError:
        os_tag = [platform.system().lower(), platform.release(), ""]
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-{sys.platform}"
    return {"os": os_tag, "multiarch": multiarch, "python": sys.implementation.cache_tag}


@dataclass
class Entry:
    """One verified directory entry."""

    metadata: dict[str, Any]

    @property
    def sha512(self) -> str:
        return self.metadata["sha512"]

    @property
    def size(self) -> int | None:
        size = self.metadata.get("size")
        return size if isinstance(size, int) and size >= 0 else None


# -- the client -------------------------------------------------------------------------------

class BinaryCache:
    """Look up, fetch and publish software release archives for one software root."""

    def __init__(self, config: CacheConfig, software_root: Path):
        self.config = config
        self.software_root = Path(os.path.abspath(software_root))
        self._session = None
        self._tags: dict[str, Any] | None = None

    @property
    def tags(self) -> dict[str, Any]:
        if self._tags is None:
            self._tags = platform_tags()
        return self._tags

    # HTTP ---------------------------------------------------------------------------------
    # `requests` streams archives both ways; what it would decide from the environment by itself
    # (proxies, CA bundle, redirects, which differ from the SLAP client's) comes from the one
    # policy of slapos.base.http instead.
    def _http(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.trust_env = False  # proxies and CAs: slapos.base.http decides
            self._session.headers["User-Agent"] = "slapnode-binary-cache"
        return self._session

    @staticmethod
    def _tls(tls: tuple[str | None, str | None, str | None]) -> dict[str, Any]:
        from slapos.base.http import requests_verify

        ca, cert, key = tls
        kwargs: dict[str, Any] = {"verify": requests_verify(ca)}
        if cert:
            kwargs["cert"] = (cert, key) if key else cert
        return kwargs

    def _request(self, method: str, url: str, tls, **kwargs):
        """One request by the policy; a safe redirect is followed (GET only: an upload's body is
        a stream sent once), another is a CacheError naming where the server pointed."""
        import requests

        from slapos.base import http

        for hops in range(http.MAX_REDIRECTS + 1):
            try:
                proxy = http.proxy_for(url)
                response = self._http().request(
                    method, url, timeout=http.timeouts(self.config.timeout), allow_redirects=False,
                    proxies={url.split(":", 1)[0]: proxy.url} if proxy else {}, **self._tls(tls), **kwargs)
            except http.PolicyError as e:
                raise CacheError(f"binary cache {url}: {e}") from None
            except requests.RequestException as e:
                via = f" through the proxy {proxy.display}" if proxy else ""
                raise CacheError(f"binary cache {url} unreachable{via}: {type(e).__name__}: {e}") from None
            if response.status_code not in http.REDIRECT_STATUSES:
                return response
            response.close()
            try:
                if method != "GET":
                    raise http.PolicyError("redirect", f"{url} redirected {method} to "
                                           f"{response.headers.get('Location')} (HTTP {response.status_code}): "
                                           f"an upload is not sent twice; use the URL it points to")
                method, url = http.redirect(method, response.status_code, url, response.headers.get("Location"), hops)
            except http.PolicyError as e:
                raise CacheError(f"binary cache: {e}") from None
        raise AssertionError("unreachable")  # pragma: no cover - http.redirect() stops the loop

    # lookup -------------------------------------------------------------------------------
    def directory(self, key: str, dir_url: str | None = None) -> list | None:
        """The raw entries stored under `key` (bounded, must be a JSON list); None when none (404).
        `dir_url`: another directory than the binary one (the generic cache of `cachelookup url`)."""
        base = dir_url or self.config.download_dir_url
        dir_url = f"{base.rstrip('/')}/{key}"
        response = self._request("GET", dir_url, self.config.shadir_tls, stream=True)
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise CacheError(f"binary cache directory {dir_url} answered HTTP {response.status_code}")
            body = response.raw.read(MAX_DIRECTORY_ANSWER + 1, decode_content=True)
        if len(body) > MAX_DIRECTORY_ANSWER:
            raise CacheRefused(f"binary cache directory {dir_url} answered more than {MAX_DIRECTORY_ANSWER} bytes")
        try:
            entries = json.loads(body)
        except ValueError:
            raise CacheRefused(f"binary cache directory {dir_url} answered something that is not JSON") from None
        if not isinstance(entries, list):
            raise CacheRefused(f"binary cache directory {dir_url} did not answer a list")
        return entries

    def inspect(self, key: str, dir_url: str | None = None) -> list[tuple[dict[str, Any], bool]] | None:
        """Every well-formed entry under `key` as (metadata, signature verified), newest first;
        None when the cache has nothing for it (`slapos cachelookup`)."""
        entries = self.directory(key, dir_url)
        if entries is None:
            return None
        found = []
        for item in reversed(entries):
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                continue
            try:
                metadata = json.loads(item[0])
            except ValueError:
                continue
            if isinstance(metadata, dict):
                found.append((metadata, self._trusted(item) is not None))
        return found

    def compatible(self, metadata: dict[str, Any], url: str) -> bool:
        """Whether an archive described by `metadata` is usable for `url` on this node."""
        return self._compatible(Entry(metadata), url)

    def lookup(self, url: str, key: str) -> Entry | None:
        """The newest trusted entry built for this node, or None. Entries whose signature does
        not verify are skipped with a warning."""
        entries = self.directory(key)
        if entries is None:
            return None
        refused = 0
        for item in reversed(entries):  # the last published first
            entry = self._trusted(item)
            if entry is None:
                refused += 1
                continue
            if self._compatible(entry, url):
                return entry
        if refused:
            logger.warning(
                "binary cache: %d entr%s for %s refused (signature does not verify with the trusted "
                "certificates, or malformed)", refused, "y" if refused == 1 else "ies", url,
            )
        return None

    def _trusted(self, item: Any) -> Entry | None:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            return None
        text, signature = item
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except ValueError:
            return None
        data = text.encode()
        if not any(verify(key, raw_signature, data) for key in self.config.trusted_keys) and not any(
                verify_legacy_sha1(key, raw_signature, data) for key in self.config.legacy_sha1_keys):
            return None
        try:
            metadata = json.loads(text)
        except ValueError:
            return None
        if not isinstance(metadata, dict) or not _SHA512.match(str(metadata.get("sha512", ""))):
            return None
        return Entry(metadata)

    def _compatible(self, entry: Entry, url: str) -> bool:
        m = entry.metadata
        return (
            m.get("software_url") == url
            and m.get("software_root") == str(self.software_root)
            and (m.get("os") == self.tags["os"] or _same_os(m.get("os"), self.tags["os"]))
            and m.get("multiarch") == self.tags["multiarch"]
            and m.get("python", self.tags["python"]) == self.tags["python"]
        )

    # fetch --------------------------------------------------------------------------------
    def fetch(self, entry: Entry, key: str, final: Path, owner: Identity | None) -> None:
        """Download, verify and unpack the archive of `entry` to `final` (which must not exist)."""
        with self._private_directory(key) as (root_fd, work_fd):
            work = Path(f"/proc/self/fd/{work_fd}")
            content_url = f"{self.config.download_cache_url.rstrip('/')}/{entry.sha512}"
            self._download(content_url, work / "archive", entry)
            os.mkdir("tree", 0o755, dir_fd=work_fd)
            safe_extract(work / "archive", key, work / "tree", final)
            if owner is not None:
                tree_fd = os.open("tree", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=work_fd)
                try:
                    tenantfs.chown_tree(tree_fd, owner.uid, owner.gid)
                finally:
                    os.close(tree_fd)
            os.rename("tree", final.name, src_dir_fd=work_fd, dst_dir_fd=root_fd)

    @contextlib.contextmanager
    def _private_directory(self, key: str) -> Iterator[tuple[int, int]]:
        """(software_root fd, fd of a fresh 0700 directory of root's in it), removed afterwards.

        The software user owns software_root and could rename or replace anything we create
        there by name. So downloads, unpacked trees and archives to upload live in a private
        directory of root, always reached through its descriptor (`/proc/self/fd/N` for the
        code that wants paths): renaming it does not redirect us."""
        work_name = f".slapos-cache-{key}-{secrets.token_hex(4)}"
        root_fd = tenantfs.open_dir(self.software_root, follow_base=True)
        try:
            os.mkdir(work_name, 0o700, dir_fd=root_fd)
            work_fd = os.open(work_name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=root_fd)
            try:
                yield root_fd, work_fd
            finally:
                os.close(work_fd)
                self._remove_work(root_fd, work_name)
        finally:
            os.close(root_fd)

    @staticmethod
    def _remove_work(root_fd: int, name: str) -> None:
        """Remove our private directory, if it is still ours (the builder may have renamed it
        and put something else at its name: that is left alone)."""
        try:
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
        try:
            tenantfs.wipe_content(f"/proc/self/fd/{fd}/.")  # "/.": the magic link is followed
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=root_fd)

    def _download(self, url: str, destination: Path, entry: Entry) -> None:
        response = self._request("GET", url, self.config.shacache_tls, stream=True)
        with response:
            if response.status_code != 200:
                raise CacheError(f"binary cache {url} answered HTTP {response.status_code}")
            digest = hashlib.sha512()
            size = 0
            limit = entry.size
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                try:
                    for chunk in response.iter_content(CHUNK):
                        size += len(chunk)
                        if limit is not None and size > limit:
                            raise CacheRefused(f"archive from {url} is larger than the signed size {limit}")
                        digest.update(chunk)
                        out.write(chunk)
                except CacheRefused:
                    raise
                except Exception as e:  # connection dropped mid-way: a truncated download
                    raise CacheRefused(f"download of {url} interrupted after {size} bytes: {e}") from None
        if limit is not None and size != limit:
            raise CacheRefused(f"archive from {url} is truncated: {size} of {limit} bytes")
        if digest.hexdigest() != entry.sha512:
            raise CacheRefused(f"archive from {url} does not match its signed SHA-512 (tampered or corrupt)")

    # publish ------------------------------------------------------------------------------
    def publish(self, url: str, key: str, directory: Path, owner: Identity | None = None) -> str:
        """Archive `directory` (as `owner`, the software user: see `archive_as`), upload it and
        its signed entry; returns the archive's SHA-512."""
        private_key = load_private_key(self.config.signature_private_key_file)
        with self._private_directory(key) as (_root_fd, work_fd):
            fd = os.open("archive", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=work_fd)
            with os.fdopen(fd, "w+b") as archive:
                sha512, size = archive_as(directory, key, archive, owner)
                archive.seek(0)
                return self._upload(url, key, archive, sha512, size, private_key)

    def _upload(self, url: str, key: str, f: BinaryIO, sha512: str, size: int, private_key) -> str:
        """Upload the archive `f`, then its signed entry in the directory; returns the SHA-512."""
        cache_url = self.config.upload_cache_url.rstrip("/")
        response = self._request(
            "POST", cache_url, self.config.shacache_tls, data=f,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code not in (200, 201):
            raise CacheError(f"binary cache {cache_url} refused the archive: HTTP {response.status_code}")
        answered = response.text.strip()
        if answered != sha512:
            raise CacheError(f"binary cache {cache_url} stored the archive as {answered[:20]}…, expected {sha512[:20]}…")
        metadata = {
            "software_url": url,
            "software_root": str(self.software_root),
            **self.tags,
            "sha512": sha512,
            "size": size,
            "creation_date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        text = json.dumps(metadata, sort_keys=True)
        signature = base64.b64encode(sign(private_key, text.encode())).decode()
        dir_url = f"{self.config.upload_dir_url.rstrip('/')}/{key}"
        response = self._request("PUT", dir_url, self.config.shadir_tls, json=[text, signature])
        if response.status_code not in (200, 201):
            raise CacheError(f"binary cache directory {dir_url} refused the entry: HTTP {response.status_code}")
        return sha512

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
