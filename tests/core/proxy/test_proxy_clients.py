"""Outbound SOCKS5 and HTTP CONNECT clients against small proxies run by the test on loopback."""

from __future__ import annotations

import asyncio
import base64
import errno
import socket
import string
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alknet.core.proxy import (
    FailureReason,
    ProxyError,
    ProxyURLError,
    open_connection_via,
    open_socket_via,
    open_via_proxy,
    parse_proxy_url,
    reason_for_os_error,
)
from alknet.core.proxy.http_connect import HttpConnectHandshake
from alknet.core.proxy.socks5 import Socks5ClientHandshake, encode_socks5_address
from alknet.core.proxy.url import ProxyConnected, ProxyHandshake, ProxyRejected
from alknet.core.ssh.forwards import ChannelOpenFailure, ChannelStreams
from alknet.core.ssh.socks5 import Socks5Server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> asyncio.Server:
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(wrapped, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await _serve(_echo)
    yield _port(server)
    server.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.readexactly(len(data)), 5)
    writer.close()
    return out


# --------------------------------------------------------------------------- SOCKS5 (real server)


@pytest.fixture
async def socks_proxy(echo_port: int) -> AsyncIterator[tuple[int, list[tuple[str, int]]]]:
    """alknet's own SOCKS5 server as the test proxy, with a direct open_channel (names map to loopback)."""
    calls: list[tuple[str, int]] = []

    async def direct(host: str, port: int) -> ChannelStreams:
        calls.append((host, port))
        addr = {"db.internal": "127.0.0.1"}.get(host, host)
        try:
            return await asyncio.open_connection(addr, port)
        except OSError as exc:
            raise ChannelOpenFailure(2, reason_for_os_error(exc).value) from None

    async with Socks5Server(direct, "127.0.0.1", 0) as server:
        yield server.port, calls


async def test_socks5_name_goes_to_proxy_unresolved(
    socks_proxy: tuple[int, list[tuple[str, int]]], echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, calls = socks_proxy
    looked_up: list[Any] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    reader, writer = await open_connection_via(
        parse_proxy_url(f"socks5h://127.0.0.1:{port}"), "db.internal", echo_port
    )
    assert await _roundtrip(reader, writer, b"through socks") == b"through socks"
    assert calls == [("db.internal", echo_port)]
    assert "db.internal" not in looked_up


async def test_socks5_open_socket_and_literals(
    socks_proxy: tuple[int, list[tuple[str, int]]], echo_port: int
) -> None:
    port, calls = socks_proxy
    proxy = parse_proxy_url(f"socks5://127.0.0.1:{port}")
    sock = await open_socket_via(proxy, "127.0.0.1", echo_port, timeout=5)
    try:
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"raw socket")
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b"raw socket"
    finally:
        sock.close()
    reader, writer = await open_via_proxy(f"socks5://127.0.0.1:{port}", "127.0.0.1", echo_port)
    assert await _roundtrip(reader, writer, b"x") == b"x"
    assert calls == [("127.0.0.1", echo_port), ("127.0.0.1", echo_port)]


async def test_socks5_refused_target_maps_to_connection_refused(
    socks_proxy: tuple[int, list[tuple[str, int]]], closed_port: int
) -> None:
    port, _ = socks_proxy
    with pytest.raises(ProxyError) as info:
        await open_connection_via(parse_proxy_url(f"socks5://127.0.0.1:{port}"), "127.0.0.1", closed_port)
    assert info.value.reason is FailureReason.CONNECTION_REFUSED
    assert str(info.value) == "connection refused"


# ----------------------------------------------------------------------- SOCKS5 (scripted proxy)


class ScriptedSocks5:
    def __init__(self, *, method: int = 0, auth_status: int = 0, rep: int = 0, after: bytes = b"") -> None:
        self.method, self.auth_status, self.rep, self.after = method, auth_status, rep, after
        self.methods = b""
        self.auth = b""
        self.request = b""

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _ver, n = await reader.readexactly(2)
        self.methods = await reader.readexactly(n)
        writer.write(bytes([5, self.method]))
        if self.method == 0xFF:
            return
        if self.method == 2:
            head = await reader.readexactly(2)
            user = await reader.readexactly(head[1])
            plen = await reader.readexactly(1)
            self.auth = head + user + plen + await reader.readexactly(plen[0])
            writer.write(bytes([1, self.auth_status]))
            if self.auth_status:
                return
        head = await reader.readexactly(4)
        size = {1: 4, 4: 16}.get(head[3])
        addr = (
            await reader.readexactly(size)
            if size
            else await reader.readexactly((await reader.readexactly(1))[0])
        )
        if not size:
            addr = bytes([len(addr)]) + addr
        self.request = head + addr + await reader.readexactly(2)
        writer.write(bytes([5, self.rep, 0, 1, 10, 0, 0, 1, 0x1F, 0x90]) + self.after)
        if self.rep == 0:
            await _echo(reader, writer)


async def _with_scripted(script: Handler) -> tuple[asyncio.Server, int]:
    server = await _serve(script)
    return server, _port(server)


@pytest.mark.parametrize(
    ("host", "atyp_addr"),
    [
        ("db.internal", b"\x03\x0bdb.internal"),
        ("10.1.2.3", b"\x01\x0a\x01\x02\x03"),
        ("fd00::5", b"\x04" + socket.inet_pton(socket.AF_INET6, "fd00::5")),
        ("[fd00::5]", b"\x04" + socket.inet_pton(socket.AF_INET6, "fd00::5")),
    ],
)
async def test_socks5_request_atyp(host: str, atyp_addr: bytes) -> None:
    script = ScriptedSocks5()
    server, port = await _with_scripted(script)
    try:
        reader, writer = await open_connection_via(parse_proxy_url(f"socks5://127.0.0.1:{port}"), host, 5432)
        assert await _roundtrip(reader, writer, b"hi") == b"hi"
        assert script.methods == b"\x00"
        assert script.request == b"\x05\x01\x00" + atyp_addr + struct.pack("!H", 5432)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("rep", "reason"),
    [
        (0x01, FailureReason.PROXY_FAILURE),
        (0x02, FailureReason.PROXY_FAILURE),
        (0x03, FailureReason.NETWORK_UNREACHABLE),
        (0x04, FailureReason.HOST_UNREACHABLE),
        (0x05, FailureReason.CONNECTION_REFUSED),
        (0x06, FailureReason.TIMED_OUT),
        (0x07, FailureReason.PROXY_FAILURE),
        (0x08, FailureReason.PROXY_FAILURE),
        (0x42, FailureReason.PROXY_FAILURE),
    ],
)
async def test_socks5_reply_mapping(rep: int, reason: FailureReason) -> None:
    server, port = await _with_scripted(ScriptedSocks5(rep=rep))
    try:
        with pytest.raises(ProxyError) as info:
            await open_connection_via(parse_proxy_url(f"socks5://127.0.0.1:{port}"), "db.internal", 5432)
        assert info.value.reason is reason
        assert "db.internal" not in str(info.value) + info.value.detail
    finally:
        server.close()


async def test_socks5_username_password() -> None:
    script = ScriptedSocks5(method=2, after=b"early")
    server, port = await _with_scripted(script)
    try:
        proxy = parse_proxy_url(f"socks5://alice:s3cret@127.0.0.1:{port}")
        reader, writer = await open_connection_via(proxy, "db.internal", 5432)
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"early"  # bytes after the reply are kept
        assert await _roundtrip(reader, writer, b"ok") == b"ok"
        assert script.methods == b"\x00\x02"
        assert script.auth == b"\x01\x05alice\x06s3cret"
    finally:
        server.close()


@pytest.mark.parametrize("script", [ScriptedSocks5(method=2, auth_status=1), ScriptedSocks5(method=0xFF)])
async def test_socks5_auth_refusals_are_proxy_failure(script: ScriptedSocks5) -> None:
    server, port = await _with_scripted(script)
    try:
        with pytest.raises(ProxyError) as info:
            await open_connection_via(parse_proxy_url(f"socks5://u:s3cret@127.0.0.1:{port}"), "x.test", 1)
        assert info.value.reason is FailureReason.PROXY_FAILURE
    finally:
        server.close()


async def test_socks5_method_not_offered_is_proxy_failure() -> None:
    server, port = await _with_scripted(ScriptedSocks5(method=2))
    try:
        with pytest.raises(ProxyError, match=r"^proxy failure$"):
            await open_connection_via(parse_proxy_url(f"socks5://127.0.0.1:{port}"), "x.test", 1)
    finally:
        server.close()


async def test_socks5_extra_bytes_stay_in_socket() -> None:
    server, port = await _with_scripted(ScriptedSocks5(after=b"tunnel-first"))
    try:
        sock = await open_socket_via(parse_proxy_url(f"socks5://127.0.0.1:{port}"), "db.internal", 1)
        try:
            data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 5)
            assert data == b"tunnel-first"
        finally:
            sock.close()
    finally:
        server.close()


# ----------------------------------------------------------------------------- proxy-level errors


async def test_unreachable_proxy_is_proxy_failure(closed_port: int) -> None:
    with pytest.raises(ProxyError) as info:
        await open_connection_via(parse_proxy_url(f"socks5://127.0.0.1:{closed_port}"), "db.internal", 1)
    assert info.value.reason is FailureReason.PROXY_FAILURE
    with pytest.raises(ProxyError, match=r"^proxy failure$"):
        await open_connection_via(parse_proxy_url(f"http://127.0.0.1:{closed_port}"), "db.internal", 1)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"SSH-2.0-nope\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)


@pytest.mark.parametrize("scheme", ["socks5", "http"])
async def test_silent_proxy_times_out(scheme: str) -> None:
    server = await _serve(_silent)
    try:
        with pytest.raises(ProxyError) as info:
            await open_connection_via(
                parse_proxy_url(f"{scheme}://127.0.0.1:{_port(server)}"), "x.test", 1, timeout=0.3
            )
        assert info.value.reason is FailureReason.TIMED_OUT
    finally:
        server.close()


@pytest.mark.parametrize("scheme", ["socks5", "http"])
async def test_garbage_from_proxy_is_proxy_failure(scheme: str) -> None:
    server = await _serve(_garbage)
    try:
        with pytest.raises(ProxyError) as info:
            await open_connection_via(parse_proxy_url(f"{scheme}://127.0.0.1:{_port(server)}"), "x.test", 1)
        assert info.value.reason is FailureReason.PROXY_FAILURE
    finally:
        server.close()


@pytest.mark.parametrize("host", ["a" * 256, "bad host", "x\r\nInjected: 1", ""])
async def test_unusable_target_name(host: str, echo_port: int) -> None:
    for scheme in ("socks5", "http"):
        with pytest.raises(ProxyError) as info:
            await open_connection_via(parse_proxy_url(f"{scheme}://127.0.0.1:{echo_port}"), host, 80)
        assert info.value.reason is FailureReason.NAME_RESOLUTION_FAILED


async def test_open_via_proxy_rejects_bad_url() -> None:
    with pytest.raises(ProxyURLError, match="unsupported proxy scheme 'https'"):
        await open_via_proxy("https://x:1", "db.internal", 1)


# ------------------------------------------------------------------------------------ HTTP CONNECT


class ScriptedHttp:
    def __init__(self, status: bytes = b"HTTP/1.1 200 Connection established", after: bytes = b"") -> None:
        self.status, self.after = status, after
        self.head = b""

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.head = await reader.readuntil(b"\r\n\r\n")
        writer.write(self.status + b"\r\nVia: test\r\n\r\n" + self.after)
        if self.status.split(b" ")[1].startswith(b"2"):
            await _echo(reader, writer)


async def test_http_connect_request_and_tunnel() -> None:
    script = ScriptedHttp(after=b"early")
    server, port = await _with_scripted(script)
    try:
        reader, writer = await open_connection_via(
            parse_proxy_url(f"http://127.0.0.1:{port}"), "db.internal", 5432
        )
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"early"
        assert await _roundtrip(reader, writer, b"payload") == b"payload"
        assert script.head == b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n"
    finally:
        server.close()


async def test_http_connect_basic_auth_and_ipv6() -> None:
    script = ScriptedHttp()
    server, port = await _with_scripted(script)
    try:
        proxy = parse_proxy_url(f"http://alice:s3cret@127.0.0.1:{port}")
        reader, writer = await open_connection_via(proxy, "fd00::5", 443)
        assert await _roundtrip(reader, writer, b"z") == b"z"
        token = base64.b64encode(b"alice:s3cret").decode()
        assert (
            script.head
            == (
                "CONNECT [fd00::5]:443 HTTP/1.1\r\nHost: [fd00::5]:443\r\n"
                f"Proxy-Authorization: Basic {token}\r\n\r\n"
            ).encode()
        )
    finally:
        server.close()


async def test_http_extra_bytes_stay_in_socket() -> None:
    server, port = await _with_scripted(ScriptedHttp(after=b"tunnel-first"))
    try:
        sock = await open_socket_via(parse_proxy_url(f"http://127.0.0.1:{port}"), "db.internal", 1)
        try:
            data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 5)
            assert data == b"tunnel-first"
        finally:
            sock.close()
    finally:
        server.close()


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (b"HTTP/1.1 403 Forbidden", FailureReason.PROXY_FAILURE),
        (b"HTTP/1.1 407 Proxy Authentication Required", FailureReason.PROXY_FAILURE),
        (b"HTTP/1.1 502 Bad Gateway", FailureReason.PROXY_FAILURE),
        (b"HTTP/1.0 504 Gateway Timeout", FailureReason.TIMED_OUT),
        (b"HTTP/1.1 301 Moved", FailureReason.PROXY_FAILURE),
        (b"HTTP/2 200", FailureReason.PROXY_FAILURE),
        (b"ICY 200 OK", FailureReason.PROXY_FAILURE),
    ],
)
async def test_http_status_mapping(status: bytes, reason: FailureReason) -> None:
    server, port = await _with_scripted(ScriptedHttp(status=status))
    try:
        with pytest.raises(ProxyError) as info:
            await open_connection_via(parse_proxy_url(f"http://127.0.0.1:{port}"), "db.internal", 5432)
        assert info.value.reason is reason
    finally:
        server.close()


async def test_http_2xx_variants_succeed() -> None:
    for status in (b"HTTP/1.0 200 OK", b"HTTP/1.1 204", b"HTTP/1.1 299 Whatever"):
        server, port = await _with_scripted(ScriptedHttp(status=status))
        try:
            reader, writer = await open_connection_via(
                parse_proxy_url(f"http://127.0.0.1:{port}"), "h.test", 1
            )
            assert await _roundtrip(reader, writer, b"a") == b"a"
        finally:
            server.close()


def test_http_oversized_header_block() -> None:
    hs = HttpConnectHandshake("h.test", 1)
    hs.receive_data(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000)
    event = hs.next_event()
    assert isinstance(event, ProxyRejected) and event.reason is FailureReason.PROXY_FAILURE


# ----------------------------------------------------------------------------- sans-IO properties


def _drive(handshake: ProxyHandshake, stream: bytes, answers: list[bytes]) -> tuple[Any, bytes]:
    """Feed ``stream`` the way a socket reader would, honouring ``max_read``; return (event, unread bytes)."""
    sent = handshake.data_to_send()
    assert sent
    pos = 0
    while (event := handshake.next_event()) is None:
        size = handshake.max_read()
        assert size > 0
        chunk = stream[pos : pos + size]
        pos += len(chunk)
        handshake.receive_data(chunk)
        answers.append(handshake.data_to_send())
    return event, stream[pos:]


@settings(max_examples=300, deadline=None, database=None)
@given(
    bound=st.sampled_from(
        [b"\x01\x0a\x00\x00\x01", b"\x04" + b"\x00" * 16, b"\x03\x05proxy", b"\x03\x00"],
    ),
    tail=st.binary(max_size=50),
)
def test_socks5_max_read_never_overreads(bound: bytes, tail: bytes) -> None:
    stream = b"\x05\x00" + b"\x05\x00\x00" + bound + b"\x1f\x90" + tail
    event, unread = _drive(Socks5ClientHandshake("db.internal", 1), stream, [])
    assert isinstance(event, ProxyConnected)
    assert event.extra == b"" and unread == tail
    assert event.bound_port == 0x1F90


@settings(max_examples=300, deadline=None, database=None)
@given(
    headers=st.lists(
        st.tuples(
            st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=10),
            st.text(alphabet="".join(map(chr, range(0x20, 0x7F))), max_size=30),
        ),
        max_size=5,
    ),
    newline=st.sampled_from([b"\r\n", b"\n"]),
    tail=st.binary(max_size=50),
)
def test_http_max_read_never_overreads(headers: list[tuple[str, str]], newline: bytes, tail: bytes) -> None:
    lines = [f"{name}: {value}".encode() for name, value in headers]
    head = newline.join([b"HTTP/1.1 200 OK", *lines]) + newline + newline
    event, unread = _drive(HttpConnectHandshake("db.internal", 1), head + tail, [])
    assert isinstance(event, ProxyConnected)
    assert event.extra == b"" and unread == tail


@settings(max_examples=500, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_client_handshakes_never_raise_on_garbage(data: bytes) -> None:
    for hs in (
        Socks5ClientHandshake("h.test", 1, username="u", password="p"),
        HttpConnectHandshake("h.test", 1),
    ):
        hs.data_to_send()
        for i in range(0, len(data), 7):
            hs.receive_data(data[i : i + 7])
            hs.data_to_send()
        hs.receive_data(b"")
        assert isinstance(hs.next_event(), ProxyConnected | ProxyRejected)


def test_encode_socks5_address() -> None:
    assert encode_socks5_address("127.0.0.1", 80) == b"\x01\x7f\x00\x00\x01\x00\x50"
    assert encode_socks5_address("bücher.example", 1)[:2] == b"\x03\x15"
    with pytest.raises(ValueError):
        encode_socks5_address("h", 70000)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "x"), FailureReason.CONNECTION_REFUSED),
        (OSError(errno.EHOSTUNREACH, "x"), FailureReason.HOST_UNREACHABLE),
        (OSError(errno.ENETUNREACH, "x"), FailureReason.NETWORK_UNREACHABLE),
        (TimeoutError(), FailureReason.TIMED_OUT),
        (socket.gaierror(socket.EAI_NONAME, "x"), FailureReason.NAME_RESOLUTION_FAILED),
        (ProxyError(FailureReason.PROXY_FAILURE), FailureReason.PROXY_FAILURE),
    ],
)
def test_reason_for_os_error(exc: BaseException, reason: FailureReason) -> None:
    assert reason_for_os_error(exc) is reason
