"""The in-memory Transport/TransportAcceptor pair carries a full SSH session without creating a socket."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncssh
import pytest

from alknet.core.transport.base import TRANSPORT_INFO_KEY, AcceptorServer, TransportInfo, TransportKind
from alknet.core.transport.bridge import memory_pair


class _NoSocket:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a socket was created")


async def test_memory_pair_full_ssh_session(ssh: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _NoSocket)
    connector, acceptor = memory_pair()
    seen: list[TransportInfo] = []

    async def record(transport: asyncio.Transport, info: TransportInfo) -> bool:
        seen.append(info)
        return True

    server = await asyncssh.listen(tunnel=AcceptorServer(acceptor, [record]), **ssh.server_kwargs())
    try:
        conn = await asyncssh.connect("memory", 22, tunnel=connector, **ssh.client_kwargs())
        info = conn.get_extra_info(TRANSPORT_INFO_KEY)
        assert isinstance(info, TransportInfo) and info.kind is TransportKind.TCP
        assert await ssh.echo(conn) == b"hello alknet"
        conn.close()
        await conn.wait_closed()
        for _ in range(200):
            if ssh.servers and ssh.servers[0].lost:
                break
            await asyncio.sleep(0.01)
        assert ssh.servers[0].lost == [None]  # the server saw a clean SSH disconnect
    finally:
        server.close()
        await server.wait_closed()
    assert len(seen) == 1 and seen[0].listener == "memory"
