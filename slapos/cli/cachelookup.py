"""`slapos cachelookup binary-sr URL|MD5`, `cachelookup url URL`, `cachelookup pypi NAME VERSION`:
what the binary cache holds for a software release, a downloaded URL or a Python package."""
from __future__ import annotations

import argparse
import hashlib
import logging
import re

from .command import Command, add_cfg_argument, add_format_argument

log = logging.getLogger("slapos.cache")

_WHERE = ("The cache is [networkcache] of the configuration (download-binary-dir-url for releases, "
          "download-dir-url for URLs and packages); without it, the binary cache our proxy serves at "
          "<master_url>/shacache/. Exit codes: 0 found, 1 not in the cache or unreachable.")


def _cache(args: argparse.Namespace, generic: bool):
    from pathlib import Path

    from slapos.base.config import Config
    from slapos.grid.cache import BinaryCache, CacheConfig

    config = Config.load(args.cfg)
    options = {k.replace("_", "-"): v for k, v in config.section("networkcache").items()}
    master = config.get("slapos", "master_url", "")
    fallback = master.rstrip("/") + "/shacache" if master else None
    if generic:
        dir_url = options.get("download-dir-url") or (fallback and fallback + "/dir")
    else:
        dir_url = options.get("download-binary-dir-url") or (fallback and fallback + "/dir")
    if not dir_url:
        from slapos.base.errors import ConfigError

        raise ConfigError(f"no binary cache configured: set [networkcache] download-binary-dir-url in {config.path}")
    cache_config = CacheConfig.from_options(options, lookup=True)
    software_root = config.get_path("slapos", "software_root", None) or Path("/opt/slapgrid")
    return BinaryCache(cache_config, software_root), dir_url


def _show(args, rows: list[dict], headers: list[str], title: str) -> int:
    from slapos.client import output

    if args.format == "json":
        output.dump_json(rows)
    else:
        print(title)
        output.table(headers, [[row.get(h.lower().replace(" ", "_").rstrip("?")) for h in headers] for row in rows])
    return 0


def _entries(args, key: str, generic: bool, what: str):
    cache, dir_url = _cache(args, generic)
    found = cache.inspect(key, dir_url)
    if found is None:
        log.info("%s: not in the cache (%s/%s)", what, dir_url.rstrip("/"), key)
        return cache, None
    if not found:
        log.info("%s: the cache has the key %s but no readable entry", what, key)
    return cache, found


def binary_sr(args: argparse.Namespace) -> int:
    value = args.software_url
    md5 = value if re.fullmatch(r"[0-9a-f]{32}", value) else hashlib.md5(value.encode()).hexdigest()
    cache, found = _entries(args, md5, False, f"software release {value}")
    if found is None:
        return 1
    rows = []
    for metadata, verified in found:
        url = metadata.get("software_url")
        rows.append({
            "software_url": url, "multiarch": metadata.get("multiarch"),
            "os": " ".join(str(x) for x in metadata.get("os") or []), "python": metadata.get("python"),
            "software_root": metadata.get("software_root"), "sha512": str(metadata.get("sha512", ""))[:16],
            "compatible": "yes" if isinstance(url, str) and cache.compatible(metadata, url) else "no",
            "verified": "yes" if verified else "no",
        })
    return _show(args, rows, ["MULTIARCH", "OS", "PYTHON", "SOFTWARE ROOT", "COMPATIBLE?", "VERIFIED?"],
                 f"software release {value} (md5 {md5}), this node: {cache.tags['multiarch']} "
                 f"{' '.join(cache.tags['os'])} {cache.tags['python']}")


def url(args: argparse.Namespace) -> int:
    key = "file-urlmd5:" + hashlib.md5(args.url.encode()).hexdigest()
    _cache_, found = _entries(args, key, True, f"URL {args.url}")
    if found is None:
        return 1
    rows = [{"url": m.get("url"), "sha512": m.get("sha512"), "verified": "yes" if v else "no"} for m, v in found]
    return _show(args, rows, ["URL", "SHA512", "VERIFIED?"], f"URL {args.url} (key {key})")


def pypi(args: argparse.Namespace) -> int:
    from slapos.base.errors import UsageError

    name, _, version = args.name.partition("==")
    version = version or args.version
    if not version:
        raise UsageError(f"give the version too (the cache is indexed by name and version): "
                         f"slapos cachelookup pypi {name} VERSION")
    key = f"pypi:{name}={version}"
    _cache_, found = _entries(args, key, True, f"package {name} {version}")
    if found is None:
        return 1
    rows = [{"basename": m.get("basename"), "sha512": m.get("sha512"), "verified": "yes" if v else "no"}
            for m, v in found]
    return _show(args, rows, ["BASENAME", "SHA512", "VERIFIED?"], f"package {name} {version} (key {key})")


def _arguments(name: str, metavar: str, help_text: str, extra=None):
    def arguments(parser: argparse.ArgumentParser) -> None:
        add_cfg_argument(parser)
        parser.add_argument(name, metavar=metavar, help=help_text)
        if extra:
            extra(parser)
        add_format_argument(parser)

    return arguments


COMMANDS = [
    Command(path=("cachelookup", "binary-sr"), help="what the binary cache holds for a software release",
            description="Entries of the binary cache for a software release (URL or md5): platform, "
                        "whether this node can use it, whether its signature verifies. " + _WHERE,
            run=binary_sr, arguments=_arguments("software_url", "URL|MD5", "software release URL or its md5")),
    Command(path=("cachelookup", "url"), help="what the cache holds for a downloaded URL",
            description="Entries of the cache for a URL buildout downloads (key file-urlmd5:<md5>). " + _WHERE,
            run=url, arguments=_arguments("url", "URL", "the URL")),
    Command(path=("cachelookup", "pypi"), help="what the cache holds for a Python package",
            description="Entries of the cache for a Python package version (key pypi:NAME=VERSION). " + _WHERE,
            run=pypi, arguments=_arguments(
                "name", "NAME", "package name (or NAME==VERSION)",
                lambda p: p.add_argument("version", nargs="?", metavar="VERSION", help="package version"))),
]
