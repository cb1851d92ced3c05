"""call-protocol.md §5.1-§5.3: PendingRequestMap and InboundCalls (bookkeeping only; no streams)."""

from __future__ import annotations

import asyncio
import gc
import re
import time
from typing import Any

import pytest
from call_helpers import R1, R2, R3

from alknet.core.call import CallError, InboundCalls, PendingRequestMap, Subscription
from alknet.core.call.pending import (
    channel_closed,
    deadline_after,
    earliest_deadline,
    new_request_id,
    now_ms,
    timeout_error,
)

T0 = 1767225600.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Harness:
    """A map with a fake clock and a list of the request ids it sent ``call.aborted`` for."""

    def __init__(self, **kw: Any) -> None:
        self.clock = FakeClock()
        self.sent: list[str] = []
        self.map = PendingRequestMap(clock=self.clock, send_aborted=self.sent.append, **kw)

    @property
    def now(self) -> int:
        return int(self.clock.t * 1000)


def far() -> int:
    return int((T0 + 3600) * 1000)


async def drain(sub: Subscription) -> tuple[list[Any], CallError | None]:
    items: list[Any] = []
    try:
        async for item in sub:
            items.append(item)
    except CallError as exc:
        return items, exc
    return items, None


# -------------------------------------------------------------------------------------------- helpers


def test_helpers() -> None:
    rid = new_request_id()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rid)
    assert rid != new_request_id()
    clock = FakeClock(10.0)
    assert now_ms(clock) == 10000 and deadline_after(0.25, clock) == 10250
    assert (
        earliest_deadline(None, 5, 3) == 3 and earliest_deadline(None) is None and earliest_deadline() is None
    )
    assert timeout_error(7) == CallError("TIMEOUT", "deadline exceeded", True, {"deadline": 7})
    assert channel_closed() == CallError("UNAVAILABLE", "channel closed", True)
    with pytest.raises(ValueError):
        PendingRequestMap(subscription_queue=0)


# ------------------------------------------------------------------------------------------ plain calls


async def test_call_resolves_on_first_response() -> None:
    h = Harness()
    fut = h.map.add_call(R1, far())
    assert len(h.map) == 1 and R1 in h.map
    assert h.map.on_responded(R1, {"x": 1}) is True
    assert await fut == {"x": 1}
    assert len(h.map) == 0 and h.sent == []


async def test_unknown_ids_send_nothing_and_raise_nothing() -> None:
    h = Harness()
    assert h.map.on_responded(R1, 1) is False
    assert h.map.on_completed(R1) is False
    assert h.map.on_error(R1, CallError("X")) is False
    assert h.map.on_aborted(R1) is False
    assert h.map.abort(R1) is False
    assert h.sent == []


async def test_completed_before_any_response_is_aborted() -> None:
    h = Harness()
    fut = h.map.add_call(R1, far())
    h.map.on_completed(R1)
    with pytest.raises(CallError) as ei:
        await fut
    assert (ei.value.code, ei.value.message) == ("ABORTED", "completed without response")
    assert len(h.map) == 0


async def test_error_and_callee_abort() -> None:
    h = Harness()
    f1, f2 = h.map.add_call(R1, far()), h.map.add_call(R2, far())
    locked = CallError("LOCKED", "vault locked")
    assert h.map.on_error(R1, locked) and h.map.on_aborted(R2)
    with pytest.raises(CallError) as ei:
        await f1
    assert ei.value is locked
    with pytest.raises(CallError) as ei:
        await f2
    assert ei.value.code == "ABORTED"
    assert len(h.map) == 0 and h.sent == []


async def test_local_abort() -> None:
    h = Harness()
    fut = h.map.add_call(R1, far())
    assert h.map.abort(R1) is True
    assert h.sent == [R1] and len(h.map) == 0
    with pytest.raises(CallError) as ei:
        await fut
    assert (ei.value.code, ei.value.message, ei.value.retryable) == ("ABORTED", "aborted locally", False)
    assert h.map.abort(R1) is False and h.sent == [R1]
    assert h.map.on_responded(R1, 1) is False  # later frames for the id count as unknown


async def test_cancelling_the_awaiting_task_sends_call_aborted() -> None:
    h = Harness()
    fut = h.map.add_call(R1, far())
    task = asyncio.create_task(asyncio.wait_for(fut, 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert h.sent == [R1] and len(h.map) == 0


async def test_second_response_of_a_resolved_call_aborts_the_stream_once() -> None:
    """``call()`` on a subscription resolves on the first item; the caller then sends ``call.aborted``."""
    h = Harness()
    fut = h.map.add_call(R1, far())
    h.map.on_responded(R1, 1)
    assert await fut == 1 and h.sent == []
    assert h.map.on_responded(R1, 2) is True and h.sent == [R1]
    assert h.map.on_responded(R1, 3) is False and h.sent == [R1]
    fut = h.map.add_call(R2, far())
    h.map.on_responded(R2, 1)
    h.map.on_completed(R2)  # a stream that ended by itself: nothing to abort
    assert h.map.on_responded(R2, 1) is False and h.sent == [R1]


async def test_duplicates_and_pending_limit() -> None:
    h = Harness(max_pending=2)
    h.map.add_call(R1, far())
    with pytest.raises(ValueError):
        h.map.add_call(R1, far())
    with pytest.raises(ValueError):
        h.map.add_subscription(R1)
    sub = h.map.add_subscription(R2)
    with pytest.raises(CallError) as ei:
        h.map.add_call(R3, far())
    assert ei.value.code == "UNAVAILABLE" and ei.value.retryable
    assert not sub.done
    h.map.close()


# ------------------------------------------------------------------------------------------- deadlines


async def test_deadline_with_fake_clock() -> None:
    h = Harness()
    deadline = h.now + 200
    fut = h.map.add_call(R1, deadline)
    assert h.map.next_expiry() == deadline
    assert h.map.expire(deadline - 1) == 0 and not fut.done()
    assert h.map.expire(deadline) == 1
    with pytest.raises(CallError) as ei:
        await fut
    assert ei.value == CallError("TIMEOUT", "deadline exceeded", True, {"deadline": deadline})
    assert h.sent == [R1] and len(h.map) == 0


async def test_past_deadline_fails_at_the_next_sweep() -> None:
    h = Harness()
    fut = h.map.add_call(R1, h.now - 1)
    assert h.map.expire() == 1
    with pytest.raises(CallError):
        await fut


async def test_real_sweeper_fails_within_100_ms_of_the_deadline() -> None:
    sent: list[str] = []
    m = PendingRequestMap(send_aborted=sent.append)
    start = time.monotonic()
    fut = m.add_call(R1, deadline_after(0.2))
    with pytest.raises(CallError) as ei:
        await fut
    elapsed = time.monotonic() - start
    assert ei.value.code == "TIMEOUT" and 0.19 <= elapsed <= 0.35
    assert sent == [R1] and len(m) == 0
    await asyncio.sleep(0.15)
    assert m._sweeper is None  # the sweeper ends with an empty map


async def test_stale_heap_entries_are_compacted() -> None:
    h = Harness()
    for i in range(5000):
        rid = f"r{i}"
        h.map.add_call(rid, far())
        h.map.on_responded(rid, i)
    assert len(h.map) == 0
    assert len(h.map._heap) <= 1024 + 2
    assert len(h.map._resolved) <= 4096
    h.map.close()


# --------------------------------------------------------------------------------------- subscriptions


async def test_subscription_items_then_completed() -> None:
    h = Harness()
    sub = h.map.add_subscription(R1)
    for i in (1, 2, 3):
        assert h.map.on_responded(R1, i)
    h.map.on_completed(R1)
    assert await drain(sub) == ([1, 2, 3], None)
    assert sub.done and len(h.map) == 0 and h.sent == []


async def test_subscription_error_after_queued_items() -> None:
    h = Harness()
    sub = h.map.add_subscription(R1)
    h.map.on_responded(R1, 1)
    h.map.on_responded(R1, 2)
    h.map.on_error(R1, CallError("LOCKED", "vault locked"))
    items, err = await drain(sub)
    assert items == [1, 2] and err == CallError("LOCKED", "vault locked")
    with pytest.raises(StopAsyncIteration):  # the error is raised once
        await sub.__anext__()


async def test_subscription_callee_abort() -> None:
    h = Harness()
    sub = h.map.add_subscription(R1)
    h.map.on_responded(R1, 1)
    h.map.on_aborted(R1)
    items, err = await drain(sub)
    assert items == [1] and err is not None and err.code == "ABORTED"
    assert h.sent == []


async def test_subscription_waits_for_items() -> None:
    h = Harness()
    sub = h.map.add_subscription(R1)
    task = asyncio.create_task(drain(sub))
    await asyncio.sleep(0)
    h.map.on_responded(R1, "a")
    await asyncio.sleep(0)
    h.map.on_responded(R1, "b")
    h.map.on_completed(R1)
    assert await task == (["a", "b"], None)


async def test_slow_consumer_ends_only_that_subscription() -> None:
    h = Harness(subscription_queue=4)
    sub = h.map.add_subscription(R1)
    fut = h.map.add_call(R2, far())
    for i in range(10):
        h.map.on_responded(R1, i)
    assert h.sent == [R1] and R1 not in h.map
    h.map.on_responded(R2, "ok")
    assert await fut == "ok"
    items, err = await drain(sub)
    assert items == [0, 1, 2, 3]
    assert err == CallError("UNAVAILABLE", "slow consumer", True, {"reason": "slow_consumer"})


async def test_idle_timeout_resets_on_each_response() -> None:
    h = Harness()
    sub = h.map.add_subscription(R1, idle_timeout_ms=100)
    h.clock.t += 0.09
    h.map.on_responded(R1, 1)
    h.clock.t += 0.09
    assert h.map.expire() == 0  # 180 ms since start, 90 since the last item
    h.clock.t += 0.011
    assert h.map.expire() == 1
    items, err = await drain(sub)
    assert items == [1] and err == CallError("TIMEOUT", "idle timeout exceeded", True, {"idleTimeout": 100})
    assert h.sent == [R1] and len(h.map) == 0


async def test_subscription_deadline_bounds_the_lifetime() -> None:
    h = Harness()
    deadline = h.now + 1000
    sub = h.map.add_subscription(R1, idle_timeout_ms=300, deadline_ms=deadline)
    for _ in range(5):
        h.clock.t += 0.25
        h.map.on_responded(R1, "x")
        h.map.expire()
    assert h.sent == [R1]
    items, err = await drain(sub)
    assert len(items) == 4 and err == timeout_error(deadline)  # items at +250..+1000 ms


async def test_real_idle_timeout() -> None:
    sent: list[str] = []
    m = PendingRequestMap(send_aborted=sent.append)
    sub = m.add_subscription(R1, idle_timeout_ms=100)
    m.on_responded(R1, 1)
    start = time.monotonic()
    items, err = await drain(sub)
    assert items == [1] and err is not None and err.code == "TIMEOUT"
    assert time.monotonic() - start < 0.3 and sent == [R1]


async def test_leaving_async_with_sends_call_aborted() -> None:
    h = Harness()
    async with h.map.add_subscription(R1) as sub:
        h.map.on_responded(R1, 1)
        assert await sub.__anext__() == 1
    assert h.sent == [R1] and len(h.map) == 0
    async with h.map.add_subscription(R2) as sub:
        h.map.on_completed(R2)
        assert await drain(sub) == ([], None)
    assert h.sent == [R1]  # a finished subscription sends nothing on exit
    sub = h.map.add_subscription(R3)
    await sub.aclose()
    await sub.aclose()
    assert h.sent == [R1, R3]


async def test_cancelled_consumer_sends_call_aborted() -> None:
    h = Harness()
    sub = h.map.add_subscription(R1)
    task = asyncio.create_task(drain(sub))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.sent == [R1] and len(h.map) == 0


async def test_garbage_collected_subscription_sends_call_aborted() -> None:
    h = Harness()
    sub = h.map.add_subscription(R1)
    h.map.on_responded(R1, 1)
    del sub
    gc.collect()
    assert h.sent == [R1] and len(h.map) == 0


# ---------------------------------------------------------------------------------------- channel close


async def test_close_fails_every_entry_with_unavailable() -> None:
    h = Harness()
    calls = [h.map.add_call(f"c{i}", far()) for i in range(10)]
    subs = [h.map.add_subscription(f"s{i}", idle_timeout_ms=60_000) for i in range(3)]
    h.map.on_responded("s0", "queued")
    assert len(h.map) == 13
    h.map.close()
    assert len(h.map) == 0 and h.map.closed
    for fut in calls:
        with pytest.raises(CallError) as ei:
            await fut
        assert ei.value == CallError("UNAVAILABLE", "channel closed", True)
    results = [await drain(s) for s in subs]
    assert results[0] == (["queued"], CallError("UNAVAILABLE", "channel closed", True))
    assert all(r == ([], CallError("UNAVAILABLE", "channel closed", True)) for r in results[1:])
    assert h.sent == []
    await asyncio.sleep(0)
    assert h.map._sweeper is None
    with pytest.raises(CallError) as ei:
        h.map.add_call(R1, far())
    assert ei.value.code == "UNAVAILABLE"


async def test_both_directions_with_the_same_id() -> None:
    """A calls B while B calls A on one channel, both with id ``x``: the tables are separate."""
    outbound = Harness()
    inbound = InboundCalls()
    fut = outbound.map.add_call("x", far())
    assert inbound.admit("x") is None
    served = asyncio.create_task(asyncio.sleep(0, result="B's answer"))
    inbound.add("x", served)
    outbound.map.on_responded("x", "A's answer")
    assert await fut == "A's answer" and await served == "B's answer"


# ----------------------------------------------------------------------------------------- InboundCalls


async def test_inbound_limit() -> None:
    inbound = InboundCalls()
    gate = asyncio.Event()
    tasks = []
    for i in range(1024):
        rid = f"r{i}"
        assert inbound.admit(rid) is None
        t = asyncio.create_task(gate.wait())
        inbound.add(rid, t)
        tasks.append(t)
    err = inbound.admit("r1024")
    assert err == CallError("UNAVAILABLE", "too many concurrent calls", True)
    with pytest.raises(ValueError):
        inbound.add("r1024", asyncio.create_task(gate.wait()))
    gate.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(0)
    assert len(inbound) == 0 and inbound.admit("r1024") is None


async def test_inbound_abort_and_close() -> None:
    inbound = InboundCalls(max_inbound_calls=8)
    started = asyncio.Event()

    async def handler() -> None:
        started.set()
        await asyncio.sleep(10)

    t1 = asyncio.create_task(handler())
    inbound.add(R1, t1)
    await started.wait()
    assert inbound.task(R1) is t1 and not inbound.aborted(R1)
    assert inbound.abort(R1) is True
    assert inbound.aborted(R1) and R1 in inbound  # it leaves when the task ends
    with pytest.raises(asyncio.CancelledError):
        await t1
    await asyncio.sleep(0)
    assert R1 not in inbound and inbound.abort(R1) is False and inbound.task(R1) is None
    others = [asyncio.create_task(asyncio.sleep(10)) for _ in range(3)]
    for i, t in enumerate(others):
        inbound.add(f"o{i}", t)
    cancelled = inbound.close()
    assert set(cancelled) == set(others) and len(inbound) == 0 and inbound.closed
    await asyncio.gather(*others, return_exceptions=True)
    assert all(t.cancelled() for t in others)
    assert inbound.admit("new") == channel_closed()
    with pytest.raises(ValueError):
        InboundCalls(max_inbound_calls=0)
