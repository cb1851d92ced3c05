"""The SSH client connection (transport-and-ssh.md §13, §14, §16).

:class:`ClientOptions` holds the connection options of ``cli.md`` §3 that the SSH client needs;
:func:`build_transport` turns them into the L1 :class:`~alknet.core.transport.base.Transport` (tcp or tls,
optionally through ``--proxy``), and :class:`SshClient` runs one connection attempt per :meth:`SshClient.connect`:
transport, SSH handshake with the host-key check (:mod:`alknet.core.ssh.known_hosts`) and public-key auth,
all within ``connect_timeout``.

asyncssh is driven only through ``tunnel=`` and with every option that would read ``~/.ssh`` or the
environment set explicitly: ``config=None``, ``known_hosts`` an explicit (empty) matcher with the decision
taken by :class:`HostKeyVerifier`, ``agent_path=None``, ``pkcs11_provider=None``, ``x509_trusted_certs=None``,
``x509_trusted_cert_paths=[]``, no GSSAPI, host-based, password or keyboard-interactive auth. Ciphers are
``aes128-gcm@openssh.com`` first, compression is off, the only host key algorithm is ``ssh-ed25519``. Ambient
proxy variables (``HTTP_PROXY``, ``ALL_PROXY``) are never read: only ``ClientOptions.proxy`` is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from alknet.core import logfmt
from alknet.core.auth.keys import PublicKey, load_private_key, private_key_to_openssh
from alknet.core.errors import ConfigError, KeyFormatError
from alknet.core.ssh.forwards import ChannelStreams, NotConnected
from alknet.core.ssh.known_hosts import HostKeyError, HostKeyVerifier, host_key_verifier, known_hosts_host
from alknet.core.ssh.packets import skip_automatic_ignores
from alknet.core.ssh.reconnect import describe_error
from alknet.core.state import KNOWN_HOSTS
from alknet.core.tls.context import TlsVerify
from alknet.core.transport.base import Transport, TransportKind
from alknet.core.transport.tcp import DEFAULT_TCP_PORT, TcpTransport, proxy_dial
from alknet.core.transport.tls import DEFAULT_TLS_PORT, TlsTransport

__all__ = [
    "CHANNEL_WINDOW",
    "COMPRESSION_ALGS",
    "DEFAULT_USER",
    "ENCRYPTION_ALGS",
    "SERVER_HOST_KEY_ALGS",
    "ClientConnection",
    "ClientOptions",
    "SshClient",
    "build_transport",
    "cap_asyncssh_logging",
    "load_identity",
    "parse_server",
]

DEFAULT_USER = "alknet"
DEFAULT_PORTS = {TransportKind.TCP: DEFAULT_TCP_PORT, TransportKind.TLS: DEFAULT_TLS_PORT}
ENCRYPTION_ALGS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
)
COMPRESSION_ALGS: tuple[str, ...] = ("none",)
SERVER_HOST_KEY_ALGS: tuple[str, ...] = ("ssh-ed25519",)
#: Per-channel receive window: large, so that bulk transfers are not window-bound on fast links.
CHANNEL_WINDOW = 8 * 1024 * 1024
#: SSH packet size: larger than asyncssh's 32 KiB default, which halves the per-byte CPU (bench/tunnel.py).
CHANNEL_MAX_PKTSIZE = 128 * 1024

_BAD_HOST_CHARS = frozenset(" \t\r\n,/\\@#'\"`")


# --------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What one SSH client connection needs (the ``cli.md`` §3 flags of the same names).

    Host-key checking: ``host_key`` (a ``SHA256:...`` pin), or ``insecure_host_key``, or the
    ``<state_dir>/known_hosts`` file (trust on first use); with none of them :class:`SshClient` raises
    ``ConfigError``. ``identity`` is an OpenSSH Ed25519 private key as a path or as the file's bytes.
    """

    server: str
    identity: str | os.PathLike[str] | bytes
    transport: str = "tcp"
    user: str = DEFAULT_USER
    host_key: str | None = None
    insecure_host_key: bool = False
    state_dir: str | os.PathLike[str] | None = None
    tls_server_name: str | None = None
    tls_ca: str | os.PathLike[str] | None = None
    tls_pin: str | None = None
    tls_insecure: bool = False
    proxy: str | None = None
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3

    def __repr__(self) -> str:  # the identity may be key bytes and the proxy URL may carry credentials
        return (
            f"ClientOptions(server={self.server!r}, transport={self.transport!r}, user={self.user!r}, "
            f"host_key={self.host_key!r}, insecure_host_key={self.insecure_host_key})"
        )


def parse_server(text: str, kind: TransportKind | str = TransportKind.TCP) -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 in brackets; a bare IPv6 literal takes the default port) -> ``(host, port)``.

    The default port is 2222 for tcp and 2443 for tls and quic. Raises ``ConfigError`` naming the value.
    """
    shown = text[:100]
    default = DEFAULT_PORTS.get(TransportKind(kind), DEFAULT_TLS_PORT)

    def fail(why: str) -> ConfigError:
        return ConfigError(f"invalid server address {shown!r}: {why}")

    value = text.strip()
    if not value:
        raise fail("empty")
    port_text: str | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise fail("unbalanced '['")
        host = value[1:end]
        rest = value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise fail("expected ':' after ']'")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise fail("the address in brackets is not an IPv6 address") from None
    elif value.count(":") > 1:
        host = value
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise fail("put an IPv6 address in brackets: [addr]:port") from None
    else:
        host, sep, port_text_ = value.partition(":")
        port_text = port_text_ if sep else None
    if not host:
        raise fail("the host is empty")
    if "%" in host:
        raise fail("IPv6 zone ids are not supported")
    if any(c in _BAD_HOST_CHARS or ord(c) < 0x20 or ord(c) == 0x7F for c in host):
        raise fail("the host contains characters not allowed in a host name")
    if port_text is None:
        return host, default
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise fail("the port must be a number from 1 to 65535")
    return host, int(port_text)


def build_transport(options: ClientOptions) -> Transport:
    """The L1 transport for ``options``: tcp or tls, through ``options.proxy`` when set.

    Raises ``ConfigError`` for an unusable combination (TLS options without tls, two TLS verification modes,
    a bad proxy URL) and for transports this builder does not provide (quic and iroh need their own).
    """
    try:
        kind = TransportKind(options.transport)
    except ValueError:
        raise ConfigError(
            f"unknown transport {options.transport!r} (expected tcp, tls, quic or iroh)"
        ) from None
    if kind not in DEFAULT_PORTS:
        raise ConfigError(f"the {kind} transport is not built by alknet.core.ssh.client (tcp and tls only)")
    host, port = parse_server(options.server, kind)
    dial = proxy_dial(options.proxy) if options.proxy else None
    tls_given = (
        options.tls_server_name is not None
        or options.tls_ca is not None
        or options.tls_pin is not None
        or options.tls_insecure
    )
    if kind is TransportKind.TCP:
        if tls_given:
            raise ConfigError(
                "--tls-server-name, --tls-ca, --tls-pin and --tls-insecure need --transport tls"
            )
        return TcpTransport(host, port, dial=dial, connect_timeout=options.connect_timeout)
    verify = TlsVerify(
        ca=Path(options.tls_ca) if options.tls_ca is not None else None,
        pin=options.tls_pin,
        insecure=options.tls_insecure,
    )
    return TlsTransport(
        host,
        port,
        verify=verify,
        server_name=options.tls_server_name,
        dial=dial,
        connect_timeout=options.connect_timeout,
    )


def load_identity(identity: str | os.PathLike[str] | bytes) -> asyncssh.SSHKey:
    """The client key for asyncssh from an OpenSSH Ed25519 private key (path or bytes).

    PEM and non-Ed25519 material raise ``KeyFormatError`` with the messages of auth-and-config.md §2.
    """
    source: os.PathLike[str] | bytes = Path(identity) if isinstance(identity, str) else identity
    key = load_private_key(source)
    return asyncssh.import_private_key(private_key_to_openssh(key))


def cap_asyncssh_logging() -> None:
    """Keep the ``asyncssh`` logger at WARNING, dropping lower records even under a DEBUG root logger: asyncssh
    logs every channel destination and remote-forward bind address at INFO (transport-and-ssh.md §12)."""
    ssh_logger = logging.getLogger("asyncssh")
    ssh_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, logfmt.AsyncsshFilter) for f in ssh_logger.filters):
        ssh_logger.addFilter(logfmt.AsyncsshFilter())


def _no_stored_keys(host: str, addr: str, port: int) -> tuple[list[Any], list[Any], list[Any]]:
    """asyncssh's ``known_hosts`` matcher: nothing is pre-trusted, so every host key reaches
    :meth:`_ClientHandler.validate_host_public_key` (and no ``known_hosts`` file is opened by asyncssh)."""
    return [], [], []


# ------------------------------------------------------------------------------------------------ connection


class _ClientHandler(asyncssh.SSHClient):
    """Per-connection asyncssh callbacks: host-key decision and the reason the connection ended."""

    def __init__(self, verifier: HostKeyVerifier) -> None:
        self._verifier = verifier
        self.host_key_error: HostKeyError | None = None
        self.host_key: PublicKey | None = None
        self.lost_exc: Exception | None = None
        self.closed = asyncio.Event()

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        skip_automatic_ignores(conn)

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        try:
            public = PublicKey.from_blob(key.public_data)
        except (KeyFormatError, ValueError):
            return False
        try:
            self._verifier.verify(public)
        except HostKeyError as exc:
            self.host_key_error = exc
            return False
        self.host_key = public
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_exc = exc
        self.closed.set()


class ClientConnection:
    """One authenticated SSH connection: open channels through it, wait for its end.

    ``ssh`` is the asyncssh connection (for callers that need more, such as remote forwards).
    """

    def __init__(self, ssh: asyncssh.SSHClientConnection, handler: _ClientHandler) -> None:
        self.ssh = ssh
        self._handler = handler

    @property
    def host_key(self) -> PublicKey | None:
        """The server host key that passed the check."""
        return self._handler.host_key

    @property
    def is_closed(self) -> bool:
        return self._handler.closed.is_set()

    async def open_channel(self, host: str, port: int) -> ChannelStreams:
        """A ``direct-tcpip`` channel to ``host:port`` (names go to the server unresolved).

        Raises asyncssh's ``ChannelOpenError`` (``code``/``reason`` as the server sent them) or
        ``NotConnected`` when the connection is already closing.
        """
        if self.is_closed:
            raise NotConnected("the SSH connection is closed")
        try:
            reader, writer = await self.ssh.open_connection(
                host, port, window=CHANNEL_WINDOW, max_pktsize=CHANNEL_MAX_PKTSIZE
            )
        except asyncssh.ChannelOpenError:
            raise
        except (OSError, asyncssh.Error) as exc:
            raise NotConnected(type(exc).__name__) from None
        return reader, writer

    async def open_unix_channel(self, path: str) -> ChannelStreams:
        """A ``direct-streamlocal@openssh.com`` channel to the server-side unix socket ``path``."""
        if self.is_closed:
            raise NotConnected("the SSH connection is closed")
        try:
            reader, writer = await self.ssh.open_unix_connection(
                path, window=CHANNEL_WINDOW, max_pktsize=CHANNEL_MAX_PKTSIZE
            )
        except asyncssh.ChannelOpenError:
            raise
        except (OSError, asyncssh.Error) as exc:
            raise NotConnected(type(exc).__name__) from None
        return reader, writer

    async def wait_closed(self) -> str:
        """Wait until the connection ends (closed by either side, transport error, keepalive timeout);
        returns the reason as one line for the ``disconnected`` log line."""
        await self._handler.closed.wait()
        return self.close_reason

    @property
    def close_reason(self) -> str:
        exc = self._handler.lost_exc
        return describe_error(exc) if exc is not None else "connection closed"

    def close(self) -> None:
        self.ssh.close()

    async def aclose(self) -> None:
        self.ssh.close()
        with contextlib.suppress(Exception):
            await self.ssh.wait_closed()


class SshClient:
    """Prepared once (identity loaded, transport and host-key verifier built), then :meth:`connect` per
    attempt. Raises ``ConfigError``/``KeyFormatError`` at construction for bad options."""

    def __init__(
        self,
        options: ClientOptions,
        *,
        transport: Transport | None = None,
        verifier: HostKeyVerifier | None = None,
    ) -> None:
        self.options = options
        cap_asyncssh_logging()
        if options.keepalive_interval <= 0 or options.keepalive_count_max < 1:
            raise ConfigError("--keepalive must be > 0 and --keepalive-count >= 1")
        if options.connect_timeout <= 0:
            raise ConfigError("--connect-timeout must be > 0")
        self.transport = transport if transport is not None else build_transport(options)
        self.client_key = load_identity(options.identity)
        self.host, self.port = parse_server(options.server, self.transport.kind)
        if verifier is None:
            known = Path(options.state_dir) / KNOWN_HOSTS if options.state_dir is not None else None
            verifier = host_key_verifier(
                known_hosts_host(self.host, self.port),
                pin=options.host_key,
                insecure=options.insecure_host_key,
                known_hosts=known,
            )
        self.verifier = verifier

    @property
    def public_key(self) -> PublicKey:
        """The client identity's public key."""
        return PublicKey.from_blob(self.client_key.public_data)

    def describe(self) -> str:
        """The server as logged in ``msg="connected" server=...`` (no secrets)."""
        return self.transport.describe()

    async def connect(self) -> ClientConnection:
        """One attempt: transport + SSH handshake + host-key check + auth, within ``connect_timeout``.

        Raises ``HostKeyError`` (fatal: never retry), asyncssh's ``PermissionDenied`` (auth rejected),
        ``TlsVerificationError``, ``TimeoutError`` or another connection error.
        """
        handler = _ClientHandler(self.verifier)
        factory: Callable[[], asyncssh.SSHClient] = lambda: handler  # noqa: E731
        opts = self.options
        try:
            async with asyncio.timeout(opts.connect_timeout):
                conn = await asyncssh.connect(
                    self.host,
                    self.port,
                    tunnel=self.transport,
                    client_factory=factory,
                    username=opts.user,
                    client_keys=[self.client_key],
                    config=None,
                    known_hosts=_no_stored_keys,
                    agent_path=None,
                    agent_identities=None,
                    agent_forwarding=False,
                    pkcs11_provider=None,
                    x509_trusted_certs=None,
                    x509_trusted_cert_paths=[],
                    client_host_keys=None,
                    client_host_keysign=False,
                    host_based_auth=False,
                    gss_auth=False,
                    gss_kex=False,
                    kbdint_auth=False,
                    password_auth=False,
                    password=None,
                    preferred_auth="publickey",
                    server_host_key_algs=list(SERVER_HOST_KEY_ALGS),
                    encryption_algs=list(ENCRYPTION_ALGS),
                    compression_algs=list(COMPRESSION_ALGS),
                    keepalive_interval=opts.keepalive_interval,
                    keepalive_count_max=opts.keepalive_count_max,
                    connect_timeout=None,
                    window=CHANNEL_WINDOW,
                    max_pktsize=CHANNEL_MAX_PKTSIZE,
                )
        except TimeoutError:
            if handler.host_key_error is not None:
                raise handler.host_key_error from None
            raise TimeoutError(
                f"no SSH session within {opts.connect_timeout:g} s (transport and handshake)"
            ) from None
        except Exception:
            if handler.host_key_error is not None:
                raise handler.host_key_error from None
            raise
        return ClientConnection(conn, handler)

    async def aclose(self) -> None:
        await self.transport.aclose()
