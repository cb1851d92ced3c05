"""``connect(ConnectOptions(interface="raw", ...))`` of the embedding API (call-protocol.md §10.2, §11):
a real ``SshServer`` and a ``RawListener`` on loopback sharing one node, provider and dynamic config.

Acceptance of §11: ``ConnectOptions(interface="raw", token=<token of the key>)`` to a ``raw+tcp`` listener gives
the same ``info.identity`` as an SSH login with that key. Plus: minting the token from ``identity`` /
``ALKNET_IDENTITY``, refused tokens as ``RawAuthError``, unusable options as ``ValueError``, and calls from the
server over a raw stream running with ``head_scopes``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import Harness, KeyPair, new_keypair

from alknet.core.api import CallPeer, ConnectOptions, ControlStream, connect, run_worker
from alknet.core.auth.identity import Identity
from alknet.core.auth.keys import private_key_to_openssh
from alknet.core.auth.token import mint_token
from alknet.core.call import OperationContext, OperationRegistry, OperationSpec, OperationType
from alknet.core.errors import ConfigError, KeyFormatError
from alknet.core.node import Node
from alknet.core.raw import RawAuthError, RawListener

pytestmark = pytest.mark.timeout(60)

T = 10.0
SCOPES = ("/t/*", "relay:connect")


async def _whoami(input: Any, ctx: OperationContext) -> Any:
    return ctx.identity.to_json()


def _registry(prefix: str) -> OperationRegistry:
    reg = OperationRegistry()
    reg.register(OperationSpec(f"/{prefix}/whoami", prefix, OperationType.QUERY), _whoami)
    return reg


@dataclass
class Rig:
    harness: Harness
    raw: RawListener
    key: KeyPair
    node: Node

    @property
    def raw_addr(self) -> str:
        return f"127.0.0.1:{self.raw.ports[0]}"

    @property
    def key_bytes(self) -> bytes:
        return private_key_to_openssh(self.key.key)

    def token(self, key: KeyPair | None = None, at: int | None = None) -> str:
        return mint_token((key or self.key).key, int(time.time()) if at is None else at)

    def raw_opts(self, **kw: Any) -> ConnectOptions:
        kw.setdefault("server", self.raw_addr)
        return ConnectOptions(interface="raw", connect_timeout=T, **kw)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    key = new_keypair()
    node = Node(registry=_registry("t"))
    async with Harness(tmp_path, authorized_keys=f'alknet-scopes="{",".join(SCOPES)}" {key.line}\n') as h:
        h.srv.control.install(node.serve_channel)
        raw = RawListener(("127.0.0.1", 0), node, h.srv.provider, h.srv.dynamic, h.srv.limiter)
        await asyncio.wait_for(raw.start(), T)
        try:
            yield Rig(h, raw, key, node)
        finally:
            await asyncio.wait_for(raw.close(), T)
            await asyncio.wait_for(node.close(), T)


async def _whoami_over(stream: ControlStream) -> Identity:
    try:
        async with CallPeer(stream) as peer:
            return Identity.from_json(await asyncio.wait_for(peer.call("/t/whoami"), T))
    finally:
        await stream.close()


# ------------------------------------------------------------------------------------------------ identity


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_raw_connect_gives_the_ssh_login_identity(rig: Rig, codec: str) -> None:
    ssh = await asyncio.wait_for(
        connect(
            ConnectOptions(
                server=f"127.0.0.1:{rig.harness.port()}",
                identity=rig.key_bytes,
                host_key=rig.harness.srv.host_key_fingerprint,
            )
        ),
        T,
    )
    ssh_identity = await _whoami_over(ssh)
    assert ssh_identity == Identity(rig.key.fingerprint, SCOPES)

    stream = await asyncio.wait_for(connect(rig.raw_opts(token=rig.token(), codec=codec)), T)
    assert isinstance(stream, ControlStream)
    assert stream.info.identity == ssh_identity
    assert (stream.info.interface, stream.info.transport, stream.info.codec) == ("raw", "tcp", codec)
    assert stream.codec == codec and stream.info.remote_addr == rig.raw_addr
    assert stream.info.endpoint_id is None
    assert await _whoami_over(stream) == ssh_identity  # the handler sees the same identity
    assert stream.closed
    await stream.close()  # idempotent


async def test_server_forms_and_minted_tokens(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = Identity(rig.key.fingerprint, SCOPES)
    key_file = tmp_path / "id"
    key_file.write_bytes(rig.key_bytes)
    key_file.chmod(0o600)
    monkeypatch.delenv("ALKNET_IDENTITY", raising=False)
    forms = [
        rig.raw_opts(server=f"raw+tcp://{rig.raw_addr}", token=rig.token()),
        rig.raw_opts(identity=rig.key_bytes),  # token minted from the key bytes at connect
        rig.raw_opts(identity=str(key_file)),  # ... from a path
    ]
    for opts in forms:
        stream = await asyncio.wait_for(connect(opts), T)
        assert stream.info.identity == expected
        await stream.close()
    monkeypatch.setenv("ALKNET_IDENTITY", str(key_file))
    monkeypatch.setenv("ALKNET_SERVER", rig.raw_addr)
    stream = await asyncio.wait_for(connect(ConnectOptions(interface="raw", connect_timeout=T)), T)
    assert stream.info.identity == expected
    assert await _whoami_over(stream) == expected


async def test_refused_tokens_raise_raw_auth_error(rig: Rig) -> None:
    other = new_keypair()
    cases = [
        rig.token(other),  # a key the server does not know
        rig.token(at=int(time.time()) - 400),  # expired (max_age 300)
        "x" * 139,  # malformed
    ]
    for token in cases:
        with pytest.raises(RawAuthError) as err:
            await asyncio.wait_for(connect(rig.raw_opts(token=token)), T)
        assert (err.value.code, err.value.message) == ("FORBIDDEN", "authentication failed")
        assert token not in str(err.value)
    with pytest.raises(RawAuthError) as err:  # a minted token of an unknown key
        await asyncio.wait_for(connect(rig.raw_opts(identity=private_key_to_openssh(other.key))), T)
    assert err.value.code == "FORBIDDEN"
    assert rig.raw.channels == []


async def test_calls_from_the_server_run_with_head_scopes(rig: Rig) -> None:
    stream = await asyncio.wait_for(connect(rig.raw_opts(token=rig.token(), head_scopes=("/c/*",))), T)
    async with CallPeer(stream, registry=_registry("c")) as peer:
        assert (await asyncio.wait_for(peer.call("/t/whoami"), T))["id"] == rig.key.fingerprint
        (server_side,) = rig.raw.channels
        seen = Identity.from_json(await asyncio.wait_for(server_side.call("/c/whoami"), T))
        assert seen == Identity(f"raw+tcp://{rig.raw_addr}", ("/c/*",))
    await stream.close()
    await asyncio.wait_for(stream.wait_closed(), T)
    async with asyncio.timeout(T):
        while rig.raw.channels:
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------------ refusals


async def test_unusable_raw_options_raise_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALKNET_IDENTITY", raising=False)
    monkeypatch.delenv("ALKNET_SERVER", raising=False)
    raw = {"interface": "raw", "server": "127.0.0.1:1"}
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({**raw}, ValueError, "no token: set ConnectOptions.token"),
        ({**raw, "token": ""}, ValueError, "ConnectOptions.token is empty"),
        ({"interface": "raw", "token": "t"}, ValueError, "no server"),
        ({**raw, "token": "t", "transport": "quic"}, ValueError, "ConnectOptions.transport"),
        ({**raw, "token": "t", "transport": "iroh"}, ValueError, "ConnectOptions.transport"),
        ({**raw, "token": "t", "transport": "tls"}, ValueError, "tcp only"),
        ({**raw, "token": "t", "proxy": "socks5://127.0.0.1:1"}, ValueError, "ConnectOptions.proxy"),
        ({**raw, "token": "t", "codec": "cbor"}, ValueError, "codec"),
        ({**raw, "token": "t", "server": "127.0.0.1"}, ConfigError, "explicit port"),
        ({**raw, "token": "t", "server": "tcp://127.0.0.1:7000"}, ConfigError, "raw+tcp://HOST:PORT"),
        ({**raw, "token": "t", "server": "127.0.0.1:0"}, ConfigError, "raw+tcp://HOST:PORT"),
        (
            {**raw, "identity": b"-----BEGIN PRIVATE KEY-----\nx\n"},
            KeyFormatError,
            "PEM keys are not supported",
        ),
        ({"interface": "grpc", "server": "127.0.0.1:1", "token": "t"}, ValueError, "'ssh' or 'raw'"),
    ]
    for kw, exc_type, message in cases:
        with pytest.raises(exc_type, match=message.replace("+", r"\+")):
            await connect(ConnectOptions(**kw))
    with pytest.raises(ValueError, match="run_worker\\(\\) connects over SSH only"):
        await run_worker(ConnectOptions(**raw, token="t"), Node("dev1"), name="dev1")


async def test_unreachable_raw_listener_raises_os_error() -> None:
    with pytest.raises(OSError):
        await asyncio.wait_for(connect(ConnectOptions(interface="raw", server="127.0.0.1:1", token="t")), T)
