"""Self-signed certificate: created once, reused, modes, fingerprint and pin parsing."""

from __future__ import annotations

import datetime
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from alknet.core.errors import ConfigError
from alknet.core.tls.selfsigned import (
    cert_fingerprint,
    ensure_self_signed,
    generate_self_signed,
    parse_pin,
    pem_fingerprint,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_once_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ensure_self_signed(state)
    assert first.created
    assert first.cert_path == state / "tls" / "self-signed.pem"
    assert first.key_path == state / "tls" / "self-signed.key"
    assert _mode(first.key_path) == 0o600
    assert _mode(state / "tls") == 0o700
    pem = first.cert_path.read_bytes()
    second = ensure_self_signed(state)
    assert not second.created
    assert second.fingerprint == first.fingerprint
    assert first.cert_path.read_bytes() == pem


def test_certificate_shape(tmp_path: Path) -> None:
    info = ensure_self_signed(tmp_path)
    cert = x509.load_pem_x509_certificate(info.cert_path.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert cert.subject.rfc4514_string() == "CN=alknet"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alknet"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(days=3650)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert info.fingerprint == hashlib.sha256(der).hexdigest() == cert_fingerprint(der)
    assert len(info.fingerprint) == 64 and info.fingerprint == info.fingerprint.lower()
    assert pem_fingerprint(info.cert_path.read_bytes()) == info.fingerprint


def test_half_present_pair_is_an_error(tmp_path: Path) -> None:
    info = ensure_self_signed(tmp_path)
    info.key_path.unlink()
    with pytest.raises(ConfigError, match=r"self-signed\.key is missing"):
        ensure_self_signed(tmp_path)


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    info = ensure_self_signed(tmp_path)
    info.key_path.chmod(0o644)
    with pytest.raises(
        ConfigError, match=r"permissions 0644 on .*self-signed.key are too open \(need 0600\)"
    ):
        ensure_self_signed(tmp_path)


def test_generate_is_fresh_each_time() -> None:
    a_cert, a_key = generate_self_signed()
    b_cert, _ = generate_self_signed()
    assert pem_fingerprint(a_cert) != pem_fingerprint(b_cert)
    assert b"BEGIN PRIVATE KEY" in a_key


def test_parse_pin() -> None:
    hexpin = "0123456789abcdef" * 4
    assert parse_pin(hexpin) == hexpin
    assert parse_pin(hexpin.upper()) == hexpin
    colons = ":".join(hexpin[i : i + 2] for i in range(0, 64, 2)).upper()
    assert parse_pin(colons) == hexpin
    for bad in ("", "abc", hexpin[:-1], hexpin + "0", "g" * 64, "SHA256:" + hexpin):
        with pytest.raises(ValueError, match="64 hex digits"):
            parse_pin(bad)
