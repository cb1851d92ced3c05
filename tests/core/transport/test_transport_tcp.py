"""tcp: asyncssh over TcpAcceptor/TcpTransport on loopback, BindError, IPv6, admit hook, proxy dial."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncssh
import pytest

from alknet.core.transport.base import (
    TRANSPORT_INFO_KEY,
    AcceptorServer,
    BindError,
    TransportInfo,
    TransportKind,
)
from alknet.core.transport.tcp import Dialled, TcpAcceptor, TcpTransport


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _listen(ssh: Any, acceptor: TcpAcceptor, gates: list[Any] | None = None) -> Any:
    return await asyncssh.listen(tunnel=AcceptorServer(acceptor, gates or []), **ssh.server_kwargs())


async def test_tcp_carries_ssh_session(ssh: Any) -> None:
    seen: list[TransportInfo] = []

    async def gate(transport: asyncio.Transport, info: TransportInfo) -> bool:
        seen.append(info)
        return True

    server = await _listen(ssh, TcpAcceptor("127.0.0.1", 0), [gate])
    port = server.get_port()
    assert port > 0
    try:
        conn = await asyncssh.connect(
            "127.0.0.1", port, tunnel=TcpTransport("127.0.0.1", port), **ssh.client_kwargs()
        )
        async with conn:
            info = conn.get_extra_info(TRANSPORT_INFO_KEY)
            assert info.kind is TransportKind.TCP and info.remote_addr == ("127.0.0.1", port)
            assert await ssh.echo(conn, b"x" * 300_000) == b"x" * 300_000
            server.close()
            await server.wait_closed()
            # the listener is gone, the established session is not
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            assert await ssh.echo(conn, b"after close") == b"after close"
    finally:
        server.close()
        await server.wait_closed()
    assert seen[0].kind is TransportKind.TCP
    assert seen[0].remote_addr is not None and seen[0].remote_addr[0] == "127.0.0.1"
    assert seen[0].listener == "tcp://127.0.0.1:0"
    assert seen[0].rate_key() == "127.0.0.1"


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_tcp_ipv6_listener(ssh: Any) -> None:
    acceptor = TcpAcceptor("::1", 0)
    server = await _listen(ssh, acceptor)
    port = server.get_port()
    assert acceptor.listen_addrs == [f"[::1]:{port}"]
    try:
        transport = TcpTransport("::1", port)
        assert transport.describe() == f"tcp://[::1]:{port}"
        async with asyncssh.connect("::1", port, tunnel=transport, **ssh.client_kwargs()) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
    finally:
        server.close()
        await server.wait_closed()


async def test_bind_error_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        acceptor = TcpAcceptor("127.0.0.1", port)
        with pytest.raises(BindError) as err:
            await acceptor.start()
    assert str(err.value) == f"cannot listen on tcp 127.0.0.1:{port}: address already in use"


async def test_bind_error_unresolvable_host() -> None:
    with pytest.raises(
        BindError, match=r"^cannot listen on tcp no-such-host\.invalid:1: cannot resolve host"
    ):
        await TcpAcceptor("no-such-host.invalid", 1).start()


async def test_admit_refusal_closes_before_any_byte_and_listener_survives(ssh: Any) -> None:
    allowed = {"n": 0}
    released: list[str] = []

    def admit(info: TransportInfo) -> Any:
        if allowed["n"] == 0:
            allowed["n"] += 1
            return None
        key = info.rate_key()
        return lambda: released.append(key)

    server = await _listen(ssh, TcpAcceptor("127.0.0.1", 0, admit=admit))
    port = server.get_port()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed with zero bytes: no SSH banner
        writer.close()
        async with asyncssh.connect(
            "127.0.0.1", port, tunnel=TcpTransport("127.0.0.1", port), **ssh.client_kwargs()
        ) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
        for _ in range(200):
            if released:
                break
            await asyncio.sleep(0.01)
        assert released == ["127.0.0.1"]
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_instead_of_ssh_banner_keeps_listener(ssh: Any) -> None:
    server = await _listen(ssh, TcpAcceptor("127.0.0.1", 0))
    port = server.get_port()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\xff" * 600 + b"\r\n" * 300)
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        async with asyncssh.connect(
            "127.0.0.1", port, tunnel=TcpTransport("127.0.0.1", port), **ssh.client_kwargs()
        ) as conn:
            assert await ssh.echo(conn) == b"hello alknet"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("shape", ["socket", "streams"])
async def test_injected_dial_is_used_for_the_connection(ssh: Any, shape: str) -> None:
    server = await _listen(ssh, TcpAcceptor("127.0.0.1", 0))
    port = server.get_port()
    calls: list[tuple[str, int, float]] = []

    async def dial(host: str, p: int, timeout: float) -> Dialled:
        calls.append((host, p, timeout))
        if shape == "socket":
            sock = socket.socket()
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            return sock
        return await asyncio.open_connection("127.0.0.1", port)

    try:
        transport = TcpTransport("ssh.example.invalid", 2222, dial=dial, connect_timeout=7)
        assert transport.describe() == "tcp://ssh.example.invalid:2222 via proxy"
        async with asyncssh.connect(
            "ssh.example.invalid", 2222, tunnel=transport, **ssh.client_kwargs()
        ) as conn:
            assert await ssh.echo(conn, b"y" * 200_000) == b"y" * 200_000
    finally:
        server.close()
        await server.wait_closed()
    assert calls == [("ssh.example.invalid", 2222, 7)]


async def test_connect_refused_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        await TcpTransport("127.0.0.1", port).create_connection(asyncio.Protocol)
