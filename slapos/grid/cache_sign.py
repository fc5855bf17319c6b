"""Signatures of binary cache entries: load trusted keys and the private key, sign and verify
(RSA-PSS/SHA-256, Ed25519, ECDSA/SHA-256; RSA PKCS#1 v1.5/SHA-1 only for opted-in legacy keys).
`cryptography` is imported only when a signature is made or checked. Split from
slapos.grid.cache, which re-exports these names.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from slapos.base.errors import ConfigError

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)


def load_trusted_keys(value: str) -> list[Any]:
    """Public keys from PEM certificates and/or public keys: inline text (as in slapos.cfg) or a
    path to a file holding them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = value.encode()
    if b"-----BEGIN" not in data:
        try:
            data = Path(value.strip()).read_bytes()
        except OSError as e:
            raise ConfigError(
                f"[networkcache] signature-certificate-list is neither PEM text nor a readable file: {e}"
            ) from None
    keys: list[Any] = []
    for match in _PEM_BLOCK.finditer(data):
        kind, block = match.group(1), match.group(0)
        # configparser strips the indentation of continuation lines; rebuild a clean block
        block = b"\n".join(line.strip() for line in block.splitlines()) + b"\n"
        try:
            if kind == b"CERTIFICATE":
                keys.append(x509.load_pem_x509_certificate(block).public_key())
            elif kind == b"PUBLIC KEY":
                keys.append(serialization.load_pem_public_key(block))
        except ValueError as e:
            raise ConfigError(f"[networkcache] signature-certificate-list holds an unreadable {kind.decode()}: {e}") from None
    if not keys:
        raise ConfigError("[networkcache] signature-certificate-list holds no PEM certificate or public key")
    return keys


def load_private_key(path: str | Path):
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"[networkcache] cannot load signature-private-key-file {path}: {e}") from None


def sign(private_key, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(
            data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH), hashes.SHA256()
        )
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    raise ConfigError("[networkcache] signature-private-key-file must be an RSA, Ed25519 or EC key")


def verify(public_key, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(
                signature, data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                hashes.SHA256(),
            )
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _is_rsa(public_key) -> bool:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return isinstance(public_key, rsa.RSAPublicKey)


def verify_legacy_sha1(public_key, signature: bytes, data: bytes) -> bool:
    """slapos.libnetworkcache's signature: RSA PKCS#1 v1.5 over SHA-1 (only for opted-in keys)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if not _is_rsa(public_key):
        return False
    try:
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - opt-in legacy
    except (InvalidSignature, ValueError):
        return False
    return True
