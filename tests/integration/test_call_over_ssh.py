"""The embedding API over real SSH on loopback (call-protocol.md §2, §10.1, §11; transport-and-ssh.md §16).

``serve()`` and ``connect()`` exchange calls in both codecs without creating any file; a bad frame on one
control channel closes only that channel; ``run_worker`` registers again after the head restarts; channel
delivery, reloads, the policy dry run, keys, options and pubsub through ``EventTarget``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core.api import (
    AlknetServer,
    CallPeer,
    ConnectOptions,
    ControlStream,
    EventTarget,
    ListenerOptions,
    ServeOptions,
    connect,
    open_control,
    run_worker,
    serve,
)
from alknet.core.auth.keys import generate_private_key, private_key_to_openssh, public_key_of
from alknet.core.call import CallError, OperationContext, OperationRegistry, OperationSpec, OperationType
from alknet.core.errors import ConfigError, KeyFormatError
from alknet.core.logfmt import FIELDS_ATTR
from alknet.core.node import Node
from alknet.core.ssh.client import ClientOptions, SshClient
from alknet.core.ssh.forwards import parse_local_forward
from alknet.core.ssh.session import ClientSession, SessionOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import EchoServer

T = 10.0  # bound for every single await


async def _say(input: Any, ctx: OperationContext) -> Any:
    return input


async def _whoami(input: Any, ctx: OperationContext) -> Any:
    return {"id": ctx.identity.id, "scopes": list(ctx.identity.scopes)}


def echo_registry() -> OperationRegistry:
    reg = OperationRegistry()
    reg.register(OperationSpec("/echo/say", "echo", OperationType.QUERY), _say)
    reg.register(OperationSpec("/echo/whoami", "echo", OperationType.QUERY), _whoami)
    return reg


class Keys:
    def __init__(self) -> None:
        self.host = generate_private_key()
        self.client = generate_private_key()

    @property
    def host_bytes(self) -> bytes:
        return private_key_to_openssh(self.host)

    @property
    def client_bytes(self) -> bytes:
        return private_key_to_openssh(self.client)

    @property
    def host_fp(self) -> str:
        return public_key_of(self.host).fingerprint

    @property
    def client_fp(self) -> str:
        return public_key_of(self.client).fingerprint

    def authorized(self, scopes: str = "/echo/*,node:*,events:subscribe,events:publish") -> bytes:
        return f'alknet-scopes="{scopes}" {public_key_of(self.client).line}\n'.encode()


def _addr(server: AlknetServer) -> str:
    return server.listen_addrs[0].split("://", 1)[1]


def _connect_opts(keys: Keys, server: AlknetServer, **kw: Any) -> ConnectOptions:
    return ConnectOptions(server=_addr(server), identity=keys.client_bytes, host_key=keys.host_fp, **kw)


@contextlib.asynccontextmanager
async def head(keys: Keys, **kw: Any) -> AsyncIterator[AlknetServer]:
    opts: dict[str, Any] = {
        "listeners": (ListenerOptions(port=0),),
        "host_key": keys.host_bytes,
        "authorized_keys": keys.authorized(),
        "node": Node(registry=echo_registry(), accept_workers=True),
    }
    opts.update(kw)
    server = await asyncio.wait_for(serve(ServeOptions(**opts)), T)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), T)


async def _until(check: Callable[[], bool], timeout: float = T) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------------ connect/serve


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_connect_and_serve_exchange_a_call_and_write_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    home, alk_home, cwd = tmp_path / "home", tmp_path / "alknet-home", tmp_path / "cwd"
    for d in (home, alk_home, cwd):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ALKNET_HOME", str(alk_home))
    monkeypatch.chdir(cwd)
    keys = Keys()
    async with head(keys) as server:
        assert server.listen_addrs[0].startswith("tcp://127.0.0.1:")
        assert not server.listen_addrs[0].endswith(":0") and server.endpoint_id is None
        stream = await asyncio.wait_for(connect(_connect_opts(keys, server, codec=codec)), T)
        assert stream.codec == codec and stream.info.identity.id == keys.host_fp
        async with CallPeer(stream) as peer:
            assert await asyncio.wait_for(peer.call("/echo/say", {"text": "hé", "n": 2**63 - 1}), T) == {
                "text": "hé",
                "n": 2**63 - 1,
            }
            me = await asyncio.wait_for(peer.call("/echo/whoami"), T)
            assert me["id"] == keys.client_fp and "/echo/*" in me["scopes"]
            with pytest.raises(CallError) as err:
                await asyncio.wait_for(peer.call("/head/nope"), T)
            assert err.value.code == "NOT_FOUND"
        await stream.close()
        await stream.close()  # idempotent
    assert _files(tmp_path) == ["alknet-home", "cwd", "home"]


async def test_environment_defaults_and_key_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = Keys()
    key_file = tmp_path / "id"
    key_file.write_bytes(keys.client_bytes)
    key_file.chmod(0o600)
    async with head(keys) as server:
        monkeypatch.setenv("ALKNET_SERVER", _addr(server))
        monkeypatch.setenv("ALKNET_IDENTITY", str(key_file))
        ids = []
        for opts in (
            ConnectOptions(host_key=keys.host_fp),  # server and identity from the environment
            ConnectOptions(server=_addr(server), identity=keys.client_bytes, host_key=keys.host_fp),
        ):
            stream = await asyncio.wait_for(connect(opts), T)
            async with CallPeer(stream) as peer:
                ids.append((await asyncio.wait_for(peer.call("/echo/whoami"), T))["id"])
            await stream.close()
        assert ids == [keys.client_fp, keys.client_fp]
        # an explicit server wins over ALKNET_SERVER
        monkeypatch.setenv("ALKNET_SERVER", "127.0.0.1:1")
        stream = await asyncio.wait_for(
            connect(ConnectOptions(server=_addr(server), host_key=keys.host_fp)), T
        )
        await stream.close()
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFormatError):
        await connect(ConnectOptions(server="127.0.0.1:1", identity=pem, host_key=keys.host_fp))
    monkeypatch.delenv("ALKNET_IDENTITY")
    with pytest.raises(
        ValueError, match=re.escape("no identity: set ConnectOptions.identity or ALKNET_IDENTITY")
    ):
        await connect(ConnectOptions(server="127.0.0.1:1", host_key=keys.host_fp))
    with pytest.raises(ValueError, match="transport"):
        await connect(ConnectOptions(server="127.0.0.1:1", transport="quic", identity=keys.client_bytes))


# ------------------------------------------------------------------------------------------ frame errors


async def _eof(stream: ControlStream) -> bytes:
    """Everything the server still sends before it closes the channel."""
    data = b""
    async with asyncio.timeout(T):
        while chunk := await stream.reader.read(65536):
            data += chunk
    return data


async def test_bad_frames_close_only_their_channel(tmp_path: Path) -> None:
    keys = Keys()
    async with head(keys) as server, EchoServer() as echo:
        client = SshClient(
            ClientOptions(server=_addr(server), identity=keys.client_bytes, host_key=keys.host_fp)
        )
        fwd = parse_local_forward(f"0:127.0.0.1:{echo.port}")
        session = ClientSession(client, SessionOptions(socks5=None, forwards=(fwd,)))
        run = asyncio.ensure_future(session.run())
        try:
            conn = await asyncio.wait_for(session.wait_connected(), T)
            a = await asyncio.wait_for(open_control(conn, client), T)
            b = await asyncio.wait_for(open_control(conn, client, codec="msgpack"), T)
            c = await asyncio.wait_for(open_control(conn, client), T)
            peer_b = CallPeer(b)
            peer_b.start()
            assert await asyncio.wait_for(peer_b.call("/echo/say", 1), T) == 1
            # A: a length over max_frame (16 MiB) -- closed before any body is read, nothing sent back
            a.writer.write(b"\x01\x00\x00\x01")
            assert await _eof(a) == b""
            # C: a well-framed body that is not JSON
            c.writer.write(b"\x00\x00\x00\x05{bad}")
            assert await _eof(c) == b""
            # B and the -L forward on the same SSH connection keep working
            assert await asyncio.wait_for(peer_b.call("/echo/say", {"still": "here"}), T) == {"still": "here"}
            port = session.forward_listeners[0].port
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
            writer.write(b"ping")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), T) == b"ping"
            writer.close()
            assert not conn.is_closed
            await peer_b.close()
            for s in (a, b, c):
                await s.close()
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            await asyncio.wait_for(session.aclose(0), T)


# ------------------------------------------------------------------------------------------ worker


async def test_run_worker_registers_again_after_the_head_restarts() -> None:
    keys = Keys()
    worker = Node("dev1", echo_registry())
    opts: dict[str, Any] = {
        "listeners": (ListenerOptions(port=0),),
        "host_key": keys.host_bytes,
        "authorized_keys": keys.authorized(),
    }
    first = Node(registry=echo_registry(), accept_workers=True)
    server = await asyncio.wait_for(serve(ServeOptions(**opts, node=first)), T)
    addr = _addr(server)
    task = asyncio.ensure_future(
        run_worker(
            ConnectOptions(server=addr, identity=keys.client_bytes, host_key=keys.host_fp),
            worker,
            name="dev1",
            uniform=lambda a, b: 0.25,  # backoff 0.25, 0.5, 1 ... s
        )
    )
    try:
        await _until(lambda: first.has_route("dev1"))
        out = await asyncio.wait_for(first.call("/dev1/echo/say", {"x": 1}), T)
        assert out == {"x": 1}
        # the worker calls back into its head over the same channel
        me = await asyncio.wait_for(worker.call("/head/echo/whoami"), T)
        assert me["id"] == keys.client_fp
        await asyncio.wait_for(server.close(), T)
        second = Node(accept_workers=True)
        port = int(addr.rsplit(":", 1)[1])
        listener = ListenerOptions(port=port)
        server = await asyncio.wait_for(
            serve(ServeOptions(**{**opts, "listeners": (listener,)}, node=second)), T
        )
        await _until(lambda: second.has_route("dev1"))
        assert await asyncio.wait_for(second.call("/dev1/echo/say", "again"), T) == "again"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.close(), T)
    assert not task.cancelled() or task.done()


async def test_worker_without_node_scope_is_refused_and_keeps_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys()
    node = Node(accept_workers=True)
    async with head(keys, authorized_keys=keys.authorized("/echo/*"), node=node) as server:
        task = asyncio.ensure_future(
            run_worker(
                _connect_opts(keys, server),
                Node("dev1", echo_registry()),
                name="dev1",
                uniform=lambda a, b: 0.05,
            )
        )
        try:
            with caplog.at_level("INFO", logger="alknet"):
                await _until(
                    lambda: sum("registration refused" in r.getMessage() for r in caplog.records) >= 2
                )
            refused = [r for r in caplog.records if "registration refused" in r.getMessage()]
            assert all(
                r.levelname == "ERROR" and dict(getattr(r, FIELDS_ATTR))["code"] == "FORBIDDEN"
                for r in refused
            )
            assert node.routes() == {}
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ------------------------------------------------------------------------------------------ delivery


async def test_connections_iterator_delivers_streams_and_modes_are_exclusive() -> None:
    keys = Keys()
    async with head(keys, node=None) as server:
        reg = echo_registry()

        async def accept() -> None:
            async for stream, info in server.connections():
                assert info.identity.id == keys.client_fp and info.codec == "json" and info.interface == "ssh"
                await CallPeer(stream, registry=reg).serve_forever()
                return

        acceptor = asyncio.ensure_future(accept())
        stream = await asyncio.wait_for(connect(_connect_opts(keys, server)), T)
        async with CallPeer(stream) as peer:
            me = await asyncio.wait_for(peer.call("/echo/whoami"), T)
        assert me["id"] == keys.client_fp
        await stream.close()
        await asyncio.wait_for(acceptor, T)
        with pytest.raises(RuntimeError):
            server.on_connection(lambda s, i: asyncio.sleep(0))
    async with head(keys) as server, contextlib.AsyncExitStack():
        with pytest.raises(RuntimeError):
            server.connections()


async def test_on_connection_and_close_ends_everything() -> None:
    keys = Keys()
    server = await asyncio.wait_for(
        serve(
            ServeOptions(
                listeners=(ListenerOptions(port=0),),
                host_key=keys.host_bytes,
                authorized_keys=keys.authorized(),
            )
        ),
        T,
    )
    seen: list[str] = []

    async def on_conn(stream: ControlStream, info: Any) -> None:
        seen.append(info.identity.id)
        await CallPeer(stream, registry=echo_registry()).serve_forever()

    # a channel opened before anyone consumes waits in the backlog, then goes to the callback
    stream = await asyncio.wait_for(connect(_connect_opts(keys, server)), T)
    server.on_connection(on_conn)
    async with CallPeer(stream) as peer:
        assert await asyncio.wait_for(peer.call("/echo/say", "x"), T) == "x"
        assert seen == [keys.client_fp]
        await asyncio.wait_for(server.close(), T)
        await asyncio.wait_for(server.close(), T)  # idempotent
        with pytest.raises(CallError) as err:
            await asyncio.wait_for(peer.call("/echo/say", "y"), T)
        assert err.value.code == "UNAVAILABLE"
    await stream.close()


# ------------------------------------------------------------------------------------------ reloads, policy


async def test_reload_auth_and_reload_from_sources(tmp_path: Path) -> None:
    keys, other = Keys(), Keys()
    ak = tmp_path / "authorized_keys"
    ak.write_bytes(keys.authorized())
    async with head(keys, authorized_keys=str(ak)) as server:

        async def login(k: Keys) -> ControlStream:
            opts = ConnectOptions(server=_addr(server), identity=k.client_bytes, host_key=keys.host_fp)
            return await asyncio.wait_for(connect(opts), T)

        old = await login(keys)
        with pytest.raises(asyncssh.PermissionDenied):
            await login(other)
        await server.reload_auth(authorized_keys=other.authorized())
        await (await login(other)).close()
        with pytest.raises(asyncssh.PermissionDenied):
            await login(keys)
        async with CallPeer(old) as peer:  # the connection opened before the reload stays open
            assert await asyncio.wait_for(peer.call("/echo/say", 1), T) == 1
        with pytest.raises(ConfigError):
            await server.reload_auth(authorized_keys=b"garbage\n")
        await (await login(other)).close()  # the old configuration is still in force
        # back to the file, with the other key appended
        ak.write_bytes(keys.authorized() + other.authorized())
        await server.reload_from_sources()
        for k in (keys, other):
            await (await login(k)).close()
        await old.close()


async def test_check_policy_dry_run() -> None:
    keys = Keys()
    async with head(keys) as server:
        decision = await server.check_policy("127.0.0.1:0", scopes=(), bind=True)
        assert decision.allowed and decision.reason == "builtin_listen"
        refused = await server.check_policy("0.0.0.0:8080", scopes=(), bind=True)
        assert not refused.allowed
        opened = await server.check_policy("127.0.0.1:22", identity=keys.client_fp)
        assert opened.allowed


def test_listener_options_defaults_and_validation() -> None:
    assert (ListenerOptions().kind, ListenerOptions().bind_host, ListenerOptions().bind_port) == (
        "tcp",
        "127.0.0.1",
        2222,
    )
    iroh = ListenerOptions(kind="iroh")
    assert (iroh.bind_host, iroh.bind_port) == ("0.0.0.0", 0)
    assert ListenerOptions(kind="tls").bind_port == 2443


@pytest.mark.parametrize(
    ("listener", "field"),
    [
        (ListenerOptions(interface="raw"), "port"),
        (ListenerOptions(stealth=True), "stealth"),
        (ListenerOptions(kind="tls", port=0), "tls_cert"),
        (ListenerOptions(kind="tls", port=0, acme_domains=("example.com",)), "acme_domains"),
        (
            ListenerOptions(kind="tls", port=0, tls_cert=b"x", tls_key=b"y", acme_domains=("a.b",)),
            "acme_domains",
        ),
        (ListenerOptions(kind="udp"), "kind"),
    ],
)
async def test_serve_options_are_validated(listener: ListenerOptions, field: str) -> None:
    with pytest.raises(ValueError, match=rf"listeners\[0\]\.{field}"):
        await serve(ServeOptions(listeners=(listener,), host_key=Keys().host_bytes))


async def test_tls_listener_with_state_dir_and_no_files_without(tmp_path: Path) -> None:
    keys = Keys()
    state = tmp_path / "state"
    async with head(keys, listeners=(ListenerOptions(kind="tls", port=0),), state_dir=state) as server:
        assert server.listen_addrs[0].startswith("tls://127.0.0.1:")
        assert (state / "tls").is_dir()


# ------------------------------------------------------------------------------------------ events


async def test_event_target_publish_and_subscribe_through_the_head() -> None:
    keys = Keys()
    async with head(keys) as server:
        sub_stream = await asyncio.wait_for(connect(_connect_opts(keys, server)), T)
        pub_stream = await asyncio.wait_for(connect(_connect_opts(keys, server, codec="msgpack")), T)
        subscriber, publisher = EventTarget(sub_stream), EventTarget(pub_stream)
        try:
            async with subscriber.subscribe("jobs.done") as events:
                await asyncio.sleep(0.1)  # let __subscribe reach the head before publishing
                await publisher.publish("jobs.done", {"job": 7}, id="dev1")
                env = await asyncio.wait_for(anext(events), T)
            assert (env.type, env.id, env.payload) == ("jobs.done", "dev1", {"job": 7})
        finally:
            await subscriber.close()
            await publisher.close()
            await sub_stream.close()
            await pub_stream.close()


def test_api_module_exports() -> None:
    import alknet.core.api as api

    for name in api.__all__:
        assert getattr(api, name) is not None
    assert os.fspath(Path(api.__file__)).endswith("api.py")
