"""``AuthSession``: offer classification, counting, logging and the owner-hook checks (auth-and-config.md §4).

The wrapper's ``original`` argument stands for asyncssh's own ``validate_public_key``; here it is a coroutine
that calls the owner hooks the way asyncssh does, so the session is exercised without a network.
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest

from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import CredentialKind, Identity, IdentityProvider
from alknet.core.auth.keys import generate_private_key, private_key_to_openssh, public_key_of
from alknet.core.auth.ssh import AuthContext, AuthSession, install_auth_wrapper
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.config.reloader import build_dynamic
from alknet.core.errors import IdentityBackendError
from alknet.core.logfmt import LogfmtFormatter
from alknet.core.transport.base import TransportInfo, TransportKind

TCP = TransportInfo(TransportKind.TCP, ("127.0.0.1", 50000), ("127.0.0.1", 2222))
IROH = TransportInfo(TransportKind.IROH, None, None, peer_id="ab" * 32)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _session(
    authorized_keys: str, info: TransportInfo = TCP, attempts: int = 3
) -> tuple[AuthSession, Collect]:
    loaded = build_dynamic(authorized_keys.encode(), rate_limits=RateLimits(max_auth_attempts=attempts))
    ref: AtomicRef[DynamicConfig] = AtomicRef(loaded.dynamic)
    logger = logging.getLogger(f"test.auth.{id(ref)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Collect()
    logger.addHandler(handler)
    session = AuthSession(AuthContext(ConfigIdentityProvider(ref), ref, logger), info)
    session.begin()
    return session, handler


def _lines(handler: Collect) -> list[str]:
    fmt = LogfmtFormatter(with_time=False)
    return [fmt.format(r) for r in handler.records]


def _ssh_key(key: object) -> asyncssh.SSHKey:
    return asyncssh.import_private_key(private_key_to_openssh(key))  # type: ignore[arg-type]


async def _as_asyncssh(session: AuthSession, username: str, key: asyncssh.SSHKey) -> bool:
    """What asyncssh's validate_public_key does for a plain key: the owner hook decides."""
    return await session.check_key(username, key)


def test_classify_plain_key_rsa_and_garbage() -> None:
    session, _ = _session("")
    key = generate_private_key()
    blob = public_key_of(key).blob
    offer = session.classify("alknet", blob, signed=True)
    assert offer.kind is CredentialKind.KEY and offer.key_fingerprint == public_key_of(key).fingerprint
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=1024 * 2)
    offer = session.classify("alknet", rsa.public_data, signed=False)
    assert offer.kind is None and offer.key_fingerprint == rsa.get_fingerprint("sha256")
    offer = session.classify("alknet", b"\x00\x00", signed=False)
    assert offer.kind is None and offer.key_fingerprint is None


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_classify_certificates(tmp_path: Path) -> None:
    session, _ = _session("")
    ca, user = generate_private_key(), generate_private_key()
    (tmp_path / "ca").write_bytes(private_key_to_openssh(ca))
    (tmp_path / "ca").chmod(0o600)
    (tmp_path / "user.pub").write_text(public_key_of(user).line + "\n")

    def sign(*extra: str) -> bytes:
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "id", *extra, str(tmp_path / "user.pub")],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return base64.b64decode((tmp_path / "user-cert.pub").read_text().split()[1])

    good = session.classify(
        "alknet", sign("-n", "alknet", "-O", "clear", "-O", "permit-port-forwarding"), True
    )
    assert good.kind is CredentialKind.CERT_AUTHORITY
    assert good.key_fingerprint == public_key_of(user).fingerprint
    assert good.lookup_fingerprint == public_key_of(ca).fingerprint
    assert good.port_forwarding is True
    no_fwd = session.classify("alknet", sign("-n", "alknet", "-O", "clear"), True)
    assert no_fwd.kind is CredentialKind.CERT_AUTHORITY and no_fwd.port_forwarding is False
    empty = session.classify("alknet", sign(), True)
    assert empty.kind is None and empty.refusal == "no_principals"
    assert empty.key_fingerprint == public_key_of(user).fingerprint
    bob = session.classify("alknet", sign("-n", "bob"), True)
    assert bob.kind is None and bob.refusal == "principal_mismatch"


async def test_accept_is_logged_only_for_signed_requests() -> None:
    key = generate_private_key()
    session, handler = _session(public_key_of(key).line + "\n")
    ssh_key = _ssh_key(key)
    blob = public_key_of(key).blob

    async def original(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        return await _as_asyncssh(session, username, ssh_key)

    assert await session.check(original, "alknet", blob, b"", b"")  # the unsigned query
    assert handler.records == [] and session.accepted is None
    assert await session.check(original, "alknet", blob, b"signed", b"sig")
    assert session.accepted is not None
    assert session.accepted.identity == Identity(public_key_of(key).fingerprint, ("relay:connect",))
    assert _lines(handler) == [
        f'level=INFO msg="auth attempt" remote_addr=127.0.0.1 user="alknet" '
        f"key_fingerprint={public_key_of(key).fingerprint} result=accept"
    ]


async def test_limit_logs_rejects_then_rejected_and_disconnects() -> None:
    session, handler = _session("", attempts=2)

    async def original(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        return False

    k1, k2 = generate_private_key(), generate_private_key()
    assert not await session.check(original, "root", public_key_of(k1).blob, b"", b"")
    with pytest.raises(asyncssh.DisconnectError) as info:
        await session.check(original, "root", public_key_of(k2).blob, b"", b"")
    assert info.value.code == asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE
    lines = _lines(handler)
    assert (
        lines[-1]
        == 'level=INFO msg="connection rejected" remote_addr=127.0.0.1 reason=too_many_auth_attempts'
    )
    assert [line.endswith("result=reject") for line in lines] == [True, True, False]
    # after the limit nothing more is logged or counted
    assert not await session.check(original, "root", public_key_of(k1).blob, b"", b"")
    assert len(handler.records) == 3


async def test_from_option_refuses_iroh_and_other_addresses() -> None:
    key = generate_private_key()
    line = f'from="127.0.0.0/8" {public_key_of(key).line}\n'
    ssh_key = _ssh_key(key)
    for info, expected in ((TCP, True), (IROH, False)):
        session, _ = _session(line, info)
        session.current = session.classify("alknet", public_key_of(key).blob, True)
        assert await session.check_key("alknet", ssh_key) is expected
    session, _ = _session(public_key_of(key).line + "\n", IROH)  # the same key without from=
    session.current = session.classify("alknet", public_key_of(key).blob, True)
    assert await session.check_key("alknet", ssh_key) is True


async def test_iroh_rejects_log_dash_and_peer() -> None:
    session, handler = _session("", IROH)

    async def original(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        return False

    key = generate_private_key()
    assert not await session.check(original, "alknet", public_key_of(key).blob, b"", b"")
    (line,) = _lines(handler)
    assert line.startswith('level=INFO msg="auth attempt" remote_addr=- user="alknet" ')
    assert line.endswith(f"result=reject peer={'ab' * 32}")


async def test_install_auth_wrapper_replaces_the_bound_method_on_one_instance() -> None:
    class FakeConn:
        """Stands in for ``SSHServerConnection`` (only its ``validate_public_key`` attribute matters)."""

        async def validate_public_key(
            self, username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            return False

    session, handler = _session("")
    conn, other = FakeConn(), FakeConn()
    install_auth_wrapper(conn, session)  # type: ignore[arg-type]
    assert session.wrapped
    assert conn.validate_public_key is not other.validate_public_key
    assert not await conn.validate_public_key("u", public_key_of(generate_private_key()).blob, b"", b"")
    assert [r.getMessage() for r in handler.records] == ["auth attempt"]


async def test_install_auth_wrapper_keeps_no_closure_per_connection() -> None:
    """The wrapper is a cached subclass, not a bound closure in each connection's ``__dict__``."""

    class FakeConn:
        async def validate_public_key(
            self, username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            return True

    first, _ = _session("")
    second, handler = _session("")
    a, b, plain = FakeConn(), FakeConn(), FakeConn()
    install_auth_wrapper(a, first)  # type: ignore[arg-type]
    install_auth_wrapper(b, second)  # type: ignore[arg-type]
    assert type(a) is type(b) and type(a) is not FakeConn and isinstance(a, FakeConn)
    assert type(plain) is FakeConn
    assert "validate_public_key" not in vars(a) and "validate_public_key" not in vars(b)
    assert second.remote_ip is not None and str(second.remote_ip) == "127.0.0.1"
    # each connection goes through its own session: only the second one logs
    assert not await b.validate_public_key("u", b"\x00", b"", b"")
    assert [r.getMessage() for r in handler.records] == ["auth attempt"]
    assert await plain.validate_public_key("u", b"", b"", b"")


async def test_backend_failure_is_a_rejected_attempt() -> None:
    class Down(IdentityProvider):
        async def resolve_from_fingerprint(
            self, fingerprint: str, *, kind: CredentialKind = CredentialKind.KEY
        ) -> Identity | None:
            raise IdentityBackendError("database unavailable")

        async def resolve_from_token(self, token: str, *, remote_ip: object = None) -> Identity | None:
            return None

    loaded = build_dynamic()
    ref: AtomicRef[DynamicConfig] = AtomicRef(loaded.dynamic)
    logger = logging.getLogger("test.auth.backend")
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    session = AuthSession(AuthContext(Down(), ref, logger), TCP)
    session.begin()
    key = generate_private_key()
    ssh_key = _ssh_key(key)

    async def original(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        return await session.check_key(username, ssh_key)

    assert not await session.check(original, "alknet", public_key_of(key).blob, b"signed", b"sig")
    assert session.counter.failures == 1 and session.accepted is None
    assert _lines(handler)[-1].endswith("result=reject")
