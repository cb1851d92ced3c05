"""Rows 3, 14, 24, 25, 31, 33, 35 and 46 of the decision table (auth-and-config.md §7.9) end to end through a
real SSH connection on loopback (asyncssh client, fake resolver, local echo servers, a dialer that records
every outbound connect), plus the live effects of a forwarding reload (§6.2)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core" / "policy"))

from policy_helpers import P1_TOML, P2_TOML
from ssh_server_kit import (
    EchoServer,
    FakeResolver,
    Harness,
    KeyPair,
    MappingDialer,
    T,
    connected,
    echo_through,
    free_port,
    new_keypair,
    open_failure,
)

from alknet.core.errors import ConfigError
from alknet.core.ssh.channels import ControlChannel, ControlRegistry

# the §7.9 rule sets P1 and P2, defined once for the pure decision-table test
P1, P2 = P1_TOML, P2_TOML


def _p3(app: Path, fp_a: str) -> dict[str, Any]:
    return {
        "default": "allow",
        "rules": [
            {"target": f"unix:{app}/*.sock", "action": "allow", "principals": [fp_a]},
            {"target": "alknet-*", "action": "allow", "transports": ["quic"]},
            {"target": "*", "action": "deny", "transports": ["quic"]},
        ],
    }


class Ids:
    """Identities A (relay:connect), B (relay:connect, role:db) and C (ops)."""

    def __init__(self) -> None:
        self.a, self.b, self.c = new_keypair("A"), new_keypair("B"), new_keypair("C")

    @property
    def authorized_keys(self) -> str:
        return (
            f"{self.a.line}\n"
            f'alknet-scopes="relay:connect,role:db" {self.b.line}\n'
            f'alknet-scopes="ops" {self.c.line}\n'
        )


async def _echo_handler(channel: ControlChannel) -> None:
    while data := await channel.reader.read(65536):
        channel.writer.write(data)
    channel.writer.write_eof()


async def test_row_3_p1_b_tls_db_internal_allowed_by_rule_2(tmp_path: Path) -> None:
    ids = Ids()
    resolver = FakeResolver({"db.internal": ["10.20.30.40"]})
    async with EchoServer() as echo:
        dialer = MappingDialer({("10.20.30.40", 5432): echo.port})
        async with (
            Harness(
                tmp_path,
                authorized_keys=ids.authorized_keys,
                forwarding=P1,
                kinds=("tls",),
                resolver=resolver,
                dialer=dialer,
            ) as h,
            connected(h, ids.b, kind="tls") as conn,
        ):
            assert await echo_through(conn, "db.internal", 5432, b"row 3") == b"row 3"
            async with connected(h, ids.a, kind="tls") as conn_a:  # row 2: A is denied by default
                failure = await open_failure(conn_a, "db.internal", 5432)
                assert failure.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert resolver.calls == ["db.internal"]  # once, at connect time (the policy needed no address)
    assert dialer.calls == [("10.20.30.40", 5432)] and echo.accepted == 1


async def test_row_14_p1_c_tls_name_resolved_to_allowed_address(tmp_path: Path) -> None:
    ids = Ids()
    resolver = FakeResolver({"jump.corp": ["10.9.9.9"]})
    async with EchoServer() as echo:
        dialer = MappingDialer({("10.9.9.9", 22): echo.port})
        async with Harness(
            tmp_path,
            authorized_keys=ids.authorized_keys,
            forwarding=P1,
            kinds=("tls", "tcp"),
            resolver=resolver,
            dialer=dialer,
        ) as h:
            async with connected(h, ids.c, kind="tls") as conn:
                assert await echo_through(conn, "jump.corp", 22, b"row 14") == b"row 14"
            assert resolver.calls == ["jump.corp"] and dialer.calls == [("10.9.9.9", 22)]
            async with connected(h, ids.c, kind="tcp") as conn:  # row 11: rule 4 is for tls and iroh only
                failure = await open_failure(conn, "jump.corp", 22)
                assert failure.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert dialer.calls == [("10.9.9.9", 22)] and echo.accepted == 1


async def test_row_24_p2_rebinding_name_is_denied_without_connect(tmp_path: Path) -> None:
    ids = Ids()
    resolver = FakeResolver({"rebind.example": ["127.0.0.1"]})
    async with EchoServer() as echo:
        dialer = MappingDialer({("127.0.0.1", 80): echo.port})
        async with (
            Harness(
                tmp_path, authorized_keys=ids.authorized_keys, forwarding=P2, resolver=resolver, dialer=dialer
            ) as h,
            connected(h, ids.a) as conn,
        ):
            failure = await open_failure(conn, "rebind.example", 80)
            assert (failure.code, failure.reason) == (
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "forwarding not permitted",
            )
    assert resolver.calls == ["rebind.example"]
    assert dialer.calls == [] and echo.accepted == 0


async def test_row_25_p2_connects_only_to_the_allowed_answer(tmp_path: Path) -> None:
    ids = Ids()
    resolver = FakeResolver({"multi.example": ["10.0.0.5", "93.184.215.14"]})
    async with EchoServer() as echo, EchoServer() as never:
        dialer = MappingDialer({("93.184.215.14", 80): echo.port, ("10.0.0.5", 80): never.port})
        async with (
            Harness(
                tmp_path, authorized_keys=ids.authorized_keys, forwarding=P2, resolver=resolver, dialer=dialer
            ) as h,
            connected(h, ids.a) as conn,
        ):
            assert await echo_through(conn, "multi.example", 80, b"row 25") == b"row 25"
        assert never.accepted == 0
    assert resolver.calls == ["multi.example"]
    assert dialer.calls == [("93.184.215.14", 80)]


async def test_rows_31_and_33_reserved_names_under_p2(tmp_path: Path) -> None:
    ids = Ids()
    resolver = FakeResolver({})
    dialer = MappingDialer()
    async with (
        Harness(
            tmp_path,
            authorized_keys=ids.authorized_keys,
            forwarding=P2,
            resolver=resolver,
            dialer=dialer,
            control=ControlRegistry(_echo_handler),
        ) as h,
        connected(h, ids.a) as conn,
    ):
        assert await echo_through(conn, "alknet-control", 0, b"row 31") == b"row 31"  # allow, default
        failure = await open_failure(conn, "alknet-nope", 0)  # row 33
        assert (failure.code, failure.reason) == (asyncssh.OPEN_CONNECT_FAILED, "unknown control destination")
        failure = await open_failure(conn, "alknet-control", 1)  # row 30: deny, rule 6
        assert failure.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert resolver.calls == [] and dialer.calls == []


async def test_row_35_p3_unix_socket_for_a_only(tmp_path: Path) -> None:
    ids = Ids()
    app = Path(os.path.realpath(tmp_path)) / "app"
    app.mkdir()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_unix_server(echo, str(app / "api.sock"))
    (app / "sub").mkdir()
    try:
        async with Harness(
            tmp_path, authorized_keys=ids.authorized_keys, forwarding=_p3(app, ids.a.fingerprint)
        ) as h:
            async with connected(h, ids.a) as conn:
                reader, writer = await asyncio.wait_for(conn.open_unix_connection(str(app / "api.sock")), T)
                writer.write(b"row 35")
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), T) == b"row 35"
                for path in (str(app / "sub" / "api.sock"), f"{app}/../app/api.sock"):  # rows 36, 37
                    with pytest.raises(asyncssh.ChannelOpenError) as info:
                        await asyncio.wait_for(conn.open_unix_connection(path), T)
                    assert info.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
            async with connected(h, ids.b) as conn:  # row 38: deny (principal)
                with pytest.raises(asyncssh.ChannelOpenError) as info:
                    await asyncio.wait_for(conn.open_unix_connection(str(app / "api.sock")), T)
                assert info.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    finally:
        server.close()


async def test_row_46_builtin_listen_rules_allow_a_loopback_bind(tmp_path: Path) -> None:
    ids = Ids()
    port = 8080 if await _free(8080) else free_port()  # row 46 names 8080; any port >= 1024 is the same rule
    async with (
        EchoServer() as target,
        Harness(tmp_path, authorized_keys=ids.authorized_keys) as h,
        connected(h, ids.a) as conn,
    ):
        await asyncio.wait_for(conn.forward_remote_port("127.0.0.1", port, "127.0.0.1", target.port), T)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"row 46")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), T) == b"row 46"
        writer.close()
        with pytest.raises(asyncssh.ChannelListenError):  # row 47
            await asyncio.wait_for(
                conn.forward_remote_port("0.0.0.0", free_port(), "127.0.0.1", target.port), T
            )


async def _free(port: int) -> bool:
    try:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    except OSError:
        return False
    server.close()
    await server.wait_closed()
    return True


# ------------------------------------------------------------------------------------------ reload


async def _open(
    conn: asyncssh.SSHClientConnection, port: int
) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
    return await asyncio.wait_for(conn.open_connection("127.0.0.1", port), T)


async def test_policy_reload_applies_to_the_next_channel_only(tmp_path: Path) -> None:
    key: KeyPair = new_keypair()
    async with (
        EchoServer() as echo,
        Harness(tmp_path, authorized_keys=key.line + "\n") as h,
        connected(h, key) as conn,
    ):
        reader, writer = await _open(conn, echo.port)
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), T) == b"before"
        assert h.reloader is not None
        await h.reloader.reload_forwarding({"default": "deny"})
        failure = await open_failure(conn, "127.0.0.1", echo.port)
        assert failure.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        writer.write(b"after reload")  # the open channel keeps running
        assert await asyncio.wait_for(reader.readexactly(12), T) == b"after reload"
        writer.close()
        # a reload whose tests fail is refused; the deny-all policy still decides
        bad = {"default": "allow", "tests": [{"target": "127.0.0.1:1", "expect": "deny"}]}
        with pytest.raises(ConfigError):
            await h.reloader.reload_forwarding(bad)
        failure = await open_failure(conn, "127.0.0.1", echo.port)
        assert failure.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        await h.reloader.reload_forwarding({"default": "allow"})
        assert await echo_through(conn, "127.0.0.1", echo.port) == b"ping"
