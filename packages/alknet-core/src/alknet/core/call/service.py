"""Service sockets: the in-cluster RPC between processes on one Linux host (``call-protocol.md`` §7).

:class:`ServiceServer` serves a registry (or a node) on a Unix stream socket carrying msgpack call-protocol
frames; :class:`ServiceClient` is its caller for the ``service`` backend of ``OperationEnv``. Re-exported by
``alknet.core.call.env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from alknet.core.auth.identity import Identity
from alknet.core.call.envelope import CallError, ErrorCode, ResponseEnvelope
from alknet.core.call.pending import new_request_id
from alknet.core.call.registry import OperationRegistry
from alknet.core.logfmt import log_event

if TYPE_CHECKING:
    from alknet.core.call.env import StreamLike

__all__ = ["ServiceClient", "ServiceServer", "peer_uid"]

log = logging.getLogger("alknet.call")


def peer_uid(sock: Any) -> int | None:
    """The uid of a Unix-socket peer (``SO_PEERCRED``), or None when unknown."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _, uid, _ = struct.unpack("3i", raw)
    return int(uid)


def _unreachable() -> CallError:
    return CallError(ErrorCode.UNAVAILABLE, "service socket unreachable", True)


class ServiceServer:
    """Serves a registry (or a node) on a Unix stream socket: msgpack frames, no auth frame (§7).

    The socket file gets ``mode`` before it listens (a stale socket file is replaced). A connection whose
    peer uid (``SO_PEERCRED``) is neither this process's euid nor in ``allowed_uids`` is closed before any
    frame is read and logged at WARNING. Calls are trusted; their identity is ``metadata["alknet.identity"]``.
    """

    def __init__(
        self,
        target: Any,
        path: str | os.PathLike[str],
        *,
        mode: int = 0o600,
        allowed_uids: frozenset[int] = frozenset(),
        limits: Any = None,
        peercred: Callable[[Any], int | None] = peer_uid,
    ) -> None:
        self.target = target
        self.path = os.fspath(path)
        self.mode = mode
        self.allowed_uids = frozenset(allowed_uids)
        self.limits = limits
        self._peercred = peercred
        self._server: asyncio.AbstractServer | None = None
        self._peers: set[Any] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            os.chmod(self.path, self.mode)
        except BaseException:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from alknet.core.call.peer import CallPeer, ChannelStream, ChannelTrust

        uid = self._peercred(writer.get_extra_info("socket"))
        if uid is None or (uid != os.geteuid() and uid not in self.allowed_uids):
            log_event(log, logging.WARNING, "service connection refused", reason="peer uid", uid=uid)
            writer.close()
            return
        stream = ChannelStream(reader, writer, "msgpack", Identity(f"uid:{uid}"), "unix")
        kw: dict[str, Any] = {"trust": ChannelTrust.SERVICE, "limits": self.limits}
        kw["registry" if isinstance(self.target, OperationRegistry) else "node"] = self.target
        peer = CallPeer(stream, **kw)
        self._peers.add(peer)
        try:
            await peer.serve_forever()
        finally:
            self._peers.discard(peer)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await asyncio.gather(*(p.close() for p in list(self._peers)), return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def __aenter__(self) -> ServiceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ServiceClient:
    """The client of a service socket (a ``Caller``): connects lazily, reconnects after a failure; an
    unreachable socket gives ``UNAVAILABLE``. Responses have ``source="service"``."""

    def __init__(
        self, path: str | os.PathLike[str], *, limits: Any = None, connect_timeout: float = 5.0
    ) -> None:
        self.path = os.fspath(path)
        self.limits = limits
        self.connect_timeout = connect_timeout
        self._peer: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        from alknet.core.call.peer import CallPeer, ChannelStream

        async with self._lock:
            if self._peer is None or self._peer.closed:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.path), self.connect_timeout
                )
                self._peer = CallPeer(ChannelStream(reader, writer, "msgpack"), limits=self.limits)
                self._peer.start()
            return self._peer

    async def request(
        self,
        op: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        deadline_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_request_id: str | None = None,
    ) -> ResponseEnvelope:
        try:
            peer = await self._connect()
        except (OSError, TimeoutError):
            return ResponseEnvelope(new_request_id(), error=_unreachable(), source="service")
        resp: ResponseEnvelope = await peer.request(
            op,
            input,
            timeout=timeout,
            deadline_ms=deadline_ms,
            metadata=metadata,
            parent_request_id=parent_request_id,
        )
        return dataclasses.replace(resp, source="service")

    def open_subscription(
        self,
        op: str,
        input: Any = None,
        *,
        idle_timeout_ms: int | None = None,
        enforce_idle: bool = True,
        deadline_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_request_id: str | None = None,
    ) -> StreamLike:
        async def items() -> AsyncGenerator[Any, None]:
            try:
                peer = await self._connect()
            except (OSError, TimeoutError):
                raise _unreachable() from None
            sub = peer.open_subscription(
                op, input, idle_timeout_ms=idle_timeout_ms, enforce_idle=enforce_idle, deadline_ms=deadline_ms,
                metadata=metadata, parent_request_id=parent_request_id,
            )  # fmt: skip
            try:
                async for item in sub:
                    yield item
            finally:
                await sub.aclose()

        return items()

    async def close(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            await peer.close()
