"""call-protocol.md §5 (and §2, §3 where a channel is needed): CallPeer over real socket pairs."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import test_peer_kit as kit

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    JSON_CODEC,
    CallError,
    EventEnvelope,
    FrameReader,
    OperationContext,
    OperationRegistry,
    call_completed,
    call_requested,
    call_responded,
    deadline_after,
)
from alknet.core.call.peer import CallPeer, ChannelLimits, ChannelStream, ChannelWriter

pytestmark = pytest.mark.timeout(30)


class Probe:
    """Records handler starts and cancellations."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.running = 0
        self.peak = 0
        self.ids: list[str] = []
        self.event = asyncio.Event()
        self.gate = asyncio.Event()


def probe_registry(probe: Probe) -> OperationRegistry:
    async def sleep(input: Any, ctx: OperationContext) -> Any:
        probe.started += 1
        probe.ids.append(ctx.request_id)
        probe.running += 1
        probe.peak = max(probe.peak, probe.running)
        probe.event.set()
        try:
            await asyncio.sleep(input["s"])
        except asyncio.CancelledError:
            probe.cancelled += 1
            raise
        finally:
            probe.running -= 1
        if input.get("fail"):
            raise CallError("LOCKED", "vault locked", False)
        return input.get("v", "done")

    async def gated(input: Any, ctx: OperationContext) -> Any:
        probe.started += 1
        await probe.gate.wait()
        return input

    async def once_then_sleep(input: Any, ctx: OperationContext) -> AsyncIterator[Any]:
        probe.started += 1
        try:
            yield 1
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            probe.cancelled += 1
            raise
        finally:
            probe.event.set()

    async def flood(input: Any, ctx: OperationContext) -> AsyncIterator[Any]:
        for i in range(input["n"]):
            yield i

    async def secret(input: Any, ctx: OperationContext) -> Any:
        raise ValueError("secret path /x")

    async def big(input: Any, ctx: OperationContext) -> Any:
        return "x" * input["n"]

    async def whoami(input: Any, ctx: OperationContext) -> Any:
        return {"id": ctx.identity.id, "trusted": ctx.trusted, "metadata": dict(ctx.metadata)}

    reg = kit.echo_registry()
    reg.register(kit.spec("/t/sleep"), sleep)
    reg.register(kit.spec("/t/gated"), gated)
    reg.register(kit.spec("/t/once", "subscription"), once_then_sleep)
    reg.register(kit.spec("/t/flood", "subscription"), flood)
    reg.register(kit.spec("/t/secret"), secret)
    reg.register(kit.spec("/t/big"), big)
    reg.register(kit.spec("/t/whoami"), whoami)
    return reg


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def pair(probe: Probe) -> AsyncIterator[tuple[CallPeer, CallPeer]]:
    """(callee end, caller end) with writers spied on."""
    sp, cp = await kit.connect(probe_registry(probe), kit.CLIENT, spy=True)
    try:
        yield sp, cp
    finally:
        await kit.close_all(cp, sp)
        assert not kit.leftover_tasks()


def wire(peer: CallPeer) -> list[tuple[str, str]]:
    return peer.writer._writer.types()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ deadlines


async def test_timeout(pair: tuple[CallPeer, CallPeer], probe: Probe) -> None:
    sp, cp = pair
    t0 = time.monotonic()
    with pytest.raises(CallError) as ei:
        await cp.call("/t/sleep", {"s": 1.0}, timeout=0.2)
    elapsed = time.monotonic() - t0
    assert ei.value.code == "TIMEOUT" and 0.19 <= elapsed <= 0.35
    await kit.settle(lambda: probe.cancelled == 1 and len(sp.inbound) == 0)
    assert len(cp.pending) == 0


async def test_past_deadline_never_runs_the_handler(pair: tuple[CallPeer, CallPeer], probe: Probe) -> None:
    sp, cp = pair
    past = int(time.time() * 1000) - 1000
    env = call_requested("00000000-0000-4000-8000-0000000000a1", "/t/sleep", {"s": 0}, deadline=past)
    cp.post_envelope(env)
    reply = await _next_frame_on(sp, cp, "call.error")
    assert reply.payload["code"] == "TIMEOUT" and reply.payload["details"] == {"deadline": past}
    assert probe.started == 0


async def _next_frame_on(sp: CallPeer, cp: CallPeer, type: str) -> EventEnvelope:
    """The first frame of ``type`` the callee wrote."""
    async with asyncio.timeout(2):
        while True:
            for e in sp.writer._writer.frames():  # type: ignore[attr-defined]
                if e.type == type:
                    return e
            await asyncio.sleep(0.005)


async def test_idle_timeout(pair: tuple[CallPeer, CallPeer], probe: Probe) -> None:
    _sp, cp = pair
    items: list[Any] = []
    with pytest.raises(CallError) as ei:
        async for item in cp.subscribe("/t/once", {}, idle_timeout=0.1):
            items.append(item)
    assert items == [1] and ei.value.code == "TIMEOUT"
    await kit.settle(lambda: probe.cancelled == 1)
    assert any(t == "call.aborted" for t, _ in wire(cp))


# ----------------------------------------------------------------------------- cancellation, abort


async def test_cancelling_the_caller_sends_aborted(pair: tuple[CallPeer, CallPeer], probe: Probe) -> None:
    _sp, cp = pair
    task = asyncio.create_task(cp.call("/t/sleep", {"s": 5}))
    await asyncio.wait_for(probe.event.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(cp.pending) == 0
    await kit.settle(lambda: probe.cancelled == 1)
    frames = wire(cp)
    rid = frames[0][1]
    assert ("call.aborted", rid) in frames


async def test_local_abort(pair: tuple[CallPeer, CallPeer], probe: Probe) -> None:
    _sp, cp = pair
    task = asyncio.create_task(cp.call("/t/sleep", {"s": 5}))
    await asyncio.wait_for(probe.event.wait(), 2)
    rid = wire(cp)[0][1]
    assert cp.abort(rid) is True
    with pytest.raises(CallError) as ei:
        await task
    assert ei.value.code == "ABORTED" and len(cp.pending) == 0
    await kit.settle(lambda: probe.cancelled == 1)
    await asyncio.sleep(0.01)
    before = len(cp.writer._writer.writes)  # type: ignore[attr-defined]
    assert cp.abort("no-such-id") is False
    await asyncio.sleep(0.01)
    assert len(cp.writer._writer.writes) == before  # type: ignore[attr-defined]
    assert ("call.aborted", rid) in wire(cp)


async def test_unknown_ids_and_completed_first(pair: tuple[CallPeer, CallPeer]) -> None:
    sp, cp = pair
    n = len(sp.writer._writer.writes)  # type: ignore[attr-defined]
    cp.post_envelope(call_responded("00000000-0000-4000-8000-00000000dead", 1))
    cp.post_envelope(EventEnvelope("call.aborted", "", {"requestId": "nobody"}))
    await asyncio.sleep(0.05)
    assert len(sp.writer._writer.writes) == n and not sp.closed  # type: ignore[attr-defined]
    # completed before any response on a plain call -> ABORTED
    rid = "00000000-0000-4000-8000-0000000000c1"
    fut = cp.pending.add_call(rid, deadline_after(5))
    sp.post_envelope(call_completed(rid))
    with pytest.raises(CallError) as ei:
        await asyncio.wait_for(fut, 2)
    assert ei.value.code == "ABORTED" and ei.value.message == "completed without response"


async def test_both_directions_same_id() -> None:
    async def who(input: Any, ctx: OperationContext) -> Any:
        await asyncio.sleep(0.02)
        return ctx.identity.id

    ra, rb = OperationRegistry(), OperationRegistry()
    ra.register(kit.spec("/x/who"), who)
    rb.register(kit.spec("/x/who"), who)
    a, b = await kit.connect(
        ra, Identity("SHA256:B", ("*",)), client=rb, client_identity=Identity("SHA256:A", ("*",))
    )
    fa = a.pending.add_call("x", deadline_after(5))
    fb = b.pending.add_call("x", deadline_after(5))
    a.post_envelope(call_requested("x", "/x/who", None))
    b.post_envelope(call_requested("x", "/x/who", None))
    assert await asyncio.wait_for(fa, 2) == "SHA256:A"  # b served a's call, seeing a as SHA256:A
    assert await asyncio.wait_for(fb, 2) == "SHA256:B"
    await kit.close_all(a, b)


# ----------------------------------------------------------------------------------------- closing


async def test_close_fails_all_pending_and_cancels_handlers(probe: Probe) -> None:
    sp, cp = await kit.connect(probe_registry(probe), kit.CLIENT)
    calls = [asyncio.create_task(cp.call("/t/sleep", {"s": 30})) for _ in range(10)]
    subs = [cp.subscribe("/t/once", {}) for _ in range(3)]
    await kit.settle(lambda: probe.started == 13 and len(sp.inbound) == 13)
    await sp.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors: list[Any] = list(results)
    for sub in subs:
        try:
            async for _ in sub:
                pass
        except CallError as exc:
            errors.append(exc)
    assert len(errors) == 13
    assert all(isinstance(e, CallError) and e.code == "UNAVAILABLE" and e.retryable for e in errors)
    await kit.settle(lambda: cp.closed)
    assert probe.cancelled == 13 and len(sp.inbound) == 0 and len(cp.pending) == 0
    await cp.close()
    assert not kit.leftover_tasks()
    with pytest.raises(CallError) as ei:
        await cp.call("/echo/say", 1)
    assert ei.value.code == "UNAVAILABLE"


async def test_serve_forever_returns_on_eof() -> None:
    s, c = await kit.socket_streams()
    peer = CallPeer(s, registry=kit.echo_registry())
    server = asyncio.create_task(peer.serve_forever())
    c.writer.close()  # type: ignore[attr-defined]
    await asyncio.wait_for(server, 2)
    assert peer.closed and peer.close_reason == "eof"
    assert not kit.leftover_tasks()


async def test_malformed_frame_closes_only_its_channel(probe: Probe) -> None:
    from alknet.core.node import Node

    node = Node("head", probe_registry(probe))
    s1, c1 = await kit.socket_streams()
    bad = CallPeer(s1, node=node, identity=kit.CLIENT)
    bad.start()
    good_s, good = await kit.connect(node, kit.CLIENT)
    pending = asyncio.create_task(good.call("/t/sleep", {"s": 0.2, "v": "survived"}))
    await asyncio.wait_for(probe.event.wait(), 2)
    c1.writer.write(b"\x00\x00\x00\x05[1,2]")  # a JSON body that is not an object
    assert await asyncio.wait_for(c1.reader.read(), 2) == b""  # type: ignore[attr-defined]
    await kit.settle(lambda: bad.closed)
    assert bad.close_reason == "protocol error"
    assert await pending == "survived"
    assert await good.call("/echo/say", "still here") == "still here"
    c1.writer.close()  # type: ignore[attr-defined]
    await kit.close_all(bad, good, good_s)
    assert not kit.leftover_tasks()


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x00",  # empty frame
        b"\x01\x00\x00\x01",  # over max_frame
        b"\x00\x00\x00\x02{}",  # no envelope keys
        b'\x00\x00\x00\x3b{"type":"call.requested","id":"","payload":{"requestId":""}}',
    ],
)
async def test_protocol_errors_close_the_channel_sending_nothing(data: bytes) -> None:
    s, c = await kit.socket_streams(spy=True)
    peer = CallPeer(s, registry=kit.echo_registry())
    peer.start()
    c.writer.write(data)
    assert await asyncio.wait_for(c.reader.read(), 2) == b""  # type: ignore[attr-defined]
    await kit.settle(lambda: peer.closed)
    assert s.writer.writes == []  # type: ignore[attr-defined]
    c.writer.close()  # type: ignore[attr-defined]
    await peer.close()


async def test_bad_request_rows_keep_the_channel_open(pair: tuple[CallPeer, CallPeer]) -> None:
    sp, cp = pair
    rows = [
        EventEnvelope("call.requested", "other", {"requestId": "r1", "operationId": "/echo/say", "input": 1}),
        EventEnvelope("call.requested", "", {"requestId": "r2", "input": 1}),
        EventEnvelope("call.requested", "", {"requestId": "r3", "operationId": "/echo/say", "deadline": -1}),
        EventEnvelope(
            "call.requested", "", {"requestId": "r4", "operationId": "/echo/say", "idleTimeout": 0}
        ),
        EventEnvelope("call.requested", "", {"requestId": "r5", "operationId": "/echo/say", "metadata": [1]}),
    ]
    for env in rows:
        cp.post_envelope(env)
    await kit.settle(lambda: len([e for e in sp.writer._writer.frames() if e.type == "call.error"]) == 5)  # type: ignore[attr-defined]
    codes = {e.payload["requestId"]: e.payload["code"] for e in sp.writer._writer.frames()}  # type: ignore[attr-defined]
    assert codes == dict.fromkeys(("r1", "r2", "r3", "r4", "r5"), "PROTOCOL_ERROR")
    assert await cp.call("/echo/say", "open") == "open"


async def test_duplicate_live_request_id(pair: tuple[CallPeer, CallPeer], probe: Probe) -> None:
    sp, cp = pair
    rid = "00000000-0000-4000-8000-0000000000d1"
    fut = cp.pending.add_call(rid, deadline_after(5))
    cp.post_envelope(call_requested(rid, "/t/sleep", {"s": 0.2, "v": "original"}))
    await asyncio.wait_for(probe.event.wait(), 2)
    cp.post_envelope(call_requested(rid, "/t/sleep", {"s": 0, "v": "dup"}))
    with pytest.raises(CallError) as ei:
        await asyncio.wait_for(fut, 2)
    assert ei.value.code == "PROTOCOL_ERROR"
    await kit.settle(lambda: any(e.type == "call.responded" for e in sp.writer._writer.frames()))  # type: ignore[attr-defined]
    assert probe.started == 1


# ----------------------------------------------------------------------------------- errors, sizes


async def test_internal_errors_hide_details_and_codes_pass_through(pair: tuple[CallPeer, CallPeer]) -> None:
    sp, cp = pair
    with pytest.raises(CallError) as ei:
        await cp.call("/t/secret", {})
    assert ei.value == CallError("INTERNAL", "internal error", False)
    assert b"secret" not in b"".join(sp.writer._writer.writes)  # type: ignore[attr-defined]
    with pytest.raises(CallError) as ei:
        await cp.call("/t/sleep", {"s": 0, "fail": True})
    assert ei.value == CallError("LOCKED", "vault locked", False)
    with pytest.raises(CallError) as ei:
        await cp.call("/no/such", {})
    assert ei.value.code == "NOT_FOUND"


async def test_oversize_input_and_output() -> None:
    limits = ChannelLimits(max_frame=4096)
    sp, cp = await kit.connect(
        probe_registry(Probe()),
        kit.CLIENT,
        spy=True,
        server_kw={"limits": limits},
        client_kw={"limits": limits},
    )
    with pytest.raises(CallError) as ei:
        await cp.call("/echo/say", "y" * 5000)
    assert ei.value.code == "INVALID_INPUT" and ei.value.details["limit"] == 4096
    assert cp.writer._writer.writes == []  # type: ignore[attr-defined]
    with pytest.raises(CallError) as ei:
        await cp.call("/t/big", {"n": 5000})
    assert ei.value.code == "INTERNAL" and ei.value.details["reason"] == "output too large"
    with pytest.raises(CallError) as ei:
        await cp.call("/echo/say", {1, 2})
    assert ei.value.code == "INVALID_INPUT"
    await kit.close_all(cp, sp)


async def test_payload_identity_and_reserved_metadata_are_ignored(pair: tuple[CallPeer, CallPeer]) -> None:
    _sp, cp = pair
    rid = "00000000-0000-4000-8000-0000000000e1"
    fut = cp.pending.add_call(rid, deadline_after(5))
    payload = {
        "requestId": rid,
        "operationId": "/t/whoami",
        "input": None,
        "metadata": {"alknet.identity": {"id": "root", "scopes": ["*"]}, "alknet.hops": 3, "k": "v"},
        "identity": {"id": "root", "scopes": ["*"]},
    }
    cp.post_envelope(EventEnvelope("call.requested", rid, payload))
    out = await asyncio.wait_for(fut, 2)
    assert out == {"id": kit.CLIENT.id, "trusted": False, "metadata": {"k": "v"}}


# --------------------------------------------------------------------------- flow control, batching


async def test_inbound_limit() -> None:
    limits = ChannelLimits(max_inbound_calls=1024)
    probe = Probe()
    sp, cp = await kit.connect(probe_registry(probe), kit.CLIENT, server_kw={"limits": limits})
    calls = [asyncio.create_task(cp.call("/t/gated", i)) for i in range(1024)]
    await kit.settle(lambda: probe.started == 1024, timeout=10)
    with pytest.raises(CallError) as ei:
        await cp.call("/t/gated", -1)
    assert ei.value == CallError("UNAVAILABLE", "too many concurrent calls", True)
    probe.gate.set()
    assert await asyncio.gather(*calls) == list(range(1024))
    await kit.close_all(cp, sp)


async def test_slow_consumer(pair: tuple[CallPeer, CallPeer]) -> None:
    sp, cp = pair
    sub = cp.subscribe("/t/flood", {"n": 10_000})
    t0 = time.monotonic()
    assert await cp.call("/echo/say", "meanwhile") == "meanwhile"
    assert time.monotonic() - t0 < 0.1
    await kit.settle(lambda: sub.done, timeout=10)
    t0 = time.monotonic()
    assert await cp.call("/echo/say", "quick") == "quick"
    assert time.monotonic() - t0 < 0.1
    assert sp.writer.buffered < 1_000_000  # the callee stopped producing: nothing piles up
    items = []
    with pytest.raises(CallError) as ei:
        async for item in sub:
            items.append(item)
    assert ei.value.code == "UNAVAILABLE" and ei.value.details == {"reason": "slow_consumer"}
    assert len(items) == 256 and items == list(range(256))
    await kit.settle(lambda: len(sp.inbound) == 0)


async def test_batch_concurrency_order_and_failure(pair: tuple[CallPeer, CallPeer], probe: Probe) -> None:
    _sp, cp = pair
    calls = [("/t/sleep", {"s": 0.01, "v": i, "fail": i == 37}) for i in range(100)]
    results = await cp.batch(calls, concurrency=8)
    assert probe.peak <= 8 and probe.started == 100
    assert [r.output for r in results if r.ok] == [i for i in range(100) if i != 37]
    assert results[37].error == CallError("LOCKED", "vault locked", False)
    assert all(r.source == "remote" for r in results)


async def test_write_coalescing() -> None:
    sp, cp = await kit.connect(kit.echo_registry(), kit.CLIENT, spy=True)
    await asyncio.sleep(0.01)
    spy = cp.writer._writer  # type: ignore[attr-defined]
    before = len(spy.writes)
    calls = [asyncio.ensure_future(cp.call("/echo/say", i)) for i in range(100)]
    assert await asyncio.gather(*calls) == list(range(100))
    requests = [w for w in spy.writes[before:] if b"call.requested" in w]
    assert 1 <= len(requests) <= 2
    await kit.close_all(cp, sp)


async def test_a_lone_frame_leaves_at_once_and_the_rest_together() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(bytes(data))

        async def drain(self) -> None:
            return None

    rec = Recorder()
    cw = ChannelWriter(rec, JSON_CODEC)
    cw.start()
    await asyncio.sleep(0)  # the flushing task is idle now
    frames = [cw.encode(EventEnvelope("x", "", i)) for i in range(4)]
    assert cw.post_frame(frames[0])
    assert rec.writes == [frames[0]]  # written before any loop iteration
    cw.post_frame(frames[1])
    cw.post_frame(frames[2])
    assert rec.writes == [frames[0]]  # queued behind it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert rec.writes == [frames[0], frames[1] + frames[2]]  # one write for the rest
    cw.rearm()
    cw.post_frame(frames[3])
    assert rec.writes[-1] == frames[3]
    cw.close()
    await cw.wait_closed()
    assert b"".join(rec.writes) == b"".join(frames)


async def test_a_failing_direct_write_closes_the_writer() -> None:
    class Broken:
        def write(self, data: bytes) -> None:
            raise BrokenPipeError("gone")

        async def drain(self) -> None:
            return None

    errors: list[BaseException] = []
    cw = ChannelWriter(Broken(), JSON_CODEC, on_error=errors.append)
    cw.start()
    await asyncio.sleep(0)
    assert cw.post(EventEnvelope("x", "", 1)) is False
    assert cw.closed and isinstance(errors[0], BrokenPipeError)
    assert cw.post(EventEnvelope("x", "", 2)) is False
    await cw.wait_closed()


async def test_writer_backpressure_blocks_sender_only() -> None:
    class Stalled:
        def __init__(self) -> None:
            self.data = bytearray()
            self.gate = asyncio.Event()

        def write(self, data: bytes) -> None:
            self.data += data

        async def drain(self) -> None:
            await self.gate.wait()

    w = Stalled()
    cw = ChannelWriter(w, JSON_CODEC, high_water=1024)
    cw.start()
    env = EventEnvelope("x", "", "y" * 600)
    await cw.send(env)  # first frame goes to the transport, whose drain then blocks
    await asyncio.sleep(0.01)
    await cw.send(env)
    blocked = asyncio.create_task(cw.send(env))  # 2 frames queued > high water
    await asyncio.sleep(0.01)
    assert not blocked.done() and cw.buffered > 1024
    assert cw.post(env)  # posting never waits
    w.gate.set()
    await asyncio.wait_for(blocked, 1)
    cw.close()
    await cw.wait_closed()
    out = [e.payload for e in await _decode(bytes(w.data))]
    assert len(out) == 4


async def _decode(data: bytes) -> list[EventEnvelope]:
    class R:
        def __init__(self) -> None:
            self.d = data

        async def read(self, n: int = -1) -> bytes:
            d, self.d = self.d, b""
            return d

    fr, out = FrameReader(R(), JSON_CODEC), []
    while (e := await fr.read()) is not None:
        out.append(e)
    return out


async def test_msgpack_channel_and_subscription(probe: Probe) -> None:
    sp, cp = await kit.connect(probe_registry(probe), kit.CLIENT, codec="msgpack")
    assert await cp.call("/echo/say", {"n": 2**63 - 1}) == {"n": 2**63 - 1}
    assert [x async for x in cp.subscribe("/echo/count", {"n": 4})] == [0, 1, 2, 3]
    await kit.close_all(cp, sp)


async def test_peer_without_registry_answers_not_found() -> None:
    a, b = await kit.connect(None, kit.CLIENT, client=kit.echo_registry())
    with pytest.raises(CallError) as ei:
        await b.call("/echo/say", 1)
    assert ei.value.code == "NOT_FOUND"
    assert await a.call("/echo/say", 2) == 2
    await kit.close_all(a, b)


async def test_subscription_garbage_collected_sends_abort(
    pair: tuple[CallPeer, CallPeer], probe: Probe
) -> None:
    _sp, cp = pair
    sub = cp.subscribe("/t/once", {})
    assert await sub.__anext__() == 1
    del sub
    gc.collect()
    await kit.settle(lambda: probe.cancelled == 1)
    assert len(cp.pending) == 0


def test_channel_limits_validation() -> None:
    assert ChannelLimits().max_frame == 16 * 2**20
    for bad in ({"max_frame": 512}, {"max_inbound_calls": 0}, {"default_call_timeout": 0}):
        with pytest.raises(ValueError):
            ChannelLimits(**bad)  # type: ignore[arg-type]


async def test_stream_object_shapes() -> None:
    class Info:
        identity = Identity("SHA256:info", ("/*",))
        transport = "tcp"
        remote_addr = "127.0.0.1"

    class ControlStreamLike:
        def __init__(self, s: ChannelStream) -> None:
            self.reader, self.writer, self.codec, self.info = s.reader, s.writer, "msgpack", Info()

    s, c = await kit.socket_streams("msgpack")
    p = CallPeer(ControlStreamLike(s), registry=kit.echo_registry())
    assert p.identity.id == "SHA256:info" and p.transport == "tcp" and p.codec.name == "msgpack"
    q = CallPeer(c)
    async with p, q:
        assert await q.call("/echo/say", "hi") == "hi"
    assert not kit.leftover_tasks()


async def test_handler_internal_cancellation_is_an_internal_error() -> None:
    async def inner_cancel(input: Any, ctx: OperationContext) -> Any:
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        return await fut  # CancelledError raised inside the handler, the task itself was not cancelled

    reg = OperationRegistry()
    reg.register(kit.spec("/c/x"), inner_cancel)
    sp, cp = await kit.connect(reg, kit.CLIENT)
    with pytest.raises(CallError) as ei:
        await cp.call("/c/x", None, timeout=5)
    assert ei.value == CallError("INTERNAL", "internal error", False)
    await kit.close_all(cp, sp)


async def test_preread_bytes_are_served_first() -> None:
    from alknet.core.call import encode_frame

    s, c = await kit.socket_streams("msgpack")
    from alknet.core.call import MSGPACK_CODEC

    early = encode_frame(call_requested("r-early", "/echo/say", "pipelined"), MSGPACK_CODEC)
    peer = CallPeer(s, registry=kit.echo_registry(), identity=kit.CLIENT, preread=early[:7])
    peer.start()
    c.writer.write(early[7:])
    reader = FrameReader(c.reader, MSGPACK_CODEC)
    env = await asyncio.wait_for(reader.read(), 2)
    assert env is not None and env.payload == {"requestId": "r-early", "output": "pipelined"}
    c.writer.close()  # type: ignore[attr-defined]
    await peer.close()
