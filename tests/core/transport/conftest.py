"""Fixtures for the L1 transport tests: an asyncssh echo server/client kit and a tiny test PKI."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alknet.core.transport.base import TRANSPORT_INFO_KEY, TransportInfo


class EchoSession(asyncssh.SSHTCPSession[bytes]):
    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._chan.write(data)

    def eof_received(self) -> bool:
        self._chan.write_eof()
        return False


class EchoServer(asyncssh.SSHServer):
    """Answers every direct-tcpip open with an in-process echo (never opens a socket)."""

    def __init__(self, kit: SshKit) -> None:
        self.lost: list[Exception | None] = []
        self.info: TransportInfo | None = None
        kit.servers.append(self)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.info = conn.get_extra_info(TRANSPORT_INFO_KEY)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        return EchoSession()


class SshKit:
    def __init__(self) -> None:
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.servers: list[EchoServer] = []

    def server_kwargs(self) -> dict[str, Any]:
        return {
            "server_host_keys": [self.host_key],
            "authorized_client_keys": asyncssh.import_authorized_keys(
                self.client_key.export_public_key().decode()
            ),
            "server_factory": lambda: EchoServer(self),
            "config": None,
        }

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "username": "alknet",
            "client_keys": [self.client_key],
            "known_hosts": None,
            "agent_path": None,
            "config": None,
            "password": None,
        }

    async def echo(self, conn: asyncssh.SSHClientConnection, payload: bytes = b"hello alknet") -> bytes:
        reader, writer = await conn.open_connection("echo.invalid", 7)
        writer.write(payload)
        writer.write_eof()
        data: bytes = await reader.read()
        writer.close()
        return data


@pytest.fixture
def ssh() -> SshKit:
    return SshKit()


@dataclass
class CertFiles:
    cert: Path
    key: Path
    pem: bytes
    der: bytes


class Pki:
    """Certificates made with ``cryptography`` at test time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._n = 0

    def _path(self, stem: str) -> tuple[Path, Path]:
        self._n += 1
        return self.root / f"{stem}-{self._n}.pem", self.root / f"{stem}-{self._n}.key"

    def issue(
        self,
        names: tuple[str, ...] = ("alknet.test",),
        *,
        ips: tuple[str, ...] = ("127.0.0.1",),
        ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
        is_ca: bool = False,
        not_after: datetime.datetime | None = None,
    ) -> tuple[CertFiles, x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "test")])
        now = datetime.datetime.now(datetime.UTC)
        issuer_cert, issuer_key = ca if ca is not None else (None, key)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(not_after or now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if sans and not is_ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if is_ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        cert = builder.sign(issuer_key, hashes.SHA256())
        cert_path, key_path = self._path("ca" if is_ca else "cert")
        pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_path.write_bytes(pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        files = CertFiles(cert_path, key_path, pem, cert.public_bytes(serialization.Encoding.DER))
        return files, cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)
