"""The server half of the embedding API (``call-protocol.md`` §11, ``transport-and-ssh.md`` §16):
``ListenerOptions``, ``ServeOptions``, :func:`serve` and :class:`AlknetServer`, plus :class:`SshStatus` and
:func:`head_node`, which give a head ``Node`` the ``/services/status`` of an :class:`SshServer` (what
``alknet serve`` installs). Import them from :mod:`alknet.core.api`.

:func:`serve` never creates a host key and, with ``state_dir=None``, writes no file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alknet.core import __version__ as core_version
from alknet.core.api_stream import ConnectionInfo, ControlStream
from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import CredentialKind, Identity, IdentityProvider, KeyOptions
from alknet.core.call.acl import HEAD
from alknet.core.call.channel import ChannelLimits
from alknet.core.call.peer import CallPeer
from alknet.core.call.registry import OperationContext, OperationRegistry
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.config.reloader import ConfigReloader, LoadedConfig, build_dynamic
from alknet.core.config.static import DEFAULT_PORTS, LISTENER_KINDS, ListenerSpec, unique_errors
from alknet.core.events import EventBus
from alknet.core.logfmt import log_event
from alknet.core.node import Node
from alknet.core.policy.canon import IPAddress
from alknet.core.policy.forwarding import ForwardingPolicy, evaluate_open
from alknet.core.policy.grammar import Decision, bind_from_text, request_from_text
from alknet.core.ssh.channels import ControlChannel, ControlRegistry
from alknet.core.ssh.outbound import resolve
from alknet.core.ssh.server import ServerListener, SshServer, SshServerOptions
from alknet.core.tls.context import ServerContexts, server_context_from_pem

__all__ = [
    "BACKLOG",
    "AlknetServer",
    "ListenerOptions",
    "ServeOptions",
    "SshStatus",
    "head_node",
    "serve",
]

log = logging.getLogger("alknet.server")

#: Channels waiting for ``connections()`` / ``on_connection``; beyond this they are closed.
BACKLOG = 64

SSH_TRANSPORTS = ("tcp", "tls")
_DEFAULT_HOST = {"iroh": "0.0.0.0"}


@dataclass(frozen=True)
class ListenerOptions:
    """One listener: a ``--listen`` value or a ``[[listeners]]`` table of ``cli.md`` §12.

    ``host`` ``None`` is ``127.0.0.1`` (iroh ``0.0.0.0``); ``port`` ``None`` is the kind's default (tcp 2222, tls
    2443, quic 2443, iroh 0); ``0`` picks a free port.
    """

    kind: str = "tcp"
    host: str | None = None
    port: int | None = None
    interface: str = "ssh"
    stealth: bool = False
    stealth_timeout: float = 10.0
    tls_cert: str | os.PathLike[str] | bytes | None = None
    tls_key: str | os.PathLike[str] | bytes | None = None
    acme_domains: tuple[str, ...] = ()
    acme_email: str | None = None
    acme_agree_tos: bool = False
    acme_challenge: str = "auto"
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: str | os.PathLike[str] | None = None
    acme_http_listen: str = "0.0.0.0:80"
    iroh_relays: tuple[str, ...] = ()
    insecure_plaintext: bool = False

    @property
    def bind_host(self) -> str:
        host = self.host if self.host is not None else _DEFAULT_HOST.get(self.kind, "127.0.0.1")
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @property
    def bind_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.kind, 0)


@dataclass(frozen=True)
class ServeOptions:
    """A server: listeners, keys, auth, policy and limits (``alknet serve`` flags set these one to one).

    ``host_key`` is required (the library never creates one). Key and auth material is a path or bytes.
    ``identity_provider`` is called once with the server's config provider and returns the provider to use.
    ``state_dir`` holds the self-signed TLS certificate; ``None`` writes no file. With ``node`` set, every
    control channel is served by that node; otherwise channels go to ``connections()`` or ``on_connection``.
    """

    listeners: tuple[ListenerOptions, ...]
    host_key: str | os.PathLike[str] | bytes
    endpoint_key: str | os.PathLike[str] | bytes | None = None
    authorized_keys: str | os.PathLike[str] | bytes | None = None
    cert_authority: str | os.PathLike[str] | bytes | None = None
    identity_provider: Callable[[IdentityProvider], IdentityProvider] | None = None
    token_auth: bool = True
    token_max_age: int = 300
    forwarding: ForwardingPolicy | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)
    login_timeout: float = 30.0
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    proxy: str | None = None
    state_dir: str | os.PathLike[str] | None = None
    node: Node | None = None
    limits: ChannelLimits = field(default_factory=ChannelLimits)

    def __repr__(self) -> str:  # key material may be bytes
        return f"ServeOptions(listeners={self.listeners!r}, node={self.node!r})"


# ------------------------------------------------------------------------------------------------ status


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class SshStatus:
    """``/services/status`` of a node served by an :class:`SshServer` (``cli.md`` §10): the server's
    listeners, its live SSH sessions and the node's workers. Never a destination or a byte count."""

    def __init__(self, server: SshServer, node: Node | None = None) -> None:
        self.server = server
        self.node = node
        self.started_at = time.time()

    def sessions(self) -> list[dict[str, Any]]:
        out: list[tuple[float, dict[str, Any]]] = []
        for conn in list(self.server.connections):
            peer = conn.peer
            if peer is None or conn.is_closed:
                continue
            out.append(
                (
                    conn.opened_wall,
                    {
                        "identity": peer.identity.id,
                        "user": conn.username,
                        "transport": peer.transport,
                        "remote_addr": peer.remote_addr,
                        "connected_at": _rfc3339(conn.opened_wall),
                        "channels": peer.control_channels + len(peer.bridges),
                        "remote_forwards": len(self.server.leases.owned_by(conn)),
                    },
                )
            )
        return [item for _, item in sorted(out, key=lambda it: it[0])]

    def snapshot(self) -> dict[str, Any]:
        return {
            "server": {
                "listeners": list(self.server.listen_addrs),
                "version": core_version,
                "uptime_s": round(time.time() - self.started_at, 3),
                "endpoint_id": None,
            },
            "sessions": self.sessions(),
            "workers": self.node.workers() if self.node is not None else [],
        }

    async def __call__(self, ctx: OperationContext) -> dict[str, Any]:
        return self.snapshot()


def head_node(
    server: SshServer,
    *,
    registry: OperationRegistry | None = None,
    bus: EventBus | None = None,
    limits: ChannelLimits | None = None,
    strict: bool = False,
) -> Node:
    """A head ``Node`` (accepting workers) whose ``/services/status`` reports ``server``'s listeners and
    sessions; install it with ``server.control.install(...)`` (:class:`AlknetServer` does)."""
    status = SshStatus(server)
    node = Node(HEAD, registry, bus, accept_workers=True, limits=limits, status=status, strict=strict)
    status.node = node
    return node


# ------------------------------------------------------------------------------------------------ serve


def _tls_contexts(lo: ListenerOptions, state_dir: Path | None) -> ServerContexts:
    cert, key = lo.tls_cert, lo.tls_key
    if cert is None or key is None:
        assert state_dir is not None
        return ServerContexts.self_signed(state_dir)
    if isinstance(cert, bytes) or isinstance(key, bytes):
        cert_pem = cert if isinstance(cert, bytes) else Path(cert).read_bytes()
        key_pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        return ServerContexts(server_context_from_pem(cert_pem, key_pem))
    return ServerContexts.from_files(Path(cert), Path(key))


def _check_listener(i: int, lo: ListenerOptions, opts: ServeOptions) -> None:
    name = f"listeners[{i}]"
    if lo.kind not in LISTENER_KINDS:
        raise ValueError(f"{name}.kind: must be one of {', '.join(LISTENER_KINDS)}")
    if lo.interface not in ("ssh", "raw"):
        raise ValueError(f"{name}.interface: must be ssh or raw")
    if lo.interface == "raw" and lo.port is None:
        raise ValueError(f"{name}.port: a raw listener needs an explicit port")
    if lo.interface == "raw" and lo.kind != "tcp":
        raise ValueError(f"{name}.interface: raw framing is offered on tcp (quic and iroh use ALPN)")
    if lo.stealth and lo.kind != "tls":
        raise ValueError(f"{name}.stealth: stealth mode is only for tls listeners")
    if (lo.tls_cert is None) != (lo.tls_key is None):
        raise ValueError(f"{name}.tls_cert: tls_cert and tls_key go together")
    if lo.tls_cert is not None and lo.acme_domains:
        raise ValueError(f"{name}.acme_domains: cannot be combined with a manual certificate")
    if lo.acme_domains and opts.state_dir is None:
        raise ValueError(f"{name}.acme_domains: ACME needs ServeOptions.state_dir")
    if lo.kind == "tls" and lo.tls_cert is None and not lo.acme_domains and opts.state_dir is None:
        raise ValueError(f"{name}.tls_cert: a tls listener needs tls_cert/tls_key or ServeOptions.state_dir")
    if not 0 <= lo.bind_port <= 65535:
        raise ValueError(f"{name}.port: must be 0..65535")
    # Valid, but not served by this release.
    if lo.kind not in SSH_TRANSPORTS:
        raise ValueError(f"{name}.kind: {lo.kind} listeners are not available in this release")
    if lo.interface == "raw":
        raise ValueError(f"{name}.interface: raw listeners are not available in alknet.core.api")
    if lo.acme_domains:
        raise ValueError(f"{name}.acme_domains: ACME certificates are not available in this release")


def _listeners(opts: ServeOptions) -> tuple[ServerListener, ...]:
    if not opts.listeners:
        raise ValueError("listeners: at least one listener is required")
    for i, lo in enumerate(opts.listeners):
        if not isinstance(lo, ListenerOptions):
            raise TypeError(f"listeners[{i}]: expected ListenerOptions")
        _check_listener(i, lo, opts)
    specs = [
        ListenerSpec(
            kind=lo.kind,
            host=lo.bind_host,
            port=lo.bind_port,
            interface=lo.interface,
            stealth=lo.stealth,
            stealth_timeout=lo.stealth_timeout,
        )
        for lo in opts.listeners
    ]
    clashes = unique_errors(specs, "listeners")
    if clashes:
        raise ValueError(clashes[0])
    state_dir = Path(opts.state_dir) if opts.state_dir is not None else None
    return tuple(
        ServerListener(spec, _tls_contexts(lo, state_dir) if lo.kind == "tls" else None)
        for spec, lo in zip(specs, opts.listeners, strict=True)
    )


class _OptionsSource:
    """What ``reload_from_sources()`` re-reads for a server built from ``ServeOptions``: the
    ``authorized_keys`` and ``cert_authority`` files (bytes stay as given); the forwarding policy and rate
    limits in force are kept."""

    def __init__(self, opts: ServeOptions, ref: Callable[[], DynamicConfig]) -> None:
        self.opts = opts
        self.ref = ref

    def load(self) -> LoadedConfig:
        current = self.ref()
        return build_dynamic(
            self.opts.authorized_keys,
            self.opts.cert_authority,
            forwarding=current.forwarding,
            rate_limits=current.rate_limits,
            token_enabled=current.auth.token_enabled,
            token_max_age=current.auth.token_max_age,
            proxy=self.opts.proxy,
        )


async def serve(opts: ServeOptions) -> AlknetServer:
    """Validate ``opts``, bind every listener and return the running server.

    Raises ``ValueError`` naming the field for invalid options, ``ConfigError`` (a ``ValueError``) for bad
    auth material or certificates, ``KeyFormatError`` for a bad host key, ``BindError`` when a listener
    cannot bind.
    """
    if not 1 <= opts.token_max_age <= 3600:
        raise ValueError("token_max_age: must be 1..3600 seconds")
    listeners = _listeners(opts)
    loaded = build_dynamic(
        opts.authorized_keys,
        opts.cert_authority,
        forwarding=opts.forwarding,
        rate_limits=opts.rate_limits,
        token_enabled=opts.token_auth,
        token_max_age=opts.token_max_age,
        proxy=opts.proxy,
    )
    holder: AtomicRef[DynamicConfig] = AtomicRef(loaded.dynamic)
    reloader = ConfigReloader(
        holder,
        _OptionsSource(opts, holder.load),
        auth_parts=loaded.auth_parts,
    )
    provider: IdentityProvider = ConfigIdentityProvider(holder)
    if opts.identity_provider is not None:
        provider = opts.identity_provider(provider)
    ssh_options = SshServerOptions(
        host_key=opts.host_key,
        listeners=listeners,
        proxy=opts.proxy,
        login_timeout=opts.login_timeout,
        connect_timeout=opts.connect_timeout,
        keepalive_interval=opts.keepalive_interval,
        keepalive_count=opts.keepalive_count_max,
    )
    control = ControlRegistry(max_channels=opts.limits.max_control_channels)
    server = AlknetServer(
        SshServer(ssh_options, reloader, provider, control=control), node=opts.node, limits=opts.limits
    )
    await server.start()
    return server


def _channel_info(ch: ControlChannel) -> ConnectionInfo:
    kind = getattr(ch.transport, "kind", None)
    return ConnectionInfo(
        remote_addr=ch.remote_addr,
        transport=str(kind) if kind is not None else "tcp",
        interface="ssh",
        identity=ch.identity,
        codec=ch.codec,
        endpoint_id=None,
    )


class AlknetServer:
    """A running server (see :func:`serve`): listeners, reloads, policy dry runs and channel delivery.

    With ``node``, every control channel is served by it; otherwise ``connections()`` (an async iterator
    of ``(ControlStream, ConnectionInfo)``) or ``on_connection(cb)`` delivers them, one or the other. Until
    one is used, up to 64 channels wait in a backlog; beyond that they are closed.
    """

    def __init__(
        self, server: SshServer, *, node: Node | None = None, limits: ChannelLimits | None = None
    ) -> None:
        self.server = server
        self.node = node
        self.limits = limits or ChannelLimits()
        self.status = SshStatus(server, node)
        self._mode: str | None = None
        self._callback: Callable[[ControlStream, ConnectionInfo], Awaitable[object]] | None = None
        self._backlog: asyncio.Queue[tuple[ControlStream, ConnectionInfo] | None] = asyncio.Queue()
        self._streams: set[ControlStream] = set()
        self._peers: set[CallPeer] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        server.control.install(self._serve_node if node is not None else self._deliver)

    def __repr__(self) -> str:
        return f"AlknetServer({self.listen_addrs})"

    @property
    def listen_addrs(self) -> list[str]:
        """The bound addresses, e.g. ``["tcp://127.0.0.1:40123"]``."""
        return self.server.listen_addrs

    @property
    def endpoint_id(self) -> str | None:
        """The quic/iroh endpoint id (no such listener in this release: ``None``)."""
        return None

    @property
    def host_key_fingerprint(self) -> str:
        return self.server.host_key_fingerprint

    async def start(self) -> None:
        await self.server.start()
        node = self.node
        if node is not None and not node.listen_addrs:
            node.listen_addrs = tuple(self.server.listen_addrs)

    async def close(self) -> None:
        """Stop listening, close every channel and connection (idempotent); ends ``connections()``."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closed = True
        self._backlog.put_nowait(None)
        await asyncio.gather(*(p.close() for p in list(self._peers)), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in list(self._streams)), return_exceptions=True)
        await self.server.close(drain=0)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def __aenter__(self) -> AlknetServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------ channels

    async def _serve_node(self, ch: ControlChannel) -> None:
        assert self.node is not None
        peer = self.node.peer(ch, limits=self.limits)
        self._peers.add(peer)
        try:
            await peer.serve_forever()
        finally:
            self._peers.discard(peer)

    async def _deliver(self, ch: ControlChannel) -> None:
        info = _channel_info(ch)
        stream = ControlStream(ch.reader, ch.writer, info)
        if self._closed:
            return
        self._streams.add(stream)
        try:
            callback = self._callback
            if callback is not None:
                await callback(stream, info)
            elif self._backlog.qsize() >= BACKLOG:
                log_event(log, logging.WARNING, "control channel dropped", reason="backlog full")
                return
            else:
                self._backlog.put_nowait((stream, info))
            await stream.wait_closed()
        finally:
            self._streams.discard(stream)
            await stream.close()

    def _claim(self, mode: str) -> None:
        if self.node is not None:
            raise RuntimeError("this server attaches every channel to its node (ServeOptions.node)")
        if self._mode is not None and self._mode != mode:
            raise RuntimeError("connections() and on_connection() are mutually exclusive")
        self._mode = mode

    def connections(self) -> AsyncIterator[tuple[ControlStream, ConnectionInfo]]:
        """Each new control channel as ``(stream, info)``; ends when the server closes."""
        self._claim("iterator")
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[ControlStream, ConnectionInfo]]:
        while True:
            item = await self._backlog.get()
            if item is None:
                self._backlog.put_nowait(None)  # other iterators end too
                return
            yield item

    def on_connection(self, cb: Callable[[ControlStream, ConnectionInfo], Awaitable[object]]) -> None:
        """Call ``await cb(stream, info)`` for each new control channel (and those in the backlog)."""
        self._claim("callback")
        self._callback = cb
        while not self._backlog.empty():
            item = self._backlog.get_nowait()
            if item is None:
                self._backlog.put_nowait(None)
                return
            task = asyncio.get_running_loop().create_task(_run_callback(cb, *item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -------------------------------------------------------------------------------------- reloads

    async def reload_auth(
        self,
        *,
        authorized_keys: str | os.PathLike[str] | bytes | None = None,
        cert_authority: str | os.PathLike[str] | bytes | None = None,
    ) -> None:
        """Validate, then swap the authorised keys and/or CA lines (new connections only); a bad value
        raises ``ConfigError`` and the old configuration stays in force."""
        await self.server.reloader.reload_auth(authorized_keys, cert_authority)

    async def reload_forwarding(self, policy: ForwardingPolicy | Mapping[str, object]) -> None:
        """Swap the forwarding policy (applies to the next channel open, on existing connections too)."""
        await self.server.reloader.reload_forwarding(policy)

    async def reload_all(self, config: DynamicConfig) -> None:
        """Swap the whole dynamic configuration (its forwarding tests must pass)."""
        await self.server.reloader.reload_all(config)

    async def reload_from_sources(self) -> None:
        """What SIGHUP does: re-read every file-backed source and swap; ``ConfigError`` on failure."""
        await self.server.reload()

    async def check_policy(
        self,
        target: str,
        *,
        identity: str | None = None,
        scopes: tuple[str, ...] | list[str] | None = None,
        transport: str = "tcp",
        addresses: tuple[str, ...] | list[str] = (),
        resolve: bool = False,
        bind: bool = False,
    ) -> Decision:
        """The dry run of ``alknet policy check`` against the current policy; opens no connection.

        ``identity`` (a key fingerprint or id) gets its scopes and key options from the auth config, else
        from the server's provider, unless ``scopes`` is given.
        """
        dynamic = self.server.dynamic.load()
        held: tuple[str, ...] = tuple(scopes) if scopes is not None else ()
        options = KeyOptions()
        if scopes is None and identity is not None:
            entry = dynamic.auth.key(identity)
            if entry is not None:
                held, options = entry.scopes, entry.options
            else:
                resolved = await self.server.provider.resolve_from_fingerprint(
                    identity, kind=CredentialKind.KEY
                )
                if resolved is not None:
                    held = resolved.scopes
        who = Identity(identity or "-", held)
        policy = dynamic.forwarding
        if bind:
            host, port = bind_from_text(target)
            return policy.evaluate_bind(host, port, who, transport, options=options)
        request = request_from_text(target)
        proxy = self.server.options.proxy is not None
        if addresses:
            return policy.evaluate(
                request, who, transport, options=options, addresses=tuple(addresses), proxy=proxy
            )
        return await evaluate_open(
            policy,
            request,
            who,
            transport,
            options=options,
            resolver=self._resolve if resolve else None,
            proxy=proxy,
        )

    async def _resolve(self, name: str) -> tuple[IPAddress, ...]:
        """The server's resolver, as a channel open would use it (``OutboundError`` when it fails)."""
        return await resolve(self.server.connector.resolver, name)


async def _run_callback(
    cb: Callable[[ControlStream, ConnectionInfo], Awaitable[object]],
    stream: ControlStream,
    info: ConnectionInfo,
) -> None:
    await cb(stream, info)
