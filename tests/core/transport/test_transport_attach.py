"""HeldProtocol/attach ordering, release callbacks, AcceptorServer gates, StreamTransport flow control."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import socket
from pathlib import Path

from alknet.core.transport import base as base_mod
from alknet.core.transport.base import (
    TRANSPORT_INFO_KEY,
    AcceptorServer,
    HeldProtocol,
    TransportInfo,
    TransportKind,
    attach,
    normalise_addr,
    set_transport_info,
    transport_info,
)
from alknet.core.transport.bridge import StreamTransport, memory_pair, memory_stream_pair
from alknet.core.transport.coalesce import CoalescingTransport


class Recorder(asyncio.Protocol):
    def __init__(self, keep_open: bool = False) -> None:
        self.events: list[tuple[str, object]] = []
        self.keep_open = keep_open
        self.transport: asyncio.BaseTransport | None = None
        self.lost = asyncio.Event()
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> bool:
        self.events.append(("eof", None))
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set()

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def data(self) -> bytes:
        return b"".join(d for kind, d in self.events if kind == "data" and isinstance(d, bytes))


async def _held_pair() -> tuple[StreamTransport, HeldProtocol, StreamTransport, Recorder]:
    a, b = memory_stream_pair()
    server = StreamTransport(a)
    held = HeldProtocol()
    server.start(held)
    client = StreamTransport(b)
    peer = Recorder()
    client.start(peer)
    return server, held, client, peer


async def test_attach_replays_before_new_data_and_eof_after() -> None:
    server, held, client, _ = await _held_pair()
    client.write(b"one ")
    client.write(b"two ")
    for _ in range(50):
        await asyncio.sleep(0)
    assert held.buffered == b"one two "
    rec = Recorder(keep_open=True)
    attach(server, rec, replay=b"zero ")
    client.write(b"three")
    for _ in range(50):
        await asyncio.sleep(0)
    assert rec.events[0] == ("made", None)
    assert rec.data() == b"zero one two three"
    assert rec.events[1] == ("data", b"zero one two ")  # replay + held bytes come first, in one piece


async def test_eof_received_while_held_is_delivered_after_replay() -> None:
    server, held, client, _ = await _held_pair()
    client.write(b"bytes")
    client.write_eof()
    for _ in range(50):
        await asyncio.sleep(0)
    assert held.eof and held.buffered == b"bytes"
    rec = Recorder()
    attach(server, rec)
    assert [k for k, _ in rec.events[:3]] == ["made", "data", "eof"]
    assert rec.events[1] == ("data", b"bytes")
    await asyncio.wait_for(rec.lost.wait(), 2)  # eof_received returned False: the transport closed


async def test_connection_lost_while_held_is_delivered_last_and_release_runs_once() -> None:
    a, b = memory_stream_pair()
    server = StreamTransport(a)
    held = HeldProtocol()
    server.start(held)
    released: list[int] = []
    held.add_release(lambda: released.append(1))
    await b.send(b"x")
    b.abort()  # a reset, not an EOF
    for _ in range(50):
        await asyncio.sleep(0)
    assert held.lost and isinstance(held.lost_exc, ConnectionResetError)
    assert released == [1]
    rec = Recorder()
    attach(server, rec)
    assert rec.events[0] == ("made", None)
    assert rec.events[1] == ("data", b"x")
    assert rec.events[-1][0] == "lost"
    assert released == [1]


async def test_release_runs_when_attached_protocol_loses_connection() -> None:
    server, held, client, _ = await _held_pair()
    released: list[int] = []
    held.add_release(lambda: released.append(1))
    rec = Recorder()
    attach(server, rec)
    assert released == []
    client.close()
    await asyncio.wait_for(rec.lost.wait(), 2)
    assert released == [1]


async def test_held_protocol_pauses_reading_beyond_its_bound() -> None:
    a, b = memory_stream_pair()
    server = StreamTransport(a)
    held = HeldProtocol(max_buffer=1000)
    server.start(held)
    client = StreamTransport(b)
    client.start(Recorder())
    client.write(b"a" * 5000)
    for _ in range(100):
        await asyncio.sleep(0)
    assert 1000 <= len(held.buffered) < 1000 + 64 * 1024
    assert not server.is_reading()
    rec = Recorder()
    attach(server, rec)
    assert server.is_reading()
    for _ in range(100):
        await asyncio.sleep(0)
    assert rec.data() == b"a" * 5000


async def test_transport_info_travels_with_get_extra_info() -> None:
    server, _, _, _ = await _held_pair()
    info = TransportInfo(TransportKind.TLS, ("10.0.0.1", 5), ("127.0.0.1", 443), listener="tls://x:443")
    set_transport_info(server, info)
    assert server.get_extra_info(TRANSPORT_INFO_KEY) is info
    assert transport_info(server) is info
    assert server.get_extra_info("peername") is None
    assert info.rate_key() == "10.0.0.1"
    iroh = TransportInfo(TransportKind.IROH, None, None, peer_id="ab" * 32)
    assert iroh.rate_key() == "iroh:" + "ab" * 32
    assert normalise_addr(("::ffff:192.0.2.1", 22, 0, 0)) == ("192.0.2.1", 22)
    assert normalise_addr(("2001:db8::1", 22, 0, 0)) == ("2001:db8::1", 22)
    assert normalise_addr(None) is None


async def test_transport_info_on_an_asyncio_socket_transport_needs_no_wrapper() -> None:
    """Plain asyncio socket transports keep the info in their extra-info dict: nothing per connection."""
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    try:
        transport, _ = await loop.connect_accepted_socket(HeldProtocol, left)
        info = TransportInfo(TransportKind.TCP, ("10.0.0.1", 5), ("127.0.0.1", 22), listener="tcp://x:22")
        set_transport_info(transport, info)
        assert "get_extra_info" not in vars(transport)
        assert transport.get_extra_info(TRANSPORT_INFO_KEY) is info
        assert transport_info(CoalescingTransport(transport)) is info
        assert transport.get_extra_info("socket") is not None
        newer = dataclasses.replace(info, alpn="h2")
        set_transport_info(transport, newer)
        assert transport_info(transport) is newer
        transport.close()
    finally:
        right.close()


async def test_stream_transport_write_flow_control_bounds() -> None:
    a, b = memory_stream_pair(capacity=64 * 1024)
    sender = StreamTransport(a)
    rec = Recorder()
    sender.start(rec)
    receiver = StreamTransport(b)
    sink = Recorder()
    receiver.start(sink)
    receiver.pause_reading()  # the receiver stops reading: nothing drains
    for _ in range(40):
        sender.write(b"x" * 64 * 1024)  # 2.5 MiB
    assert rec.paused == 1
    for _ in range(50):
        await asyncio.sleep(0)
    assert sender.get_write_buffer_size() > 1024 * 1024 - 64 * 1024
    assert sink.data() == b""
    receiver.resume_reading()
    for _ in range(2000):
        if len(sink.data()) == 40 * 64 * 1024:
            break
        await asyncio.sleep(0)
    assert len(sink.data()) == 40 * 64 * 1024
    assert rec.resumed == 1
    assert sender.get_write_buffer_size() == 0


async def test_acceptor_server_gate_drop_keeps_listening() -> None:
    connector, acceptor = memory_pair()
    calls: list[int] = []

    async def gate(transport: asyncio.Transport, info: TransportInfo) -> bool:
        calls.append(1)
        if len(calls) == 1:
            return False
        if len(calls) == 2:
            raise RuntimeError("gate blew up")
        return True

    accepted: list[Recorder] = []

    def factory(host: str, port: int) -> Recorder:
        rec = Recorder()
        accepted.append(rec)
        return rec

    server = await AcceptorServer(acceptor, [gate]).create_server(factory, "", 0)
    clients = []
    for _ in range(3):
        _, proto = await connector.create_connection(Recorder)
        clients.append(proto)
    for _ in range(200):
        if accepted:
            break
        await asyncio.sleep(0.005)
    await asyncio.wait_for(clients[0].lost.wait(), 2)
    await asyncio.wait_for(clients[1].lost.wait(), 2)
    assert len(accepted) == 1 and not clients[2].lost.is_set()
    assert server.is_serving()
    server.close()
    await server.wait_closed()
    assert not server.is_serving()


def test_transport_package_never_imports_asyncssh() -> None:
    pkg = Path(base_mod.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "asyncssh" for n in names), path
