"""Reconnect, keepalive and shutdown of the client runtime (transport-and-ssh.md §12, §14).

The server is stopped and restarted on the same port while SOCKS5 stays bound; a server process frozen
with SIGSTOP is declared dead by keepalive; aclose() drains open channels.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ssh_client_helpers import (
    HTTP_BODY,
    HttpTarget,
    Keys,
    TestSshServer,
    free_port,
    http_via_local_port,
    make_client,
    run_curl,
    running_session,
    socks5_port,
    socks5_request,
)

from alknet.core.ssh.forwards import parse_local_forward, parse_remote_forward
from alknet.core.ssh.session import ClientSession, SessionOptions

pytestmark = pytest.mark.timeout(60)

HERE = Path(__file__).resolve().parent


def _messages(caplog: pytest.LogCaptureFixture, msg: str) -> list[dict[str, object]]:
    return [dict(getattr(r, "alknet_fields", ())) for r in caplog.records if r.getMessage() == msg]


async def _probe_bound(port: int, stop: asyncio.Event, failures: list[Exception]) -> int:
    """Connect to the SOCKS5 port every 50 ms and do the greeting; record any failure."""
    probes = 0
    while not stop.is_set():
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"\x05\x01\x00")
                assert await reader.readexactly(2) == b"\x05\x00"
                writer.close()
        except Exception as exc:
            failures.append(exc)
        probes += 1
        await asyncio.sleep(0.05)
    return probes


async def test_server_restart_keeps_socks5_bound_and_resumes(
    keys: Keys, http_target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    server = TestSshServer(keys)
    await server.start()
    rport = free_port()
    opts = SessionOptions(
        socks5=("127.0.0.1", 0),
        forwards=(parse_local_forward(f"0:127.0.0.1:{http_target.port}"),),
        remote_forwards=(parse_remote_forward(f"{rport}:127.0.0.1:{http_target.port}"),),
    )
    client = make_client(keys, server.port)
    try:
        async with running_session(client, opts) as (session, _):
            await asyncio.wait_for(session.wait_connected(), 10)
            port = socks5_port(session)
            lport = session.forward_listeners[0].port
            assert await http_via_local_port(rport) == HTTP_BODY
            stop = asyncio.Event()
            failures: list[Exception] = []
            prober = asyncio.ensure_future(_probe_bound(port, stop, failures))

            await server.stop()
            async with asyncio.timeout(5):
                while session.connected:
                    await asyncio.sleep(0.01)
            # during the outage: SOCKS5 answers 0x01 at once, -L closes at once
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await socks5_request(port, "127.0.0.1", http_target.port) == 0x01
            assert await http_via_local_port(lport) == b""
            assert loop.time() - t0 < 0.5
            await asyncio.sleep(1.5)
            await server.start()  # same port

            await asyncio.wait_for(session.wait_connected(), 15)
            rc, out, err = await run_curl(
                "--socks5-hostname", f"127.0.0.1:{port}", f"http://127.0.0.1:{http_target.port}/"
            )
            assert (rc, out) == (0, HTTP_BODY), err
            assert await http_via_local_port(lport) == HTTP_BODY
            assert session.remote_ports == {1: rport}
            assert await http_via_local_port(rport) == HTTP_BODY  # -R served again after the reconnect
            stop.set()
            probes = await prober
            assert failures == [] and probes > 20
            assert session.socks5 is not None and session.socks5.port == port
    finally:
        await server.stop()
    server_desc = f"tcp://127.0.0.1:{server.port}"
    assert _messages(caplog, "connected") == [{"server": server_desc}, {"server": server_desc}]
    assert len(_messages(caplog, "disconnected")) >= 1
    attempts = _messages(caplog, "reconnecting")
    assert attempts and attempts[0]["attempt"] == 1
    assert 0.8 <= float(str(attempts[0]["delay"])) <= 1.2


# ------------------------------------------------------------------------------------------ keepalive


@pytest.fixture
async def frozen_capable_server(
    keys: Keys, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    host_key = tmp_path / "host_key"
    host_key.write_bytes(keys.host.export_private_key())
    host_key.chmod(0o600)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(keys.client_public_line() + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "ssh_client_server_proc.py"),
        str(host_key),
        str(authorized),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"PORT "), line
        yield proc, int(line.split()[1])
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            await proc.wait()


async def test_keepalive_declares_a_frozen_server_dead(
    keys: Keys,
    frozen_capable_server: tuple[asyncio.subprocess.Process, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    proc, port = frozen_capable_server
    client = make_client(keys, port, keepalive_interval=0.2, keepalive_count_max=3)
    async with running_session(client, SessionOptions(socks5=None)) as (session, _):
        await asyncio.wait_for(session.wait_connected(), 10)
        await asyncio.sleep(0.5)  # a few keepalives answered: the connection is healthy
        assert session.connected
        loop = asyncio.get_running_loop()
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = loop.time()
        async with asyncio.timeout(5):
            while session.connected:
                await asyncio.sleep(0.01)
        dead_after = loop.time() - t0
        async with asyncio.timeout(5):
            while not _messages(caplog, "reconnecting"):
                await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGCONT)
    assert dead_after < 1.5
    assert _messages(caplog, "disconnected") == [{"reason": "Server not responding to keepalive"}]


# ------------------------------------------------------------------------------------------ shutdown


async def test_aclose_drains_open_channels_and_refuses_new_ones(
    keys: Keys, ssh_server: TestSshServer
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        await asyncio.sleep(0.3)
        writer.write(b"done")
        await writer.drain()
        writer.close()

    target = await asyncio.start_server(slow, "127.0.0.1", 0)
    tport = target.sockets[0].getsockname()[1]
    try:
        session = ClientSession(
            make_client(keys, ssh_server.port),
            SessionOptions(socks5=("127.0.0.1", 0), forwards=(parse_local_forward(f"0:127.0.0.1:{tport}"),)),
        )
        await session.start()
        run = asyncio.ensure_future(session.run())
        await asyncio.wait_for(session.wait_connected(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", session.forward_listeners[0].port)
        writer.write(b"ping")
        await writer.drain()
        await asyncio.sleep(0.1)  # the channel is open
        socks = socks5_port(session)
        closing = asyncio.ensure_future(session.aclose(drain=2.0))
        await asyncio.sleep(0.05)
        assert await socks5_request(socks, "127.0.0.1", tport) == 0x01  # new channels refused while draining
        assert await asyncio.wait_for(reader.read(), 5) == b"done"  # the open one finished
        await asyncio.wait_for(closing, 5)
        assert run.done()
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", socks)
    finally:
        target.close()
