"""ClientSession through a real SSH session on loopback: SOCKS5 (curl), -L, -R, failures, logs, TLS.

transport-and-ssh.md §13-§14, cli.md §4. The server is a plain asyncssh server over the alknet acceptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from ssh_client_helpers import (
    HTTP_BODY,
    HttpTarget,
    Keys,
    TestSshServer,
    fast_sleep,
    free_port,
    http_via_local_port,
    make_client,
    run_curl,
    running_session,
    socks5_port,
    socks5_request,
)

from alknet.core.ssh.forwards import ListenError, parse_local_forward, parse_remote_forward
from alknet.core.ssh.known_hosts import HostKeyMismatch
from alknet.core.ssh.session import ClientSession, SessionOptions, parse_listen_address, run_session
from alknet.core.tls.context import ServerContexts

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    """A port held by a listening socket for the duration of the block."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


async def test_socks5_curl_by_name_resolved_on_the_server(
    keys: Keys, ssh_server: TestSshServer, http_target: HttpTarget
) -> None:
    # test.local resolves only on the server side (the test server's name map): the client sends it unresolved.
    ssh_server.names["test.local"] = "127.0.0.1"
    client = make_client(keys, ssh_server.port)
    async with running_session(client) as (session, _):
        await asyncio.wait_for(session.wait_connected(), 10)
        rc, out, err = await run_curl(
            "--socks5-hostname", f"127.0.0.1:{socks5_port(session)}", f"http://test.local:{http_target.port}/"
        )
        assert (rc, out) == (0, HTTP_BODY), err
    assert ("test.local", http_target.port) in ssh_server.requested
    assert ssh_server.usernames == ["alknet"]


async def test_socks5_curl_ipv4_literal(
    keys: Keys, ssh_server: TestSshServer, http_target: HttpTarget
) -> None:
    client = make_client(keys, ssh_server.port)
    async with running_session(client) as (session, _):
        await asyncio.wait_for(session.wait_connected(), 10)
        rc, out, err = await run_curl(
            "--socks5", f"127.0.0.1:{socks5_port(session)}", f"http://127.0.0.1:{http_target.port}/"
        )
        assert (rc, out) == (0, HTTP_BODY), err
    assert ("127.0.0.1", http_target.port) in ssh_server.requested


async def test_socks5_curl_ipv6_literal(
    keys: Keys, ssh_server: TestSshServer, http_target6: HttpTarget
) -> None:
    client = make_client(keys, ssh_server.port)
    async with running_session(client) as (session, _):
        await asyncio.wait_for(session.wait_connected(), 10)
        rc, out, err = await run_curl(
            "--socks5-hostname", f"127.0.0.1:{socks5_port(session)}", f"http://[::1]:{http_target6.port}/"
        )
        assert (rc, out) == (0, HTTP_BODY), err
    assert ("::1", http_target6.port) in ssh_server.requested


async def test_socks5_failure_replies_follow_the_channel_open_failure(
    keys: Keys, ssh_server: TestSshServer, http_target: HttpTarget
) -> None:
    ssh_server.denied.add("denied.test")
    closed = free_port()
    client = make_client(keys, ssh_server.port)
    async with running_session(client) as (session, _):
        await asyncio.wait_for(session.wait_connected(), 10)
        port = socks5_port(session)
        assert await socks5_request(port, "denied.test", 80) == 0x02
        assert await socks5_request(port, "127.0.0.1", closed) == 0x05
        rc, _, _ = await run_curl("--socks5-hostname", f"127.0.0.1:{port}", "http://denied.test:80/")
        assert rc == 97  # curl: the proxy refused (reply 0x02)
        # the session is unaffected
        assert await socks5_request(port, "127.0.0.1", http_target.port) == 0x00


async def test_local_forward_and_ephemeral_port(
    keys: Keys, ssh_server: TestSshServer, http_target: HttpTarget
) -> None:
    fwd = parse_local_forward(f"0:127.0.0.1:{http_target.port}")
    client = make_client(keys, ssh_server.port)
    async with running_session(client, SessionOptions(socks5=None, forwards=(fwd,))) as (session, _):
        assert session.socks5 is None
        local_port = session.forward_listeners[0].port
        assert local_port != 0
        await asyncio.wait_for(session.wait_connected(), 10)
        assert await http_via_local_port(local_port) == HTTP_BODY
        rc, out, err = await run_curl("--noproxy", "*", f"http://127.0.0.1:{local_port}/")
        assert (rc, out) == (0, HTTP_BODY), err


async def test_remote_forward_fixed_port_and_port_zero(
    keys: Keys, ssh_server: TestSshServer, http_target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    fixed = free_port()
    specs = (
        parse_remote_forward(f"{fixed}:127.0.0.1:{http_target.port}"),
        parse_remote_forward(f"0:127.0.0.1:{http_target.port}"),
        parse_remote_forward(f"0.0.0.0:{free_port()}:127.0.0.1:{http_target.port}"),  # refused by the server
    )
    caplog.set_level(logging.INFO, logger="alknet")
    client = make_client(keys, ssh_server.port)
    async with running_session(client, SessionOptions(socks5=None, remote_forwards=specs)) as (session, _):
        await asyncio.wait_for(session.wait_connected(), 10)
        assert session.remote_ports[1] == fixed
        chosen = session.remote_ports[2]
        assert chosen not in (0, fixed)
        assert 3 not in session.remote_ports
        assert await http_via_local_port(fixed) == HTTP_BODY
        assert await http_via_local_port(chosen) == HTTP_BODY
    bound = [r for r in caplog.records if r.getMessage() == "remote forward bound"]
    assert [dict(getattr(r, "alknet_fields", ())) for r in bound] == [{"port": chosen}]
    refused = [r for r in caplog.records if r.getMessage() == "remote forward refused"]
    assert [(r.levelno, dict(getattr(r, "alknet_fields", ()))) for r in refused] == [
        (logging.WARNING, {"forward": 3})
    ]


async def test_bind_failure_at_start_is_a_listen_error(keys: Keys, ssh_server: TestSshServer) -> None:
    port = free_port()
    specs = (parse_local_forward(f"{port}:db:5432"), parse_local_forward(f"{port}:db2:5432"))
    session = ClientSession(make_client(keys, ssh_server.port), SessionOptions(socks5=None, forwards=specs))
    with pytest.raises(ListenError) as info:
        await session.start()
    assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
    # nothing stays bound: the port can be taken again at once
    session2 = ClientSession(
        make_client(keys, ssh_server.port), SessionOptions(socks5=None, forwards=specs[:1])
    )
    await session2.start()
    await session2.aclose(drain=0)
    await session.aclose(drain=0)


async def test_listeners_are_bound_before_the_server_exists(keys: Keys, http_target: HttpTarget) -> None:
    # server not running at start: SOCKS5 is bound, requests fail with 0x01 at once, then it connects
    server = TestSshServer(keys)
    server.port = free_port()
    client = make_client(keys, server.port)
    async with running_session(client, sleep=fast_sleep(0.1)) as (session, _):
        port = socks5_port(session)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await socks5_request(port, "127.0.0.1", http_target.port) == 0x01
        assert loop.time() - t0 < 0.5
        await server.start()
        try:
            await asyncio.wait_for(session.wait_connected(), 10)
            assert await socks5_request(port, "127.0.0.1", http_target.port) == 0x00
        finally:
            await server.stop()


async def test_logs_never_contain_targets(
    keys: Keys, ssh_server: TestSshServer, http_target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ssh_server.names["hidden-target.test"] = "127.0.0.1"
    fwd = parse_local_forward(f"0:hidden-target.test:{http_target.port}")
    rfwd = parse_remote_forward(f"{free_port()}:hidden-target.test:{http_target.port}")
    client = make_client(keys, ssh_server.port)
    opts = SessionOptions(socks5=("127.0.0.1", 0), forwards=(fwd,), remote_forwards=(rfwd,))
    async with running_session(client, opts) as (session, _):
        await asyncio.wait_for(session.wait_connected(), 10)
        assert await socks5_request(socks5_port(session), "hidden-target.test", http_target.port) == 0
        await http_via_local_port(session.forward_listeners[0].port)
    # asyncssh records included: the client caps the asyncssh logger at WARNING even with the root at DEBUG
    text = "\n".join(f"{r.name} {r.getMessage()} {getattr(r, 'alknet_fields', '')}" for r in caplog.records)
    assert "hidden-target" not in text
    assert str(http_target.port) not in text
    assert str(rfwd.bind_port) not in text
    assert "connected" in text


async def test_tls_transport_with_pin_through_the_session(
    keys: Keys, tmp_path: Path, http_target: HttpTarget
) -> None:
    contexts = ServerContexts.self_signed(tmp_path / "server-state")
    server = TestSshServer(keys, tls=contexts)
    await server.start()
    try:
        client = make_client(keys, server.port, transport="tls", tls_pin=contexts.fingerprint)
        assert client.describe() == f"tls://127.0.0.1:{server.port} (no sni)"
        async with running_session(client) as (session, _):
            await asyncio.wait_for(session.wait_connected(), 10)
            rc, out, err = await run_curl(
                "--socks5-hostname",
                f"127.0.0.1:{socks5_port(session)}",
                f"http://127.0.0.1:{http_target.port}/",
            )
            assert (rc, out) == (0, HTTP_BODY), err
    finally:
        await server.stop()


def test_parse_listen_address() -> None:
    assert parse_listen_address("127.0.0.1:1080") == ("127.0.0.1", 1080)
    assert parse_listen_address("1081") == ("127.0.0.1", 1081)
    assert parse_listen_address("[::1]:0") == ("::1", 0)
    assert parse_listen_address("*:1080") == ("*", 1080)
    for bad in ("", "x:", "::1:80", "[::1]80", "a:70000", "a b:1"):
        with pytest.raises(ValueError, match="invalid --socks5 address"):
            parse_listen_address(bad)


async def test_local_forward_to_a_server_side_unix_socket(
    keys: Keys, ssh_server: TestSshServer, tmp_path: Path
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        writer.close()

    sock_path = tmp_path / "echo.sock"
    unix_server = await asyncio.start_unix_server(echo, str(sock_path))
    try:
        fwd = parse_local_forward(f"0:unix:{sock_path}")
        client = make_client(keys, ssh_server.port)
        async with running_session(client, SessionOptions(socks5=None, forwards=(fwd,))) as (session, _):
            await asyncio.wait_for(session.wait_connected(), 10)
            reader, writer = await asyncio.open_connection("127.0.0.1", session.forward_listeners[0].port)
            writer.write(b"over a unix socket")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"over a unix socket"
            writer.close()
        assert (str(sock_path), 0) in ssh_server.requested
    finally:
        unix_server.close()


async def test_non_loopback_socks5_warns(
    keys: Keys, ssh_server: TestSshServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alknet")
    session = ClientSession(make_client(keys, ssh_server.port), SessionOptions(socks5=("0.0.0.0", 0)))
    await session.start()
    await session.aclose(drain=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["socks5 is reachable from the network"]


async def test_run_session_stop_drains_and_returns(keys: Keys, ssh_server: TestSshServer) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        await asyncio.sleep(0.3)
        writer.write(b"late")
        writer.close()

    target = await asyncio.start_server(slow, "127.0.0.1", 0)
    tport = target.sockets[0].getsockname()[1]
    lport = free_port()
    stop = asyncio.Event()
    opts = SessionOptions(socks5=None, forwards=(parse_local_forward(f"{lport}:127.0.0.1:{tport}"),))
    try:
        runner = asyncio.ensure_future(run_session(make_client(keys, ssh_server.port), opts, stop=stop))
        async with asyncio.timeout(10):
            while not ssh_server.conns:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"ping")
        await asyncio.sleep(0.1)
        stop.set()
        assert await asyncio.wait_for(reader.read(), 5) == b"late"
        await asyncio.wait_for(runner, 5)  # returns (None) once drained
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", lport)
    finally:
        target.close()


async def test_run_session_raises_listen_and_host_key_errors(keys: Keys, ssh_server: TestSshServer) -> None:
    with socket_bound() as port, pytest.raises(ListenError):
        await run_session(make_client(keys, ssh_server.port), SessionOptions(socks5=("127.0.0.1", port)))
    wrong = make_client(keys, ssh_server.port, host_key="SHA256:" + "A" * 43)
    with pytest.raises(HostKeyMismatch):
        await asyncio.wait_for(run_session(wrong, SessionOptions(socks5=("127.0.0.1", 0))), 10)
