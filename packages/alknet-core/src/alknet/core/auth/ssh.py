"""SSH public-key and certificate authentication (auth-and-config.md §4, transport-and-ssh.md §7).

The only auth module that imports asyncssh. One :class:`AlknetSSHServer` (an ``asyncssh.SSHServer``) per
connection, one :class:`AuthSession` per connection, shared :class:`AuthContext` per server.

Hook usage (owner hooks of ``asyncssh.SSHServer``):

- ``connection_made(conn)``: read the connection's ``TransportInfo`` (the peer IP, or the iroh endpoint id),
  install the auth wrapper with :func:`install_auth_wrapper`, log ``connection opened``.
- ``begin_auth(username)``: pin the provider (``provider.pinned()``) and read ``max_auth_attempts`` from the
  current ``DynamicConfig`` -- once per connection, so changing the user name neither re-pins nor resets the
  attempt counter.
- ``public_key_auth_supported()`` is ``True``; password, keyboard-interactive and host-based auth are not
  offered.
- ``validate_public_key`` / ``validate_ca_key``: provider lookups (``kind=KEY`` / ``kind=CERT_AUTHORITY``),
  ``from=`` and the CA line's ``principals=``; the result is remembered on the offer being checked.
- ``auth_completed()``: the accepted offer's ``Identity`` (certificate logins: the CA entry's identity with
  ``id`` = the subject key fingerprint), ``KeyOptions`` and the certificate's ``permit-port-forwarding``
  are attached to the connection (:attr:`AlknetSSHServer.identity` ...).

The wrapper (the one use of non-public asyncssh behaviour in the project) replaces the bound
``SSHServerConnection.validate_public_key(username, key_data, msg, signature)`` coroutine of one connection.
It classifies the offer (Ed25519 key, Ed25519 certificate checked with ``check_user_certificate``, anything
else rejected), awaits asyncssh's own method, then logs and counts: a signed success is the accepted attempt
(``result=accept``); a failure is a counted ``result=reject``; an unsigned "is this key acceptable" success
is neither logged nor counted. When the failures reach ``max_auth_attempts`` the server logs
``connection rejected ... reason=too_many_auth_attempts`` and disconnects with code 14.

Session channels (shell, exec, subsystem, pty, env, x11, agent all live on them) and ``streamlocal-forward``
requests are refused here; channel opens and ``tcpip-forward`` are served by subclasses
(``alknet.core.ssh.server``).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import asyncssh
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

from alknet.core import logfmt
from alknet.core.auth.certs import ED25519_CERT, check_user_certificate, signing_key_fingerprint, subject_key
from alknet.core.auth.identity import CredentialKind, Identity, IdentityProvider, KeyOptions
from alknet.core.auth.keys import ED25519, blob_key_type, fingerprint
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig
from alknet.core.errors import IdentityBackendError
from alknet.core.server.ratelimit import AuthAttemptCounter
from alknet.core.transport.base import TRANSPORT_INFO_KEY, TransportInfo, TransportKind, normalise_addr

__all__ = [
    "DISCONNECT_TOO_MANY_ATTEMPTS",
    "AlknetSSHServer",
    "AuthContext",
    "AuthSession",
    "Offer",
    "ValidatePublicKey",
    "install_auth_wrapper",
]

log = logging.getLogger("alknet.server")

Logger = logging.Logger | logging.LoggerAdapter[Any]
#: ``SSHServerConnection.validate_public_key(username, key_data, msg, signature)`` (asyncssh 2.24).
ValidatePublicKey = Callable[[str, bytes, bytes, bytes], Awaitable[bool]]

DISCONNECT_TOO_MANY_ATTEMPTS = "too many authentication failures"
_PERMIT_PORT_FORWARDING = b"permit-port-forwarding"


def _peer_ip(info: TransportInfo | None) -> IPv4Address | IPv6Address | None:
    if info is None or info.kind is TransportKind.IROH or info.remote_addr is None:
        return None
    try:
        ip = ip_address(info.remote_addr[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(slots=True)
class Offer:
    """One public-key auth request being checked.

    ``kind``: ``KEY`` for a plain Ed25519 key, ``CERT_AUTHORITY`` for an Ed25519 certificate (looked up by its
    CA), ``None`` for anything refused before asyncssh runs. ``key_fingerprint`` is what the log line shows
    (the subject key for certificates; ``None`` = undecodable, logged as ``-``); ``lookup_fingerprint`` is
    what the provider is asked for (the key, or the certificate's signing key). The owner hooks fill
    ``identity`` and ``options`` when the credential resolves.
    """

    kind: CredentialKind | None
    key_fingerprint: str | None
    lookup_fingerprint: str | None = None
    signed: bool = False
    port_forwarding: bool = True
    refusal: str = ""
    identity: Identity | None = None
    options: KeyOptions | None = None


@dataclass(slots=True)
class AuthContext:
    """What every connection of one server shares: the provider, the live config, the logger, clocks."""

    provider: IdentityProvider
    dynamic: AtomicRef[DynamicConfig]
    logger: Logger = log
    now: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


class AuthSession:
    """Auth state of one connection: the pinned provider, the attempt counter, the offer being checked and
    the accepted one. Created at ``connection_made``; :meth:`begin` pins the provider at ``begin_auth``."""

    __slots__ = (
        "accepted",
        "attempts_logged",
        "context",
        "counter",
        "current",
        "info",
        "provider",
        "rejected_all",
        "wrapped",
    )

    def __init__(
        self,
        context: AuthContext,
        info: TransportInfo | None,
    ) -> None:
        self.context = context
        self.info = info
        self.provider: IdentityProvider | None = None
        self.counter = AuthAttemptCounter(0)
        self.current: Offer | None = None
        self.accepted: Offer | None = None
        self.wrapped = False
        self.rejected_all = False
        self.attempts_logged = 0

    @property
    def remote_ip(self) -> IPv4Address | IPv6Address | None:
        """The peer IP (``None`` for iroh or an unknown address); derived when needed, not kept per
        connection."""
        return _peer_ip(self.info)

    # ------------------------------------------------------------------------------------------ phase

    @property
    def started(self) -> bool:
        return self.provider is not None

    def begin(self) -> None:
        """``begin_auth``: pin the provider and the attempt limit once for this connection."""
        if self.provider is not None:
            return
        self.provider = self.context.provider.pinned()
        self.counter = AuthAttemptCounter.from_config(self.context.dynamic)

    # ------------------------------------------------------------------------------------------ logging

    @property
    def _remote(self) -> tuple[str, int] | None:
        return None if self.info is None or self.info.kind is TransportKind.IROH else self.info.remote_addr

    @property
    def _peer(self) -> str | None:
        return self.info.peer_id if self.info is not None and self.info.kind is TransportKind.IROH else None

    def _log_attempt(self, username: str, offer: Offer, result: str) -> None:
        self.attempts_logged += 1
        logfmt.auth_attempt(self._remote, username, offer.key_fingerprint, result, peer=self._peer).emit(
            self.context.logger
        )

    # ------------------------------------------------------------------------------------------ offers

    def classify(self, username: str, key_data: bytes, signed: bool) -> Offer:
        """Step 1 of the wrapper: which credential this is, and the certificate rules 1-5 for certificates."""
        name = blob_key_type(key_data)
        if name is None:
            return Offer(None, None, signed=signed, refusal="undecodable_key")
        if name == ED25519:
            fp = fingerprint(key_data)
            return Offer(CredentialKind.KEY, fp, fp, signed=signed)
        if name != ED25519_CERT:
            return Offer(None, fingerprint(key_data), signed=signed, refusal="unsupported_key_type")
        try:
            text = name.encode() + b" " + base64.b64encode(key_data)
            cert = load_ssh_public_identity(text)
        except (ValueError, UnsupportedAlgorithm):
            return Offer(None, None, signed=signed, refusal="malformed_certificate")
        if not isinstance(cert, SSHCertificate):
            return Offer(None, None, signed=signed, refusal="malformed_certificate")
        try:
            subject_fp = subject_key(cert).fingerprint
            ca_fp = signing_key_fingerprint(cert)
        except ValueError:
            return Offer(None, None, signed=signed, refusal="malformed_certificate")
        verdict = check_user_certificate(
            cert, username=username, client_ip=self.remote_ip, now=self.context.now()
        )
        if not verdict.ok:
            return Offer(None, subject_fp, signed=signed, refusal=verdict.reason)
        return Offer(
            CredentialKind.CERT_AUTHORITY,
            subject_fp,
            ca_fp,
            signed=signed,
            port_forwarding=_PERMIT_PORT_FORWARDING in cert.extensions,
        )

    async def check(
        self, original: ValidatePublicKey, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        """The wrapper body: classify, await asyncssh's own check, then log, count and maybe disconnect."""
        if self.rejected_all:
            return False
        signed = bool(msg)
        offer = self.classify(username, key_data, signed)
        result = False
        if offer.kind is not None and self.started:
            self.current = offer
            try:
                result = bool(await original(username, key_data, msg, signature))
            except IdentityBackendError:
                self.context.logger.warning("identity backend failed during auth", exc_info=True)
                result = False
            finally:
                self.current = None
            result = result and offer.identity is not None and offer.options is not None
        if result:
            if signed:
                self.accepted = offer
                self._log_attempt(username, offer, "accept")
            return True
        self._log_attempt(username, offer, "reject")
        if self.counter.record_failure():
            self.rejected_all = True
            logfmt.connection_rejected(self._remote, "too_many_auth_attempts", peer=self._peer).emit(
                self.context.logger
            )
            raise asyncssh.DisconnectError(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, DISCONNECT_TOO_MANY_ATTEMPTS
            )
        return False

    # ------------------------------------------------------------------------------- owner-hook parts

    async def check_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """``validate_public_key`` owner hook: the plain key must resolve (``kind=KEY``) and pass
        ``from=``."""
        offer, provider = self.current, self.provider
        if offer is None or provider is None or offer.kind is not CredentialKind.KEY:
            return False
        if key.algorithm != ED25519.encode():
            return False
        fp = fingerprint(key.public_data)
        if fp != offer.lookup_fingerprint:
            return False
        identity = await provider.resolve_from_fingerprint(fp, kind=CredentialKind.KEY)
        if identity is None:
            return False
        options = await provider.credential_options(fp, kind=CredentialKind.KEY)
        if not options.allows_address(self.remote_ip):
            return False
        offer.identity, offer.options = identity, options
        return True

    async def check_ca(self, username: str, ca_key: asyncssh.SSHKey) -> bool:
        """``validate_ca_key`` owner hook (rule 6): the signing key must resolve with ``kind=CERT_AUTHORITY``;
        the CA line's ``from=`` must contain the client IP and its ``principals=`` the user name."""
        offer, provider = self.current, self.provider
        if offer is None or provider is None or offer.kind is not CredentialKind.CERT_AUTHORITY:
            return False
        if ca_key.algorithm != ED25519.encode():
            return False
        ca_fp = fingerprint(ca_key.public_data)
        if ca_fp != offer.lookup_fingerprint or offer.key_fingerprint is None:
            return False
        template = await provider.resolve_from_fingerprint(ca_fp, kind=CredentialKind.CERT_AUTHORITY)
        if template is None:
            return False
        options = await provider.credential_options(ca_fp, kind=CredentialKind.CERT_AUTHORITY)
        if not options.allows_address(self.remote_ip):
            return False
        if options.principals is not None and username not in options.principals:
            return False
        offer.identity = dataclasses.replace(template, id=offer.key_fingerprint)
        offer.options = options
        return True


class _AuthWrapped:
    """Put in front of a connection's class by :func:`install_auth_wrapper`: ``validate_public_key`` goes
    through the connection's :class:`AuthSession`. Changing the class costs the connection nothing (a closure
    per connection would); the session is the one attribute the connection gets."""

    _alknet_auth_session: AuthSession

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        original: ValidatePublicKey = super().validate_public_key  # type: ignore[misc]
        return await self._alknet_auth_session.check(original, username, key_data, msg, signature)


_WRAPPED: dict[type, type] = {}


def install_auth_wrapper(conn: asyncssh.SSHServerConnection, session: AuthSession) -> None:
    """Replace ``conn.validate_public_key`` (asyncssh 2.24: ``async (username, key_data, msg, signature) ->
    bool``) on this one connection with :meth:`AuthSession.check` around the original bound method.

    The connection is moved to a subclass of its class (cached per class) whose ``validate_public_key`` does
    that, so other connections are unaffected. Must run from the owner's ``connection_made``, before any auth
    message can arrive.
    """
    cls = type(conn)
    if not issubclass(cls, _AuthWrapped):
        sub = _WRAPPED.get(cls)
        if sub is None:
            sub = _WRAPPED[cls] = type(cls.__name__, (_AuthWrapped, cls), {"__module__": __name__})
        conn.__class__ = sub
    target: Any = conn
    target._alknet_auth_session = session
    session.wrapped = True


def _fallback_info(conn: asyncssh.SSHServerConnection) -> TransportInfo:
    return TransportInfo(
        kind=TransportKind.TCP,
        remote_addr=normalise_addr(conn.get_extra_info("peername")),
        local_addr=normalise_addr(conn.get_extra_info("sockname")),
    )


_NO_KEY_OPTIONS = KeyOptions()


class AlknetSSHServer(asyncssh.SSHServer):
    """Per-connection owner: authentication, the connection log lines and the session refusals.

    After ``auth_completed`` the connection carries :attr:`identity`, :attr:`key_options` and
    :attr:`port_forwarding` (``False`` for a certificate without ``permit-port-forwarding``), plus
    :attr:`credential` -- the ``(kind, fingerprint)`` that must keep resolving for ``evict_revoked``.
    Subclasses override :meth:`authenticated` and :meth:`closed`.
    """

    def __init__(self, context: AuthContext) -> None:
        self.context = context
        self.conn: asyncssh.SSHServerConnection | None = None
        self.info: TransportInfo | None = None
        self.session: AuthSession | None = None
        self.identity: Identity | None = None
        self.key_options = _NO_KEY_OPTIONS
        self.port_forwarding = True
        self.credential: tuple[CredentialKind, str] | None = None
        self.username = ""
        self.opened_at = 0.0
        self.opened_wall = 0.0
        self._closed = False

    # ------------------------------------------------------------------------------------- connection

    @property
    def transport_kind(self) -> str:
        # the member's own string: ``str()`` of a StrEnum member makes a new one each time
        return self.info.kind.value if self.info is not None else TransportKind.TCP.value

    @property
    def remote_addr(self) -> str:
        """The peer IP as logged (``-`` for iroh)."""
        if self.info is None or self.info.kind is TransportKind.IROH:
            return "-"
        remote = self.info.remote_addr
        text = logfmt.normalize_remote_addr(remote)
        # usually the address is already normal: share its string rather than keep an equal copy
        return remote[0] if remote is not None and remote[0] == text else text

    @property
    def peer_id(self) -> str | None:
        return self.info.peer_id if self.info is not None and self.info.kind is TransportKind.IROH else None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        info = conn.get_extra_info(TRANSPORT_INFO_KEY)
        self.info = info if isinstance(info, TransportInfo) else _fallback_info(conn)
        self.session = AuthSession(self.context, self.info)
        install_auth_wrapper(conn, self.session)
        self.opened_at = self.context.monotonic()
        self.opened_wall = self.context.now()
        remote = None if self.info.kind is TransportKind.IROH else self.info.remote_addr
        logfmt.connection_opened(remote, str(self.info.kind), peer=self.peer_id).emit(self.context.logger)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        remote = None if self.info is None or self.info.kind is TransportKind.IROH else self.info.remote_addr
        duration = self.context.monotonic() - self.opened_at
        logfmt.connection_closed(remote, duration, peer=self.peer_id).emit(self.context.logger)
        self.closed()

    # ------------------------------------------------------------------------------------------- auth

    def begin_auth(self, username: str) -> bool:
        self.username = username
        if self.session is not None:
            self.session.begin()
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self.session is not None and await self.session.check_key(username, key)

    async def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self.session is not None and await self.session.check_ca(username, key)

    def auth_completed(self) -> None:
        offer = self.session.accepted if self.session is not None else None
        if offer is None or offer.identity is None or offer.options is None or offer.kind is None:
            # Never reached: asyncssh only completes auth after a signed offer the wrapper accepted.
            if self.conn is not None:
                self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "authentication state lost")
            return
        self.identity = offer.identity
        self.key_options = offer.options
        self.port_forwarding = offer.port_forwarding
        assert offer.lookup_fingerprint is not None
        self.credential = (offer.kind, offer.lookup_fingerprint)
        self.authenticated()

    # --------------------------------------------------------------------------------------- refusals

    def session_requested(self) -> bool:
        """Shells, exec, subsystems, pty, env, x11 and agent requests all need a session channel: refused."""
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "session channels are not supported"
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        """``streamlocal-forward`` (remote unix binds) is always refused."""
        return False

    # ------------------------------------------------------------------------------------ subclass API

    def authenticated(self) -> None:
        """Called once after ``auth_completed`` attached the identity."""

    def closed(self) -> None:
        """Called once after the ``connection closed`` line."""
