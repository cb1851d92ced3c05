"""The SSH server runtime (transport-and-ssh.md §7-§12): listeners, connections, reload and shutdown.

``SshServer`` is what ``alknet serve`` and the embedding API drive; it knows nothing of the command line
(no banner, no signals, no state dir)::

    reloader = ConfigReloader.from_loaded(loaded, sources)          # or ConfigReloader(AtomicRef(dynamic))
    server = SshServer(SshServerOptions.from_static(static, tls={0: contexts}), reloader)
    await server.start()                 # binds every listener; BindError("cannot listen on tcp ...: ...")
    server.listen_addrs                  # ["tcp://127.0.0.1:2222", ...]
    server.host_key_fingerprint          # "SHA256:..."
    await server.reload()                # SIGHUP: reload_from_sources() (+ TLS files); ConfigError on failure
    await server.close(drain=2.0)        # SIGTERM; a second close(drain=0) skips the rest of the drain

Constructor: ``SshServer(options, reloader, provider=None, *, resolver=None, dialer=None, control=None,
logger=None)``.

- ``options`` (:class:`SshServerOptions`): host key, listeners (:class:`ServerListener`), outbound proxy,
  login/connect timeouts, keepalive, SSH channel window.
- ``reloader``: its ``ref`` is the one ``AtomicRef[DynamicConfig]`` shared by every listener and
  connection; :meth:`start` chains an ``on_swap`` hook that, when ``auth.evict_revoked`` is on, disconnects
  (code 11) connections whose credential no longer resolves.
- ``provider``: the ``IdentityProvider`` (default ``ConfigIdentityProvider(reloader.ref)``).
- ``resolver``: async or sync ``name -> addresses`` used for lazy policy DNS and outbound connects
  (default ``getaddrinfo``); ``dialer``: connects one checked address (default a plain TCP connect).
- ``control``: the :class:`~alknet.core.ssh.channels.ControlRegistry` the call protocol installs its
  ``alknet-control`` handler in (default: an empty registry, so control opens are refused).

Per-IP limits run in each acceptor's admit hook, before any TLS or SSH byte: over the limit the socket is
closed at once and ``connection rejected ... reason=too_many_connections`` is logged (no opened/closed
lines). All listeners share one ``ConnectionLimiter``, one lease table and one connection set.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core import logfmt
from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import IdentityProvider
from alknet.core.auth.keys import load_private_key, private_key_to_openssh, public_key_of
from alknet.core.auth.ssh import AuthContext
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig
from alknet.core.config.reloader import ConfigReloader
from alknet.core.config.static import ListenerSpec, StaticConfig
from alknet.core.errors import ConfigError, IdentityBackendError
from alknet.core.proxy import ProxyURL
from alknet.core.server.ratelimit import ConnectionLimiter, key_for
from alknet.core.ssh.channels import ControlRegistry, TunnelService
from alknet.core.ssh.connection import SessionInfo, TunnelConnection
from alknet.core.ssh.leases import LeaseTable
from alknet.core.ssh.outbound import DEFAULT_CONNECT_TIMEOUT, Dialer, OutboundConnector, Resolver
from alknet.core.tls.context import ServerContexts, log_certificate
from alknet.core.transport.base import (
    AcceptorServer,
    Gate,
    Release,
    TransportAcceptor,
    TransportInfo,
    TransportKind,
    held_protocol,
)
from alknet.core.transport.stealth import StealthGate
from alknet.core.transport.tcp import SocketAcceptor, TcpAcceptor
from alknet.core.transport.tls import TlsAcceptor

__all__ = [
    "CIPHERS",
    "DEFAULT_DRAIN",
    "DEFAULT_MAX_PKTSIZE",
    "DEFAULT_WINDOW",
    "ServerListener",
    "SessionInfo",
    "SshServer",
    "SshServerOptions",
    "TunnelConnection",
    "cap_asyncssh_logging",
]

Logger = logging.Logger | logging.LoggerAdapter[Any]

CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")
DEFAULT_WINDOW = 8 * 1024 * 1024
# larger SSH packets than asyncssh's 32 KiB default: half the per-byte CPU on bulk transfers (bench/tunnel.py)
DEFAULT_MAX_PKTSIZE = 128 * 1024
DEFAULT_DRAIN = 2.0
SHUTDOWN_REASON = "server shutting down"
REVOKED_REASON = "credential revoked"

_DEFAULT_LOGGER = logging.getLogger("alknet.server")


def cap_asyncssh_logging() -> None:
    """The ``asyncssh`` logger stays at WARNING and drops lower records even under a DEBUG root logger
    (asyncssh logs every forwarded destination and bind address at INFO)."""
    ssh_logger = logging.getLogger("asyncssh")
    ssh_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, logfmt.AsyncsshFilter) for f in ssh_logger.filters):
        ssh_logger.addFilter(logfmt.AsyncsshFilter())


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True, slots=True)
class ServerListener:
    """One listener: ``spec`` (kind, host, port, stealth, ...) and, for ``tls``, the certificate holder
    (``ServerContexts`` -- re-read by :meth:`SshServer.reload` -- or a bare ``AtomicRef[ssl.SSLContext]``).
    ``acceptor`` replaces the built-in tcp/tls acceptor (other transports, tests); a ``SocketAcceptor``
    without an admit hook gets the server's per-IP limit as its admit hook, any other acceptor gets it as
    its first gate."""

    spec: ListenerSpec
    tls: ServerContexts | AtomicRef[ssl.SSLContext] | None = None
    acceptor: TransportAcceptor | None = None


@dataclass(frozen=True, slots=True)
class SshServerOptions:
    """Static settings of one SSH server (restart to change). ``host_key``: an OpenSSH Ed25519 private key
    (a ``cryptography`` key, the file content, or a path)."""

    host_key: Ed25519PrivateKey | bytes | str | os.PathLike[str]
    listeners: tuple[ServerListener, ...] = ()
    proxy: str | ProxyURL | None = None
    login_timeout: float = 30.0
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    keepalive_interval: float = 15.0
    keepalive_count: int = 3
    window: int = DEFAULT_WINDOW
    max_pktsize: int = DEFAULT_MAX_PKTSIZE

    @classmethod
    def from_static(
        cls,
        static: StaticConfig,
        *,
        host_key: Ed25519PrivateKey | bytes | str | os.PathLike[str] | None = None,
        tls: Mapping[int, ServerContexts | AtomicRef[ssl.SSLContext]] | None = None,
        acceptors: Mapping[int, TransportAcceptor] | None = None,
    ) -> SshServerOptions:
        """The SSH listeners of ``static`` (``raw+tcp`` ones are skipped: they are not SSH). ``tls`` and
        ``acceptors`` are keyed by the index in ``static.listeners``; ``host_key`` defaults to
        ``static.host_key_path``."""
        tls = tls or {}
        acceptors = acceptors or {}
        listeners = tuple(
            ServerListener(spec, tls.get(i), acceptors.get(i))
            for i, spec in enumerate(static.listeners)
            if spec.interface == "ssh"
        )
        return cls(
            host_key=host_key if host_key is not None else static.host_key_path,
            listeners=listeners,
            proxy=static.proxy,
            login_timeout=static.login_timeout,
            connect_timeout=static.connect_timeout,
            keepalive_interval=static.keepalive_interval,
            keepalive_count=static.keepalive_count,
        )


def _load_host_key(source: Ed25519PrivateKey | bytes | str | os.PathLike[str]) -> Ed25519PrivateKey:
    if isinstance(source, Ed25519PrivateKey):
        return source
    if isinstance(source, bytes):
        return load_private_key(source)
    return load_private_key(Path(source))


# ------------------------------------------------------------------------------------------------ server


@dataclass(slots=True)
class _Bound:
    listener: ServerListener
    acceptor: TransportAcceptor
    ssh: asyncssh.SSHAcceptor


class SshServer:
    """A running set of SSH listeners sharing one dynamic config, limiter, lease table and connection set."""

    def __init__(
        self,
        options: SshServerOptions,
        reloader: ConfigReloader,
        provider: IdentityProvider | None = None,
        *,
        resolver: Resolver | None = None,
        dialer: Dialer | None = None,
        control: ControlRegistry | None = None,
        logger: Logger | None = None,
    ) -> None:
        self.options = options
        self.reloader = reloader
        self.dynamic: AtomicRef[DynamicConfig] = reloader.ref
        self.provider: IdentityProvider = (
            provider if provider is not None else ConfigIdentityProvider(self.dynamic)
        )
        self.logger: Logger = logger if logger is not None else _DEFAULT_LOGGER
        self.limiter = ConnectionLimiter(self.dynamic)
        self.leases = LeaseTable()
        self.control = control if control is not None else ControlRegistry()
        self.connector = OutboundConnector(
            proxy=options.proxy, resolver=resolver, dial=dialer, connect_timeout=options.connect_timeout
        )
        self.channels = TunnelService(self.dynamic, self.connector, self.control)
        self.auth_context = AuthContext(self.provider, self.dynamic, self.logger)
        self._host_key = _load_host_key(options.host_key)
        self._ssh_host_key = asyncssh.import_private_key(private_key_to_openssh(self._host_key))
        #: live connections (authenticated or not); maintained by ``TunnelConnection``
        self.connections: set[TunnelConnection] = set()
        self._bound: list[_Bound] = []
        self._started = False
        self._close_task: asyncio.Task[None] | None = None
        self._skip_drain = asyncio.Event()
        self._previous_on_swap: Any = None
        self._hooked = False

    def __repr__(self) -> str:
        return f"SshServer(listeners={self.listen_addrs}, connections={len(self.connections)})"

    # ------------------------------------------------------------------------------------------ info

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:...`` of the host key (what ``ssh-keygen -lf host_key.pub`` prints)."""
        return public_key_of(self._host_key).fingerprint

    @property
    def host_public_key(self) -> str:
        """The host key's public line ``ssh-ed25519 AAAA...``."""
        return public_key_of(self._host_key).line

    @property
    def listen_addrs(self) -> list[str]:
        """The bound addresses, e.g. ``["tcp://127.0.0.1:2222", "tls://[::1]:2443"]`` (real ports)."""
        return [f"{b.acceptor.kind}://{addr}" for b in self._bound for addr in b.acceptor.listen_addrs]

    @property
    def listeners(self) -> list[tuple[ServerListener, list[str]]]:
        """Each configured listener with its bound addresses (for the banner)."""
        return [(b.listener, list(b.acceptor.listen_addrs)) for b in self._bound]

    @property
    def closing(self) -> bool:
        return self._close_task is not None

    def sessions(self) -> list[SessionInfo]:
        """The live SSH connections (remote address, transport, identity id, opened at)."""
        return [c.session_info() for c in list(self.connections)]

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind every listener (all or none: a :class:`~alknet.core.transport.base.BindError` closes the
        ones already bound and propagates with its one-line message)."""
        if self._started:
            raise RuntimeError("SshServer.start() may be called once")
        self._started = True
        cap_asyncssh_logging()
        if not self.options.listeners:
            raise ConfigError("no SSH listener configured")
        try:
            for listener in self.options.listeners:
                acceptor, gates = self._make_acceptor(listener)
                ssh_acceptor = await asyncssh.listen(
                    tunnel=AcceptorServer(acceptor, gates), **self._ssh_options()
                )
                self._bound.append(_Bound(listener, acceptor, ssh_acceptor))
        except BaseException:
            await self._stop_listening()
            raise
        self._previous_on_swap = self.reloader.on_swap
        self.reloader.on_swap = self._on_swap
        self._hooked = True

    async def __aenter__(self) -> SshServer:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, drain: float = DEFAULT_DRAIN) -> None:
        """Graceful shutdown: stop accepting on every listener, refuse new channels and forwards (``resource
        shortage``), let open channels finish for up to ``drain`` seconds, then send an SSH disconnect (code
        11) to every connection and abort what is left. Idempotent; a second call with ``drain=0`` while the
        first is draining skips the rest of the drain."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close(drain))
        elif drain <= 0:
            self._skip_drain.set()
        await asyncio.shield(self._close_task)

    async def _close(self, drain: float) -> None:
        self.channels.shutting_down = True
        await self._stop_listening()
        if drain > 0 and self.channels.active:
            idle = asyncio.ensure_future(self.channels.wait_idle())
            skip = asyncio.ensure_future(self._skip_drain.wait())
            try:
                await asyncio.wait({idle, skip}, timeout=drain, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                skip.cancel()
        connections = list(self.connections)
        for connection in connections:
            connection.disconnect(asyncssh.DISC_BY_APPLICATION, SHUTDOWN_REASON)
        self.channels.abort_all()
        waits = [c.conn.wait_closed() for c in connections if c.conn is not None]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 2.0)
        if self._hooked and self.reloader.on_swap == self._on_swap:
            self.reloader.on_swap = self._previous_on_swap
        self._hooked = False

    async def _stop_listening(self) -> None:
        bound, self._bound = self._bound, []
        for b in bound:
            b.ssh.close()
        for b in bound:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(b.ssh.wait_closed(), 5.0)

    # ---------------------------------------------------------------------------------------- reload

    async def reload(self) -> DynamicConfig:
        """SIGHUP: ``reloader.reload_from_sources()`` (validate, then swap; ``ConfigError`` leaves
        everything as it was) and a re-read of every manual TLS certificate (a failing one keeps its old
        certificate, logs the error and makes this raise ``ConfigError`` after the others were tried)."""
        errors: list[str] = []
        new: DynamicConfig | None = None
        try:
            new = await self.reloader.reload_from_sources()
        except ConfigError as exc:
            errors.extend(exc.errors)
        for listener in self.options.listeners:
            if isinstance(listener.tls, ServerContexts):
                try:
                    loaded = listener.tls.reload()
                except ConfigError as exc:
                    logfmt.config_reload_error(exc).emit(self.logger)
                    errors.extend(exc.errors)
                else:
                    if isinstance(self.logger, logging.Logger):
                        log_certificate(self.logger, loaded)
        if errors:
            raise ConfigError(errors)
        assert new is not None
        return new

    async def _on_swap(self, old: DynamicConfig, new: DynamicConfig) -> None:
        previous = self._previous_on_swap
        if previous is not None:
            result = previous(old, new)
            if inspect.isawaitable(result):
                await result
        if new.auth.evict_revoked:
            await self.evict_revoked()

    async def evict_revoked(self) -> int:
        """Disconnect (code 11) every authenticated connection whose credential no longer resolves through
        the provider (same kind; the CA for certificate logins). Returns how many were disconnected."""
        evicted = 0
        for connection in list(self.connections):
            credential = connection.credential
            if credential is None or connection.is_closed:
                continue
            kind, fp = credential
            try:
                identity = await self.provider.resolve_from_fingerprint(fp, kind=kind)
            except IdentityBackendError:
                self.logger.warning("identity backend failed; revoked-credential check skipped")
                return evicted
            if identity is None:
                connection.disconnect(asyncssh.DISC_BY_APPLICATION, REVOKED_REASON)
                evicted += 1
        return evicted

    # -------------------------------------------------------------------------------------- internals

    def _ssh_options(self) -> dict[str, Any]:
        opts = self.options
        return {
            "server_factory": self._new_connection,
            "server_host_keys": [self._ssh_host_key],
            "authorized_client_keys": None,
            "known_client_hosts": None,
            "x509_trusted_certs": None,
            "public_key_auth": True,
            "password_auth": False,
            "kbdint_auth": False,
            "host_based_auth": False,
            "gss_host": None,
            "gss_kex": False,
            "gss_auth": False,
            "allow_pty": False,
            "x11_forwarding": False,
            "agent_forwarding": False,
            "allow_scp": False,
            "rdns_lookup": False,
            "encryption_algs": list(CIPHERS),
            "compression_algs": ["none"],
            "login_timeout": opts.login_timeout,
            "keepalive_interval": opts.keepalive_interval,
            "keepalive_count_max": opts.keepalive_count,
            "window": opts.window,
            "config": None,
        }

    def _new_connection(self) -> TunnelConnection:
        return TunnelConnection(self)

    def _make_acceptor(self, listener: ServerListener) -> tuple[TransportAcceptor, list[Gate]]:
        spec = listener.spec
        if spec.interface != "ssh":
            raise ConfigError(f"listener {spec.url}: not an SSH listener")
        gates: list[Gate] = []
        acceptor: TransportAcceptor
        if listener.acceptor is not None:
            acceptor = listener.acceptor
            if isinstance(acceptor, SocketAcceptor) and acceptor.admit is None:
                acceptor.admit = self.admit
            elif not isinstance(acceptor, SocketAcceptor):
                gates.append(self._limit_gate)
        elif spec.kind == TransportKind.TCP:
            acceptor = TcpAcceptor(spec.host, spec.port, admit=self.admit)
        elif spec.kind == TransportKind.TLS:
            tls = listener.tls
            if tls is None:
                raise ConfigError(f"listener {spec.url}: a tls listener needs a certificate")
            ref = tls.ref if isinstance(tls, ServerContexts) else tls
            acceptor = TlsAcceptor(spec.host, spec.port, ref, admit=self.admit)
        else:
            raise ConfigError(f"listener {spec.url}: transport {spec.kind} needs its acceptor")
        if spec.stealth:
            if acceptor.kind is not TransportKind.TLS:
                raise ConfigError(f"listener {spec.url}: stealth is only for tls listeners")
            gates.append(StealthGate(spec.stealth_timeout))
        return acceptor, gates

    @staticmethod
    def _rate_key(info: TransportInfo) -> str | None:
        peer = info.peer_id if info.kind is TransportKind.IROH else None
        remote = None if info.kind is TransportKind.IROH else info.remote_addr
        try:
            return key_for(remote, peer_id=peer)
        except ValueError:
            return None

    def _reject(self, info: TransportInfo) -> None:
        iroh = info.kind is TransportKind.IROH
        logfmt.connection_rejected(
            None if iroh else info.remote_addr, "too_many_connections", peer=info.peer_id if iroh else None
        ).emit(self.logger)

    def admit(self, info: TransportInfo) -> Release | None:
        """The acceptor admit hook: the per-IP limit, before any byte is read or written. ``None`` = refused
        (and logged); otherwise the release to call once when the connection ends."""
        key = self._rate_key(info)
        if not self.limiter.try_acquire(key):
            self._reject(info)
            return None
        return _LimitRelease(self.limiter, key)

    async def _limit_gate(self, transport: asyncio.Transport, info: TransportInfo) -> bool:
        """The same limit as a gate, for acceptors without an admit hook."""
        release = self.admit(info)
        if release is None:
            transport.abort()
            return False
        held = held_protocol(transport)
        if held is not None:
            held.add_release(release)
        else:
            release()
        return True


class _LimitRelease:
    """The :data:`Release` of one admitted connection: gives its per-IP slot back, once. One small object per
    connection (a pair of closures would cost several times as much)."""

    __slots__ = ("_key", "_limiter")

    def __init__(self, limiter: ConnectionLimiter, key: str | None) -> None:
        self._limiter: ConnectionLimiter | None = limiter
        self._key = key

    def __call__(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.release(self._key)
