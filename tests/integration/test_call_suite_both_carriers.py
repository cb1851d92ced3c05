"""One call-protocol suite, unchanged, over both carriers of call-protocol.md §10 and both codecs:

- ``ssh``: a real ``SshServer`` whose ``alknet-control`` handler is ``node.serve_channel``; the client is alknet's
  ``SshClient`` opening ``direct-tcpip`` to ``alknet-control:<0|1>`` and wrapping it in a ``CallPeer``;
- ``raw``: a ``RawListener`` (``raw+tcp``) on the same node, provider, dynamic config and limiter, with an
  ``auth.token`` minted from the same key.

Calls, a batch, a subscription, error codes, aborts and cleanup; the identity a handler sees is the same on both
carriers (the SSH login identity of the key).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssh_server_kit import Harness, KeyPair, new_keypair

from alknet.core.auth.identity import Identity
from alknet.core.auth.token import mint_token
from alknet.core.call import (
    CallError,
    CallPeer,
    ChannelStream,
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
)
from alknet.core.node import Node
from alknet.core.raw import RawListener, open_raw_channel
from alknet.core.ssh.channels import CONTROL_CODECS
from alknet.core.ssh.client import ClientConnection

pytestmark = pytest.mark.timeout(60)

T = 10.0
SCOPES = ("/t/*", "relay:connect")
CARRIERS = [("ssh", "json"), ("ssh", "msgpack"), ("raw", "json"), ("raw", "msgpack")]
PORT_OF = {codec: port for port, codec in CONTROL_CODECS.items()}


@dataclass
class Probe:
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    transports: list[str] = field(default_factory=list)


def suite_registry(probe: Probe) -> OperationRegistry:
    reg = OperationRegistry()

    async def echo(input: Any, ctx: OperationContext) -> Any:
        return input

    async def whoami(input: Any, ctx: OperationContext) -> Any:
        return ctx.identity.to_json()

    async def fail(input: Any, ctx: OperationContext) -> Any:
        raise CallError("LOCKED", "vault locked", False)

    async def crash(input: Any, ctx: OperationContext) -> Any:
        raise ValueError("secret path /x")

    async def block(input: Any, ctx: OperationContext) -> Any:
        probe.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise

    async def count(input: Any, ctx: OperationContext) -> AsyncIterator[Any]:
        try:
            for i in range(input["n"]):
                yield {"i": i}
            if input.get("forever"):
                probe.started.set()
                await asyncio.sleep(60)
        finally:
            probe.closed.set()

    def spec(name: str, op_type: OperationType = OperationType.QUERY, **kw: Any) -> OperationSpec:
        return OperationSpec(name, name.split("/")[1], op_type, **kw)

    reg.register(spec("/t/echo"), echo)
    reg.register(spec("/t/whoami"), whoami)
    reg.register(spec("/t/fail"), fail)
    reg.register(spec("/t/crash"), crash)
    reg.register(spec("/t/block"), block)
    reg.register(
        spec(
            "/t/count",
            OperationType.SUBSCRIPTION,
            input_schema={
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 0}, "forever": {"type": "boolean"}},
                "required": ["n"],
            },
        ),
        count,
    )
    reg.register(spec("/other/echo"), echo)
    return reg


@dataclass
class Carrier:
    name: str
    codec: str
    peer: CallPeer
    node: Node
    probe: Probe
    identity: Identity


async def _ssh_peer(h: Harness, key: KeyPair, codec: str) -> tuple[CallPeer, ClientConnection]:
    client = h.alknet_client(key)
    conn = await asyncio.wait_for(client.connect(), T)
    reader, writer = await asyncio.wait_for(conn.ssh.open_connection("alknet-control", PORT_OF[codec]), T)
    return CallPeer(ChannelStream(reader, writer, codec)), conn


@pytest.fixture(params=CARRIERS, ids=[f"{c}-{k}" for c, k in CARRIERS])
async def carrier(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Carrier]:
    name, codec = request.param
    key = new_keypair()
    probe = Probe()
    node = Node(registry=suite_registry(probe))
    scopes = ",".join(SCOPES)
    async with Harness(tmp_path, authorized_keys=f'alknet-scopes="{scopes}" {key.line}\n') as h:
        h.srv.control.install(node.serve_channel)
        raw = RawListener(("127.0.0.1", 0), node, h.srv.provider, h.srv.dynamic, h.srv.limiter)
        await asyncio.wait_for(raw.start(), T)
        conn: ClientConnection | None = None
        try:
            if name == "ssh":
                peer, conn = await _ssh_peer(h, key, codec)
            else:
                stream, granted = await open_raw_channel(
                    "127.0.0.1", raw.ports[0], mint_token(key.key, int(time.time())), codec=codec, timeout=T
                )
                assert granted == Identity(key.fingerprint, SCOPES)
                peer = CallPeer(stream)
            async with peer:
                yield Carrier(name, codec, peer, node, probe, Identity(key.fingerprint, SCOPES))
        finally:
            if conn is not None:
                await asyncio.wait_for(conn.aclose(), T)
            await asyncio.wait_for(raw.close(), T)
            await asyncio.wait_for(node.close(), T)


async def _wait_until(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + T
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------------------------- the suite


async def test_calls_and_identity(carrier: Carrier) -> None:
    peer = carrier.peer
    assert peer.codec.name == carrier.codec
    listed = await asyncio.wait_for(peer.call("/services/list", {}), T)
    names = [op["name"] for op in listed["operations"]]
    assert names == sorted(names)
    assert {"/services/list", "/t/echo", "/t/count"} <= set(names)
    assert "/other/echo" not in names  # no path grant for /other
    value = {"text": "café\n", "n": [1, -2, 2**53, 1.5, None, True], "nested": {"a": {"b": []}}}
    assert await asyncio.wait_for(peer.call("/t/echo", value), T) == value
    assert await asyncio.wait_for(peer.call("/t/echo"), T) is None
    # the handler sees the session identity, never a payload one, identical over both carriers
    whoami = await asyncio.wait_for(peer.call("/t/whoami", {"identity": {"id": "root", "scopes": ["*"]}}), T)
    assert Identity.from_json(whoami) == carrier.identity
    node_peers = carrier.node.channels
    assert len(node_peers) == 1 and node_peers[0].identity == carrier.identity
    assert node_peers[0].transport == "tcp"


async def test_batch_keeps_order(carrier: Carrier) -> None:
    results = await asyncio.wait_for(
        carrier.peer.batch([("/t/echo", i) for i in range(200)] + [("/t/fail", None)], concurrency=32), T
    )
    assert [r.output for r in results[:200]] == list(range(200))
    assert results[200].error is not None and results[200].error.code == "LOCKED"


async def test_subscription(carrier: Carrier) -> None:
    items = []
    async with carrier.peer.subscribe("/t/count", {"n": 5}) as sub:
        async for item in sub:
            items.append(item)
    assert items == [{"i": i} for i in range(5)]
    assert carrier.probe.closed.is_set()


async def test_error_codes(carrier: Carrier) -> None:
    peer = carrier.peer
    cases: list[tuple[str, Any, str]] = [
        ("/t/fail", None, "LOCKED"),
        ("/t/nope", None, "NOT_FOUND"),
        ("/nope", None, "NOT_FOUND"),
        ("/other/echo", 1, "FORBIDDEN"),
        ("/t/crash", None, "INTERNAL"),
    ]
    for op, value, code in cases:
        with pytest.raises(CallError) as err:
            await asyncio.wait_for(peer.call(op, value), T)
        assert err.value.code == code, op
    with pytest.raises(CallError) as err:
        await asyncio.wait_for(peer.call("/t/fail"), T)
    assert (err.value.message, err.value.retryable) == ("vault locked", False)
    with pytest.raises(CallError) as err:
        await asyncio.wait_for(peer.call("/t/crash"), T)
    assert (err.value.message, err.value.retryable) == ("internal error", False)
    with pytest.raises(CallError) as err:  # schema validation of the subscription input
        async with peer.subscribe("/t/count", {"n": -1}) as sub:
            async for _ in sub:
                pass
    assert err.value.code == "INVALID_INPUT"
    with pytest.raises(CallError) as err:  # the callee's deadline
        await peer.call("/t/block", None, timeout=0.2)
    assert err.value.code == "TIMEOUT"
    # the channel is still fine
    assert await asyncio.wait_for(peer.call("/t/echo", "after"), T) == "after"


async def test_abort_of_a_call_and_of_a_subscription(carrier: Carrier) -> None:
    peer, probe = carrier.peer, carrier.probe
    task = asyncio.ensure_future(peer.call("/t/block", None, timeout=T))
    await asyncio.wait_for(probe.started.wait(), T)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(probe.cancelled.wait(), T)  # the callee's handler was cancelled
    assert len(peer.pending) == 0
    probe.started.clear()
    # leaving a subscription early sends call.aborted: the generator's finally runs on the callee
    async with peer.subscribe("/t/count", {"n": 2, "forever": True}) as sub:
        got = [await asyncio.wait_for(sub.__anext__(), T) for _ in range(2)]
        await asyncio.wait_for(probe.started.wait(), T)
    assert got == [{"i": 0}, {"i": 1}]
    await asyncio.wait_for(probe.closed.wait(), T)
    # a local abort by request id
    probe.closed.clear()
    probe.started.clear()
    sub2 = peer.open_subscription("/t/count", {"n": 0, "forever": True})
    rid = sub2.request_id
    await asyncio.wait_for(probe.started.wait(), T)
    assert peer.abort(rid) is True
    with pytest.raises(CallError) as err:
        async for _ in sub2:
            pass
    assert err.value.code == "ABORTED"
    assert peer.abort(rid) is False
    await asyncio.wait_for(probe.closed.wait(), T)  # the callee saw call.aborted
    assert await asyncio.wait_for(peer.call("/t/echo", "still"), T) == "still"


async def test_close_cleans_up_both_ends(carrier: Carrier) -> None:
    peer = carrier.peer
    pending = [asyncio.ensure_future(peer.call("/t/block", None, timeout=T)) for _ in range(3)]
    await asyncio.wait_for(carrier.probe.started.wait(), T)
    await asyncio.wait_for(peer.close(), T)
    for task in pending:
        with pytest.raises(CallError) as err:
            await task
        assert err.value.code == "UNAVAILABLE"
    await asyncio.wait_for(carrier.probe.cancelled.wait(), T)
    await _wait_until(lambda: carrier.node.channels == [], "the node dropped the channel")
