"""The control channel as a byte stream (``call-protocol.md`` §10.1, §11): ``ControlStream`` and
``ConnectionInfo``, and :func:`open_control`, which opens one ``alknet-control`` channel on a client
connection. Part of the embedding API (:mod:`alknet.core.api`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from alknet.core.auth.identity import Identity
from alknet.core.ssh.channels import CONTROL_CODECS
from alknet.core.ssh.client import ClientConnection, SshClient

__all__ = ["CONTROL_HOST", "CONTROL_PORTS", "ConnectionInfo", "ControlStream", "check_codec", "open_control"]

#: The reserved ``direct-tcpip`` destination of the control channel, and its port per codec.
CONTROL_HOST = "alknet-control"
CONTROL_PORTS: Mapping[str, int] = {codec: port for port, codec in CONTROL_CODECS.items()}


def check_codec(codec: str) -> str:
    if codec not in CONTROL_PORTS:
        raise ValueError(f"codec must be json or msgpack, got {codec!r}")
    return codec


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Who is on the other end of a control stream: on a server the client's session, on a client the
    server (identity = its host-key fingerprint with ``ConnectOptions.head_scopes``)."""

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
    :func:`connect`, the SSH connection it owns)."""

    reader: Any  #: ``read(n)``, ``readexactly(n)`` (an asyncssh ``SSHReader``)
    writer: Any  #: ``write``, ``drain``, ``write_eof``, ``close``, ``wait_closed`` (an ``SSHWriter``)

    def __init__(
        self,
        reader: Any,
        writer: Any,
        info: ConnectionInfo,
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self._on_close = on_close
        self._closed = asyncio.Event()

    @property
    def codec(self) -> str:
        return self.info.codec

    @property
    def identity(self) -> Identity:
        return self.info.identity

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


async def _channel_closed(writer: Any) -> None:
    """Until the SSH channel under ``writer`` is closed (forever for a writer without one)."""
    channel = getattr(writer, "channel", None)
    if channel is None:
        await asyncio.get_running_loop().create_future()
    else:
        await channel.wait_closed()
