"""Software product aliases: `product.<name>` (or a bare name from the configured product list)
stands for the URL of a software release.

The configured list (`software_product_list` in [slapos] or [slapconsole], lines `<name> <url>`) is
read first, so no network round trip is needed for known names; otherwise the master is asked
(`getSoftwareReleaseListFromSoftwareProduct`, best release first — the proxy answers from its own
`[slapproxy] software_product_list`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from slapos.base.errors import SlapOSError

PREFIX = "product."


class UnknownProduct(SlapOSError):
    """No software release is known for a product name."""


def _looks_like_url(text: str) -> bool:
    return "/" in text or ":" in text or text.endswith(".cfg")


def lookup_product(name: str, products: dict[str, str], connect: Callable[[], object], where: str) -> str:
    if name in products:
        return products[name]
    connection = connect()
    try:
        urls = connection.getSoftwareReleaseListFromSoftwareProduct(name)
    except SlapOSError as e:
        raise UnknownProduct(f"cannot resolve software product '{name}': {e}") from None
    if not urls:
        known = ", ".join(sorted(products)) or "none"
        raise UnknownProduct(
            f"software product '{name}' is unknown: neither software_product_list of {where} "
            f"(known: {known}) nor the master lists it"
        )
    return str(urls[0])


def resolve_software_url(url: str, products: dict[str, str], connect: Callable[[], object], where: str) -> str:
    """The software release URL a command line argument stands for.

    `product.<name>` → the product's best release; a bare configured product name → its URL;
    an existing relative local path → made absolute (the node would not find it otherwise);
    anything else is passed unchanged."""
    if url.startswith(PREFIX):
        return lookup_product(url[len(PREFIX):], products, connect, where)
    if url in products and not _looks_like_url(url):
        return products[url]
    if "://" not in url and not os.path.isabs(url) and os.path.exists(url):
        return str(Path(url).resolve())
    return url


class ProductCollection:
    """`product.kvm` → URL of the kvm software release (the console's `product` object)."""

    def __init__(self, products: dict[str, str], connect: Callable[[], object], where: str):
        self._products = dict(products)
        self._connect = connect
        self._where = where

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return lookup_product(name, self._products, self._connect, self._where)

    def __getitem__(self, name: str) -> str:
        return lookup_product(name, self._products, self._connect, self._where)

    def __dir__(self) -> list[str]:
        return sorted(self._products)

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._products)) or "none configured; the master is asked"
        return f"<software products: {names}>"
