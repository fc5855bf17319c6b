"""The proxy as a small certificate authority (docs/join.md).

* The CA (an EC P-256 key, 0600 from its creation, and a self-signed certificate) lives in the
  proxy's state directory (`[slapproxy] ca_directory`, default `ca/` beside the database); it is
  created on the proxy's first start.
* `Person_requestComputer` (the reference master's web call, used by `slapos node register`)
  exchanges a one-time token (ownership.consume_token) for a computer certificate and its key.
  The certificate's subject common name is the computer id; its serial is recorded in the
  `certificate` table.
* `Person_getCertificate` (the reference master's call behind `slapos configure client
  --token`) exchanges a user token for a user certificate: common name the user's name,
  organisational unit `user`, recorded with kind `user` and `user_reference` (its
  `computer_reference` is empty: a user is no computer).
* `slapos proxy certificates` lists them, `slapos proxy revoke` revokes one: the TLS listener
  looks the serial up on every request, so a revoked certificate is refused at once, also by a
  proxy that was running when it was revoked.
"""
from __future__ import annotations

import datetime
import os
import re
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from slapos.base.errors import SlapOSError

CA_KEY, CA_CERT = "ca.key", "ca.crt"
DEFAULT_VALIDITY_DAYS = 365
COMPUTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
TABLE = """CREATE TABLE IF NOT EXISTS certificate (
    serial TEXT PRIMARY KEY, kind TEXT NOT NULL, computer_reference TEXT NOT NULL,
    partition_reference TEXT, issued REAL NOT NULL, expires REAL NOT NULL, revoked REAL,
    credential_hash TEXT, certificate_pem TEXT, key_pem TEXT, user_reference TEXT)"""
USER = "user"


class CertificateError(SlapOSError):
    """A certificate the CA will not issue (the message says why)."""


def ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(TABLE)
    if "user_reference" not in {row[1] for row in conn.execute("PRAGMA table_info(certificate)")}:
        conn.execute("ALTER TABLE certificate ADD COLUMN user_reference TEXT")  # from before user certificates


def _write_private(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class Issued:
    serial: str
    certificate: str  # PEM
    key: str  # PEM (PKCS#8, unencrypted: it goes to the node once, over the token exchange)


class CertificateAuthority:
    def __init__(self, directory: Path):
        self.directory = directory
        self.key_path = directory / CA_KEY
        self.cert_path = directory / CA_CERT
        self._key = None
        self._cert = None

    def load_or_create(self, name: str = "slapproxy") -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        if self.directory.exists():
            self._check()
        if not self.key_path.exists():
            self._create(name)
        self._key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return self

    def _check(self) -> None:
        """An existing CA is used only if nobody else could have planted, replaced or read it: the
        key signs every certificate, `ca.crt` is the anchor client certificates are verified with."""
        euid = os.geteuid()
        info = os.stat(self.directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != euid or info.st_mode & 0o022:
            raise CertificateError(
                f"CA directory {self.directory}: owned by uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}; it "
                f"must be a directory of the proxy's user (uid {euid}) that nobody else can write (chmod 700)")
        for path, others in ((self.key_path, 0o077), (self.cert_path, 0o022)):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_uid != euid or info.st_mode & others:
                raise CertificateError(
                    f"{path}: owned by uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}; it must be a file of "
                    f"the proxy's user (uid {euid}), {'0600' if others == 0o077 else 'writable by it only'}: "
                    "whoever reads the key or replaces the certificate is the proxy's CA")

    def _create(self, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "slapnode proxy")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        # the certificate first: a key without its certificate would be a CA nobody can use
        self.cert_path.unlink(missing_ok=True)  # a leftover of an interrupted start, in our own directory
        _write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write_private(self.key_path, key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()), 0o600)

    def issue(self, common_name: str, kind: str = "computer", days: int = DEFAULT_VALIDITY_DAYS,
              hosts: tuple[str, ...] = ()) -> Issued:
        """A new key and a certificate for it, signed by the CA. `kind` (computer, partition,
        user, server) goes into the organisational unit; `hosts` become subject alternative names."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        assert self._key is not None and self._cert is not None, "load_or_create() first"
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind)]))
                   .issuer_name(self._cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH] if kind == "server" else [ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        return Issued(
            serial=format(cert.serial_number, "x"),
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode("ascii"),
        )


def record(conn: sqlite3.Connection, issued: Issued, kind: str, computer: str, partition: str | None = None,
           days: int = DEFAULT_VALIDITY_DAYS, credential_hash: str | None = None,
           pem: tuple[str, str] | None = None, user: str | None = None) -> None:
    """Record an issued certificate. A partition's is bound to the partition's credential hash (it
    dies when the partition is freed) and kept (`pem`) to be handed again to the node; the
    database is private (0600) and already holds the partitions' credentials. A user's
    (`kind` USER) names its `user` and no computer."""
    now = time.time()
    conn.execute("INSERT INTO certificate (serial, kind, computer_reference, partition_reference, issued, expires,"
                 " credential_hash, certificate_pem, key_pem, user_reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (issued.serial, kind, computer, partition, now, now + days * 86400, credential_hash,
                  *(pem or (None, None)), user))


def revoke_partition(conn: sqlite3.Connection, computer: str, partition: str) -> None:
    conn.execute("UPDATE certificate SET revoked = ? WHERE kind = 'partition' AND computer_reference = ? "
                 "AND partition_reference = ? AND revoked IS NULL", (time.time(), computer, partition))


def active_computer_certificate(conn: sqlite3.Connection, computer: str) -> str | None:
    row = conn.execute("SELECT serial FROM certificate WHERE kind = 'computer' AND computer_reference = ? "
                       "AND revoked IS NULL AND expires > ?", (computer, time.time())).fetchone()
    return row[0] if row else None


def listing(conn: sqlite3.Connection) -> list[dict]:
    ensure_table(conn)
    rows = conn.execute("SELECT serial, kind, computer_reference, partition_reference, issued, expires, revoked, "
                        "user_reference FROM certificate ORDER BY issued").fetchall()
    return [{"serial": r[0], "kind": r[1], "computer": r[2] or None, "partition": r[3], "issued": r[4],
             "expires": r[5], "revoked": r[6], "user": r[7]} for r in rows]


def revoke(conn: sqlite3.Connection, what: str, user: bool = False) -> list[str]:
    """Revoke the certificate with serial `what`, or every active one of computer `what` (with
    `user`: of user `what`, a name computers and users do not share); returns the serials
    revoked (none: nothing matched)."""
    ensure_table(conn)
    if not what:
        return []
    if user:
        query = "kind = 'user' AND user_reference = ?"
        args: tuple[str, ...] = (what,)
    else:
        query = "serial = ? OR (kind != 'user' AND computer_reference = ?)"
        args = (what.lower(), what)
    rows = conn.execute(f"SELECT serial FROM certificate WHERE revoked IS NULL AND ({query})", args).fetchall()  # noqa: S608
    serials = [r[0] for r in rows]
    conn.executemany("UPDATE certificate SET revoked = ? WHERE serial = ?", [(time.time(), s) for s in serials])
    return serials


def valid(conn: sqlite3.Connection, serial: str) -> tuple[str, str, str | None] | None:
    """(kind, computer, partition) of an issued, unrevoked, unexpired certificate, else None."""
    row = conn.execute("SELECT kind, computer_reference, partition_reference FROM certificate "
                       "WHERE serial = ? AND revoked IS NULL AND expires > ?", (serial, time.time())).fetchone()
    return (row[0], row[1], row[2]) if row else None
