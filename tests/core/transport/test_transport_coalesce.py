"""CoalescingTransport: the writes of one loop iteration reach the real transport as one write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from alknet.core.transport.base import HeldProtocol, attach
from alknet.core.transport.coalesce import CoalescingTransport, batched_writes

pytestmark = pytest.mark.timeout(20)


class RecordingTransport(asyncio.Transport):
    """The far side of the wrapper: records what it is handed (the real-socket tests below use TCP)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.calls.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 7


async def test_one_iteration_of_writes_is_one_write() -> None:
    inner = RecordingTransport()
    t = CoalescingTransport(inner)
    t.write(b"ab")
    t.write(bytearray(b"cd"))
    t.write(memoryview(b"ef"))
    t.write(b"")
    assert inner.writes == [] and t.get_write_buffer_size() == 6 + 7
    await asyncio.sleep(0)
    assert inner.writes == [b"abcdef"] and t.get_write_buffer_size() == 7
    t.write(b"gh")
    await asyncio.sleep(0)
    assert inner.writes == [b"abcdef", b"gh"]


async def test_a_batch_goes_out_when_the_outermost_block_ends() -> None:
    a, b = RecordingTransport(), RecordingTransport()
    ta, tb = CoalescingTransport(a), CoalescingTransport(b)
    with batched_writes():
        ta.write(b"1")
        with batched_writes():
            tb.write(b"x")
            ta.write(b"2")
        assert a.writes == [] and b.writes == []  # the inner block ending flushes nothing
        ta.write(b"3")
    assert a.writes == [b"123"] and b.writes == [b"x"]  # no loop iteration needed
    await asyncio.sleep(0)
    assert a.writes == [b"123"] and b.writes == [b"x"]  # and nothing scheduled behind


async def test_an_error_inside_a_batch_still_flushes() -> None:
    inner = RecordingTransport()
    t = CoalescingTransport(inner)
    with pytest.raises(RuntimeError), batched_writes():
        t.write(b"before the error")
        raise RuntimeError("boom")
    assert inner.writes == [b"before the error"]


@pytest.mark.parametrize("end", ["close", "abort", "write_eof"])
async def test_ending_hands_over_what_is_collected_first(end: str) -> None:
    inner = RecordingTransport()
    t = CoalescingTransport(inner)
    t.write(b"last words")
    getattr(t, end)()
    assert inner.calls == ["write", end] and inner.writes == [b"last words"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert inner.calls == ["write", end]


async def test_writes_after_close_are_not_collected() -> None:
    inner = RecordingTransport()
    t = CoalescingTransport(inner)
    t.close()
    t.write(b"late")  # the real transport decides (asyncio ignores it with a warning)
    assert inner.writes == [b"late"] and t.get_write_buffer_size() == 7


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = asyncio.Event()
        self.paused = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof.set()

    def pause_writing(self) -> None:
        self.paused += 1


async def _tcp_pair() -> tuple[Sink, Sink]:
    """(attached client protocol, server-side sink) over 127.0.0.1."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Sink] = loop.create_future()

    def factory() -> Sink:
        s = Sink()
        if not accepted.done():
            accepted.set_result(s)
        return s

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(HeldProtocol, "127.0.0.1", port)
    client = Sink()
    attach(transport, client)
    far = await accepted
    server.close()
    return client, far


async def test_attach_gives_protocols_a_coalescing_transport_over_tcp() -> None:
    client, far = await _tcp_pair()
    assert isinstance(client.transport, CoalescingTransport)
    chunks = [bytes([i]) * (1 + i * 97) for i in range(50)]
    for c in chunks:
        client.transport.write(c)
    client.transport.close()  # everything written before close arrives, in order, then EOF
    await asyncio.wait_for(far.eof.wait(), 5)
    assert bytes(far.data) == b"".join(chunks)
    assert client.transport.get_extra_info("peername")[0] == "127.0.0.1"


async def test_abort_still_sends_what_was_written_before_it() -> None:
    client, far = await _tcp_pair()
    assert client.transport is not None
    client.transport.write(b"disconnect packet")
    client.transport.abort()
    await asyncio.wait_for(far.eof.wait(), 5)
    assert bytes(far.data) == b"disconnect packet"


async def test_flow_control_reaches_the_protocol() -> None:
    client, far = await _tcp_pair()
    t = client.transport
    assert t is not None and far.transport is not None
    far.transport.pause_reading()
    t.set_write_buffer_limits(high=64 * 1024)
    block = b"x" * (1024 * 1024)
    for _ in range(16):
        t.write(block)
    await asyncio.sleep(0.05)
    assert client.paused == 1 and t.get_write_buffer_size() > 64 * 1024
    far.transport.resume_reading()
    t.close()
    await asyncio.wait_for(far.eof.wait(), 10)
    assert len(far.data) == 16 * len(block)
