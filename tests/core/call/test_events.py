"""call-protocol.md §9: EventBus, pubsub over channels, the slow-subscriber policy (real socket pairs)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import test_peer_kit as kit
from call_helpers import frame

from alknet.core.auth.identity import Identity
from alknet.core.call import JSON_CODEC, CallError, EventEnvelope, FrameDecoder, encode_frame
from alknet.core.call.peer import CallPeer, ChannelLimits, ChannelStream
from alknet.core.events import EventBus, EventClient, check_event
from alknet.core.node import Node

pytestmark = pytest.mark.timeout(30)

F9 = b'{"type":"__subscribe","id":"","payload":{"type":"head.node.registered"}}'
F10 = b'{"type":"head.node.registered","id":"dev1","payload":{"node":"dev1","operations":["/dev1/fs/readFile"]}}'
SUBSCRIBER = Identity("SHA256:sub", ("events:subscribe",))
PUBSUB = Identity("SHA256:pubsub", ("events:*", "/*"))


class RawClient:
    """A channel end driven by hand: frames written and read as bytes (for exact bytes and stalls)."""

    def __init__(self, stream: ChannelStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(JSON_CODEC, 64 * 2**20)
        self.raw = bytearray()

    def send(self, body: bytes) -> None:
        self.stream.writer.write(frame(body))

    def send_env(self, env: EventEnvelope) -> None:
        self.stream.writer.write(encode_frame(env, JSON_CODEC))

    async def until(self, pred: Any, timeout: float = 5.0) -> list[EventEnvelope]:
        """Read frames until one satisfies ``pred``; returns all frames read."""
        out: list[EventEnvelope] = []
        async with asyncio.timeout(timeout):
            while True:
                for env in self.decoder.envelopes():
                    out.append(env)
                    if pred(env):
                        return out
                data = await self.stream.reader.read(65536)
                assert data, "channel closed"
                self.raw += data
                self.decoder.feed(data)

    def close(self) -> None:
        self.stream.writer.close()  # type: ignore[attr-defined]


async def raw_channel(node: Node, identity: Identity, **kw: Any) -> tuple[CallPeer, RawClient]:
    s, c = await kit.socket_streams()
    peer = CallPeer(s, node=node, identity=identity, **kw)
    peer.start()
    return peer, RawClient(c)


async def test_f9_then_registration_delivers_f10_and_topic_filter() -> None:
    head = Node("head", accept_workers=True)
    peer, raw = await raw_channel(head, SUBSCRIBER)
    raw.send(F9)
    p2, raw2 = await raw_channel(head, SUBSCRIBER)
    raw2.send(b'{"type":"__subscribe","id":"","payload":{"type":"head.node.registered","id":"dev2"}}')
    await kit.settle(lambda: head.bus.count(head._peers[peer]) == 1 and head.bus.count(head._peers[p2]) == 1)
    wnode = Node("dev1", kit.echo_registry())
    hp, wp = await kit.connect(head, kit.WORKER, client=wnode, client_kw={"trust": "head"})
    await wp.register("dev1", [kit.spec("/fs/readFile")])
    await raw.until(lambda e: e.type == "head.node.registered")
    assert bytes(raw.raw) == frame(F10)
    await asyncio.sleep(0.05)
    assert raw2.decoder.buffered == 0 and not raw2.raw  # the dev2 topic did not get it
    raw.close()
    raw2.close()
    await kit.close_all(wp, hp, peer, p2)
    assert not kit.leftover_tasks()


async def test_fan_out_no_echo_and_bus_delivery() -> None:
    node = Node("head")
    pairs = [await kit.connect(node, PUBSUB) for _ in range(5)]
    clients = [EventClient(cp) for _, cp in pairs]
    subs = [c.subscribe("jobs.done") for c in clients]
    local = node.bus.subscribe("jobs.done")
    await kit.settle(lambda: sum(node.bus.count(node._peers[sp]) for sp, _ in pairs) == 5)
    await clients[0].publish("jobs.done", {"job": 1}, id="j1")
    for sub in subs[1:]:
        env = await asyncio.wait_for(sub.__anext__(), 2)
        assert env == EventEnvelope("jobs.done", "j1", {"job": 1})
    assert await asyncio.wait_for(local.__anext__(), 2) == EventEnvelope("jobs.done", "j1", {"job": 1})
    await asyncio.sleep(0.05)
    assert subs[0]._items == deque_empty()  # no echo to the publisher
    assert node.bus.publish(EventEnvelope("jobs.done", "", 2)) == 6
    await local.aclose()
    for c in clients:
        await c.close()
    await kit.close_all(*(p for pair in pairs for p in pair))
    assert not kit.leftover_tasks()


def deque_empty() -> Any:
    from collections import deque

    return deque()


async def test_publish_and_subscribe_permissions() -> None:
    node = Node("head")
    narrow, raw = await raw_channel(node, Identity("SHA256:n", ("events:publish:jobs.started",)))
    sp, cp = await kit.connect(node, PUBSUB)
    listener = EventClient(cp).subscribe("jobs.done")
    await kit.settle(lambda: node.bus.count(node._peers[sp]) == 1)
    raw.send_env(EventEnvelope("jobs.done", "", {"x": 1}))
    got = await raw.until(lambda e: e.type == "__error")
    assert got[-1].payload == {
        "code": "FORBIDDEN",
        "message": "not allowed to publish jobs.done",
        "type": "jobs.done",
    }
    started = node.bus.subscribe("jobs.started")
    raw.send_env(EventEnvelope("jobs.started", "", {"x": 2}))
    assert (await asyncio.wait_for(started.__anext__(), 2)).payload == {"x": 2}
    assert not listener._items  # the refused jobs.done reached nobody
    await started.aclose()
    # missing subscribe scope
    raw.send(b'{"type":"__subscribe","id":"","payload":{"type":"jobs.done"}}')
    got = await raw.until(lambda e: e.type == "__error")
    assert got[-1].payload["code"] == "FORBIDDEN" and got[-1].payload["type"] == "jobs.done"
    assert node.bus.count(node._peers[narrow]) == 0
    # EventClient raises the refusal for its type
    nsp, ncp = await kit.connect(node, Identity("SHA256:m", ()))
    refused = EventClient(ncp).subscribe("jobs.done")
    with pytest.raises(CallError) as ei:
        await asyncio.wait_for(refused.__anext__(), 2)
    assert ei.value.code == "FORBIDDEN"
    raw.close()
    await kit.close_all(cp, sp, narrow, ncp, nsp)
    assert not kit.leftover_tasks()


async def test_subscription_limit_unsubscribe_and_close() -> None:
    node = Node("head", limits=ChannelLimits(max_pubsub_subscriptions=2))
    peer, raw = await raw_channel(node, PUBSUB)
    for t in ("a.1", "a.2", "a.2"):  # twice is idempotent
        raw.send_env(EventEnvelope("__subscribe", "", {"type": t}))
    raw.send_env(EventEnvelope("__subscribe", "", {"type": "a.3"}))
    got = await raw.until(lambda e: e.type == "__error")
    assert got[-1].payload["code"] == "INVALID_INPUT" and got[-1].payload["type"] == "a.3"
    events = node._peers[peer]
    assert events.subscriptions == 2
    raw.send_env(EventEnvelope("__unsubscribe", "", {"type": "a.1"}))
    raw.send_env(EventEnvelope("__unsubscribe", "", {"type": "nope"}))
    await kit.settle(lambda: events.subscriptions == 1)
    raw.send(b'{"type":"__subscribe","id":"","payload":{"type":"__x"}}')
    got = await raw.until(lambda e: e.type == "__error")
    assert got[-1].payload["code"] == "INVALID_INPUT"
    raw.close()
    await kit.settle(lambda: peer.closed)
    assert node.bus.count(events) == 0
    await peer.close()


async def test_stalled_subscriber_dropped_once_others_keep_receiving() -> None:
    limits = ChannelLimits(pubsub_queue=256, write_high_water=16 * 1024)
    node = Node("head", kit.echo_registry(), limits=limits)
    stalled, raw = await raw_channel(node, PUBSUB)
    raw.send(b'{"type":"__subscribe","id":"","payload":{"type":"load.tick"}}')
    raw.send(b'{"type":"__subscribe","id":"","payload":{"type":"other.tick"}}')
    healthy = [await kit.connect(node, PUBSUB) for _ in range(3)]
    clients = [EventClient(cp) for _, cp in healthy]
    subs = [c.subscribe("load.tick", queue=100_000) for c in clients]
    await kit.settle(lambda: node.bus.count(node._peers[stalled]) == 2)
    await kit.settle(lambda: all(node.bus.count(node._peers[sp]) == 1 for sp, _ in healthy))
    n, pad = 3000, "p" * 1000
    worst = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        node.bus.publish(EventEnvelope("load.tick", "", {"i": i, "pad": pad}))
        worst = max(worst, time.perf_counter() - t0)
        if i % 5 == 4:
            await asyncio.sleep(0)
    assert worst < 0.05  # publish never waits on the stalled channel
    for sub in subs:
        async with asyncio.timeout(10):
            got = [(await sub.__anext__()).payload["i"] for _ in range(n)]
        assert got == list(range(n))
    events = node._peers[stalled]
    assert events.subscriptions == 0 and events.dropped_total > 0
    # the stalled client reads again: exactly one __error, then its calls still work
    raw.send_env(
        EventEnvelope("call.requested", "r1", {"requestId": "r1", "operationId": "/echo/say", "input": "ok"})
    )
    frames = await raw.until(lambda e: e.type == "call.responded", timeout=20)
    errors = [e for e in frames if e.type == "__error"]
    assert len(errors) == 1
    assert errors[0].payload == {
        "code": "UNAVAILABLE",
        "message": "slow subscriber",
        "details": {"reason": "slow_subscriber", "dropped": errors[0].payload["details"]["dropped"]},
    }
    assert frames[-1].payload["output"] == "ok"
    raw.close()
    for c in clients:
        await c.close()
    await kit.close_all(stalled, *(p for pair in healthy for p in pair))
    assert not kit.leftover_tasks()


async def test_publish_latency_with_100_subscribers() -> None:
    bus = EventBus()
    subs = [bus.subscribe("t.x") for _ in range(100)]
    env = EventEnvelope("t.x", "", {"n": 1})
    t0 = time.perf_counter()
    for _ in range(200):
        assert bus.publish(env) == 100
    assert (time.perf_counter() - t0) / 200 < 0.001
    for s in subs:
        await s.aclose()


async def test_in_process_slow_subscriber_and_bad_publishes() -> None:
    bus = EventBus()
    sub = bus.subscribe("t.x", queue=4)
    other = bus.subscribe("t.x", "topic")
    for i in range(6):
        bus.publish(EventEnvelope("t.x", "topic", i))
    with pytest.raises(CallError) as ei:
        await sub.__anext__()
    assert ei.value.code == "UNAVAILABLE" and ei.value.details == {"reason": "slow_subscriber", "dropped": 5}
    assert [(await other.__anext__()).payload for _ in range(6)] == list(range(6))
    assert bus.publish(EventEnvelope("t.x", "elsewhere", 0)) == 0
    with pytest.raises(ValueError):
        bus.publish(EventEnvelope("x", "", object()))
    with pytest.raises(TypeError):
        bus.publish({"type": "x"})  # type: ignore[arg-type]
    for bad in (EventEnvelope("call.x", "", 1), EventEnvelope("__x", "", 1), EventEnvelope("a b", "", 1)):
        with pytest.raises(ValueError):
            check_event(bad)
    with pytest.raises(ValueError):
        bus.publish(EventEnvelope("t.x", "t" * 257, 1))
    async with bus.subscribe("t.y") as s2:
        bus.publish(EventEnvelope("t.y", "", 1))
        assert (await s2.__anext__()).payload == 1
    assert bus.publish(EventEnvelope("t.y", "", 1)) == 0
    await other.aclose()


async def test_event_client_fails_on_channel_close_and_worker_bus_gets_head_events() -> None:
    head = Node("head", accept_workers=True)
    worker = Node("dev1", kit.echo_registry())
    hp, wp = await kit.connect(head, kit.WORKER, client=worker, client_kw={"trust": "head"})
    on_worker = worker.bus.subscribe("jobs.x")
    head_events = EventClient(hp)  # the head subscribes to the worker's events over the same channel
    from_worker = head_events.subscribe("jobs.y")
    await kit.settle(lambda: worker.bus.count(worker._peers[wp]) == 1)
    worker.bus.publish(EventEnvelope("jobs.y", "", "from worker bus"))
    assert (await asyncio.wait_for(from_worker.__anext__(), 2)).payload == "from worker bus"
    on_head = head.bus.subscribe("jobs.x")
    await EventClient(wp).publish("jobs.x", "pushed")  # the worker's identity may not publish on the head
    # the head identity (*) may publish on the worker
    hp.post_envelope(EventEnvelope("jobs.x", "", "from head"))
    assert (await asyncio.wait_for(on_worker.__anext__(), 2)).payload == "from head"
    assert not on_head._items
    await on_head.aclose()
    await wp.close()
    with pytest.raises(CallError) as ei:
        await asyncio.wait_for(from_worker.__anext__(), 2)
    assert ei.value.code == "UNAVAILABLE"
    await on_worker.aclose()
    await hp.close()
    assert not kit.leftover_tasks()
