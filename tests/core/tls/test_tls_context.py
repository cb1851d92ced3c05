"""Server certificate loading, hot-swap holder and client verification contexts."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alknet.core.errors import ConfigError
from alknet.core.tls.context import (
    ServerContexts,
    TlsVerify,
    client_context,
    load_certificate,
    log_certificate,
    server_context_from_pem,
)
from alknet.core.tls.selfsigned import generate_self_signed, pem_fingerprint


def _write_pair(tmp: Path, stem: str, *, expired: bool = False) -> tuple[Path, Path]:
    if expired:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=20))
            .not_valid_after(now - datetime.timedelta(days=10))
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    else:
        cert_pem, key_pem = generate_self_signed()
    cert_path, key_path = tmp / f"{stem}.pem", tmp / f"{stem}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path


def test_load_manual_certificate(tmp_path: Path) -> None:
    cert, key = _write_pair(tmp_path, "a")
    loaded = load_certificate(cert, key)
    assert loaded.source == "manual" and not loaded.expired
    assert loaded.fingerprint == pem_fingerprint(cert.read_bytes())
    assert loaded.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert loaded.log_fields() == {"source": "manual", "sha256": loaded.fingerprint}


def test_mismatch_and_unreadable_are_config_errors(tmp_path: Path) -> None:
    cert_a, key_a = _write_pair(tmp_path, "a")
    cert_b, key_b = _write_pair(tmp_path, "b")
    with pytest.raises(ConfigError, match=r"TLS key .*a\.key does not match certificate .*b\.pem"):
        load_certificate(cert_b, key_a)
    with pytest.raises(ConfigError, match=r"cannot read TLS certificate .*missing\.pem"):
        load_certificate(tmp_path / "missing.pem", key_a)
    with pytest.raises(ConfigError, match=r"cannot read TLS key .*missing\.key"):
        load_certificate(cert_a, tmp_path / "missing.key")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"not a PEM X\.509 certificate"):
        load_certificate(tmp_path / "junk.pem", key_a)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot load TLS certificate"):
        load_certificate(cert_a, tmp_path / "junk.key")
    del key_b


def test_expired_certificate_loads_with_flag(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = _write_pair(tmp_path, "old", expired=True)
    loaded = load_certificate(cert, key)
    assert loaded.expired
    assert loaded.log_fields()["expired"] == "true"
    caplog.set_level(logging.INFO)
    log_certificate(logging.getLogger("alknet.test"), loaded)
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == "tls certificate"


def test_holder_reload_keeps_old_on_error_and_swaps_on_success(tmp_path: Path) -> None:
    cert, key = _write_pair(tmp_path, "live")
    holder = ServerContexts.from_files(cert, key)
    first_ctx = holder.ref.load()
    first_fp = holder.fingerprint
    new_cert, new_key = _write_pair(tmp_path, "next")
    cert.write_bytes(new_cert.read_bytes())  # the key does not match yet
    with pytest.raises(ConfigError, match="does not match"):
        holder.reload()
    assert holder.ref.load() is first_ctx and holder.fingerprint == first_fp
    key.write_bytes(new_key.read_bytes())
    loaded = holder.reload()
    assert holder.ref.load() is loaded.context is not first_ctx
    assert holder.fingerprint == pem_fingerprint(new_cert.read_bytes()) != first_fp


def test_self_signed_holder_and_pem_loader(tmp_path: Path) -> None:
    holder = ServerContexts.self_signed(tmp_path)
    assert holder.current.source == "self-signed"
    assert holder.reload().fingerprint == holder.fingerprint
    cert_pem, key_pem = generate_self_signed("challenge.test")
    loaded = server_context_from_pem(cert_pem, key_pem, source="acme", alpn=("acme-tls/1",))
    assert loaded.fingerprint == pem_fingerprint(cert_pem)
    assert loaded.cert_path is None
    holder.swap(loaded)
    assert holder.ref.load() is loaded.context


def test_client_contexts(tmp_path: Path) -> None:
    default = client_context(TlsVerify())
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    assert default.minimum_version == ssl.TLSVersion.TLSv1_2
    cert, _ = _write_pair(tmp_path, "ca")
    with_ca = client_context(TlsVerify(ca=cert))
    assert with_ca.verify_mode == ssl.CERT_REQUIRED and with_ca.check_hostname
    assert with_ca.cert_store_stats()["x509"] == 1
    pinned = client_context(TlsVerify(pin="AB:" * 31 + "AB"))
    assert pinned.verify_mode == ssl.CERT_NONE and not pinned.check_hostname
    assert TlsVerify(pin="AB:" * 31 + "AB").pin == "ab" * 32
    assert TlsVerify(insecure=True).mode == "insecure"
    with pytest.raises(ConfigError, match="cannot load --tls-ca"):
        client_context(TlsVerify(ca=tmp_path / "nope.pem"))
