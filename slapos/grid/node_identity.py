"""The node's own certificate (`[slapos] cert_file`), as each `slapos node instance` sees it.

* `identity_stamp`: a digest of it. It is one of each partition's inputs (plan.py): when the node
  registered again (`slapos node register`, after a revocation or for a renewal) every partition
  is deployed again and fetches its partition certificate anew (the former ones may have been
  revoked with the computer's).
* A certificate expiring within EXPIRY_WARNING_DAYS is a warning of every run: the node's log says
  it a month ahead, not the day the master refuses it.

The expiry date is read from the certificate's DER by a short walk of its first fields, not by
`cryptography`, whose import (~65 ms) would cost more than the whole no-change run is allowed
(bench/instance.py). A file it cannot read gives no date and no warning: the TLS connection to
the master reports a broken certificate anyway.
"""
from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import logging
import time

log = logging.getLogger("slapos")

EXPIRY_WARNING_DAYS = 30
_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def identity_stamp(cert_file) -> str:
    """A digest of the node's certificate, read once per run; "" without one. Warns when it
    expires soon."""
    if not cert_file:
        return ""
    try:
        with open(cert_file, "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return ""  # the connection to the master says what is wrong with it
    warn_expiry(cert_file, data)
    return hashlib.sha256(data).hexdigest()[:16]


def _field(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER field at `at`."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[at:at + size], "big")
        at += size
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def not_after(pem: bytes) -> float | None:
    """When the (first) certificate of `pem` expires (seconds since the epoch), None if unreadable.
    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... } (RFC 5280 §4.1)."""
    try:
        body = pem.split(_BEGIN, 1)[1].split(_END, 1)[0]
        der = base64.b64decode(b"".join(body.split()), validate=True)
        _, at, _ = _field(der, 0)  # Certificate
        _, at, _ = _field(der, at)  # tbsCertificate
        tag, _, end = _field(der, at)
        if tag == 0xA0:  # version
            at = end
        for _ in range(3):  # serialNumber, signature, issuer
            at = _field(der, at)[2]
        _, at, _ = _field(der, at)  # validity
        at = _field(der, at)[2]  # notBefore
        tag, start, end = _field(der, at)
        text = der[start:end].decode("ascii")
        if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50-99 are 1950-1999 (RFC 5280 §4.1.2.5.1)
            text = ("19" if int(text[:2]) >= 50 else "20") + text
        elif tag != 0x18:  # nor GeneralizedTime
            return None
        return float(calendar.timegm(time.strptime(text, "%Y%m%d%H%M%SZ")))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None


def warn_expiry(cert_file, data: bytes, now: float | None = None) -> int | None:
    """Log a warning when the certificate expires within EXPIRY_WARNING_DAYS; its days left."""
    expires = not_after(data)
    if expires is None:
        return None
    days = int((expires - (time.time() if now is None else now)) // 86400)
    if days < EXPIRY_WARNING_DAYS:
        when = "expired" if days < 0 else f"expires in {days} day{'s' * (days != 1)}"
        log.warning("the computer certificate %s %s: revoke it at the master and run `slapos node register` "
                    "again with a new token (docs/join.md)", cert_file, when)
    return days
