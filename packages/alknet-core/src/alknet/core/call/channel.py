"""Channel plumbing for :class:`~alknet.core.call.peer.CallPeer` (``call-protocol.md`` §5.5, §11).

:class:`ChannelLimits` (the per-channel limits), :class:`ChannelStream` (a plain ``(reader, writer, codec)``
stream) and :class:`ChannelWriter`, the one coalescing writer of a channel: every frame queued during one
event-loop iteration reaches the transport in one ``write()``. Re-exported by ``alknet.core.call.peer``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from alknet.core.auth.identity import Identity
from alknet.core.call.envelope import EventEnvelope
from alknet.core.call.frame import (
    DEFAULT_MAX_FRAME,
    Codec,
    StreamReaderLike,
    check_max_frame,
    encode_frame,
)
from alknet.core.transport.coalesce import batched_writes

__all__ = ["CLOSE_GRACE", "ChannelLimits", "ChannelStream", "ChannelWriter", "WriterLike"]

#: How long closing waits for the writer to flush (and the reader to end).
CLOSE_GRACE: Final = 1.0


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """Per-channel limits (§5.5); every field can be configured."""

    max_frame: int = DEFAULT_MAX_FRAME
    max_inbound_calls: int = 1024
    max_outbound_pending: int = 65536
    write_high_water: int = 4 * 2**20
    subscription_queue: int = 256
    pubsub_queue: int = 1024
    max_pubsub_subscriptions: int = 1024
    default_call_timeout: float = 30.0
    auth_timeout: float = 10.0
    max_control_channels: int = 16

    def __post_init__(self) -> None:
        check_max_frame(self.max_frame)
        for name in (
            "max_inbound_calls",
            "max_outbound_pending",
            "write_high_water",
            "subscription_queue",
            "pubsub_queue",
            "max_pubsub_subscriptions",
            "max_control_channels",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ChannelLimits.{name} must be an int >= 1")
        for name in ("default_call_timeout", "auth_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"ChannelLimits.{name} must be a number > 0")


def _write_buffer_size(writer: object) -> int | None:
    """Bytes the stream under ``writer`` still holds (an asyncio or asyncssh writer); None if unknown."""
    for name in ("channel", "transport"):  # asyncssh SSHWriter, asyncio StreamWriter
        under = getattr(writer, name, None)
        size = getattr(under, "get_write_buffer_size", None)
        if size is not None:
            try:
                return int(size())
            except Exception:
                return None
    return None


class WriterLike(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChannelStream:
    """A plain stream for :class:`CallPeer`: a reader, a writer and the body codec."""

    reader: StreamReaderLike
    writer: WriterLike
    codec: str | Codec = "json"
    identity: Identity | None = None
    transport: str = ""
    remote_addr: str = "-"


class ChannelWriter:
    """The one writer of a channel: a FIFO of encoded frames, flushed by one task.

    Every frame posted during one event-loop iteration reaches the transport in one ``write()``. ``send``
    waits while more than ``high_water`` bytes are queued; the transport's ``drain()`` (the SSH window)
    holds the flushing task back, so the queue grows and senders wait. ``post`` never waits (error replies,
    aborts). After ``close`` nothing more is queued.
    """

    def __init__(
        self,
        writer: WriterLike,
        codec: Codec,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        high_water: int = 4 * 2**20,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._writer = writer
        self.codec = codec
        self.max_frame = check_max_frame(max_frame)
        self.high_water = high_water
        self._on_error = on_error
        self._buf: list[bytes] = []
        self._size = 0
        self._wake: asyncio.Future[None] | None = None
        self._blocked: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._direct = True

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def buffered(self) -> int:
        return self._size

    def encode(self, env: EventEnvelope) -> bytes:
        return encode_frame(env, self.codec, self.max_frame)

    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="alknet-channel-writer")

    def post_frame(self, frame: bytes) -> bool:
        """Queue an encoded frame without waiting; False once closed.

        The first frame posted while the writer is idle (nothing queued, the last write drained) is written
        at once: a lone call or answer does not wait for the next loop iteration. Frames posted after it
        queue up and leave together in the next iteration, until :meth:`rearm` (new bytes read) or a
        flush of the queue allows another direct write.
        """
        if self._closing:
            return False
        w = self._wake
        if self._direct and w is not None and not w.done() and not self._buf:
            try:
                with batched_writes():
                    self._writer.write(frame)
            except Exception as exc:
                self._failed(exc)
                return False
            self._direct = False  # what follows queues up, until rearm() or the next flush
            if _write_buffer_size(self._writer) != 0:
                w.set_result(None)  # not all of it left: the flushing task waits for drain()
            return True
        self._buf.append(frame)
        self._size += len(frame)
        if w is not None and not w.done():
            w.set_result(None)
        return True

    def rearm(self) -> None:
        """Allow the next frame posted while idle to be written at once again (called by the reader when
        new bytes arrived, i.e. in a later loop iteration than the last direct write)."""
        self._direct = True

    def post(self, env: EventEnvelope) -> bool:
        return self.post_frame(self.encode(env))

    async def writable(self) -> None:
        """Wait until at most ``high_water`` bytes are queued (or the writer is closed)."""
        while self._size > self.high_water and not self._closing:
            fut = asyncio.get_running_loop().create_future()
            self._blocked.append(fut)
            await fut

    async def send(self, env: EventEnvelope) -> None:
        self.post(env)
        if self._size > self.high_water:
            await self.writable()

    def _release(self) -> None:
        blocked, self._blocked = self._blocked, []
        for f in blocked:
            if not f.done():
                f.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._buf:
                    if self._closing:
                        return
                    self._wake = loop.create_future()
                    await self._wake
                    self._wake = None
                    continue
                data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
                self._buf.clear()
                self._size = 0
                self._release()
                with batched_writes():  # already one batch: to the socket now, not next iteration
                    self._writer.write(data)
                await self._writer.drain()
                self._direct = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
        finally:
            self._release()

    def _failed(self, exc: BaseException) -> None:
        self._closing = True
        self._buf.clear()
        self._size = 0
        self._release()
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)  # the flushing task ends
        if self._on_error is not None:
            self._on_error(exc)

    def close(self, *, discard: bool = False) -> None:
        """Stop queueing; the task flushes what is queued (unless ``discard``) and ends."""
        self._closing = True
        if discard:
            self._buf.clear()
            self._size = 0
        self._release()
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_closed(self, timeout: float = CLOSE_GRACE) -> None:
        """Wait for the flush (at most ``timeout``), then close the underlying writer."""
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        close = getattr(self._writer, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        wait_closed = getattr(self._writer, "wait_closed", None)
        if wait_closed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(wait_closed(), timeout)
