"""Callee-side deadlines (one timer per channel) and burst slicing of CallPeer, over real socket pairs.

The requests are posted as raw ``call.requested`` frames, so the caller's own pending map never times out
first: every ``TIMEOUT`` seen here was sent by the callee.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import test_peer_kit as kit

from alknet.core.call import EventEnvelope, OperationContext, call_aborted, call_requested
from alknet.core.call.peer import CallPeer

pytestmark = pytest.mark.timeout(30)


def _rid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


class Cancels:
    def __init__(self) -> None:
        self.cancelled: list[str] = []


def _registry(cancels: Cancels) -> Any:
    async def sleep(input: Any, ctx: OperationContext) -> Any:
        try:
            await asyncio.sleep(input["s"])
        except asyncio.CancelledError:
            cancels.cancelled.append(ctx.request_id)
            raise
        return "slept"

    return kit.echo_registry(**{"/t/sleep": ("query", sleep)})


@pytest.fixture
async def pair() -> AsyncIterator[tuple[CallPeer, CallPeer, Cancels]]:
    cancels = Cancels()
    sp, cp = await kit.connect(_registry(cancels), kit.CLIENT, spy=True)
    try:
        yield sp, cp, cancels
    finally:
        await kit.close_all(cp, sp)
        assert not kit.leftover_tasks()


def _sent(sp: CallPeer) -> list[EventEnvelope]:
    return sp.writer._writer.frames()  # type: ignore[attr-defined, no-any-return]


async def _wait_for(pred: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def _ms(delay: float) -> int:
    return int((time.time() + delay) * 1000)


async def test_staggered_deadlines_expire_in_order_and_not_early(
    pair: tuple[CallPeer, CallPeer, Cancels],
) -> None:
    sp, cp, cancels = pair
    deadlines = {_rid(1): _ms(0.30), _rid(2): _ms(0.10), _rid(3): _ms(0.20)}
    for rid, dl in deadlines.items():
        cp.post_envelope(call_requested(rid, "/t/sleep", {"s": 5}, deadline=dl))
    seen: dict[str, float] = {}

    def errors() -> list[EventEnvelope]:
        out = [e for e in _sent(sp) if e.type == "call.error"]
        for e in out:
            seen.setdefault(e.id, time.time())
        return out

    await _wait_for(lambda: len(errors()) == 3)
    got = errors()
    assert [e.id for e in got] == [_rid(2), _rid(3), _rid(1)]
    for e in got:
        assert e.payload["code"] == "TIMEOUT"
        assert e.payload["details"] == {"deadline": deadlines[e.id]}
        assert seen[e.id] * 1000 >= deadlines[e.id] - 2  # never answered before its deadline
    await _wait_for(lambda: sorted(cancels.cancelled) == sorted(deadlines))
    assert len(sp.inbound) == 0


async def test_a_later_earlier_deadline_rearms_the_timer(pair: tuple[CallPeer, CallPeer, Cancels]) -> None:
    sp, cp, _ = pair
    cp.post_envelope(call_requested(_rid(1), "/t/sleep", {"s": 5}, deadline=_ms(2.0)))
    await _wait_for(lambda: len(sp.inbound) == 1)
    cp.post_envelope(call_requested(_rid(2), "/t/sleep", {"s": 5}, deadline=_ms(0.1)))
    t0 = time.monotonic()
    await _wait_for(lambda: any(e.type == "call.error" for e in _sent(sp)))
    assert time.monotonic() - t0 < 1.0
    assert [(e.type, e.id) for e in _sent(sp)] == [("call.error", _rid(2))]
    assert _rid(1) in sp.inbound  # the later call keeps running


async def test_fast_calls_leave_no_deadline_state(pair: tuple[CallPeer, CallPeer, Cancels]) -> None:
    sp, cp, _ = pair
    outs = await asyncio.gather(*(cp.call("/echo/say", i, timeout=30) for i in range(200)))
    assert outs == list(range(200))
    assert sp._deadlines == {} and sp._expired == set()  # nothing kept per finished call


async def test_an_aborted_call_sends_nothing_at_its_deadline(
    pair: tuple[CallPeer, CallPeer, Cancels],
) -> None:
    sp, cp, cancels = pair
    cp.post_envelope(call_requested(_rid(7), "/t/sleep", {"s": 5}, deadline=_ms(0.15)))
    await _wait_for(lambda: _rid(7) in sp.inbound)
    cp.post_envelope(call_aborted(_rid(7)))
    await _wait_for(lambda: cancels.cancelled == [_rid(7)])
    await asyncio.sleep(0.3)  # past the deadline
    assert _sent(sp) == []
    assert len(sp.inbound) == 0


async def test_a_handler_that_outlives_the_channel_close_sends_nothing(
    pair: tuple[CallPeer, CallPeer, Cancels],
) -> None:
    sp, cp, cancels = pair
    cp.post_envelope(call_requested(_rid(8), "/t/sleep", {"s": 5}, deadline=_ms(0.2)))
    await _wait_for(lambda: _rid(8) in sp.inbound)
    await sp.close()
    assert cancels.cancelled == [_rid(8)]
    await asyncio.sleep(0.3)
    assert _sent(sp) == []


async def test_a_burst_is_answered_in_slices(pair: tuple[CallPeer, CallPeer, Cancels]) -> None:
    sp, cp, _ = pair
    n = 200
    frames = [call_requested(_rid(100 + i), "/echo/say", i, deadline=_ms(30)) for i in range(n)]
    # one write: the callee reads the whole burst at once
    cp.writer.post_frame(b"".join(cp.writer.encode(f) for f in frames))
    await _wait_for(lambda: len(_sent(sp)) == n)
    sent = _sent(sp)
    assert [(e.type, e.id, e.payload["output"]) for e in sent] == [
        ("call.responded", _rid(100 + i), i) for i in range(n)
    ]
    writes = sp.writer._writer.writes  # type: ignore[attr-defined]
    assert len(writes) >= 2  # answers of the first slice left before the last request was decoded
