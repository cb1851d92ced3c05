"""No automatic empty SSH_MSG_IGNORE per packet from alknet's SSH server and client (``ssh/packets.py``).

Also the canary for the asyncssh internals that module relies on: a stock asyncssh client still sends one ignore
packet per packet (if an upgrade stops that, the first test fails and the wrapper can go), and every message
still arrives intact through the wrapped ``send_packet``.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import asyncssh.connection
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ssh_server_kit import Harness, KeyPair, new_keypair

from alknet.core.ssh.channels import ControlChannel, ControlRegistry
from alknet.core.ssh.packets import MSG_IGNORE, skip_automatic_ignores
from alknet.core.ssh.server import CIPHERS

pytestmark = pytest.mark.timeout(60)
T = 10.0
N = 40


@pytest.fixture
def ignores(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Ignore packets received, by the receiving side ("server" / "client")."""
    seen: Counter[str] = Counter()
    handlers = asyncssh.connection.SSHConnection._packet_handlers
    original = handlers[MSG_IGNORE]

    def counting(conn: Any, pkttype: int, pktid: int, packet: Any) -> Any:
        seen["server" if conn.is_server() else "client"] += 1
        return original(conn, pkttype, pktid, packet)

    monkeypatch.setitem(handlers, MSG_IGNORE, counting)  # type: ignore[index]
    return seen


async def _echo(channel: ControlChannel) -> None:
    while data := await channel.reader.read(65536):
        channel.writer.write(data)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[tuple[Harness, KeyPair]]:
    key = new_keypair()
    async with Harness(tmp_path, authorized_keys=f"{key.line}\n", control=ControlRegistry(_echo)) as h:
        yield h, key


async def _round_trips(reader: Any, writer: Any) -> None:
    for i in range(N):
        msg = f"message {i} ".encode() * 10
        writer.write(msg)
        got = b""
        while len(got) < len(msg):
            got += await asyncio.wait_for(reader.read(65536), T)
        assert got == msg


async def test_a_stock_asyncssh_client_still_sends_one_per_packet(
    harness: tuple[Harness, KeyPair], ignores: Counter[str]
) -> None:
    h, key = harness
    conn = await h.connect(key)
    async with conn:
        reader, writer = await conn.open_connection("alknet-control", 0)
        ignores.clear()
        await _round_trips(reader, writer)
        await asyncio.sleep(0.05)
    assert ignores["server"] >= N  # asyncssh's own behaviour, unchanged on its side
    assert ignores["client"] == 0  # alknet's server sent none back


async def test_alknet_client_and_server_send_none(
    harness: tuple[Harness, KeyPair], ignores: Counter[str]
) -> None:
    h, key = harness
    client = h.alknet_client(key)
    conn = await asyncio.wait_for(client.connect(), T)
    try:
        assert conn.ssh.get_extra_info("send_cipher") in CIPHERS  # AEAD only: nothing to protect
        reader, writer = await conn.ssh.open_connection("alknet-control", 0)
        ignores.clear()
        await _round_trips(reader, writer)
        await asyncio.sleep(0.05)
    finally:
        await conn.aclose()
        await client.aclose()
    assert ignores == Counter()


async def test_an_explicit_ignore_packet_still_goes_out(
    harness: tuple[Harness, KeyPair], ignores: Counter[str]
) -> None:
    h, key = harness
    conn = await h.connect(key)
    async with conn:
        skip_automatic_ignores(conn)
        skip_automatic_ignores(conn)  # idempotent
        reader, writer = await conn.open_connection("alknet-control", 0)
        ignores.clear()
        await _round_trips(reader, writer)
        conn.send_packet(MSG_IGNORE, asyncssh.packet.String(b"padding"))
        await asyncio.sleep(0.05)
    assert ignores["server"] == 1
