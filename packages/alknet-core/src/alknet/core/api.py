"""The Python embedding API (``call-protocol.md`` §11, ``transport-and-ssh.md`` §16), over SSH.

Client::

    stream = await connect(ConnectOptions(server="127.0.0.1:2222", identity=key_bytes, host_key="SHA256:..."))
    async with CallPeer(stream) as peer:
        print(await peer.call("/services/list"))
    await stream.close()

Server::

    node = Node(accept_workers=True)                  # or leave node=None and use connections()/on_connection
    server = await serve(ServeOptions(listeners=(ListenerOptions(port=0),), host_key=key_bytes,
                                      authorized_keys=b"ssh-ed25519 AAAA...", node=node))
    server.listen_addrs                              # ["tcp://127.0.0.1:40123"]
    await server.close()

Worker: ``await run_worker(opts, node, name="dev1")`` dials the head, registers ``node``'s operations and
serves calls from the head, reconnecting with backoff (1, 2, 4 ... 30 s, ±20 %) and registering again after
every reconnect, forever.

:func:`connect` does transport, SSH authentication and codec selection, and opens one ``alknet-control``
channel (port 0 JSON, port 1 msgpack); no SOCKS5 and no forwards. Host keys: ``host_key`` pin, or
``insecure_host_key``, or else ``known_hosts`` in the state dir (``ALKNET_HOME`` or the platform dir), trust on
first use, exactly like the CLI. :func:`serve` never creates a host key and, with ``state_dir=None``, writes
no file. This module imports asyncssh (it is not a light module).

Raw framing (``interface="raw"``, §10.2): :func:`connect` dials a ``raw+tcp`` listener (``server`` is
``HOST:PORT`` or ``raw+tcp://HOST:PORT``, the port is required), sends ``auth.token`` (``token``, or one minted
now from ``identity`` / ``ALKNET_IDENTITY``) and returns after ``auth.ok``, with ``info.identity`` the identity
the server granted (the one an SSH login with that key gets). A refused token raises
:class:`~alknet.core.raw.RawAuthError` (code ``FORBIDDEN``). No host key is involved: the plaintext listener
is not authenticated, so use it on loopback or a trusted network. :func:`run_worker` connects over SSH only.

Transports here: SSH over ``tcp`` and ``tls``, raw framing over ``tcp``. The quic and iroh transports are
refused with ``ValueError`` naming the field.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import asyncssh

from alknet.core.api_server import (
    BACKLOG,
    SSH_TRANSPORTS,
    AlknetServer,
    ListenerOptions,
    ServeOptions,
    SshStatus,
    head_node,
    serve,
)
from alknet.core.api_stream import (
    CONTROL_HOST,
    CONTROL_PORTS,
    ConnectionInfo,
    ControlStream,
    check_codec,
    open_control,
    open_raw_control,
)
from alknet.core.auth.keys import load_private_key
from alknet.core.auth.token import mint_token
from alknet.core.call.channel import ChannelLimits
from alknet.core.call.envelope import CallError, ErrorCode
from alknet.core.call.peer import CallPeer, ChannelTrust
from alknet.core.call.registry import is_valid_node_name
from alknet.core.config.static import parse_listen
from alknet.core.errors import ConfigError
from alknet.core.events import EventClient, RemoteSubscription
from alknet.core.logfmt import log_event
from alknet.core.node import Node
from alknet.core.ssh.client import ClientConnection, ClientOptions, SshClient
from alknet.core.ssh.known_hosts import HostKeyError
from alknet.core.ssh.reconnect import ReconnectSupervisor
from alknet.core.state import resolve_state_dir
from alknet.core.transport.tls import TlsVerificationError

__all__ = [
    "BACKLOG",
    "CONTROL_HOST",
    "CONTROL_PORTS",
    "AlknetServer",
    "CallPeer",
    "ChannelLimits",
    "ConnectOptions",
    "ConnectionInfo",
    "ControlStream",
    "EventTarget",
    "ListenerOptions",
    "ServeOptions",
    "SshStatus",
    "client_options",
    "connect",
    "head_node",
    "open_control",
    "open_raw_control",
    "run_worker",
    "serve",
    "ssh_client",
]

log = logging.getLogger("alknet.worker")


def _env(name: str) -> str | None:
    value = os.environ.get(name, "")
    return value or None


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach a server (the ``cli.md`` §3 connection options of the same names).

    ``server`` and ``identity`` default to ``ALKNET_SERVER`` and ``ALKNET_IDENTITY`` when ``None``; an explicit
    value wins. ``identity`` is an OpenSSH Ed25519 private key: a path, or the file's bytes. ``head_scopes``
    are the scopes of calls arriving from this server (a worker's trust in its head). ``interface="raw"``
    (tcp only) sends ``token`` as ``auth.token``; with ``token=None`` one is minted from ``identity`` at
    connect. There is no environment variable for the token.
    """

    server: str | None = None
    transport: str = "tcp"
    interface: str = "ssh"
    peer: str | None = None
    identity: str | os.PathLike[str] | bytes | None = None
    user: str = "alknet"
    host_key: str | None = None
    insecure_host_key: bool = False
    tls_server_name: str | None = None
    tls_ca: str | os.PathLike[str] | None = None
    tls_pin: str | None = None
    tls_insecure: bool = False
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    iroh_relay: tuple[str, ...] = ()
    token: str | None = None
    proxy: str | None = None
    codec: str = "json"
    head_scopes: tuple[str, ...] = ("*",)
    limits: ChannelLimits = field(default_factory=ChannelLimits)
    connect_timeout: float = 10.0

    def __repr__(self) -> str:  # the identity may be key bytes, the token a credential, the proxy URL too
        return (
            f"ConnectOptions(server={self.server!r}, transport={self.transport!r}, "
            f"interface={self.interface!r}, user={self.user!r}, codec={self.codec!r})"
        )


# ------------------------------------------------------------------------------------------------ connect


def _check_connect(opts: ConnectOptions) -> None:
    if opts.interface not in ("ssh", "raw"):
        raise ValueError(f"ConnectOptions.interface: must be 'ssh' or 'raw', got {opts.interface!r}")
    if opts.interface == "raw":
        if opts.transport != "tcp":
            raise ValueError(
                f"ConnectOptions.transport: raw framing is available over tcp only in this release "
                f"(a raw+tcp listener), not {opts.transport!r}"
            )
        if opts.proxy is not None:
            raise ValueError("ConnectOptions.proxy is not available with interface='raw'")
    elif opts.transport not in SSH_TRANSPORTS:
        raise ValueError(
            f"ConnectOptions.transport: {opts.transport!r} is not available in this release (tcp or tls)"
        )
    if opts.peer is not None:
        raise ValueError("ConnectOptions.peer is only for the quic and iroh transports")
    check_codec(opts.codec)


def _ssh_only(opts: ConnectOptions, what: str) -> None:
    if opts.interface != "ssh":
        raise ValueError(f"ConnectOptions.interface: {what} connects over SSH only, not {opts.interface!r}")


def client_options(opts: ConnectOptions, *, state_dir: str | os.PathLike[str] | None = None) -> ClientOptions:
    """The SSH client settings of ``opts`` (environment defaults applied). Without a ``host_key`` pin or
    ``insecure_host_key``, host keys are checked against ``<state_dir>/known_hosts`` (default: the state dir
    of ``ALKNET_HOME`` or the platform)."""
    _check_connect(opts)
    _ssh_only(opts, "client_options()")
    server = opts.server if opts.server is not None else _env("ALKNET_SERVER")
    if not server:
        raise ValueError("no server: set ConnectOptions.server or ALKNET_SERVER")
    identity = opts.identity if opts.identity is not None else _env("ALKNET_IDENTITY")
    if identity is None:
        raise ValueError("no identity: set ConnectOptions.identity or ALKNET_IDENTITY")
    if state_dir is None and opts.host_key is None and not opts.insecure_host_key:
        state_dir = resolve_state_dir(None, os.environ, None)
    return ClientOptions(
        server=server,
        identity=identity,
        transport=opts.transport,
        user=opts.user,
        host_key=opts.host_key,
        insecure_host_key=opts.insecure_host_key,
        state_dir=state_dir,
        tls_server_name=opts.tls_server_name,
        tls_ca=opts.tls_ca,
        tls_pin=opts.tls_pin,
        tls_insecure=opts.tls_insecure,
        proxy=opts.proxy,
        connect_timeout=opts.connect_timeout,
        keepalive_interval=opts.keepalive_interval,
        keepalive_count_max=opts.keepalive_count_max,
    )


def ssh_client(opts: ConnectOptions) -> SshClient:
    """An :class:`SshClient` for ``opts`` (identity loaded now: ``KeyFormatError`` for PEM or non-Ed25519)."""
    return SshClient(client_options(opts))


def _raw_address(server: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``raw+tcp://HOST:PORT`` -> ``(host, port)``; ``ConfigError`` naming the value."""
    shown = server[:100]
    try:
        spec = parse_listen(server if "://" in server else f"raw+tcp://{server}")
    except ValueError as exc:
        raise ConfigError(f"invalid raw server address {shown!r}: {exc}") from None
    if spec.interface != "raw" or spec.port == 0:
        raise ConfigError(f"invalid raw server address {shown!r}: use HOST:PORT or raw+tcp://HOST:PORT")
    return spec.host, spec.port


def _raw_token(opts: ConnectOptions) -> str:
    """``opts.token``, or a token minted now from ``opts.identity`` / ``ALKNET_IDENTITY``."""
    if opts.token is not None:
        if not opts.token:
            raise ValueError("ConnectOptions.token is empty")
        return opts.token
    identity = opts.identity if opts.identity is not None else _env("ALKNET_IDENTITY")
    if identity is None:
        raise ValueError(
            "no token: set ConnectOptions.token, or ConnectOptions.identity or ALKNET_IDENTITY to mint one"
        )
    key = load_private_key(Path(identity) if isinstance(identity, str) else identity)
    return mint_token(key, int(time.time()))


async def _connect_raw(opts: ConnectOptions) -> ControlStream:
    server = opts.server if opts.server is not None else _env("ALKNET_SERVER")
    if not server:
        raise ValueError("no server: set ConnectOptions.server or ALKNET_SERVER")
    host, port = _raw_address(server)
    return await open_raw_control(
        host,
        port,
        _raw_token(opts),
        codec=opts.codec,
        head_scopes=opts.head_scopes,
        timeout=opts.connect_timeout,
        max_frame=opts.limits.max_frame,
    )


async def connect(opts: ConnectOptions | None = None) -> ControlStream:
    """Connect (transport, SSH auth, host-key check) and open one control channel in ``opts.codec``.

    With ``interface="raw"``: dial the ``raw+tcp`` listener at ``server`` and authenticate with ``token`` (or
    one minted from ``identity`` / ``ALKNET_IDENTITY``); ``info.identity`` is the identity of ``auth.ok``.

    Raises ``ValueError`` for unusable options (``KeyFormatError`` for bad key material, ``ConfigError`` for
    a bad server address), ``HostKeyError``, asyncssh's ``PermissionDenied``, ``TimeoutError`` or
    ``OSError`` when the server cannot be reached, ``ChannelOpenError`` when it refuses the channel, and
    (raw) :class:`~alknet.core.raw.RawAuthError` when it refuses the token.
    """
    opts = opts if opts is not None else ConnectOptions()
    _check_connect(opts)
    if opts.interface == "raw":
        return await _connect_raw(opts)
    client = ssh_client(opts)
    try:
        conn = await client.connect()
    except BaseException:
        await client.aclose()
        raise

    async def close_all() -> None:
        await conn.aclose()
        await client.aclose()

    try:
        return await open_control(
            conn, client, codec=opts.codec, head_scopes=opts.head_scopes, on_close=close_all
        )
    except BaseException:
        await close_all()
        raise


# ------------------------------------------------------------------------------------------------ worker


_REFUSALS = frozenset({ErrorCode.FORBIDDEN, ErrorCode.CONFLICT, ErrorCode.INVALID_INPUT})


async def run_worker(
    opts: ConnectOptions,
    node: Node,
    *,
    name: str,
    client: SshClient | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    uniform: Callable[[float, float], float] = random.uniform,
    clock: Callable[[], float] = time.monotonic,
) -> NoReturn:
    """Dial the head, register ``node`` as worker ``name`` and serve calls from the head, forever.

    Reconnects with backoff 1, 2, 4 ... 30 s and ±20 % jitter (reset after 30 s of uptime) and registers
    again after every reconnect. A refused registration (``FORBIDDEN``, ``CONFLICT``, ``INVALID_INPUT``)
    logs ``level=ERROR msg="registration refused" node=... code=...`` and is retried with the same backoff.
    ``client`` replaces the SSH client built from ``opts`` (the CLI passes one that uses its state dir);
    ``opts`` still gives the codec, the head scopes and the limits. Raises only ``HostKeyError`` (a host-key
    mismatch needs an operator) and ``CancelledError`` once running; ``ValueError`` at once for a bad node
    name or ``opts.interface="raw"`` (workers connect over SSH).
    """
    if not is_valid_node_name(name):
        raise ValueError(f"invalid node name {name!r}: [a-z0-9][a-z0-9-]{{0,62}}, not 'head'")
    _ssh_only(opts, "run_worker()")
    check_codec(opts.codec)
    ssh = client if client is not None else ssh_client(opts)

    async def serve_one(conn: ClientConnection) -> str:
        try:
            stream = await open_control(
                conn, ssh, codec=opts.codec, head_scopes=opts.head_scopes, on_close=conn.aclose
            )
        except asyncssh.ChannelOpenError as exc:
            conn.close()
            return f"control channel refused: {exc.reason}"
        except BaseException:
            conn.close()
            raise
        peer = CallPeer(stream, node=node, trust=ChannelTrust.HEAD, limits=opts.limits)
        try:
            peer.start()
            try:
                await node.register_with(peer, name)
            except CallError as exc:
                refused = exc.code in _REFUSALS
                log_event(
                    log,
                    logging.ERROR if refused else logging.WARNING,
                    "registration refused" if refused else "registration failed",
                    node=name,
                    code=exc.code,
                    error=exc.message,
                )
                return f"registration {'refused' if refused else 'failed'}: {exc.code}"
            closed = asyncio.ensure_future(conn.wait_closed())
            served = asyncio.ensure_future(peer.serve_forever())
            try:
                await asyncio.wait({closed, served}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                served.cancel()
                await asyncio.gather(closed, served, return_exceptions=True)
            return conn.close_reason if conn.is_closed else f"control channel {peer.close_reason}"
        finally:
            await peer.close()
            await stream.close()

    supervisor: ReconnectSupervisor[ClientConnection] = ReconnectSupervisor(
        ssh.connect,
        serve_one,
        server=ssh.describe(),
        fatal=(HostKeyError,),
        logged_as_error=(asyncssh.PermissionDenied, TlsVerificationError, ConfigError),
        clock=clock,
        sleep=sleep,
        uniform=uniform,
    )
    try:
        await supervisor.run()
    finally:
        if client is None:
            await ssh.aclose()


# ------------------------------------------------------------------------------------------------ events


class EventTarget:
    """Pubsub over a channel (§9): ``publish``, ``subscribe`` (an async iterator of ``EventEnvelope`` that
    sends ``__subscribe`` on entry and ``__unsubscribe`` on exit) and ``close``. Given a bare stream, it
    wraps it in a :class:`CallPeer` (calls and events then share one reader) and closes it on ``close``."""

    def __init__(self, peer_or_stream: CallPeer | ControlStream | Any) -> None:
        if isinstance(peer_or_stream, CallPeer):
            self.peer = peer_or_stream
            self._owns_peer = False
        else:
            self.peer = CallPeer(peer_or_stream)
            self._owns_peer = True
        self._client = EventClient(self.peer)

    async def publish(self, type: str, payload: Any, *, id: str = "") -> None:
        self.peer.start()
        await self._client.publish(type, payload, id=id)

    def subscribe(self, type: str, id: str | None = None, *, queue: int = 1024) -> RemoteSubscription:
        self.peer.start()
        return self._client.subscribe(type, id, queue=queue)

    async def close(self) -> None:
        await self._client.close()
        if self._owns_peer:
            await self.peer.close()

    async def __aenter__(self) -> EventTarget:
        self.peer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
