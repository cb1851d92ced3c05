"""OpenSSH user-certificate checks, rules 1-5 of auth-and-config.md §4 (rule 6, the CA lookup, goes
through the identity provider). Light module: ``cryptography`` only.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import SSHCertificate, SSHCertificateType

from alknet.core.auth.keys import ED25519, PublicKey, fingerprint

__all__ = [
    "ED25519_CERT",
    "CertVerdict",
    "check_user_certificate",
    "parse_source_address",
    "signing_key_fingerprint",
    "subject_key",
]

ED25519_CERT = "ssh-ed25519-cert-v01@openssh.com"
_ACCEPTED_CRITICAL = frozenset({b"source-address", b"force-command"})


@dataclass(frozen=True, slots=True)
class CertVerdict:
    """``ok`` and a short machine-readable ``reason`` (``"ok"`` when accepted)."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


_OK = CertVerdict(True, "ok")


def _string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise ValueError("truncated")
    (n,) = struct.unpack_from(">I", buf, pos)
    pos += 4
    if n > len(buf) - pos:
        raise ValueError("truncated")
    return buf[pos : pos + n], pos + n


@dataclass(frozen=True, slots=True)
class _Wire:
    cert_type: bytes
    subject: bytes = b""
    sig_key: bytes = b""
    sig_key_type: bytes = b""
    sig_type: bytes = b""


def _wire(cert: SSHCertificate) -> _Wire:
    """The fields cryptography does not expose, read from the wire body (Ed25519 certificates only)."""
    name, _, b64 = cert.public_bytes().partition(b" ")
    body = base64.b64decode(b64)
    cert_type, pos = _string(body, 0)
    if cert_type != name or name != ED25519_CERT.encode():
        return _Wire(name)
    _nonce, pos = _string(body, pos)
    subject, pos = _string(body, pos)
    pos += 8 + 4  # serial, certificate type
    for _ in range(2):  # key id, valid principals
        _, pos = _string(body, pos)
    pos += 16  # valid after, valid before
    for _ in range(3):  # critical options, extensions, reserved
        _, pos = _string(body, pos)
    sig_key, pos = _string(body, pos)
    signature, pos = _string(body, pos)
    sig_key_type, _ = _string(sig_key, 0)
    sig_type, _ = _string(signature, 0)
    return _Wire(cert_type, subject, sig_key, sig_key_type, sig_type)


def subject_key(cert: SSHCertificate) -> PublicKey:
    """The certified (subject) Ed25519 key; ``Identity.id`` of a certificate login is its fingerprint.
    ``ValueError`` for anything but an Ed25519 certificate."""
    return PublicKey(_wire(cert).subject)


def signing_key_fingerprint(cert: SSHCertificate) -> str:
    """Fingerprint of the key that signed ``cert`` (looked up with ``kind=CERT_AUTHORITY``).
    ``ValueError`` for anything but an Ed25519 certificate."""
    sig_key = _wire(cert).sig_key
    if not sig_key:
        raise ValueError("not an ssh-ed25519 certificate")
    return fingerprint(sig_key)


def parse_source_address(value: bytes) -> tuple[IPv4Network | IPv6Network, ...]:
    """The CIDR list of a ``source-address`` critical option; ``ValueError`` when malformed or empty."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("source-address is not ASCII") from None
    nets: list[IPv4Network | IPv6Network] = []
    for item in text.split(","):
        if not item or item != item.strip():
            raise ValueError("source-address has an empty or padded entry")
        nets.append(ipaddress.ip_network(item, strict=False))
    return tuple(nets)


def _address_in(ip: IPv4Address | IPv6Address, nets: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in nets)


def check_user_certificate(
    cert: SSHCertificate,
    *,
    username: str,
    client_ip: IPv4Address | IPv6Address | None,
    now: float,
) -> CertVerdict:
    """Apply rules 1-5: Ed25519 user certificate signed by an Ed25519 key, valid signature, validity
    window (``valid_after <= now < valid_before``), non-empty principals containing ``username``, and critical
    options (``source-address`` enforced, ``force-command`` ignored, anything else refused). The first failure
    decides.
    """
    # 1. types
    try:
        wire = _wire(cert)
    except (ValueError, binascii.Error):
        return CertVerdict(False, "malformed_certificate")
    if wire.cert_type != ED25519_CERT.encode() or len(wire.subject) != 32:
        return CertVerdict(False, "not_ed25519_certificate")
    if cert.type is not SSHCertificateType.USER:
        return CertVerdict(False, "not_user_certificate")
    if wire.sig_key_type != ED25519.encode() or wire.sig_type != ED25519.encode():
        return CertVerdict(False, "ca_not_ed25519")
    # 2. signature
    try:
        cert.verify_cert_signature()
    except (InvalidSignature, ValueError):
        return CertVerdict(False, "bad_signature")
    # 3. validity window, seconds, no grace
    if now < cert.valid_after:
        return CertVerdict(False, "not_yet_valid")
    if now >= cert.valid_before:
        return CertVerdict(False, "expired")
    # 4. principals
    principals = cert.valid_principals
    if not principals:
        return CertVerdict(False, "no_principals")
    if username.encode("utf-8", "surrogateescape") not in principals:
        return CertVerdict(False, "principal_mismatch")
    # 5. critical options
    options = cert.critical_options
    for name in options:
        if name not in _ACCEPTED_CRITICAL:
            return CertVerdict(False, "unknown_critical_option")
    if b"source-address" in options:
        try:
            nets = parse_source_address(options[b"source-address"])
        except ValueError:
            return CertVerdict(False, "bad_source_address")
        if client_ip is None or not _address_in(client_ip, nets):
            return CertVerdict(False, "source_address")
    return _OK
