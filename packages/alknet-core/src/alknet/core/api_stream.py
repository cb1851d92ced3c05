"""The control channel as a byte stream (``call-protocol.md`` §10, §11): ``ControlStream`` and
``ConnectionInfo``; :func:`open_control`, which opens one ``alknet-control`` channel on an SSH client
connection, and :func:`open_raw_control`, which dials a ``raw+tcp`` listener and authenticates with an
``auth.token`` (§10.2). Part of the embedding API (:mod:`alknet.core.api`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from alknet.core.auth.identity import Identity
from alknet.core.call.frame import DEFAULT_MAX_FRAME
from alknet.core.raw.client import open_raw_channel
from alknet.core.ssh.channels import CONTROL_CODECS
from alknet.core.ssh.client import ClientConnection, SshClient

__all__ = [
    "CONTROL_HOST",
    "CONTROL_PORTS",
    "ConnectionInfo",
    "ControlStream",
    "check_codec",
    "open_control",
    "open_raw_control",
]

#: The reserved ``direct-tcpip`` destination of the control channel, and its port per codec.
CONTROL_HOST = "alknet-control"
CONTROL_PORTS: Mapping[str, int] = {codec: port for port, codec in CONTROL_CODECS.items()}


def check_codec(codec: str) -> str:
    if codec not in CONTROL_PORTS:
        raise ValueError(f"codec must be json or msgpack, got {codec!r}")
    return codec


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Who is on the other end of a control stream: on a server the client's session; on an SSH client the
    server (identity = its host-key fingerprint with ``ConnectOptions.head_scopes``). On a raw-framing client
    (``interface="raw"``) the server is not authenticated, and ``identity`` is the one the server granted in
    ``auth.ok``: the identity an SSH login with the same key gets."""

    remote_addr: str
    transport: str
    interface: str
    identity: Identity
    codec: str
    endpoint_id: str | None = None


class ControlStream:
    """One control channel as a byte stream: ``reader`` (``read``, ``readexactly``), ``writer`` (``write``,
    ``drain``, ``write_eof``, ``close``, ``wait_closed``), ``codec`` and ``info``. It knows nothing of
    envelopes; wrap it in a :class:`CallPeer`. ``close()`` ends the channel (and, for a stream from
    :func:`connect`, the connection it owns).

    ``identity`` is the identity calls arriving over this stream run with (what :class:`CallPeer` uses):
    ``info.identity`` unless ``peer_identity`` is given (a raw-framing client stream, whose ``info.identity``
    is the client's own granted identity).
    """

    reader: Any  #: ``read(n)``, ``readexactly(n)`` (an asyncssh ``SSHReader`` or an asyncio ``StreamReader``)
    writer: Any  #: ``write``, ``drain``, ``write_eof``, ``close``, ``wait_closed`` (``SSHWriter``/``StreamWriter``)

    def __init__(
        self,
        reader: Any,
        writer: Any,
        info: ConnectionInfo,
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        peer_identity: Identity | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self._on_close = on_close
        self._peer_identity = peer_identity
        self._closed = asyncio.Event()

    @property
    def codec(self) -> str:
        return self.info.codec

    @property
    def identity(self) -> Identity:
        return self._peer_identity if self._peer_identity is not None else self.info.identity

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __repr__(self) -> str:
        return (
            f"ControlStream({self.info.remote_addr!r}, {self.info.codec}, identity={self.info.identity.id!r})"
        )

    async def close(self) -> None:
        """Close the channel (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(Exception):
            self.writer.close()
        if self._on_close is not None:
            with contextlib.suppress(Exception):
                await self._on_close()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` was called or the channel ended."""
        closed = asyncio.ensure_future(self._closed.wait())
        channel = asyncio.ensure_future(_channel_closed(self.writer))
        try:
            await asyncio.wait({closed, channel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            channel.cancel()
            await asyncio.gather(closed, channel, return_exceptions=True)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_control(
    conn: ClientConnection,
    client: SshClient,
    *,
    codec: str = "json",
    head_scopes: tuple[str, ...] = ("*",),
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> ControlStream:
    """Open one ``alknet-control`` channel on ``conn`` (port 0 JSON, port 1 msgpack).

    The stream's identity is the server: its host-key fingerprint with ``head_scopes``. ``on_close`` runs
    once when the stream is closed (e.g. ``conn.aclose`` to end the SSH connection with it). Raises
    asyncssh's ``ChannelOpenError`` when the server refuses the channel.
    """
    port = CONTROL_PORTS[check_codec(codec)]
    reader, writer = await conn.open_channel(CONTROL_HOST, port)
    host_key = conn.host_key
    fingerprint = host_key.fingerprint if host_key is not None else "server"
    info = ConnectionInfo(
        remote_addr=_hostport(client.host, client.port),
        transport=str(client.transport.kind),
        interface="ssh",
        identity=Identity(fingerprint, head_scopes),
        codec=codec,
    )
    return ControlStream(reader, writer, info, on_close=on_close)


async def open_raw_control(
    host: str,
    port: int,
    token: str,
    *,
    codec: str = "json",
    head_scopes: tuple[str, ...] = ("*",),
    timeout: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> ControlStream:
    """Dial the ``raw+tcp`` listener at ``host:port``, send ``auth.token`` with ``codec`` and wait for
    ``auth.ok`` (``call-protocol.md`` §10.2).

    The stream's ``info`` has ``interface="raw"``, ``transport="tcp"`` and the identity the server granted;
    calls the server makes over the stream run with ``Identity("raw+tcp://HOST:PORT", head_scopes)`` (the
    server has no key to name it by). Raises :class:`~alknet.core.raw.RawAuthError` when the server answers
    ``auth.error`` (``FORBIDDEN`` for a bad, expired or unknown token) or no valid answer comes, and
    ``OSError`` / ``TimeoutError`` when the listener cannot be reached within ``timeout``.
    """
    check_codec(codec)
    stream, granted = await open_raw_channel(
        host, port, token, codec=codec, timeout=timeout, max_frame=max_frame
    )
    writer: Any = stream.writer
    info = ConnectionInfo(
        remote_addr=stream.remote_addr, transport="tcp", interface="raw", identity=granted, codec=codec
    )

    async def wait_closed() -> None:
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    return ControlStream(
        stream.reader,
        writer,
        info,
        on_close=wait_closed,
        peer_identity=Identity(f"raw+tcp://{stream.remote_addr}", head_scopes),
    )


async def _channel_closed(writer: Any) -> None:
    """Until the channel under ``writer`` is closed: the SSH channel of an ``SSHWriter``, the connection of
    an asyncio ``StreamWriter``; forever for a writer with neither."""
    channel = getattr(writer, "channel", None)
    if channel is not None:
        await channel.wait_closed()
    elif isinstance(writer, asyncio.StreamWriter):
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    else:
        await asyncio.get_running_loop().create_future()
