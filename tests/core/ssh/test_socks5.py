"""SOCKS5 server of the client (transport-and-ssh.md §13), at the unit level over real loopback sockets.

The SSH side is replaced by a fake ``open_channel`` that maps ``test.local`` to 127.0.0.1, refuses
``denied.test`` with reason 1 and turns socket errors into the §8 channel-open failures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from typing import Any

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alknet.core.proxy import reason_for_os_error
from alknet.core.ssh.forwards import ChannelOpenFailure, ChannelStreams, ListenError, NotConnected
from alknet.core.ssh.socks5 import (
    CloseConnection,
    ConnectRequest,
    Socks5Reply,
    Socks5Server,
    Socks5ServerConnection,
    reply_for_failure,
    socks5_reply_bytes,
)

SUCCESS = bytes.fromhex("05000001000000000000")
HTTP_BODY = b"hello from test.local\n"


# ------------------------------------------------------------------------------------------ helpers


class FakeChannels:
    """Stands in for the SSH connection: records every open, never resolves anything but ``test.local``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.connected = True

    async def __call__(self, host: str, port: int) -> ChannelStreams:
        self.calls.append((host, port))
        if not self.connected:
            raise NotConnected()
        if host == "denied.test":
            raise ChannelOpenFailure(1, "forwarding not permitted")
        names = {"test.local": "127.0.0.1"}
        addr = names.get(host, host)
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
        except OSError:
            raise ChannelOpenFailure(2, "name resolution failed") from None
        try:
            return await asyncio.open_connection(addr, port)
        except OSError as exc:
            raise ChannelOpenFailure(2, reason_for_os_error(exc).value) from None


async def _http_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(HTTP_BODY) + HTTP_BODY
        )
        await writer.drain()
    finally:
        writer.close()


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        pass
    finally:
        writer.close()


def _port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_http_handler, "127.0.0.1", 0)
    yield _port_of(server)
    server.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
    yield _port_of(server)
    server.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def channels() -> FakeChannels:
    return FakeChannels()


@pytest.fixture
async def socks(channels: FakeChannels) -> AsyncIterator[Socks5Server]:
    server = Socks5Server(channels, "127.0.0.1", 0)
    await server.start()
    yield server
    await server.aclose()


def _request(host: str | bytes, port: int, *, cmd: int = 1) -> bytes:
    if isinstance(host, bytes):
        addr = b"\x03" + bytes([len(host)]) + host
    elif ":" in host:
        addr = b"\x04" + socket.inet_pton(socket.AF_INET6, host)
    elif host.replace(".", "").isdigit():
        addr = b"\x01" + socket.inet_aton(host)
    else:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    return bytes([5, cmd, 0]) + addr + struct.pack("!H", port)


async def _exchange(port: int, data: bytes, *, eof: bool = False, timeout: float = 5.0) -> bytes:
    """Send ``data`` (optionally half-closing), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def _connect(
    port: int, host: str, target_port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    writer.write(_request(host, target_port))
    assert await reader.readexactly(10) == SUCCESS
    return reader, writer


async def _curl(*args: str) -> tuple[int, bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out


# ------------------------------------------------------------------------------------- acceptance


async def test_curl_socks5_hostname_by_name(
    socks: Socks5Server, channels: FakeChannels, http_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code, body = await _curl(
        "--socks5-hostname", f"127.0.0.1:{socks.port}", f"http://test.local:{http_port}/"
    )
    assert code == 0
    assert body == HTTP_BODY
    assert channels.calls == [("test.local", http_port)]  # the name reached open_channel unresolved
    logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert "test.local" not in logged
    assert str(http_port) not in logged


async def test_curl_denied_gets_0x02_exit_97(socks: Socks5Server, http_port: int) -> None:
    code, body = await _curl(
        "--socks5-hostname", f"127.0.0.1:{socks.port}", f"http://denied.test:{http_port}/"
    )
    assert code == 97
    assert body == b""
    reply = await _exchange(socks.port, b"\x05\x01\x00" + _request("denied.test", http_port))
    assert reply == b"\x05\x00" + socks5_reply_bytes(0x02)


async def test_closed_port_gets_0x05(socks: Socks5Server, closed_port: int) -> None:
    reply = await _exchange(socks.port, b"\x05\x01\x00" + _request("test.local", closed_port))
    assert reply == b"\x05\x00" + bytes.fromhex("05050001000000000000")
    code, _ = await _curl("--socks5-hostname", f"127.0.0.1:{socks.port}", f"http://test.local:{closed_port}/")
    assert code == 97


async def test_username_password_only_greeting_gets_05ff(socks: Socks5Server, channels: FakeChannels) -> None:
    assert await _exchange(socks.port, b"\x05\x01\x02") == b"\x05\xff"
    assert channels.calls == []


async def test_socks4_closed_without_reply_and_next_client_served(
    socks: Socks5Server, channels: FakeChannels, echo_port: int
) -> None:
    socks4 = b"\x04\x01" + struct.pack("!H", echo_port) + socket.inet_aton("127.0.0.1") + b"user\x00"
    assert await _exchange(socks.port, socks4) == b""
    reader, writer = await _connect(socks.port, "127.0.0.1", echo_port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.close()
    assert channels.calls == [("127.0.0.1", echo_port)]


@pytest.mark.parametrize("cmd", [0x02, 0x03, 0x00, 0x09, 0xFF])
async def test_bind_udp_and_unknown_commands_get_0x07(socks: Socks5Server, cmd: int) -> None:
    reply = await _exchange(socks.port, b"\x05\x01\x00" + _request("127.0.0.1", 80, cmd=cmd))
    assert reply == b"\x05\x00" + socks5_reply_bytes(0x07)


@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF])
async def test_unknown_atyp_gets_0x08(socks: Socks5Server, atyp: int) -> None:
    reply = await _exchange(
        socks.port, b"\x05\x01\x00" + bytes([5, 1, 0, atyp]) + b"\x7f\x00\x00\x01\x00\x50"
    )
    assert reply == b"\x05\x00" + socks5_reply_bytes(0x08)


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", "127.0.0.1"), ("::1", "::1")])
async def test_ipv4_and_ipv6_atyp(
    socks: Socks5Server, channels: FakeChannels, host: str, expected: str, closed_port: int
) -> None:
    reply = await _exchange(socks.port, b"\x05\x01\x00" + _request(host, closed_port))
    assert reply[2:4] in (b"\x05\x05", b"\x05\x04", b"\x05\x03")  # refused (or no IPv6 on this host)
    assert channels.calls == [(expected, closed_port)]


@pytest.mark.parametrize(
    "data",
    [
        b"\x05",
        b"\x05\x02\x00",
        b"\x05\x01\x00\x05",
        b"\x05\x01\x00\x05\x01\x00",
        b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00",
        b"\x05\x01\x00\x05\x01\x00\x03\x0atest.lo",
        b"\x05\x01\x00\x05\x01\x00\x04" + b"\x00" * 15,
        b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00",
    ],
)
async def test_truncated_requests_closed_without_open(
    socks: Socks5Server, channels: FakeChannels, data: bytes
) -> None:
    reply = await _exchange(socks.port, data, eof=True)
    assert reply in (b"", b"\x05\x00")
    assert channels.calls == []


async def test_silent_client_dropped_at_handshake_deadline(channels: FakeChannels) -> None:
    async with Socks5Server(channels, "127.0.0.1", 0, handshake_timeout=0.3) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _exchange(server.port, b"\x05\x01\x00\x05\x01", timeout=5) == b"\x05\x00"
        assert loop.time() - started < 3
        assert await _exchange(server.port, b"", timeout=5) == b""
    assert channels.calls == []


async def test_not_connected_gets_0x01_at_once(socks: Socks5Server, channels: FakeChannels) -> None:
    channels.connected = False
    reply = await _exchange(socks.port, b"\x05\x01\x00" + _request("test.local", 80), timeout=2)
    assert reply == b"\x05\x00" + socks5_reply_bytes(0x01)


async def test_empty_domain_gets_0x04(socks: Socks5Server, channels: FakeChannels) -> None:
    reply = await _exchange(socks.port, b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50")
    assert reply == b"\x05\x00" + socks5_reply_bytes(0x04)
    assert channels.calls == []


async def test_pipelined_payload_reaches_target(socks: Socks5Server, echo_port: int) -> None:
    reply = await _exchange(
        socks.port, b"\x05\x01\x00" + _request("127.0.0.1", echo_port) + b"early bytes", eof=True
    )
    assert reply == b"\x05\x00" + SUCCESS + b"early bytes"


async def test_half_close_1mib_then_client_still_sends(socks: Socks5Server) -> None:
    payload = os.urandom(1 << 20)
    received: Future[bytes] = Future()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        received.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    try:
        reader, writer = await _connect(socks.port, "127.0.0.1", _port_of(server))
        assert await asyncio.wait_for(reader.read(), 10) == payload  # all 1 MiB, then EOF
        writer.write(b"after the target's EOF")
        writer.write_eof()
        assert await asyncio.wait_for(asyncio.wrap_future(received), 10) == b"after the target's EOF"
        writer.close()
    finally:
        server.close()


async def test_listener_logs_and_non_loopback_warning(
    channels: FakeChannels, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alknet.client")
    async with Socks5Server(channels, "0.0.0.0", 0) as server:
        messages = [r.getMessage() for r in caplog.records]
        assert "socks5 listening" in messages
        assert any(
            r.levelno == logging.WARNING and "reachable from the network" in r.getMessage()
            for r in caplog.records
        )
        assert await _exchange(server.port, b"\x05\x01\x02") == b"\x05\xff"


async def test_bind_conflict_is_one_line(socks: Socks5Server, channels: FakeChannels) -> None:
    other = Socks5Server(channels, "127.0.0.1", socks.port)
    with pytest.raises(ListenError) as info:
        await other.start()
    assert str(info.value) == f"cannot listen on 127.0.0.1:{socks.port}: address already in use"


async def test_aclose_releases_port_and_ends_streams(channels: FakeChannels, echo_port: int) -> None:
    server = Socks5Server(channels, "127.0.0.1", 0)
    await server.start()
    port = server.port
    reader, _writer = await _connect(port, "127.0.0.1", echo_port)
    await server.aclose()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    again = Socks5Server(channels, "127.0.0.1", port)
    await again.start()
    await again.aclose()


# ---------------------------------------------------------------------------------- reply mapping


@pytest.mark.parametrize(
    ("code", "reason", "rep"),
    [
        (1, "forwarding not permitted", 0x02),
        (1, "anything", 0x02),
        (2, "connection refused", 0x05),
        (2, "Connection refused", 0x05),  # OpenSSH sshd capitalises the text
        (2, "host unreachable", 0x04),
        (2, "name resolution failed", 0x04),
        (2, "timed out", 0x04),
        (2, "network unreachable", 0x03),
        (2, "proxy failure", 0x01),
        (2, "unknown control destination", 0x01),
        (4, "resource shortage", 0x01),
        (3, "unknown channel type", 0x01),
    ],
)
def test_reply_mapping_table(code: int, reason: str, rep: int) -> None:
    assert reply_for_failure(ChannelOpenFailure(code, reason)) == rep
    assert reply_for_failure(asyncssh.ChannelOpenError(code, reason)) == rep


@pytest.mark.parametrize(
    "exc",
    [None, NotConnected(), RuntimeError("x"), ConnectionRefusedError(), asyncssh.DisconnectError(1, "x")],
)
def test_reply_mapping_other_failures_are_general(exc: BaseException | None) -> None:
    assert reply_for_failure(exc) == Socks5Reply.GENERAL_FAILURE


# ------------------------------------------------------------------------------------------ sans-IO


def test_sans_io_connect_flow() -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(b"\x05\x02\x02\x00")
    assert conn.next_event() is None
    assert conn.data_to_send() == b"\x05\x00"
    conn.receive_data(_request("db.internal", 5432)[:6])
    assert conn.next_event() is None
    conn.receive_data(_request("db.internal", 5432)[6:] + b"tail")
    event = conn.next_event()
    assert event == ConnectRequest("db.internal", 5432, 0x03)
    assert "db.internal" not in repr(event) and "5432" not in repr(event)
    assert conn.trailing_data == b"tail"
    assert conn.send_reply(0) == SUCCESS
    with pytest.raises(RuntimeError):
        conn.send_reply(0)


def _run_sans_io(data: bytes, chunks: list[int]) -> tuple[list[object], bytes]:
    conn = Socks5ServerConnection()
    events: list[object] = []
    out = b""
    pos = 0
    pieces = []
    for size in chunks:
        pieces.append(data[pos : pos + size])
        pos += size
    pieces.append(data[pos:])
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not None:
            events.append(event)
            out += conn.data_to_send()
            if isinstance(event, ConnectRequest):
                out += conn.send_reply(Socks5Reply.NOT_ALLOWED)
        out += conn.data_to_send()
        if events:
            break
    return events, out


_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=_QUIET)
@given(data=st.binary(max_size=300), chunks=st.lists(st.integers(1, 40), max_size=10))
def test_sans_io_never_raises_and_ignores_chunking(data: bytes, chunks: list[int]) -> None:
    events, out = _run_sans_io(data, chunks)
    whole_events, whole_out = _run_sans_io(data, [])
    assert len(events) <= 1
    assert [type(e) for e in events] == [type(e) for e in whole_events]
    assert out == whole_out
    assert all(isinstance(e, ConnectRequest | CloseConnection) for e in events)


# ------------------------------------------------------------------------------ listener fuzzing


class ThreadedSocks5:
    """A Socks5Server on its own loop thread, so blocking hypothesis examples can hammer it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.echo_port, self.server = self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    async def _start(self) -> tuple[int, Socks5Server]:
        self.echo = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        echo_port = _port_of(self.echo)

        async def open_channel(host: str, port: int) -> ChannelStreams:
            if port == echo_port:
                return await asyncio.open_connection("127.0.0.1", echo_port)
            raise ChannelOpenFailure(1 + port % 4, ["connection refused", "timed out", "x"][port % 3])

        server = Socks5Server(open_channel, "127.0.0.1", 0)
        await server.start()
        return echo_port, server

    async def _stop(self) -> None:
        await self.server.aclose()
        self.echo.close()

    def exchange(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=5) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return b""  # the server may already have closed on a bad version byte
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    return out
                if not chunk:
                    return out
                out += chunk

    def check_serving(self) -> None:
        request = b"\x05\x01\x00" + _request("127.0.0.1", self.echo_port) + b"alive"
        assert self.exchange(request) == b"\x05\x00" + SUCCESS + b"alive"
        assert self.loop_errors == []

    def close(self) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def threaded_socks() -> Iterator[ThreadedSocks5]:
    server = ThreadedSocks5()
    yield server
    server.close()


@st.composite
def _mutated_requests(draw: st.DrawFn) -> bytes:
    methods = [*draw(st.lists(st.integers(0, 255), min_size=0, max_size=4)), 0]
    atyp = draw(st.sampled_from([1, 3, 4]))
    if atyp == 1:
        addr = draw(st.binary(min_size=4, max_size=4))
    elif atyp == 4:
        addr = draw(st.binary(min_size=16, max_size=16))
    else:
        name = draw(st.binary(min_size=0, max_size=40))
        addr = bytes([len(name)]) + name
    port = draw(st.integers(0, 65535))
    data = bytearray(
        bytes([5, len(methods), *methods]) + bytes([5, 1, 0, atyp]) + addr + struct.pack("!H", port)
    )
    data += draw(st.binary(max_size=20))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos]
        else:
            del data[pos:]
    return bytes(data)


_FUZZ_INPUT = st.one_of(st.binary(max_size=400), _mutated_requests())


def _fuzz_once(server: ThreadedSocks5, data: bytes) -> None:
    server.exchange(data)
    assert server.loop_errors == []


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=_QUIET)
@given(data=_FUZZ_INPUT)
def test_fuzzed_bytes_never_crash_listener(threaded_socks: ThreadedSocks5, data: bytes) -> None:
    _fuzz_once(threaded_socks, data)


def test_listener_still_serving_after_fuzz(threaded_socks: ThreadedSocks5) -> None:
    threaded_socks.check_serving()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzzed_bytes_never_crash_listener_slow(
    request: pytest.FixtureRequest, threaded_socks: ThreadedSocks5
) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("20 000-example run; select it with -m slow")

    @settings(max_examples=20_000, deadline=None, database=None, suppress_health_check=_QUIET)
    @given(data=_FUZZ_INPUT)
    def run(data: bytes) -> None:
        _fuzz_once(threaded_socks, data)

    run()
    threaded_socks.check_serving()
