"""Channels, refusals, reserved destinations, outbound connections and remote forwards (transport-and-ssh.md
§7-§11) through a real ``SshServer`` on loopback with asyncssh and stock OpenSSH clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import (
    SSH,
    EchoServer,
    FakeResolver,
    Harness,
    HttpProxy,
    KeyPair,
    LogCapture,
    MappingDialer,
    Socks5Proxy,
    T,
    connected,
    echo_through,
    free_port,
    new_keypair,
    open_failure,
    ssh_command,
)

from alknet.core.ssh.channels import ControlChannel, ControlRegistry

PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
CONNECT_FAILED = asyncssh.OPEN_CONNECT_FAILED
SHORTAGE = asyncssh.OPEN_RESOURCE_SHORTAGE


def _keys(*pairs: KeyPair, options: str = "") -> str:
    return "".join(f"{options + ' ' if options else ''}{k.line}\n" for k in pairs)


async def _echo_handler(channel: ControlChannel) -> None:
    channel.writer.write(f"codec={channel.codec} id={channel.identity.id}\n".encode())
    while data := await channel.reader.read(65536):
        channel.writer.write(data)
    channel.writer.write_eof()


# ------------------------------------------------------------------------------------------ refusals


async def test_session_channels_are_refused_while_direct_tcpip_works(tmp_path: Path) -> None:
    key = new_keypair()
    async with (
        EchoServer() as echo,
        Harness(tmp_path, authorized_keys=_keys(key)) as h,
        connected(h, key) as conn,
    ):
        with pytest.raises(asyncssh.ChannelOpenError) as info:
            await asyncio.wait_for(conn.run("true"), T)
        assert info.value.code == PROHIBITED
        with pytest.raises(asyncssh.ChannelOpenError):
            await asyncio.wait_for(conn.create_session(asyncssh.SSHClientSession, term_type="xterm"), T)
        with pytest.raises(asyncssh.ChannelOpenError):
            await asyncio.wait_for(conn.start_sftp_client(), T)
        assert await echo_through(conn, "127.0.0.1", echo.port, b"still works") == b"still works"
        with pytest.raises(asyncssh.ChannelListenError):
            await asyncio.wait_for(conn.forward_remote_path(str(tmp_path / "r.sock"), str(tmp_path / "l")), T)
        assert not (tmp_path / "r.sock").exists()
        assert await echo_through(conn, "127.0.0.1", echo.port) == b"ping"


async def test_stock_ssh_exec_fails_and_ssh_n_l_works(tmp_path: Path) -> None:
    key = new_keypair()
    path = key.write(tmp_path, "id_ed25519")
    async with EchoServer() as echo, Harness(tmp_path, authorized_keys=_keys(key)) as h:
        proc = await asyncio.create_subprocess_exec(
            *ssh_command(h.port(), path), "127.0.0.1", "true", stderr=asyncio.subprocess.PIPE
        )
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode not in (0, None)

        lport = free_port()
        proc = await asyncio.create_subprocess_exec(
            *ssh_command(h.port(), path),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{lport}:127.0.0.1:{echo.port}",
            "127.0.0.1",
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", lport)
                    break
                except OSError:
                    assert proc.returncode is None and loop.time() < deadline
                    await asyncio.sleep(0.1)
            writer.write(b"through stock ssh")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), T) == b"through stock ssh"
            writer.close()
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
    assert os.path.basename(SSH) == "ssh"


# -------------------------------------------------------------------------------------- check order


async def test_no_port_forwarding_refuses_everything_first(tmp_path: Path) -> None:
    key = new_keypair()
    resolver = FakeResolver({})
    dialer = MappingDialer()
    control = ControlRegistry(_echo_handler)
    async with (
        EchoServer() as echo,
        Harness(
            tmp_path,
            authorized_keys=_keys(key, options="no-port-forwarding"),
            resolver=resolver,
            dialer=dialer,
            control=control,
        ) as h,
        connected(h, key) as conn,
    ):
        for host, port in [
            ("127.0.0.1", echo.port),
            ("alknet-control", 0),
            ("alknet-foo", 80),
            ("127.1", 80),
            ("some.name", 80),
        ]:
            failure = await open_failure(conn, host, port)
            assert (failure.code, failure.reason) == (PROHIBITED, "forwarding not permitted"), host
        with pytest.raises(asyncssh.ChannelListenError):
            await asyncio.wait_for(conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", echo.port), T)
        assert echo.accepted == 0 and resolver.calls == [] and dialer.calls == []


async def test_invalid_forms_are_refused_without_dns(tmp_path: Path) -> None:
    key = new_keypair()
    resolver = FakeResolver({"x": ["127.0.0.1"]})
    dialer = MappingDialer()
    forwarding = {"default": "allow", "rules": [{"target": "10.0.0.0/8", "action": "deny"}]}
    async with (
        Harness(
            tmp_path, authorized_keys=_keys(key), resolver=resolver, dialer=dialer, forwarding=forwarding
        ) as h,
        connected(h, key) as conn,
    ):
        for host in [
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "Alknet-control",
            "0.0.0.0",
            "fe80::1%eth0",
            "a..b",
        ]:
            failure = await open_failure(conn, host, 80)
            assert (failure.code, failure.reason) == (PROHIBITED, "forwarding not permitted"), host
    assert resolver.calls == [] and dialer.calls == []


async def test_reserved_names(tmp_path: Path) -> None:
    key = new_keypair()
    resolver = FakeResolver({})
    dialer = MappingDialer()
    async with (
        Harness(tmp_path, authorized_keys=_keys(key), resolver=resolver, dialer=dialer) as h,
        connected(h, key) as conn,
    ):
        for host, port in [("alknet-foo", 80), ("alknet-control", 7), ("alknet-control", 0)]:
            failure = await open_failure(conn, host, port)
            assert (failure.code, failure.reason) == (CONNECT_FAILED, "unknown control destination"), host
        h.srv.control.install(_echo_handler)
        reader, writer = await asyncio.wait_for(conn.open_connection("alknet-control", 0), T)
        assert await asyncio.wait_for(reader.readline(), T) == f"codec=json id={key.fingerprint}\n".encode()
        writer.write(b"frame")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), T) == b"frame"
        reader, writer = await asyncio.wait_for(conn.open_connection("alknet-control", 1), T)
        assert (await asyncio.wait_for(reader.readline(), T)).startswith(b"codec=msgpack ")
        writer.close()
    assert resolver.calls == [] and dialer.calls == []


async def test_reserved_name_under_default_deny_is_prohibited(tmp_path: Path) -> None:
    key = new_keypair()
    control = ControlRegistry(_echo_handler)
    async with (
        Harness(tmp_path, authorized_keys=_keys(key), forwarding={"default": "deny"}, control=control) as h,
        connected(h, key) as conn,
    ):
        failure = await open_failure(conn, "alknet-control", 0)
        assert (failure.code, failure.reason) == (PROHIBITED, "forwarding not permitted")


async def test_seventeenth_control_channel_gets_resource_shortage(tmp_path: Path) -> None:
    key = new_keypair()
    release = asyncio.Event()

    async def hold(channel: ControlChannel) -> None:
        channel.writer.write(b"ready\n")
        await release.wait()

    async with (
        Harness(tmp_path, authorized_keys=_keys(key), control=ControlRegistry(hold)) as h,
        connected(h, key) as conn,
    ):
        streams = []
        for _ in range(16):
            reader, writer = await asyncio.wait_for(conn.open_connection("alknet-control", 0), T)
            assert await asyncio.wait_for(reader.readline(), T) == b"ready\n"
            streams.append(writer)
        failure = await open_failure(conn, "alknet-control", 0)
        assert (failure.code, failure.reason) == (SHORTAGE, "resource shortage")
        release.set()
        for writer in streams:
            writer.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + T
        while True:  # the handler returned, so a slot is free again
            try:
                reader, writer = await asyncio.wait_for(conn.open_connection("alknet-control", 0), T)
                break
            except asyncssh.ChannelOpenError:
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
        writer.close()


# ------------------------------------------------------------------------------------------- outbound


async def test_closed_port_then_a_working_channel_on_the_same_session(tmp_path: Path) -> None:
    key = new_keypair()
    async with (
        EchoServer() as echo,
        Harness(tmp_path, authorized_keys=_keys(key)) as h,
        connected(h, key) as conn,
    ):
        failure = await open_failure(conn, "127.0.0.1", free_port())
        assert (failure.code, failure.reason) == (CONNECT_FAILED, "connection refused")
        assert await echo_through(conn, "127.0.0.1", echo.port) == b"ping"


async def test_name_resolution_failure(tmp_path: Path) -> None:
    key = new_keypair()
    resolver = FakeResolver({"empty.test": []})
    async with (
        Harness(tmp_path, authorized_keys=_keys(key), resolver=resolver) as h,
        connected(h, key) as conn,
    ):
        for name in ("nowhere.test", "empty.test"):
            failure = await open_failure(conn, name, 80)
            assert (failure.code, failure.reason) == (CONNECT_FAILED, "name resolution failed")
    assert resolver.calls == ["nowhere.test", "empty.test"]


async def test_connect_timeout_is_timed_out(tmp_path: Path) -> None:
    key = new_keypair()

    async def never(address: object, port: int, timeout: float) -> socket.socket:
        await asyncio.sleep(timeout + 1)
        raise AssertionError("not reached")

    async with (
        Harness(tmp_path, authorized_keys=_keys(key), dialer=never) as h,
        connected(h, key) as conn,
    ):
        h.srv.connector.connect_timeout = 0.3
        failure = await open_failure(conn, "192.0.2.10", 80)
        assert (failure.code, failure.reason) == (CONNECT_FAILED, "timed out")


async def test_half_close_delivers_everything_then_eof(tmp_path: Path) -> None:
    key = new_keypair()
    payload = os.urandom(1024 * 1024)
    received = bytearray()
    done = asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        while data := await reader.read(65536):
            received.extend(data)
        done.set()
        writer.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Harness(tmp_path, authorized_keys=_keys(key)) as h, connected(h, key) as conn:
            reader, writer = await asyncio.wait_for(conn.open_connection("127.0.0.1", port), T)
            got = await asyncio.wait_for(reader.read(), T)  # everything, then EOF
            assert got == payload
            writer.write(b"after eof")
            writer.write_eof()
            await asyncio.wait_for(done.wait(), T)
            assert bytes(received) == b"after eof"
    finally:
        server.close()


async def test_large_transfer_both_ways(tmp_path: Path) -> None:
    key = new_keypair()
    payload = os.urandom(8 * 1024 * 1024)
    async with (
        EchoServer() as echo,
        Harness(tmp_path, authorized_keys=_keys(key)) as h,
        connected(h, key) as conn,
    ):
        reader, writer = await asyncio.wait_for(conn.open_connection("127.0.0.1", echo.port), T)

        async def send() -> None:
            for i in range(0, len(payload), 65536):
                writer.write(payload[i : i + 65536])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        got = await asyncio.wait_for(reader.read(), 60)
        await sender
        assert got == payload


async def test_permitopen_gate(tmp_path: Path) -> None:
    key = new_keypair()
    async with EchoServer() as allowed, EchoServer() as other:
        keys = _keys(key, options=f'permitopen="127.0.0.1:{allowed.port}"')
        async with Harness(tmp_path, authorized_keys=keys) as h, connected(h, key) as conn:
            assert await echo_through(conn, "127.0.0.1", allowed.port) == b"ping"
            failure = await open_failure(conn, "127.0.0.1", other.port)
            assert (failure.code, failure.reason) == (PROHIBITED, "forwarding not permitted")
        assert other.accepted == 0


async def test_outbound_via_socks5_proxy_passes_the_name(tmp_path: Path) -> None:
    key = new_keypair()
    resolver = FakeResolver({})
    async with (
        EchoServer() as echo,
        Socks5Proxy(echo.port) as proxy,
        Harness(tmp_path, authorized_keys=_keys(key), proxy=proxy.url, resolver=resolver) as h,
        connected(h, key) as conn,
    ):
        assert await echo_through(conn, "db.internal", 5432, b"via socks") == b"via socks"
    assert proxy.requests == [(3, "db.internal", 5432)]
    assert resolver.calls == []


async def test_http_proxy_403_is_proxy_failure(tmp_path: Path) -> None:
    key = new_keypair()
    async with (
        EchoServer() as echo,
        HttpProxy() as proxy,
        Harness(tmp_path, authorized_keys=_keys(key), proxy=proxy.url) as h,
        connected(h, key) as conn,
    ):
        failure = await open_failure(conn, "db.internal", 5432)
        assert (failure.code, failure.reason) == (CONNECT_FAILED, "proxy failure")
        assert proxy.requests == ["CONNECT db.internal:5432 HTTP/1.1"]
        h.srv.connector.proxy = None  # the session is still up: a direct channel works
        assert await echo_through(conn, "127.0.0.1", echo.port) == b"ping"


# ------------------------------------------------------------------------------------- unix sockets


async def test_direct_streamlocal_with_realpath_check(tmp_path: Path) -> None:
    key = new_keypair()
    base = Path(os.path.realpath(tmp_path))
    app = base / "app"
    app.mkdir()
    outside = base / "outside"
    outside.mkdir()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    servers = [
        await asyncio.start_unix_server(echo, str(app / "api.sock")),
        await asyncio.start_unix_server(echo, str(outside / "secret.sock")),
    ]
    (app / "link.sock").symlink_to(outside / "secret.sock")
    forwarding = {
        "rules": [{"target": f"unix:{app}/*.sock", "action": "allow", "principals": [key.fingerprint]}]
    }
    try:
        async with (
            Harness(tmp_path, authorized_keys=_keys(key), forwarding=forwarding) as h,
            connected(h, key) as conn,
        ):
            reader, writer = await asyncio.wait_for(conn.open_unix_connection(str(app / "api.sock")), T)
            writer.write(b"unix")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), T) == b"unix"
            reader, writer = await asyncio.wait_for(conn.open_unix_connection(f"{app}//./api.sock"), T)
            writer.close()
            for path in (
                str(app / "link.sock"),  # symlink out of the allowed directory
                str(outside / "secret.sock"),
                f"{app}/../outside/secret.sock",
                "relative.sock",
            ):
                with pytest.raises(asyncssh.ChannelOpenError) as info:
                    await asyncio.wait_for(conn.open_unix_connection(path), T)
                assert (info.value.code, info.value.reason) == (PROHIBITED, "forwarding not permitted"), path
    finally:
        for server in servers:
            server.close()


# ------------------------------------------------------------------------------------- remote forwards


async def _connect_to(port: int, payload: bytes = b"hello -R") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), T)
    writer.close()
    return data


async def _port_closed(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_remote_forward_port_zero_and_fixed(tmp_path: Path) -> None:
    key = new_keypair()
    async with (
        EchoServer() as target,
        Harness(tmp_path, authorized_keys=_keys(key)) as h,
        connected(h, key) as conn,
    ):
        listener = await asyncio.wait_for(
            conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", target.port), T
        )
        chosen = listener.get_port()
        assert chosen >= 1024
        assert await _connect_to(chosen) == b"hello -R"
        fixed = free_port()
        listener2 = await asyncio.wait_for(
            conn.forward_remote_port("127.0.0.1", fixed, "127.0.0.1", target.port), T
        )
        assert await _connect_to(fixed, b"fixed") == b"fixed"
        listener2.close()  # cancel-tcpip-forward releases the lease at once
        await asyncio.wait_for(listener2.wait_closed(), T)
        await asyncio.sleep(0.05)
        assert await _port_closed(fixed)
        assert len(h.srv.leases) == 1


async def test_builtin_listen_rules(tmp_path: Path) -> None:
    key = new_keypair()
    async with (
        EchoServer() as target,
        Harness(tmp_path, authorized_keys=_keys(key)) as h,
        connected(h, key) as conn,
    ):
        for host, port in [
            ("0.0.0.0", free_port()),
            ("127.0.0.1", 80),
            ("example.com", free_port()),
            ("", 0),
        ]:
            with pytest.raises(asyncssh.ChannelListenError):
                await asyncio.wait_for(conn.forward_remote_port(host, port, "127.0.0.1", target.port), T)
        port = free_port()
        listener = await asyncio.wait_for(
            conn.forward_remote_port("localhost", port, "127.0.0.1", target.port), T
        )
        assert await _connect_to(port) == b"hello -R"
        listener.close()


@pytest.mark.parametrize(
    ("listen_target", "allowed"),
    [("127.0.0.1:8000-8999", False), ("127.0.0.1:*", True), ("127.0.0.1:0", True)],
)
async def test_listen_rules_and_port_zero(tmp_path: Path, listen_target: str, allowed: bool) -> None:
    key = new_keypair()
    forwarding = {"listen": [{"target": listen_target, "action": "allow"}]}
    async with (
        EchoServer() as target,
        Harness(tmp_path, authorized_keys=_keys(key), forwarding=forwarding) as h,
        connected(h, key) as conn,
    ):
        if allowed:
            listener = await asyncio.wait_for(
                conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", target.port), T
            )
            assert await _connect_to(listener.get_port()) == b"hello -R"
        else:
            with pytest.raises(asyncssh.ChannelListenError):
                await asyncio.wait_for(conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", target.port), T)


async def test_same_identity_takes_over_other_identity_is_refused(tmp_path: Path) -> None:
    a, other = new_keypair(), new_keypair()
    port = free_port()
    async with (
        EchoServer() as target_a,
        EchoServer() as target_b,
        Harness(tmp_path, authorized_keys=_keys(a, other)) as h,
    ):
        conn_a = await h.connect(a)
        await asyncio.wait_for(conn_a.forward_remote_port("127.0.0.1", port, "127.0.0.1", target_a.port), T)
        assert await _connect_to(port) == b"hello -R" and target_a.accepted == 1

        async with connected(h, other) as conn_other:
            with pytest.raises(asyncssh.ChannelListenError):
                await asyncio.wait_for(
                    conn_other.forward_remote_port("127.0.0.1", port, "127.0.0.1", target_b.port), T
                )
        assert await _connect_to(port) == b"hello -R" and target_a.accepted == 2  # A keeps working

        # A's client is gone without a disconnect message (frozen): the same identity takes the port over
        conn_a._transport.pause_reading()  # type: ignore[attr-defined]
        async with connected(h, a) as conn_b:
            await asyncio.wait_for(
                conn_b.forward_remote_port("127.0.0.1", port, "127.0.0.1", target_b.port), T
            )
            assert await _connect_to(port, b"new owner") == b"new owner"
            assert target_b.accepted == 1 and target_a.accepted == 2
            conn_a.abort()
            await asyncio.sleep(0.1)  # A's cleanup must not release B's lease
            assert await _connect_to(port, b"still B") == b"still B"
        await asyncio.sleep(0.1)
        assert await _port_closed(port)


async def test_lease_is_freed_within_100ms_of_disconnect(tmp_path: Path) -> None:
    key = new_keypair()
    port = free_port()
    async with EchoServer() as target, Harness(tmp_path, authorized_keys=_keys(key)) as h:
        conn = await h.connect(key)
        await asyncio.wait_for(conn.forward_remote_port("127.0.0.1", port, "127.0.0.1", target.port), T)
        assert not await _port_closed(port)
        conn.close()
        await asyncio.wait_for(conn.wait_closed(), T)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not await _port_closed(port):
            assert loop.time() - start < 0.1
            await asyncio.sleep(0.005)
        assert len(h.srv.leases) == 0


# ------------------------------------------------------------------------------------------- privacy


async def test_no_destination_reaches_the_logs_at_debug(tmp_path: Path) -> None:
    key = new_keypair()
    resolver = FakeResolver({"hidden-target.test": ["10.77.77.77"]})
    async with EchoServer() as echo:
        echo_port = echo.port
        dialer = MappingDialer({("10.77.77.77", 4444): echo.port})
        forwarding = {
            "rules": [
                {"target": "denied-host.test", "action": "deny"},
                {"target": "10.66.0.0/16", "action": "deny"},  # reached by hidden-target: a lazy DNS lookup
            ]
        }
        with LogCapture("debug") as logs:
            async with (
                Harness(
                    tmp_path,
                    authorized_keys=_keys(key),
                    resolver=resolver,
                    dialer=dialer,
                    forwarding=forwarding,
                ) as h,
                connected(h, key) as conn,
            ):
                assert await echo_through(conn, "hidden-target.test", 4444, b"secret") == b"secret"
                await open_failure(conn, "denied-host.test", 4445)
                await open_failure(conn, "alknet-hidden", 4446)
                await open_failure(conn, "127.0.0.1", free_port())
                listener = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", echo.port)
                bound = listener.get_port()
                assert await _connect_to(bound) == b"hello -R"
                with contextlib.suppress(asyncssh.ChannelOpenError):
                    await conn.open_unix_connection(str(tmp_path / "hidden-path.sock"))
    text = logs.text
    assert 'msg="connection opened"' in text  # the capture works at all
    for secret in (
        "hidden-target",
        "10.77.77.77",
        "denied-host",
        "alknet-hidden",
        "hidden-path",
        "4444",
        "4445",
        "4446",
    ):
        assert secret not in text, secret
    for port in (echo_port, bound):
        assert re.search(rf"(?<![0-9A-Za-z+/]){port}(?![0-9A-Za-z])", text) is None, port
    assert resolver.calls == ["hidden-target.test"]


async def test_takeover_from_a_frozen_stock_ssh_client(tmp_path: Path) -> None:
    """Client A (stock ``ssh -N -R``) is frozen with SIGSTOP, so its TCP connection stays open and no
    disconnect is ever sent; a new client with the same key binds the port at once and receives its traffic."""
    key = new_keypair()
    path = key.write(tmp_path, "id_ed25519")
    port = free_port()
    async with (
        EchoServer() as target_b,
        Harness(tmp_path, authorized_keys=_keys(key)) as h,
    ):
        a_target = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        a_port = a_target.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *ssh_command(h.port(), path),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            f"127.0.0.1:{port}:127.0.0.1:{a_port}",
            "127.0.0.1",
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while await _port_closed(port):
                assert proc.returncode is None and loop.time() < deadline
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGSTOP)
            async with connected(h, key) as conn_b:
                await asyncio.wait_for(
                    conn_b.forward_remote_port("127.0.0.1", port, "127.0.0.1", target_b.port), T
                )
                assert await _connect_to(port, b"taken over") == b"taken over"
                assert target_b.accepted == 1
        finally:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
            a_target.close()
