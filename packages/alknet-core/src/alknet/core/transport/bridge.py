"""``StreamTransport``: an ``asyncio.Transport`` over a bidirectional byte stream (transport-and-ssh.md §5).

Used by the quic and iroh transports (one bidirectional stream per SSH session), by the tcp/tls client when
the ``--proxy`` dialler hands back asyncio streams, and by the in-memory transport pair used in tests.

Bounds: ``write()`` appends to a send buffer; above 1 MiB unsent the protocol's ``pause_writing()`` is called,
below 256 KiB ``resume_writing()``. Reads are pulled from the stream only while the protocol has not paused
reading, so nothing accumulates on the receive side beyond one chunk (64 KiB).

``abort()`` behaves like closing a TCP socket: the protocol sees ``connection_lost`` at once, reading stops,
and bytes already handed to ``write()`` are still flushed (bounded by ``linger`` seconds) before the stream is
closed. asyncssh sends its disconnect message and then calls ``abort()``, so this keeps clean closes clean.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .base import (
    AcceptorClosed,
    HeldProtocol,
    Transport,
    TransportAcceptor,
    TransportInfo,
    TransportKind,
    attach,
    feed_protocol,
    set_transport_info,
)

__all__ = [
    "ByteStream",
    "MemoryAcceptor",
    "MemoryConnector",
    "MemoryStream",
    "StreamReaderWriterStream",
    "StreamTransport",
    "memory_pair",
    "memory_stream_pair",
]

log = logging.getLogger("alknet.transport")

P = TypeVar("P", bound=asyncio.BaseProtocol)

READ_CHUNK = 64 * 1024
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024


class ByteStream(Protocol):
    """What a QUIC/iroh/in-memory stream adapter provides to :class:`StreamTransport`."""

    async def recv(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; ``b""`` at EOF; raises ``ConnectionError`` on reset."""
        ...

    async def send(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    def abort(self) -> None:
        """Reset both directions; pending ``recv``/``send`` calls fail."""
        ...


class StreamTransport(asyncio.Transport):
    """An asyncio transport over a :class:`ByteStream`. Call :meth:`start` with the first protocol."""

    _start_tls_compatible = True

    def __init__(
        self, stream: ByteStream, extra: dict[str, Any] | None = None, *, linger: float = 5.0
    ) -> None:
        super().__init__(extra)
        self._loop = asyncio.get_running_loop()
        self._stream = stream
        self._protocol: asyncio.BaseProtocol | None = None
        self._linger = linger
        self._sendq: deque[bytes] = deque()
        self._send_size = 0
        self._high = WRITE_HIGH
        self._low = WRITE_LOW
        self._protocol_paused = False
        self._reading_paused = False
        self._read_allowed = asyncio.Event()
        self._read_allowed.set()
        self._send_ready = asyncio.Event()
        self._closing = False
        self._eof_pending = False
        self._eof_sent = False
        self._lost_called = False
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    def start(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        protocol.connection_made(self)
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())

    # BaseTransport
    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._eof_pending = True
        self._stop_reading()
        self._send_ready.set()
        if self._writer is None:
            self._stream.abort()
        else:
            self._loop.call_later(self._linger, self._writer.cancel)
        self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Like closing a TCP socket: ``connection_lost`` soon; written bytes still flush (``linger``)."""
        self.close()

    # ReadTransport
    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._reading_paused:
            return
        self._reading_paused = True
        self._read_allowed.clear()

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        self._read_allowed.set()

    # WriteTransport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing or self._eof_pending:
            return
        if not data:
            return
        chunk = bytes(data)
        self._sendq.append(chunk)
        self._send_size += len(chunk)
        self._send_ready.set()
        self._maybe_pause_protocol()

    def write_eof(self) -> None:
        if self._closing or self._eof_pending:
            return
        self._eof_pending = True
        self._send_ready.set()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._send_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    # internals
    def _maybe_pause_protocol(self) -> None:
        if self._send_size > self._high and not self._protocol_paused and self._protocol is not None:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception:
                log.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._send_size <= self._low and self._protocol is not None:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("protocol.resume_writing() failed")

    def _stop_reading(self) -> None:
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()

    def _call_connection_lost(self, exc: Exception | None) -> None:
        if self._lost_called:
            return
        self._lost_called = True
        protocol = self._protocol
        if protocol is not None:
            protocol.connection_lost(exc)

    def _fatal(self, exc: Exception) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        self._sendq.clear()
        self._send_size = 0
        self._stream.abort()
        self._loop.call_soon(self._call_connection_lost, exc)

    async def _read_loop(self) -> None:
        try:
            while not self._closing:
                if self._reading_paused:
                    await self._read_allowed.wait()
                    continue
                data = await self._stream.recv(READ_CHUNK)
                if self._closing:
                    return
                protocol = self._protocol
                assert protocol is not None
                if not data:
                    keep_open = False
                    if isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol):
                        keep_open = bool(protocol.eof_received())
                    if not keep_open:
                        self.close()
                    return
                feed_protocol(protocol, data)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._fatal(exc)

    async def _write_loop(self) -> None:
        try:
            while True:
                if self._sendq:
                    chunks: list[bytes] = []
                    size = 0
                    while self._sendq and size < READ_CHUNK:
                        chunk = self._sendq.popleft()
                        chunks.append(chunk)
                        size += len(chunk)
                    await self._stream.send(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                    self._send_size -= size
                    self._maybe_resume_protocol()
                    continue
                if self._eof_pending and not self._eof_sent:
                    self._eof_sent = True
                    await self._stream.send_eof()
                    continue
                if self._closing:
                    return
                self._send_ready.clear()
                await self._send_ready.wait()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            if not self._closing:
                self._fatal(exc)
        finally:
            if self._closing:
                self._sendq.clear()
                self._send_size = 0
                self._stream.abort()


class StreamReaderWriterStream:
    """:class:`ByteStream` over an asyncio ``(StreamReader, StreamWriter)`` pair (e.g. from a dialler)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def recv(self, max_bytes: int) -> bytes:
        return await self._reader.read(max_bytes)

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def send_eof(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()

    def abort(self) -> None:
        # Flush-then-close: the asyncio transport below may still hold bytes a clean SSH close needs.
        self._writer.close()


class _Pipe:
    """One direction of an in-memory stream, bounded to ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.capacity = capacity
        self.eof = False
        self.error: Exception | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut


class MemoryStream:
    """One end of :func:`memory_stream_pair`: pending bytes, then EOF, then a reset error."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe) -> None:
        self._in = inbound
        self._out = outbound

    async def recv(self, max_bytes: int) -> bytes:
        pipe = self._in
        while not pipe.chunks and not pipe.eof and pipe.error is None:
            await pipe.wait()
        if pipe.chunks:
            chunk = pipe.chunks.popleft()
            if len(chunk) > max_bytes:
                pipe.chunks.appendleft(chunk[max_bytes:])
                chunk = chunk[:max_bytes]
            pipe.size -= len(chunk)
            pipe.wake()
            return chunk
        if pipe.eof:
            return b""
        assert pipe.error is not None
        raise pipe.error

    async def send(self, data: bytes) -> None:
        pipe = self._out
        while pipe.size >= pipe.capacity and pipe.error is None:
            await pipe.wait()
        if pipe.error is not None:
            raise pipe.error
        if pipe.eof:
            raise BrokenPipeError("stream already half-closed")
        pipe.chunks.append(data)
        pipe.size += len(data)
        pipe.wake()

    async def send_eof(self) -> None:
        self._out.eof = True
        self._out.wake()

    def abort(self) -> None:
        for pipe in (self._in, self._out):
            if pipe.error is None:
                pipe.error = ConnectionResetError("stream reset by peer")
            pipe.wake()


def memory_stream_pair(capacity: int = 256 * 1024) -> tuple[MemoryStream, MemoryStream]:
    """Two connected in-memory :class:`ByteStream` ends (no sockets)."""
    a_to_b, b_to_a = _Pipe(capacity), _Pipe(capacity)
    return MemoryStream(b_to_a, a_to_b), MemoryStream(a_to_b, b_to_a)


class MemoryAcceptor(TransportAcceptor):
    """In-memory acceptor fed by :class:`MemoryConnector` (tests; no socket is ever created)."""

    def __init__(self, kind: TransportKind = TransportKind.TCP, label: str = "memory") -> None:
        self.kind = kind
        self.listen_addrs = []
        self._label = label
        self._queue: asyncio.Queue[tuple[asyncio.Transport, TransportInfo] | None] = asyncio.Queue()
        self._closed = False
        self._ids = itertools.count(1)

    async def start(self) -> None:
        self.listen_addrs = [f"{self._label}:0"]

    async def accept(self) -> tuple[asyncio.Transport, TransportInfo]:
        if self._closed:
            raise AcceptorClosed("acceptor closed")
        item = await self._queue.get()
        if item is None:
            raise AcceptorClosed("acceptor closed")
        return item

    async def aclose(self) -> None:
        self._closed = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item[0].abort()
        self._queue.put_nowait(None)

    def _deliver(self, stream: MemoryStream, client_id: int) -> None:
        if self._closed or not self.listen_addrs:
            raise ConnectionRefusedError("memory acceptor is not listening")
        info = TransportInfo(
            kind=self.kind,
            remote_addr=None,
            local_addr=None,
            peer_id=f"memory-{client_id}",
            listener=self._label,
        )
        transport = StreamTransport(stream, {"peername": None, "sockname": None})
        set_transport_info(transport, info)
        transport.start(HeldProtocol())
        self._queue.put_nowait((transport, info))


class MemoryConnector(Transport):
    """Client half of :func:`memory_pair`."""

    def __init__(self, acceptor: MemoryAcceptor, capacity: int = 256 * 1024) -> None:
        self.kind = acceptor.kind
        self._acceptor = acceptor
        self._capacity = capacity

    def describe(self) -> str:
        return f"{self.kind}://memory"

    async def create_connection(
        self, protocol_factory: Callable[[], P], host: str | None = None, port: int | None = None
    ) -> tuple[asyncio.Transport, P]:
        client_end, server_end = memory_stream_pair(self._capacity)
        client_id = next(self._acceptor._ids)
        self._acceptor._deliver(server_end, client_id)
        info = TransportInfo(kind=self.kind, remote_addr=None, local_addr=None, peer_id="memory-server")
        transport = StreamTransport(client_end, {"peername": None, "sockname": None})
        set_transport_info(transport, info)
        protocol = protocol_factory()
        transport.start(HeldProtocol())
        attach(transport, protocol)
        return transport, protocol

    async def aclose(self) -> None:
        return None


def memory_pair(kind: TransportKind = TransportKind.TCP) -> tuple[MemoryConnector, MemoryAcceptor]:
    """A fake in-memory ``Transport``/``TransportAcceptor`` pair carrying full sessions without sockets."""
    acceptor = MemoryAcceptor(kind)
    return MemoryConnector(acceptor), acceptor
