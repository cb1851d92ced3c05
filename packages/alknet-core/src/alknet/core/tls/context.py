"""TLS contexts: server certificates with hot swap, client verification modes (auth-and-config.md §10,
transport-and-ssh.md §3).

Server: :func:`load_certificate` builds an ``ssl.SSLContext`` from a PEM chain and key (mismatch or unreadable
file -> :class:`~alknet.core.errors.ConfigError`); :class:`ServerContexts` holds the listener's
``AtomicRef[ssl.SSLContext]`` and :meth:`ServerContexts.reload` re-reads the files, keeping the old context on
error. Client: :class:`TlsVerify` is exactly one of CA (system or ``--tls-ca``), pin, or insecure;
:func:`client_context` builds the matching context.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from alknet.core import logfmt
from alknet.core.config.atomic import AtomicRef
from alknet.core.errors import ConfigError

from .selfsigned import cert_fingerprint, ensure_self_signed, parse_pin

__all__ = [
    "DEFAULT_ALPN",
    "LoadedCertificate",
    "ServerContexts",
    "TlsVerify",
    "client_context",
    "load_certificate",
    "log_certificate",
    "server_context_from_pem",
]

#: Offered by the client and accepted by the server: to DPI the stream looks like HTTPS.
DEFAULT_ALPN: tuple[str, ...] = ("http/1.1",)


def _no_password() -> bytes:
    return b""  # never prompt on a terminal for an encrypted key: it simply fails to load


def _base_server_context(alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """A server context plus what the startup/reload log line needs."""

    context: ssl.SSLContext
    source: str  # "manual", "self-signed" or "acme"
    fingerprint: str  # SHA-256 over the leaf's DER, 64 lowercase hex
    not_after: datetime.datetime
    expired: bool
    cert_path: Path | None = None
    key_path: Path | None = None

    def log_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"source": self.source, "sha256": self.fingerprint}
        if self.expired:
            fields["expired"] = "true"
        return fields


def log_certificate(logger: logging.Logger, loaded: LoadedCertificate) -> None:
    """``level=INFO msg="tls certificate" source=... sha256=...``; WARNING + ``expired=true`` if expired."""
    level = logging.WARNING if loaded.expired else logging.INFO
    logfmt.log_event(logger, level, "tls certificate", **loaded.log_fields())


def load_certificate(
    cert_path: Path | str,
    key_path: Path | str,
    *,
    source: str = "manual",
    alpn: Sequence[str] = DEFAULT_ALPN,
    now: datetime.datetime | None = None,
) -> LoadedCertificate:
    """Read a PEM chain and its key into a fresh server context; :class:`ConfigError` names the problem."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    try:
        pem = cert_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS certificate {cert_path}: {exc.strerror or exc}") from None
    try:
        leaf = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(f"{cert_path}: not a PEM X.509 certificate") from None
    try:
        key_path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS key {key_path}: {exc.strerror or exc}") from None
    ctx = _base_server_context(alpn)
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(f"TLS key {key_path} does not match certificate {cert_path}") from None
        raise ConfigError(
            f"cannot load TLS certificate {cert_path} with key {key_path}: {exc.reason}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS key {key_path}: {exc.strerror or exc}") from None
    not_after = leaf.not_valid_after_utc
    current = now or datetime.datetime.now(datetime.UTC)
    return LoadedCertificate(
        context=ctx,
        source=source,
        fingerprint=cert_fingerprint(leaf.public_bytes(serialization.Encoding.DER)),
        not_after=not_after,
        expired=current > not_after,
        cert_path=cert_path,
        key_path=key_path,
    )


def server_context_from_pem(
    cert_pem: bytes, key_pem: bytes, *, source: str = "manual", alpn: Sequence[str] = DEFAULT_ALPN
) -> LoadedCertificate:
    """:func:`load_certificate` for in-memory PEM (written to a private temporary directory, then removed)."""
    with tempfile.TemporaryDirectory(prefix="alknet-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        cert_file.write_bytes(cert_pem)
        loaded = load_certificate(cert_file, key_file, source=source, alpn=alpn)
    return dataclasses.replace(loaded, cert_path=None, key_path=None)


@dataclass
class ServerContexts:
    """The certificate state of one TLS listener: ``ref`` is what the acceptor reads per connection."""

    current: LoadedCertificate
    ref: AtomicRef[ssl.SSLContext] = field(init=False)

    def __post_init__(self) -> None:
        self.ref = AtomicRef(self.current.context)

    @classmethod
    def from_files(cls, cert_path: Path | str, key_path: Path | str) -> ServerContexts:
        """Manual ``--tls-cert``/``--tls-key``."""
        return cls(load_certificate(cert_path, key_path, source="manual"))

    @classmethod
    def self_signed(cls, state_dir: Path) -> ServerContexts:
        """The state dir's self-signed certificate, created on first use."""
        info = ensure_self_signed(state_dir)
        return cls(load_certificate(info.cert_path, info.key_path, source="self-signed"))

    @property
    def fingerprint(self) -> str:
        return self.current.fingerprint

    def swap(self, loaded: LoadedCertificate) -> None:
        """Use ``loaded`` for every new connection; established sessions keep theirs."""
        self.current = loaded
        self.ref.store(loaded.context)

    def reload(self) -> LoadedCertificate:
        """Re-read the certificate files (SIGHUP); on error raise :class:`ConfigError`, keep the old one."""
        cur = self.current
        if cur.cert_path is None or cur.key_path is None:
            return cur
        loaded = load_certificate(cur.cert_path, cur.key_path, source=cur.source)
        self.swap(loaded)
        return loaded


@dataclass(frozen=True, slots=True)
class TlsVerify:
    """Client verification, exactly one mode: CA (default; ``ca`` = a private CA), ``pin`` or ``insecure``."""

    ca: Path | None = None
    pin: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.pin is not None and (self.ca is not None or self.insecure):
            raise ConfigError("--tls-pin cannot be combined with --tls-ca or --tls-insecure")
        if self.ca is not None and self.insecure:
            raise ConfigError("--tls-ca cannot be combined with --tls-insecure")
        if self.pin is not None:
            try:
                object.__setattr__(self, "pin", parse_pin(self.pin))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    @property
    def mode(self) -> str:
        if self.pin is not None:
            return "pin"
        if self.insecure:
            return "insecure"
        return "ca"


def client_context(verify: TlsVerify, *, alpn: Sequence[str] = DEFAULT_ALPN) -> ssl.SSLContext:
    """TLS 1.2+ client context for ``verify`` (host-name checking only in CA mode)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify.mode == "ca":
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if verify.ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(verify.ca))
            except (OSError, ssl.SSLError) as exc:
                detail: Any = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise ConfigError(f"cannot load --tls-ca {verify.ca}: {detail}") from None
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
