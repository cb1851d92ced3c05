"""``OutboundConnector`` and ``resolve`` with real loopback sockets (transport-and-ssh.md §8 step 5, §10)."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address
from pathlib import Path

import pytest

from alknet.core.policy.canon import Canonical, IPAddress
from alknet.core.proxy import FailureReason
from alknet.core.ssh.outbound import OutboundConnector, OutboundError, direct_dial, resolve


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _listener() -> tuple[asyncio.Server, int, list[int]]:
    hits: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(1)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1]), hits


async def test_resolve_canonicalises_and_refuses_empty_answers() -> None:
    async def answer(name: str) -> list[str]:
        return ["::ffff:10.0.0.1", "10.0.0.1", "0.0.0.0", "fd00::1", "not-an-ip"]

    assert await resolve(answer, "x") == (ip_address("10.0.0.1"), ip_address("fd00::1"))
    with pytest.raises(OutboundError) as info:
        await resolve(lambda name: [], "x")
    assert info.value.reason is FailureReason.NAME_RESOLUTION_FAILED

    def broken(name: str) -> list[str]:
        raise OSError("boom")

    with pytest.raises(OutboundError):
        await resolve(broken, "x")


async def test_addresses_are_tried_in_order_with_keepalive() -> None:
    server, port, _ = await _listener()
    seen: list[str] = []

    async def recording(address: IPAddress, port_: int, timeout: float) -> socket.socket:
        seen.append(str(address))
        return await direct_dial(address, port_, timeout)

    try:
        connector = OutboundConnector()
        sock = await connector.connect_tcp(Canonical("ip", ip_address("127.0.0.1")), port)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        sock.close()
        connector = OutboundConnector(dial=recording)
        with pytest.raises(OutboundError) as info:
            await connector.connect_tcp(
                Canonical("name", "x.test"), _closed_port(), (ip_address("127.0.0.1"),)
            )
        assert info.value.reason is FailureReason.CONNECTION_REFUSED
        seen.clear()
        # the listener is bound to 127.0.0.1 only: 127.0.0.2 refuses, then the next allowed address is used
        sock = await connector.connect_tcp(
            Canonical("name", "x.test"), port, (ip_address("127.0.0.2"), ip_address("127.0.0.1"))
        )
        sock.close()
        assert seen == ["127.0.0.2", "127.0.0.1"]
    finally:
        server.close()


async def test_name_without_policy_answer_is_resolved_once() -> None:
    server, port, _ = await _listener()
    calls: list[str] = []

    async def resolver(name: str) -> list[str]:
        calls.append(name)
        return ["127.0.0.1"]

    try:
        connector = OutboundConnector(resolver=resolver)
        sock = await connector.connect_tcp(Canonical("name", "svc.test"), port)
        sock.close()
        assert calls == ["svc.test"]
    finally:
        server.close()


async def test_unix_connect_and_failure(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        connector = OutboundConnector()
        sock = await connector.connect_unix(str(path))
        sock.close()
        with pytest.raises(OutboundError):
            await connector.connect_unix(str(tmp_path / "missing.sock"))
    finally:
        server.close()


async def test_unreachable_proxy_is_proxy_failure() -> None:
    connector = OutboundConnector(proxy=f"socks5://127.0.0.1:{_closed_port()}", connect_timeout=2)
    with pytest.raises(OutboundError) as info:
        await connector.connect_tcp(Canonical("name", "db.internal"), 5432)
    assert info.value.reason is FailureReason.PROXY_FAILURE
    assert "db.internal" not in str(info.value) and repr(connector).startswith("OutboundConnector(socks5://")
