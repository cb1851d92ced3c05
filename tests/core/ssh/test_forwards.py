"""-L/-R spec parsing (transport-and-ssh.md §14) and the local forward listener (cli.md §4)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator

import pytest

from alknet.core import logfmt
from alknet.core.errors import ConfigError
from alknet.core.ssh.forwards import (
    ChannelOpenFailure,
    ChannelStreams,
    ForwardSpecError,
    ListenError,
    LocalForward,
    LocalForwardListener,
    NotConnected,
    RemoteForward,
    parse_local_forward,
    parse_remote_forward,
    pipe,
)

# ------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("5432:db.internal:5432", LocalForward("127.0.0.1", 5432, "db.internal", 5432)),
        ("[::1]:8080:[fd00::5]:80", LocalForward("::1", 8080, "fd00::5", 80)),
        ("0.0.0.0:8443:10.0.0.9:443", LocalForward("0.0.0.0", 8443, "10.0.0.9", 443)),
        ("*:8080:web:80", LocalForward("*", 8080, "web", 80)),
        ("localhost:1:web:65535", LocalForward("localhost", 1, "web", 65535)),
        ("0:127.0.0.1:80", LocalForward("127.0.0.1", 0, "127.0.0.1", 80)),
        ("[::]:0:[::1]:22", LocalForward("::", 0, "::1", 22)),
        (
            "5432:unix:/run/postgresql/.s.PGSQL.5432",
            LocalForward("127.0.0.1", 5432, "", 0, "/run/postgresql/.s.PGSQL.5432"),
        ),
        ("[::1]:5432:unix:/run/a:b.sock", LocalForward("::1", 5432, "", 0, "/run/a:b.sock")),
        ("8080:unix:80", LocalForward("127.0.0.1", 8080, "unix", 80)),
    ],
)
def test_local_specs(spec: str, expected: LocalForward) -> None:
    parsed = parse_local_forward(spec)
    assert parsed == expected
    assert parsed.is_unix == (expected.target_path is not None)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:127.0.0.1:80", RemoteForward("127.0.0.1", 8080, "127.0.0.1", 80)),
        ("0:localhost:3000", RemoteForward("127.0.0.1", 0, "localhost", 3000)),
        ("[::1]:0:[::1]:22", RemoteForward("::1", 0, "::1", 22)),
        ("0.0.0.0:8080:web:80", RemoteForward("0.0.0.0", 8080, "web", 80)),
        ("*:8080:web:80", RemoteForward("*", 8080, "web", 80)),
    ],
)
def test_remote_specs(spec: str, expected: RemoteForward) -> None:
    assert parse_remote_forward(spec) == expected


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("8080:host", "expected [LADDR:]LPORT:RHOST:RPORT"),
        ("a:1:b:2:3", "expected [LADDR:]LPORT:RHOST:RPORT"),
        ("[::1:80:x:1", "unbalanced '['"),
        ("70000:x:1", "LPORT 70000 is out of range (0-65535)"),
        ("8080:x:0", "RPORT 0 is out of range (1-65535)"),
        ("8080:x:70000", "RPORT 70000 is out of range"),
        ("x:h:1", "LPORT 'x' is not a port number"),
        ("+80:h:1", "LPORT '+80' is not a port number"),
        ("80:h:", "RPORT '' is not a port number"),
        ("80::1", "RHOST is empty"),
        (":80:h:1", "LADDR is empty"),
        ("[zz]:80:h:1", "LADDR in brackets is not an IPv6 address"),
        ("80:[::1]x:1", "expected ':' after ']'"),
        ("80:x[::1]:1", "'[' must start a field"),
        ("80:x]:1", "unbalanced ']'"),
        ("80:*:1", "RHOST cannot be '*'"),
        ("80:bad host:1", "RHOST contains characters not allowed in a host"),
        ("80:unix:relative", "RPORT 'relative' is not a port number"),
        ("a:b:80:unix:/p", "expected [LADDR:]LPORT:RHOST:RPORT or [LADDR:]LPORT:unix:/path"),
        ("80:unix:/" + "p" * 120, "at most 107 bytes"),
        ("", "expected [LADDR:]LPORT:RHOST:RPORT"),
    ],
)
def test_bad_local_specs_quote_the_spec(spec: str, why: str) -> None:
    with pytest.raises(ForwardSpecError) as info:
        parse_local_forward(spec)
    message = str(info.value)
    assert message.startswith(f"invalid forward spec {_quoted(spec)}: ")
    assert why in message
    assert "\n" not in message
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("8080:host", "expected [RADDR:]RPORT:LHOST:LPORT"),
        ("a:1:b:2:3", "expected [RADDR:]RPORT:LHOST:LPORT"),
        ("[::1:80:x:1", "unbalanced '['"),
        ("70000:x:1", "RPORT 70000 is out of range (0-65535)"),
        ("0:h:0", "LPORT 0 is out of range (1-65535)"),
        ("80:unix:/p", "LPORT '/p' is not a port number"),
    ],
)
def test_bad_remote_specs_quote_the_spec(spec: str, why: str) -> None:
    with pytest.raises(ForwardSpecError) as info:
        parse_remote_forward(spec)
    assert str(info.value).startswith(f"invalid remote forward spec {_quoted(spec)}: ")
    assert why in str(info.value)


def _quoted(spec: str) -> str:
    return "'" + (spec if len(spec) <= 200 else spec[:200] + "...") + "'"


def test_control_characters_in_spec_stay_on_one_line() -> None:
    with pytest.raises(ForwardSpecError) as info:
        parse_local_forward("80:h\nx:1")
    assert "\n" not in str(info.value) and "\\n" in str(info.value)


def test_targets_hidden_from_repr() -> None:
    text = repr(parse_local_forward("5432:hidden-target.test:4444")) + repr(
        parse_remote_forward("9000:hidden-target.test:4444")
    )
    assert "hidden-target" not in text and "4444" not in text


# ---------------------------------------------------------------------------------------- listener


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


class Channels:
    def __init__(self, echo_port: int) -> None:
        self.echo_port = echo_port
        self.calls: list[tuple[str, object]] = []
        self.connected = True

    async def open(self, host: str, port: int) -> ChannelStreams:
        self.calls.append((host, port))
        if not self.connected:
            raise NotConnected()
        if host == "denied.test":
            raise ChannelOpenFailure(1, "forwarding not permitted")
        return await asyncio.open_connection("127.0.0.1", self.echo_port)

    async def open_unix(self, path: str) -> ChannelStreams:
        self.calls.append(("unix", path))
        return await asyncio.open_connection("127.0.0.1", self.echo_port)


async def _talk(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_local_forward_pipes_and_logs_only_local_addr(
    echo_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    channels = Channels(echo_port)
    async with LocalForwardListener(
        parse_local_forward("0:hidden-target.test:4444"), channels.open
    ) as listener:
        assert listener.port != 0
        assert await _talk(listener.port, b"hello") == b"hello"
        assert await _talk(listener.port, b"again") == b"again"
    assert channels.calls == [("hidden-target.test", 4444)] * 2
    lines = [logfmt.LogfmtFormatter(with_time=False).format(r) for r in caplog.records]
    assert f'level=INFO msg="forward listening" addr=127.0.0.1:{listener.port}' in lines
    everything = "\n".join(lines) + caplog.text
    assert "hidden-target" not in everything
    # the target port as a number of its own: the ephemeral listen port may be 44441
    assert re.search(r"(?<![0-9])4444(?![0-9])", everything) is None, everything


async def test_bind_conflict_message(echo_port: int) -> None:
    channels = Channels(echo_port)
    async with LocalForwardListener(parse_local_forward("0:db:5432"), channels.open) as first:
        port = first.port
        second = LocalForwardListener(parse_local_forward(f"{port}:db2:5432"), channels.open)
        with pytest.raises(ListenError) as info:
            await second.start()
        assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
        assert await _talk(port, b"first still works") == b"first still works"


async def test_bind_conflict_message_ipv6_brackets(echo_port: int) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    channels = Channels(echo_port)
    try:
        first = LocalForwardListener(parse_local_forward("[::1]:0:db:5432"), channels.open)
        await first.start()
    except ListenError:
        pytest.skip("::1 not available")
    try:
        with pytest.raises(
            ListenError, match=rf"^cannot listen on \[::1\]:{first.port}: address already in use$"
        ):
            await LocalForwardListener(parse_local_forward(f"[::1]:{first.port}:db:1"), channels.open).start()
    finally:
        await first.aclose()


async def _closed_at_once(port: int) -> bool:
    """The forward closes the connection (EOF, or a reset since the bytes sent were never read)."""
    try:
        return await _talk(port, b"x") == b""
    except ConnectionResetError:
        return True


async def test_open_failures_close_the_connection(echo_port: int) -> None:
    channels = Channels(echo_port)
    async with LocalForwardListener(parse_local_forward("0:denied.test:1"), channels.open) as denied:
        assert await _closed_at_once(denied.port)
    channels.connected = False
    async with LocalForwardListener(parse_local_forward("0:db:1"), channels.open) as offline:
        assert await _closed_at_once(offline.port)
        channels.connected = True  # the listener stayed bound; the next connection works
        assert await _talk(offline.port, b"back") == b"back"


async def test_unix_target_uses_open_unix_channel(echo_port: int) -> None:
    channels = Channels(echo_port)
    forward = parse_local_forward("0:unix:/run/pg.sock")
    with pytest.raises(ValueError):
        LocalForwardListener(forward, channels.open)
    async with LocalForwardListener(forward, channels.open, channels.open_unix) as listener:
        assert await _talk(listener.port, b"sql") == b"sql"
    assert channels.calls == [("unix", "/run/pg.sock")]


async def test_wildcard_bind_warns_and_serves(echo_port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alknet.client")
    channels = Channels(echo_port)
    async with LocalForwardListener(parse_local_forward("*:0:web:80"), channels.open) as listener:
        assert await _talk(listener.port, b"any") == b"any"
    lines = [logfmt.LogfmtFormatter(with_time=False).format(r) for r in caplog.records]
    assert f'level=INFO msg="forward listening" addr="*:{listener.port}"' in lines
    assert any(line.startswith('level=WARNING msg="forward is reachable from the network"') for line in lines)


async def test_localhost_binds_every_address_on_one_port(echo_port: int) -> None:
    channels = Channels(echo_port)
    async with LocalForwardListener(parse_local_forward("localhost:0:web:80"), channels.open) as listener:
        ports = {port for _host, port in listener.addresses}
        assert len(ports) == 1
        for host, _port in listener.addresses:
            assert await _talk(listener.port, b"hi", host=host) == b"hi"


async def test_pipe_closes_both_when_eof_cannot_be_passed_on() -> None:
    class NoEofWriter:
        def __init__(self) -> None:
            self.data = b""
            self.closed = False

        def write(self, data: bytes) -> None:
            self.data += data

        async def drain(self) -> None:
            return None

        def can_write_eof(self) -> bool:
            return False

        def write_eof(self) -> None:
            raise AssertionError("not supported")

        def close(self) -> None:
            self.closed = True

        def is_closing(self) -> bool:
            return self.closed

    a_reader = asyncio.StreamReader()
    a_reader.feed_data(b"payload")
    a_reader.feed_eof()
    b_reader = asyncio.StreamReader()  # never gets EOF: the pipe must end anyway
    a_writer, b_writer = NoEofWriter(), NoEofWriter()
    await asyncio.wait_for(pipe(a_reader, a_writer, b_reader, b_writer), 5)
    assert b_writer.data == b"payload"
    assert a_writer.closed and b_writer.closed
