"""The self-signed TLS certificate, fingerprints and pins (auth-and-config.md §10).

ECDSA P-256, CN and SAN ``alknet``, valid 10 years, kept as ``<state>/tls/self-signed.pem`` and
``self-signed.key`` (key 0600, directory 0700), created once and reused. The fingerprint clients pin is the
SHA-256 over the DER certificate as 64 lowercase hex digits; the pin parser also accepts colons and upper
case.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alknet.core.errors import ConfigError
from alknet.core.state import check_private_file, ensure_private_dir

__all__ = [
    "SELF_SIGNED_CERT",
    "SELF_SIGNED_KEY",
    "SelfSigned",
    "cert_fingerprint",
    "ensure_self_signed",
    "generate_self_signed",
    "parse_pin",
    "pem_fingerprint",
]

SELF_SIGNED_CERT = "self-signed.pem"
SELF_SIGNED_KEY = "self-signed.key"
_NAME = "alknet"
_VALIDITY = datetime.timedelta(days=3650)


def cert_fingerprint(der: bytes) -> str:
    """SHA-256 over the DER certificate: 64 lowercase hex digits."""
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: bytes) -> str:
    """:func:`cert_fingerprint` of the first certificate in a PEM chain."""
    cert = x509.load_pem_x509_certificate(pem)
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def parse_pin(text: str) -> str:
    """Normalise a ``--tls-pin``: colons and upper case accepted; returns 64 lowercase hex digits."""
    pin = text.strip().replace(":", "").lower()
    if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
        raise ValueError("--tls-pin needs the certificate's SHA-256: 64 hex digits (colons allowed)")
    return pin


def generate_self_signed(
    name: str = _NAME, *, validity: datetime.timedelta = _VALIDITY, now: datetime.datetime | None = None
) -> tuple[bytes, bytes]:
    """``(certificate PEM, PKCS#8 key PEM)`` for a fresh ECDSA P-256 self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass(frozen=True, slots=True)
class SelfSigned:
    cert_path: Path
    key_path: Path
    fingerprint: str
    created: bool


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # the umask filtered the creation mode
        f.write(data)


def ensure_self_signed(state_dir: Path) -> SelfSigned:
    """Create ``<state_dir>/tls/self-signed.{pem,key}`` once, or reuse them; raises :class:`ConfigError`."""
    tls_dir = state_dir / "tls"
    cert_path, key_path = tls_dir / SELF_SIGNED_CERT, tls_dir / SELF_SIGNED_KEY
    created = False
    try:
        ensure_private_dir(tls_dir)
        has_cert, has_key = cert_path.exists(), key_path.exists()
        if has_cert != has_key:
            missing, present = (key_path, cert_path) if has_cert else (cert_path, key_path)
            raise ConfigError(
                f"{missing} is missing but {present} exists; remove it to generate a new certificate"
            )
        if not has_cert:
            cert_pem, key_pem = generate_self_signed()
            try:
                _write_exclusive(key_path, key_pem, 0o600)
                _write_exclusive(cert_path, cert_pem, 0o644)
                created = True
            except FileExistsError:
                pass  # another process created them first: reuse theirs
        check_private_file(key_path)
        pem = cert_path.read_bytes()
        fingerprint = pem_fingerprint(pem)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot use the self-signed TLS certificate in {tls_dir}: {exc}") from None
    return SelfSigned(cert_path, key_path, fingerprint, created)
