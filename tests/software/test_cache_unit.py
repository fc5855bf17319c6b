"""Binary cache pieces without a network: signatures, configuration, archives and their safe unpacking,
and the proxy-side store driven through WSGI."""
from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from slapos.base.errors import ConfigError
from slapos.grid.cache import (
    CacheConfig,
    CacheRefused,
    load_private_key,
    load_trusted_keys,
    make_archive,
    safe_extract,
    sign,
    verify,
)
from slapos.proxy.cache import CacheServer, cache_directories

from .conftest import make_signer

TOP = "0" * 32


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "ec"])
def test_signatures_verify_only_with_the_right_key_and_data(tmp_path, kind):
    key_file, certificate = make_signer(tmp_path, kind)
    _, other_certificate = make_signer(tmp_path, kind, name="other")
    signature = sign(load_private_key(key_file), b'{"sha512": "x"}')
    [trusted] = load_trusted_keys(certificate)
    [untrusted] = load_trusted_keys(other_certificate)
    assert verify(trusted, signature, b'{"sha512": "x"}')
    assert not verify(trusted, signature, b'{"sha512": "y"}')
    assert not verify(untrusted, signature, b'{"sha512": "x"}')
    assert not verify(trusted, b"garbage", b'{"sha512": "x"}')


def test_certificate_list_inline_as_configparser_gives_it_or_from_a_file(tmp_path):
    _, first = make_signer(tmp_path, "rsa", "a")
    _, second = make_signer(tmp_path, "ed25519", "b")
    # configparser strips the indentation of continuation lines but keeps them as lines
    inline = "\n".join(line.strip() for line in (first + second).splitlines())
    assert len(load_trusted_keys(inline)) == 2
    bundle = tmp_path / "certs.pem"
    bundle.write_text(first + second)
    assert len(load_trusted_keys(str(bundle))) == 2
    with pytest.raises(ConfigError, match="neither PEM text nor a readable file"):
        load_trusted_keys(str(tmp_path / "missing.pem"))


def test_config_enables_only_what_is_complete(tmp_path):
    assert CacheConfig.from_options({}) is None
    key_file, certificate = make_signer(tmp_path)
    options = {
        "download-binary-cache-url": "http://c/cache",
        "download-binary-dir-url": "http://c/dir",
        "upload-binary-cache-url": "http://c/cache",
        "upload-binary-dir-url": "http://c/dir",
        "signature-private-key-file": str(key_file),
        "upload-to-binary-cache-url-blacklist": "http://private/\n/home/",
        "download-from-binary-cache-url-blacklist": "http://dev/",
        "download-from-binary-cache-force-url-list": "https://release/",
    }
    config = CacheConfig.from_options(options)
    assert not config.can_download("http://any/sr.cfg"), "no trusted certificate: downloads must be off"
    config = CacheConfig.from_options({**options, "signature-certificate-list": certificate})
    assert config.can_download("http://any/sr.cfg")
    assert not config.can_download("http://dev/sr.cfg")
    assert config.can_upload("http://any/sr.cfg")
    assert not config.can_upload("/home/me/sr.cfg")
    assert config.forced("https://release/1.0/software.cfg")
    with pytest.raises(ConfigError, match="does not exist"):
        CacheConfig.from_options({**options, "signature-private-key-file": str(tmp_path / "nope")})


def _software_tree(root: Path) -> Path:
    tree = root / TOP
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "tool").write_text("#!/bin/sh\n")
    os.chmod(tree / "bin" / "tool", 0o4755)  # set-uid must not survive
    (tree / "lib").mkdir()
    (tree / "lib" / "libx.so.1").write_text("lib")
    (tree / "lib" / "libx.so").symlink_to("libx.so.1")
    (tree / ".completed").write_text("done")
    (tree / ".netrc").write_text("machine secret")
    (tree / ".slapgrid" / "log").mkdir(parents=True)
    (tree / ".slapgrid" / "log" / "software.log").write_text("log")
    return tree


def test_archive_round_trip_keeps_the_tree_and_drops_local_state(tmp_path):
    tree = _software_tree(tmp_path / "src")
    archive = tmp_path / "a.tar.gz"
    sha512, size = make_archive(tree, TOP, archive)
    assert size == archive.stat().st_size and len(sha512) == 128
    staging = tmp_path / "staging"
    staging.mkdir()
    safe_extract(archive, TOP, staging, tmp_path / "final" / TOP)
    assert (staging / "bin" / "tool").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE((staging / "bin" / "tool").stat().st_mode) == 0o755
    assert os.readlink(staging / "lib" / "libx.so") == "libx.so.1"
    for local in (".completed", ".netrc", ".slapgrid"):
        assert not (staging / local).exists(), local


def _archive(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info, None


@pytest.mark.parametrize(
    "members, reason",
    [
        ([_file("/etc/evil")], "unsafe name"),
        ([_file(f"{TOP}/../evil")], "outside"),
        ([_file("other/evil")], "outside"),
        ([_link(f"{TOP}/up", "../../etc/passwd")], "escapes"),
        ([_link(f"{TOP}/abs", "/etc/passwd")], "escapes"),
        ([_link(f"{TOP}/dir", "/tmp"), _file(f"{TOP}/dir/evil")], "escapes"),
        ([_link(f"{TOP}/dir", "."), _link(f"{TOP}/dir/x", "../../..")], "escapes"),
        ([_link(f"{TOP}/hard", "/etc/passwd", tarfile.LNKTYPE)], "unsafe name"),
        ([_link(f"{TOP}/hard", f"{TOP}/missing", tarfile.LNKTYPE)], "hard link"),
        ([_device(f"{TOP}/dev")], "device"),
        ([_file(f"{TOP}/twice"), _file(f"{TOP}/twice")], "twice"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, members, reason):
    archive = _archive(tmp_path, members)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(CacheRefused, match=reason):
        safe_extract(archive, TOP, staging, tmp_path / "soft" / TOP)
    assert not (Path("/tmp") / "evil").exists()


def test_absolute_link_into_the_final_directory_is_allowed(tmp_path):
    final = tmp_path / "soft" / TOP
    archive = _archive(tmp_path, [_file(f"{TOP}/lib/real"), _link(f"{TOP}/lib/alias", f"{final}/lib/real")])
    staging = tmp_path / "staging"
    staging.mkdir()
    safe_extract(archive, TOP, staging, final)
    assert os.readlink(staging / "lib" / "alias") == f"{final}/lib/real"


def test_truncated_archive_is_refused(tmp_path):
    tree = _software_tree(tmp_path / "src")
    (tree / "big").write_bytes(os.urandom(200_000))
    archive = tmp_path / "a.tar.gz"
    make_archive(tree, TOP, archive)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(CacheRefused, match="truncated or corrupt|not a readable"):
        safe_extract(archive, TOP, staging, tmp_path / "soft" / TOP)


# -- the proxy side, through WSGI --------------------------------------------------------------

def _call(app, method: str, path: str, body: bytes = b"") -> tuple[str, bytes]:
    status = []
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    chunks = app(environ, lambda s, headers: status.append(s))
    data = b"".join(chunks)
    return status[0], data


def test_cache_server_stores_by_hash_and_checks_entries(tmp_path):
    import hashlib

    server = CacheServer(tmp_path / "content", tmp_path / "meta")
    status, body = _call(server, "POST", "/shacache/cache", b"archive bytes")
    digest = hashlib.sha512(b"archive bytes").hexdigest()
    assert status.startswith("201") and body.decode().strip() == digest
    assert _call(server, "GET", f"/shacache/cache/{digest}") == ("200 OK", b"archive bytes")
    status, _ = _call(server, "PUT", f"/shacache/cache/{'a' * 128}", b"other bytes")
    assert status.startswith("400"), "a body that does not match its name must be refused"
    assert _call(server, "GET", f"/shacache/cache/{'b' * 128}")[0].startswith("404")

    entry = [json.dumps({"sha512": digest, "software_url": "u"}), "c2lnbmF0dXJl"]
    assert _call(server, "PUT", "/shacache/dir/abc", json.dumps(entry).encode())[0].startswith("201")
    assert _call(server, "PUT", "/shacache/dir/abc", json.dumps(entry).encode())[0].startswith("201")
    status, body = _call(server, "GET", "/shacache/dir/abc")
    assert json.loads(body) == [entry]  # stored once
    dangling = [json.dumps({"sha512": "c" * 128}), "c2ln"]
    assert _call(server, "PUT", "/shacache/dir/abc", json.dumps(dangling).encode())[0].startswith("400")
    assert _call(server, "PUT", "/shacache/dir/abc", b"[1, 2]")[0].startswith("400")
    assert _call(server, "GET", "/shacache/dir/..%2Fetc")[0].startswith("400")
    assert _call(server, "PUT", "/shacache/dir/../x", json.dumps(entry).encode())[0].startswith("400")


def test_cache_server_unconfigured_answers_503_and_config_needs_both(tmp_path):
    status, body = _call(CacheServer(None, None), "GET", "/shacache/dir/x")
    assert status.startswith("503") and b"shacache_content_directory" in body
    assert cache_directories({}) is None
    assert cache_directories({"shacache-content-directory": "/c", "shacache-metadata-directory": "/m"}) == (
        Path("/c"), Path("/m"))
    with pytest.raises(ConfigError, match="go together"):
        cache_directories({"shacache_content_directory": "/c"})
