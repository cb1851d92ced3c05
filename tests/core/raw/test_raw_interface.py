"""Raw framing on tcp (call-protocol.md §10.2, transport-and-ssh.md §15, auth-and-config.md §5.1): the
``auth.token`` handshake of ``RawListener`` against a real ``Node`` on loopback, driven with literal bytes and
with ``open_raw_channel`` + ``CallPeer``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core.auth.config_provider import ConfigIdentityProvider
from alknet.core.auth.identity import Identity
from alknet.core.auth.keys import generate_private_key, public_key_of
from alknet.core.auth.token import mint_token
from alknet.core.call import (
    JSON_CODEC,
    MSGPACK_CODEC,
    CallError,
    CallPeer,
    ChannelLimits,
    Codec,
    EventEnvelope,
    FrameDecoder,
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
    call_requested,
    encode_frame,
)
from alknet.core.config.atomic import AtomicRef
from alknet.core.config.dynamic import DynamicConfig, RateLimits
from alknet.core.config.reloader import build_dynamic
from alknet.core.errors import ConfigError, IdentityBackendError
from alknet.core.node import Node
from alknet.core.raw import RawAuthError, RawListener, auth_token_frame, open_raw_channel
from alknet.core.server.ratelimit import ConnectionLimiter

pytestmark = pytest.mark.timeout(30)

T = 5.0

# F11 / F12 of call-protocol.md §4: the RFC 8032 test-1 key at unix time 1767225600.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
F11_TOKEN = (
    "If4x36FUomFia_hUBG_SJxt77UtqvkWqWId-9H-XIbkAAAAAaVW5AIImUqzWZEL1ov3mbtz2CNvcsxAiAKaHnuI1dB_15qY4tKGqKuEERl"
    "MraAW-4FcqIcjO0IlABzi5n3-4vPS62Q4"
)
F11 = b'\x00\x00\x00\xbf{"type":"auth.token","id":"","payload":{"token":"' + F11_TOKEN.encode() + b'"}}'
F12 = (
    b'\x00\x00\x00\x7b{"type":"auth.ok","id":"","payload":{"id":"SHA256:bbXpuKG6zhzdmnxq256TlqzFBzRl2f6OOg722c'
    b'YNbU8","scopes":["relay:connect"]}}'
)
F1 = (
    b'\x00\x00\x00\xc7{"type":"call.requested","id":"00000000-0000-4000-8000-000000000001","payload":{"requestId"'
    b':"00000000-0000-4000-8000-000000000001","operationId":"/services/list","input":{},"deadline":1767225630000}}'
)


# ------------------------------------------------------------------------------------------------ setup


@dataclass
class Probe:
    runs: int = 0
    cancelled: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)


def make_registry(probe: Probe) -> OperationRegistry:
    reg = OperationRegistry()

    async def echo(input: Any, ctx: OperationContext) -> Any:
        probe.runs += 1
        return {"input": input, "identity": ctx.identity.to_json()}

    async def block(input: Any, ctx: OperationContext) -> Any:
        probe.runs += 1
        probe.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            probe.cancelled += 1
            raise
        return None

    reg.register(OperationSpec("/t/echo", "t", OperationType.QUERY), echo)
    reg.register(OperationSpec("/t/block", "t", OperationType.QUERY), block)
    return reg


@dataclass
class Setup:
    listener: RawListener
    key: Ed25519PrivateKey
    probe: Probe
    dynamic: AtomicRef[DynamicConfig]
    provider: ConfigIdentityProvider
    limiter: ConnectionLimiter

    @property
    def port(self) -> int:
        return self.listener.ports[0]

    def token(self, key: Ed25519PrivateKey | None = None, at: int | None = None) -> str:
        return mint_token(key or self.key, int(time.time()) if at is None else at)

    @property
    def fingerprint(self) -> str:
        return public_key_of(self.key).fingerprint


@contextlib.asynccontextmanager
async def raw_setup(
    *,
    key: Ed25519PrivateKey | None = None,
    key_options: str = 'alknet-scopes="/t/*,relay:connect"',
    forwarding: dict[str, Any] | None = None,
    rate_limits: RateLimits | None = None,
    token_enabled: bool = True,
    now: Callable[[], float] = time.time,
    auth_timeout: float = T,
    max_frame: int | None = None,
) -> AsyncIterator[Setup]:
    key = key or generate_private_key()
    line = public_key_of(key).line
    loaded = build_dynamic(
        f"{key_options} {line}\n".encode(),
        forwarding=forwarding,
        rate_limits=rate_limits,
        token_enabled=token_enabled,
    )
    dynamic = AtomicRef(loaded.dynamic)
    provider = ConfigIdentityProvider(dynamic, now=now)
    limiter = ConnectionLimiter(dynamic)
    probe = Probe()
    node = Node(registry=make_registry(probe))
    listener = RawListener(
        ("127.0.0.1", 0),
        node,
        provider,
        dynamic,
        limiter,
        auth_timeout=auth_timeout,
        max_frame=max_frame,
    )
    await asyncio.wait_for(listener.start(), T)
    try:
        yield Setup(listener, key, probe, dynamic, provider, limiter)
    finally:
        await asyncio.wait_for(listener.close(), T)
        await asyncio.wait_for(node.close(), T)


class RawClient:
    """A byte-level client: write frames, read envelopes (JSON until switched), see EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(JSON_CODEC)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_raw(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), T)

    async def envelope(self, codec: Codec | None = None) -> EventEnvelope | None:
        """The next envelope, or ``None`` at EOF."""
        if codec is not None:
            self.decoder.codec = codec
        while True:
            env = self.decoder.next_envelope()
            if env is not None:
                return env
            data = await asyncio.wait_for(self.reader.read(65536), T)
            if not data:
                return None
            self.decoder.feed(data)

    async def at_eof(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), T)
        return data == b""

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(port)
    try:
        yield client
    finally:
        client.close()


def request_frame(op: str, input: Any, codec: Codec = JSON_CODEC, rid: str = "r1") -> bytes:
    deadline = int((time.time() + T) * 1000)
    return encode_frame(call_requested(rid, op, input, deadline=deadline), codec)


async def assert_refused(client: RawClient, code: str, message: str | None = None) -> None:
    env = await client.envelope()
    assert env is not None and env.type == "auth.error", env
    assert env.payload["code"] == code, env.payload
    if message is not None:
        assert env.payload["message"] == message
    assert set(env.payload) == {"code", "message"}
    assert await client.envelope() is None  # closed after the error


# ------------------------------------------------------------------------------------------- handshake


async def test_f11_gives_f12_and_calls_work_afterwards() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    async with (
        raw_setup(key=key, key_options="", now=lambda: 1767225600) as s,
        raw_client(s.port) as c,
    ):
        c.send(F11)
        assert await c.read_raw(len(F12)) == F12
        c.send(F1.replace(b"1767225630000", str(int((time.time() + T) * 1000)).encode()))
        env = await c.envelope()
        assert env is not None and env.type == "call.responded"
        names = [op["name"] for op in env.payload["output"]["operations"]]
        assert "/services/list" in names and "/t/echo" not in names  # relay:connect holds no path grant


async def test_valid_token_then_services_list_works_json_and_msgpack() -> None:
    async with raw_setup() as s:
        for codec in ("json", "msgpack"):
            stream, identity = await open_raw_channel("127.0.0.1", s.port, s.token(), codec=codec, timeout=T)
            assert identity == Identity(s.fingerprint, ("/t/*", "relay:connect"))
            async with CallPeer(stream) as peer:
                assert peer.codec.name == codec
                out = await asyncio.wait_for(peer.call("/services/list", {}), T)
                names = [op["name"] for op in out["operations"]]
                assert {"/services/list", "/t/echo", "/t/block"} <= set(names)
                echoed = await asyncio.wait_for(peer.call("/t/echo", {"x": [1, "é"]}), T)
                assert echoed["input"] == {"x": [1, "é"]}
                assert Identity.from_json(echoed["identity"]) == identity


async def test_identity_equals_the_key_login_identity() -> None:
    async with raw_setup() as s:
        _, identity = await open_raw_channel("127.0.0.1", s.port, s.token(), timeout=T)
        assert identity == await s.provider.resolve_from_fingerprint(s.fingerprint)
        assert s.listener.channels == [] or s.listener.channels[0].identity == identity


async def test_first_frame_other_than_auth_token_is_refused_and_no_handler_runs() -> None:
    async with raw_setup() as s:
        async with raw_client(s.port) as c:
            c.send(request_frame("/t/echo", {}) + auth_token_frame(s.token()))
            await assert_refused(c, "PROTOCOL_ERROR")
        async with raw_client(s.port) as c:
            c.send(encode_frame(EventEnvelope("head.node.registered", "", {}), JSON_CODEC))
            await assert_refused(c, "PROTOCOL_ERROR")
        assert s.probe.runs == 0
        assert s.listener.channels == []


async def test_frames_pipelined_after_a_bad_token_never_run() -> None:
    async with raw_setup() as s, raw_client(s.port) as c:
        c.send(auth_token_frame("x" * 139) + request_frame("/t/echo", {}))
        await assert_refused(c, "FORBIDDEN", "authentication failed")
        assert s.probe.runs == 0


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"token": 5},
        [],
        "token",
        {"token": "t", "codec": "cbor"},
        {"token": "t", "codec": 1},
    ],
)
async def test_bad_auth_token_payloads_are_protocol_errors(payload: Any) -> None:
    async with raw_setup() as s, raw_client(s.port) as c:
        c.send(encode_frame(EventEnvelope("auth.token", "", payload), JSON_CODEC))
        await assert_refused(c, "PROTOCOL_ERROR")


async def test_undecodable_empty_and_oversize_first_frames_are_protocol_errors() -> None:
    async with raw_setup() as s:
        for data in (
            b"\x00\x00\x00\x03abc",  # not JSON
            b"\x00\x00\x00\x00",  # empty frame
            b"\x01\x00\x00\x01",  # 16 MiB + 1: refused from the header, no body awaited
            b"\x00\x01\x00\x00",  # 64 KiB: over the auth frame limit
            encode_frame(EventEnvelope("auth.token", "", {"token": "x"}), MSGPACK_CODEC),  # not JSON
        ):
            async with raw_client(s.port) as c:
                c.send(data)
                await assert_refused(c, "PROTOCOL_ERROR")


async def test_expired_garbage_and_unknown_key_tokens_are_refused_and_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with raw_setup() as s:
        now = int(time.time())
        tokens = [
            s.token(at=now - 301),  # expired
            s.token(at=now + 301),  # from the future
            s.token(generate_private_key()),  # a key that is not listed
            "garbage",
            s.token()[:-1] + ("A" if s.token()[-1] != "A" else "B"),  # broken signature or encoding
            "alk_" + "a" * 43,  # an API key: the config provider has none
        ]
        for token in tokens:
            async with raw_client(s.port) as c:
                c.send(auth_token_frame(token))
                await assert_refused(c, "FORBIDDEN", "authentication failed")
            with pytest.raises(RawAuthError) as err:
                await open_raw_channel("127.0.0.1", s.port, token, timeout=T)
            assert (err.value.code, err.value.message) == ("FORBIDDEN", "authentication failed")
        assert s.probe.runs == 0
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for token in tokens:
        assert token not in text
    rejects = [r for r in caplog.records if r.getMessage() == "auth attempt"]
    assert len(rejects) == 2 * len(tokens)


async def test_from_option_and_restrict_refuse_tokens() -> None:
    async with raw_setup(key_options='from="10.0.0.0/8"') as s, raw_client(s.port) as c:
        c.send(auth_token_frame(s.token()))
        await assert_refused(c, "FORBIDDEN", "authentication failed")
    async with raw_setup(key_options="restrict") as s, raw_client(s.port) as c:
        c.send(auth_token_frame(s.token()))
        await assert_refused(c, "FORBIDDEN", "authentication failed")


async def test_policy_deny_for_alknet_control_is_refused() -> None:
    deny_all = {"default": "allow", "rules": [{"target": "alknet-*", "action": "deny"}]}
    async with raw_setup(forwarding=deny_all) as s:
        for codec in ("json", "msgpack"):
            async with raw_client(s.port) as c:
                c.send(
                    auth_token_frame(s.token(), None if codec == "json" else codec)
                    + request_frame("/t/echo", {})
                )
                await assert_refused(c, "FORBIDDEN", "forwarding not permitted")
        assert s.probe.runs == 0
    # only msgpack (port 1) denied, and only on tcp: JSON still works
    deny_msgpack = {
        "default": "allow",
        "rules": [{"target": "alknet-control:1", "action": "deny", "transports": ["tcp"]}],
    }
    async with raw_setup(forwarding=deny_msgpack) as s:
        with pytest.raises(RawAuthError) as err:
            await open_raw_channel("127.0.0.1", s.port, s.token(), codec="msgpack", timeout=T)
        assert err.value.code == "FORBIDDEN"
        stream, _ = await open_raw_channel("127.0.0.1", s.port, s.token(), codec="json", timeout=T)
        async with CallPeer(stream) as peer:
            assert (await asyncio.wait_for(peer.call("/t/echo", 1), T))["input"] == 1
    # a rule for other transports does not apply to raw tcp
    deny_quic = {
        "default": "allow",
        "rules": [{"target": "alknet-*", "action": "deny", "transports": ["quic"]}],
    }
    async with raw_setup(forwarding=deny_quic) as s:
        stream, _ = await open_raw_channel("127.0.0.1", s.port, s.token(), timeout=T)
        async with CallPeer(stream) as peer:
            assert (await asyncio.wait_for(peer.call("/t/echo", 2), T))["input"] == 2


async def test_silence_gets_timeout_after_auth_timeout() -> None:
    async with raw_setup(auth_timeout=0.2) as s, raw_client(s.port) as c:
        started = time.monotonic()
        await assert_refused(c, "TIMEOUT")
        assert 0.15 <= time.monotonic() - started < 2.0
    # half a frame is silence too
    async with raw_setup(auth_timeout=0.2) as s, raw_client(s.port) as c:
        c.send(auth_token_frame(s.token())[:10])
        await assert_refused(c, "TIMEOUT")


async def test_msgpack_switch_after_auth_ok_with_pipelined_frames() -> None:
    async with raw_setup() as s, raw_client(s.port) as c:
        c.send(
            auth_token_frame(s.token(), "msgpack")
            + request_frame("/t/echo", {"n": 1}, MSGPACK_CODEC, "a")
            + request_frame("/t/echo", {"n": 2}, MSGPACK_CODEC, "b")
        )
        ok = await c.envelope()
        assert ok is not None and ok.type == "auth.ok"
        assert ok.payload == {"id": s.fingerprint, "scopes": ["/t/*", "relay:connect"]}
        got = {}
        for _ in range(2):
            env = await c.envelope(MSGPACK_CODEC)
            assert env is not None and env.type == "call.responded"
            got[env.payload["requestId"]] = env.payload["output"]["input"]
        assert got == {"a": {"n": 1}, "b": {"n": 2}}
        # a JSON body on the msgpack channel is a protocol error that closes it
        c.send(request_frame("/t/echo", {}, JSON_CODEC, "c"))
        assert await c.at_eof()
    assert s.probe.runs == 2


async def test_explicit_json_codec_is_accepted() -> None:
    async with raw_setup() as s, raw_client(s.port) as c:
        c.send(auth_token_frame(s.token(), "json") + request_frame("/t/echo", "j"))
        ok = await c.envelope()
        assert ok is not None and ok.type == "auth.ok"
        env = await c.envelope()
        assert env is not None and env.payload["output"]["input"] == "j"


async def test_frame_limit_applies_after_auth() -> None:
    async with raw_setup(max_frame=1024) as s:
        stream, _ = await open_raw_channel("127.0.0.1", s.port, s.token(), timeout=T)
        async with CallPeer(stream, limits=ChannelLimits(max_frame=1024)) as peer:
            with pytest.raises(CallError) as err:  # our own oversize input fails locally
                await peer.call("/t/echo", "x" * 4096)
            assert err.value.code == "INVALID_INPUT"
            assert (await asyncio.wait_for(peer.call("/t/echo", "small"), T))["input"] == "small"
        stream, _ = await open_raw_channel("127.0.0.1", s.port, s.token(), timeout=T)
        async with CallPeer(stream) as peer:  # the client allows 16 MiB; the server closes the channel
            with pytest.raises(CallError) as err:
                await asyncio.wait_for(peer.call("/t/echo", "x" * 4096), T)
            assert err.value.code == "UNAVAILABLE"
        async with raw_client(s.port) as c:
            c.send(auth_token_frame(s.token()))
            ok = await c.envelope()
            assert ok is not None and ok.type == "auth.ok"
            c.send(struct.pack(">I", 2048) + b"x" * 2048)  # over the server's max_frame: channel closed
            assert await c.at_eof()
        assert s.probe.runs == 1


async def test_close_fails_pending_calls_and_cancels_handlers() -> None:
    async with raw_setup() as s:
        stream, _ = await open_raw_channel("127.0.0.1", s.port, s.token(), timeout=T)
        async with CallPeer(stream) as peer:
            call = asyncio.ensure_future(peer.call("/t/block", None, timeout=T))
            await asyncio.wait_for(s.probe.started.wait(), T)
            assert len(s.listener.channels) == 1
            await asyncio.wait_for(s.listener.close(), T)
            with pytest.raises(CallError) as err:
                await asyncio.wait_for(call, T)
            assert err.value.code == "UNAVAILABLE"
        assert s.probe.cancelled == 1
        assert s.listener.channels == []


async def test_per_ip_limit_closes_before_any_byte(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with raw_setup(rate_limits=RateLimits(max_connections_per_ip=1)) as s:
        stream, _ = await open_raw_channel("127.0.0.1", s.port, s.token(), timeout=T)
        async with CallPeer(stream):
            assert s.limiter.count("127.0.0.1") == 1
            async with raw_client(s.port) as c:
                assert await c.at_eof()
            assert any(r.getMessage() == "connection rejected" for r in caplog.records)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + T
        while s.limiter.count("127.0.0.1"):
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        stream, _ = await open_raw_channel("127.0.0.1", s.port, s.token(), timeout=T)
        async with CallPeer(stream) as peer:
            assert (await asyncio.wait_for(peer.call("/t/echo", 3), T))["input"] == 3


async def test_start_refusals() -> None:
    node = Node()
    dynamic = AtomicRef(build_dynamic(b"").dynamic)
    provider = ConfigIdentityProvider(dynamic)
    with pytest.raises(ConfigError, match="insecure_plaintext"):
        await RawListener("raw+tcp://0.0.0.0:0", node, provider, dynamic).start()
    with pytest.raises(ConfigError, match="tcp only"):
        RawListener("tls://127.0.0.1:0", node, provider, dynamic)
    off = AtomicRef(build_dynamic(b"", token_enabled=False).dynamic)
    with pytest.raises(ConfigError, match="token auth"):
        await RawListener("127.0.0.1:0", node, provider, off).start()
    # a busy port is a BindError (an OSError) with a one-line reason
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match="cannot listen on tcp"):
            await RawListener(("127.0.0.1", port), node, provider, dynamic).start()


async def test_non_loopback_with_insecure_plaintext_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    node = Node()
    dynamic = AtomicRef(build_dynamic(b"").dynamic)
    listener = RawListener(
        ("0.0.0.0", 0), node, ConfigIdentityProvider(dynamic), dynamic, insecure_plaintext=True
    )
    await listener.start()
    try:
        assert listener.listen_addrs[0].startswith("raw+tcp://0.0.0.0:")
        assert any("plaintext" in r.getMessage() for r in caplog.records)
    finally:
        await listener.close()
        await listener.close()  # idempotent


async def test_listen_addrs_report_the_real_port() -> None:
    async with raw_setup() as s:
        assert s.listener.listen_addrs == [f"raw+tcp://127.0.0.1:{s.port}"]
        assert s.port != 0


class FailingProvider(ConfigIdentityProvider):
    """Resolves like the config provider, except that token lookups fail or hang."""

    def __init__(self, dynamic: AtomicRef[DynamicConfig], mode: str) -> None:
        super().__init__(dynamic)
        self.mode = mode

    async def resolve_from_token(self, token: str, *, remote_ip: Any = None) -> Identity | None:
        if self.mode == "hang":
            await asyncio.sleep(60)
        raise IdentityBackendError("database unavailable")


@pytest.mark.parametrize("mode", ["error", "hang"])
async def test_identity_backend_failure_refuses_the_token(mode: str) -> None:
    async with raw_setup(auth_timeout=0.3) as s:
        listener = RawListener(
            ("127.0.0.1", 0), s.listener.node, FailingProvider(s.dynamic, mode), s.dynamic, auth_timeout=0.3
        )
        async with listener, raw_client(listener.ports[0]) as c:
            c.send(auth_token_frame(s.token()) + request_frame("/t/echo", {}))
            await assert_refused(c, "FORBIDDEN", "authentication failed")
        assert s.probe.runs == 0
