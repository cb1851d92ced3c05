"""auth-and-config.md §4 certificate rules 1-5 (check_user_certificate) on certificates made by real
``ssh-keygen -s``, and rule 6 (the signing key must resolve as a CA) through the config provider."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest
from auth_helpers import keygen_fingerprint, ssh_keygen
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    load_ssh_public_identity,
)

from alknet.core.auth.certs import CertVerdict, check_user_certificate, signing_key_fingerprint, subject_key
from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import CredentialKind, Identity
from alknet.core.auth.keys import load_private_key, parse_public_key
from alknet.core.auth.policy import AuthPolicy
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig

VA = 1_700_000_000
VB = 1_700_003_600
NOW = VA + 100
LOOPBACK = IPv4Address("127.0.0.1")


@dataclass
class Pki:
    dir: Path

    def key(self, name: str, kind: str = "ed25519") -> Path:
        path = self.dir / name
        if not path.exists():
            extra = ["-b", "2048"] if kind == "rsa" else []
            ssh_keygen("-q", "-t", kind, *extra, "-N", "", "-C", name, "-f", str(path))
        return path

    def sign(
        self,
        *options: str,
        principals: str | None = "alknet",
        validity: tuple[int, int] = (VA, VB),
        user: str = "user",
        user_kind: str = "ed25519",
        ca: str = "ca",
        ca_kind: str = "ed25519",
        host: bool = False,
    ) -> SSHCertificate:
        user_key = self.key(user, user_kind)
        ca_key = self.key(ca, ca_kind)
        pub = Path(f"{user_key}.pub")
        args = ["-q", "-s", str(ca_key), "-I", "test-id", "-V", f"0x{validity[0]:x}:0x{validity[1]:x}"]
        if principals is not None:
            args += ["-n", principals]
        if host:
            args.append("-h")
        for opt in options:
            args += ["-O", opt]
        cert_path = Path(f"{user_key}-cert.pub")
        cert_path.unlink(missing_ok=True)
        ssh_keygen(*args, str(pub))
        cert = load_ssh_public_identity(cert_path.read_bytes())
        assert isinstance(cert, SSHCertificate)
        return cert


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def check(cert: SSHCertificate, *, user: str = "alknet", ip: object = LOOPBACK, now: float = NOW) -> str:
    verdict = check_user_certificate(cert, username=user, client_ip=ip, now=now)  # type: ignore[arg-type]
    assert isinstance(verdict, CertVerdict)
    assert verdict.ok == (verdict.reason == "ok") == bool(verdict)
    return verdict.reason


def test_valid_certificate(pki: Pki) -> None:
    cert = pki.sign()
    assert check(cert) == "ok"
    subject = subject_key(cert)
    user_pub = parse_public_key(Path(f"{pki.key('user')}.pub").read_text())
    assert subject.raw == user_pub.raw
    assert subject.fingerprint == keygen_fingerprint(Path(f"{pki.key('user')}.pub"))
    assert signing_key_fingerprint(cert) == keygen_fingerprint(Path(f"{pki.key('ca')}.pub"))
    assert signing_key_fingerprint(cert) != subject.fingerprint


def test_validity_window_has_no_grace(pki: Pki) -> None:
    cert = pki.sign()
    assert check(cert, now=VA) == "ok"
    assert check(cert, now=VA - 1) == "not_yet_valid"
    assert check(cert, now=VB - 1) == "ok"
    assert check(cert, now=VB) == "expired"
    assert check(cert, now=VB - 0.5) == "ok"


def test_expired_and_not_yet_valid_certificates(pki: Pki) -> None:
    assert check(pki.sign(validity=(VA - 7200, VA - 3600))) == "expired"
    assert check(pki.sign(validity=(NOW + 10, NOW + 3600))) == "not_yet_valid"


def test_principals(pki: Pki) -> None:
    assert check(pki.sign(principals="bob")) == "principal_mismatch"
    assert check(pki.sign(principals="bob"), user="bob") == "ok"
    assert check(pki.sign(principals="deploy,alknet")) == "ok"
    assert check(pki.sign(principals="ALKNET")) == "principal_mismatch"
    # OpenSSH treats an empty list as "any user"; alknet refuses it
    assert check(pki.sign(principals=None)) == "no_principals"


def test_source_address(pki: Pki) -> None:
    cert = pki.sign("source-address=10.0.0.0/8")
    assert check(cert) == "source_address"
    assert check(cert, ip=IPv4Address("10.1.2.3")) == "ok"
    assert check(cert, ip=IPv6Address("::ffff:10.1.2.3")) == "ok"
    assert check(cert, ip=None) == "source_address"
    cert6 = pki.sign("source-address=127.0.0.1,fd00::/8")
    assert check(cert6) == "ok"
    assert check(cert6, ip=IPv6Address("fd00::5")) == "ok"
    assert check(cert6, ip=IPv6Address("::1")) == "source_address"


def test_critical_options(pki: Pki) -> None:
    assert check(pki.sign("verify-required")) == "unknown_critical_option"
    assert check(pki.sign("critical:made-up@example.com=x")) == "unknown_critical_option"
    assert check(pki.sign("force-command=/bin/true")) == "ok"
    # unknown extensions are ignored; without permit-port-forwarding the login still succeeds
    assert check(pki.sign("extension:foo@example.com")) == "ok"
    assert check(pki.sign("clear")) == "ok"


def test_types(pki: Pki) -> None:
    assert check(pki.sign(user="rsa-user", user_kind="rsa")) == "not_ed25519_certificate"
    assert check(pki.sign(ca="rsa-ca", ca_kind="rsa")) == "ca_not_ed25519"
    assert check(pki.sign(host=True)) == "not_user_certificate"


def _resign_with_bad_signature(cert: SSHCertificate) -> SSHCertificate:
    name, _, b64 = cert.public_bytes().partition(b" ")
    body = bytearray(base64.b64decode(b64))
    body[-1] ^= 0x01  # last byte of the Ed25519 signature
    bad = load_ssh_public_identity(name + b" " + base64.b64encode(bytes(body)))
    assert isinstance(bad, SSHCertificate)
    return bad


def test_bad_signature(pki: Pki) -> None:
    assert check(_resign_with_bad_signature(pki.sign())) == "bad_signature"


def test_signature_check_precedes_time_and_principal_checks(pki: Pki) -> None:
    bad = _resign_with_bad_signature(pki.sign(principals="bob", validity=(VA - 7200, VA - 3600)))
    assert check(bad) == "bad_signature"
    assert check(pki.sign(principals="bob", validity=(VA - 7200, VA - 3600))) == "expired"


def _builder_cert(critical: dict[bytes, bytes], principals: list[bytes]) -> SSHCertificate:
    ca = Ed25519PrivateKey.generate()
    builder = (
        SSHCertificateBuilder()
        .public_key(Ed25519PrivateKey.generate().public_key())
        .serial(1)
        .type(SSHCertificateType.USER)
        .key_id(b"k")
        .valid_after(VA)
        .valid_before(VB)
    )
    builder = builder.valid_principals(principals) if principals else builder.valid_for_all_principals()
    for name, value in sorted(critical.items()):
        builder = builder.add_critical_option(name, value)
    return builder.sign(ca)


@pytest.mark.parametrize(
    "value",
    [b"", b"not-an-ip", b"10.0.0.0/8,", b"10.0.0.0/33", b"10.0.0.1 ", b"\xff", b"*", b"10.0.0.0/8 ,1.2.3.4"],
)
def test_malformed_source_address_is_refused(value: bytes) -> None:
    cert = _builder_cert({b"source-address": value}, [b"alknet"])
    assert check(cert, ip=IPv4Address("10.0.0.1")) == "bad_source_address"


def test_builder_certificate_is_accepted() -> None:
    assert (
        check(_builder_cert({b"source-address": b"10.0.0.1/8"}, [b"alknet"]), ip=IPv4Address("10.9.9.9"))
        == "ok"
    )
    assert check(_builder_cert({}, [])) == "no_principals"


def _provider(ca_lines: str) -> ConfigIdentityProvider:
    policy = AuthPolicy.from_texts(ca_lines, source="authorized_keys")
    return ConfigIdentityProvider(AtomicRef(DynamicConfig(auth=policy)))


async def test_rule_6_signing_key_must_resolve_as_a_ca(pki: Pki) -> None:
    trusted = pki.sign()
    untrusted = pki.sign(ca="other-ca")
    ca_line = Path(f"{pki.key('ca')}.pub").read_text().strip()
    provider = _provider(f'cert-authority,principals="alknet",alknet-scopes="deploy:run" {ca_line}\n')
    # rules 1-5 pass for both; only the trusted CA resolves
    assert check(trusted) == check(untrusted) == "ok"
    ca_fp = signing_key_fingerprint(trusted)
    tmpl = await provider.resolve_from_fingerprint(ca_fp, kind=CredentialKind.CERT_AUTHORITY)
    assert tmpl == Identity(ca_fp, ("deploy:run",))
    assert (
        await provider.resolve_from_fingerprint(
            signing_key_fingerprint(untrusted), kind=CredentialKind.CERT_AUTHORITY
        )
        is None
    )
    # the CA key used as a plain key is not accepted
    assert await provider.resolve_from_fingerprint(ca_fp) is None
    opts = await provider.credential_options(ca_fp, kind=CredentialKind.CERT_AUTHORITY)
    assert opts.principals == frozenset({"alknet"})
    # the identity of a certificate login is the subject key's fingerprint with the CA line's scopes
    assert replace(tmpl, id=subject_key(trusted).fingerprint) == Identity(
        subject_key(trusted).fingerprint, ("deploy:run",)
    )


async def test_ca_line_from_option_reaches_the_ssh_layer(pki: Pki) -> None:
    ca_line = Path(f"{pki.key('ca')}.pub").read_text().strip()
    provider = _provider(f'cert-authority,from="10.0.0.0/8" {ca_line}\n')
    ca_fp = signing_key_fingerprint(pki.sign())
    opts = await provider.credential_options(ca_fp, kind=CredentialKind.CERT_AUTHORITY)
    assert opts.from_networks == (ip_network("10.0.0.0/8"),)
    assert not opts.allows_address(LOOPBACK)
    assert opts.allows_address(IPv4Address("10.2.3.4"))


def test_user_key_from_ssh_keygen_loads(pki: Pki) -> None:
    key = load_private_key(pki.key("user"))
    assert subject_key(pki.sign()).raw == key.public_key().public_bytes_raw()
