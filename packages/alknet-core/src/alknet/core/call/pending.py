"""Call bookkeeping for one channel: ``PendingRequestMap`` and ``InboundCalls`` (``call-protocol.md`` §5).

Pure bookkeeping over asyncio futures and tasks: no streams, no asyncssh. The channel supplies a
``send_aborted(request_id)`` callback that queues a ``call.aborted`` frame without waiting. Deadlines are
absolute ms since the Unix epoch, read from an injectable ``clock`` (``time.time`` by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Final

from alknet.core.call.envelope import CallError, ErrorCode

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_MAX_INBOUND_CALLS",
    "DEFAULT_MAX_OUTBOUND_PENDING",
    "DEFAULT_SUBSCRIPTION_QUEUE",
    "Clock",
    "InboundCalls",
    "PendingRequestMap",
    "Subscription",
    "channel_closed",
    "deadline_after",
    "earliest_deadline",
    "new_request_id",
    "now_ms",
    "timeout_error",
]

Clock = Callable[[], float]

DEFAULT_CALL_TIMEOUT: Final = 30.0
DEFAULT_SUBSCRIPTION_QUEUE: Final = 256
DEFAULT_MAX_INBOUND_CALLS: Final = 1024
DEFAULT_MAX_OUTBOUND_PENDING: Final = 65536
_RESOLVED_MEMORY: Final = 4096


def new_request_id() -> str:
    """A fresh lowercase UUIDv4 (``str(uuid.uuid4())``, formatted without building a ``UUID`` object)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: The RFC 4122 variant: the top two bits of the 17th hex digit are ``10``.
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def now_ms(clock: Clock = time.time) -> int:
    return int(clock() * 1000)


def deadline_after(timeout: float, clock: Clock = time.time) -> int:
    """The absolute deadline (ms since the epoch) ``timeout`` seconds from now."""
    return int((clock() + timeout) * 1000)


def earliest_deadline(*deadlines: int | None) -> int | None:
    """The earliest of the given deadlines, ignoring ``None``s (nested calls take the earlier one)."""
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


def timeout_error(deadline_ms: int) -> CallError:
    return CallError(ErrorCode.TIMEOUT, "deadline exceeded", True, {"deadline": deadline_ms})


def channel_closed() -> CallError:
    return CallError(ErrorCode.UNAVAILABLE, "channel closed", True)


def _idle_error(idle_timeout_ms: int) -> CallError:
    return CallError(ErrorCode.TIMEOUT, "idle timeout exceeded", True, {"idleTimeout": idle_timeout_ms})


def _slow_consumer() -> CallError:
    return CallError(ErrorCode.UNAVAILABLE, "slow consumer", True, {"reason": "slow_consumer"})


def _ignore_send(request_id: str) -> None:
    return None


class _CallEntry:
    __slots__ = ("deadline", "future", "on_done")

    def __init__(
        self, future: asyncio.Future[Any], deadline: int, on_done: Callable[[asyncio.Future[Any]], None]
    ) -> None:
        self.future = future
        self.deadline = deadline
        self.on_done = on_done  # the cancellation watcher, removed again when an answer arrives

    def expiry(self) -> int:
        return self.deadline


class _SubEntry:
    """Map-side state of a subscription; the consumer holds a :class:`Subscription` wrapper around it."""

    __slots__ = ("deadline", "done", "error", "idle", "items", "last", "limit", "waiter")

    def __init__(self, limit: int, idle: int | None, deadline: int | None, last: int) -> None:
        self.items: deque[Any] = deque()
        self.limit = limit
        self.idle = idle
        self.deadline = deadline
        self.last = last
        self.done = False
        self.error: CallError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def expiry(self) -> int | None:
        idle_at = None if self.idle is None else self.last + self.idle
        return earliest_deadline(self.deadline, idle_at)

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def push(self, item: Any) -> bool:
        """Queue ``item``; False when the consumer is ``limit`` items behind (the item is not queued)."""
        if len(self.items) >= self.limit:
            return False
        self.items.append(item)
        self.wake()
        return True

    def finish(self, error: CallError | None) -> None:
        """End the stream; the consumer still gets the queued items first, then ``error`` (if any)."""
        if not self.done:
            self.done = True
            self.error = error
            self.wake()


class Subscription:
    """Consumer side of a subscription: an async iterator and async context manager.

    It yields each output in order and ends on ``call.completed``; a ``call.error``, an abort, a timeout or a
    slow-consumer overflow is raised as ``CallError`` after the items already queued. Leaving the
    ``async with`` block, ``aclose()``, cancelling the task awaiting the next item, or dropping the object
    sends ``call.aborted`` while the subscription is still live.
    """

    __slots__ = ("__weakref__", "_entry", "_map", "request_id")

    def __init__(self, request_id: str, entry: _SubEntry, owner: PendingRequestMap) -> None:
        self.request_id = request_id
        self._entry = entry
        self._map = owner

    @property
    def done(self) -> bool:
        """True once the stream has ended (items may still be queued)."""
        return self._entry.done

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        e = self._entry
        while True:
            if e.items:
                return e.items.popleft()
            if e.done:
                err, e.error = e.error, None
                if err is not None:
                    raise err
                raise StopAsyncIteration
            e.waiter = asyncio.get_running_loop().create_future()
            try:
                await e.waiter
            except asyncio.CancelledError:
                self._map._consumer_gone(self.request_id, e)
                raise
            finally:
                e.waiter = None

    async def aclose(self) -> None:
        self._map._consumer_gone(self.request_id, self._entry)
        self._entry.items.clear()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._entry.done:
                self._map._consumer_gone(self.request_id, self._entry)


class PendingRequestMap:
    """The calls and subscriptions this side made on one channel (caller side, §5.3).

    A plain call resolves on the first ``call.responded``; if another frame of the same id arrives later (the
    target was a subscription), ``call.aborted`` is sent for it once. One sweeper task fails expired entries
    with ``TIMEOUT`` (and sends ``call.aborted``), waking at the earliest expiry and at least every
    ``sweep_interval`` seconds; ``expire()`` runs one sweep by hand (tests with a fake clock).
    """

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        sweep_interval: float = 0.1,
        subscription_queue: int = DEFAULT_SUBSCRIPTION_QUEUE,
        max_pending: int = DEFAULT_MAX_OUTBOUND_PENDING,
        send_aborted: Callable[[str], object] | None = None,
    ) -> None:
        if subscription_queue < 1 or max_pending < 1 or sweep_interval <= 0:
            raise ValueError("subscription_queue, max_pending and sweep_interval must be positive")
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._queue = subscription_queue
        self._max_pending = max_pending
        self._send_aborted: Callable[[str], object] = send_aborted or _ignore_send
        self._entries: dict[str, _CallEntry | _SubEntry] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._resolved: OrderedDict[str, int] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed: CallError | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ------------------------------------------------------------------------------------------- adding

    def _admit(self, request_id: str) -> None:
        if self._closed is not None:
            raise self._closed
        if request_id in self._entries:
            raise ValueError("requestId already pending on this channel")
        if len(self._entries) >= self._max_pending:
            raise CallError(ErrorCode.UNAVAILABLE, "too many pending calls", True)

    def _schedule(self, request_id: str, expiry: int | None) -> None:
        if expiry is None:
            return
        heap = self._heap
        if len(heap) > 2 * len(self._entries) + 1024:
            heap[:] = [
                (x, next(self._seq), rid) for rid, e in self._entries.items() if (x := e.expiry()) is not None
            ]
            heapq.heapify(heap)
        heapq.heappush(heap, (expiry, next(self._seq), request_id))
        self._ensure_sweeper()

    def add_call(self, request_id: str, deadline_ms: int) -> asyncio.Future[Any]:
        """Register a call: the future gets the output or a ``CallError``. Cancelling it sends ``call.aborted``."""
        self._admit(request_id)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        on_done = functools.partial(self._future_done, request_id)
        self._entries[request_id] = _CallEntry(fut, deadline_ms, on_done)
        fut.add_done_callback(on_done)
        self._schedule(request_id, deadline_ms)
        return fut

    def add_subscription(
        self, request_id: str, *, idle_timeout_ms: int | None = None, deadline_ms: int | None = None
    ) -> Subscription:
        """Register a subscription with an optional idle timeout and an optional total deadline."""
        self._admit(request_id)
        if idle_timeout_ms is not None and idle_timeout_ms <= 0:
            raise ValueError("idle_timeout_ms must be > 0")
        entry = _SubEntry(self._queue, idle_timeout_ms, deadline_ms, self.now_ms())
        self._entries[request_id] = entry
        self._schedule(request_id, entry.expiry())
        return Subscription(request_id, entry, self)

    # ---------------------------------------------------------------------------------- frames from callee

    def _remember_resolved(self, request_id: str, deadline: int) -> None:
        r = self._resolved
        r[request_id] = deadline
        if len(r) > _RESOLVED_MEMORY:
            r.popitem(last=False)

    def on_responded(self, request_id: str, output: Any) -> bool:
        """Deliver a ``call.responded``; False = unknown id, dropped."""
        e = self._entries.get(request_id)
        if e is None:
            if self._resolved.pop(request_id, None) is not None:
                self._send_aborted(request_id)  # the call's target was a subscription
                return True
            return False
        if type(e) is _CallEntry:
            del self._entries[request_id]
            fut = e.future
            if not fut.done():
                fut.remove_done_callback(e.on_done)  # it only matters for a cancelled future
                fut.set_result(output)
            self._remember_resolved(request_id, e.deadline)
            return True
        assert isinstance(e, _SubEntry)
        if e.push(output):
            e.last = self.now_ms()
            return True
        del self._entries[request_id]
        self._send_aborted(request_id)
        e.finish(_slow_consumer())
        return True

    def _end(self, request_id: str, call_error: CallError, sub_error: CallError | None) -> bool:
        e = self._entries.pop(request_id, None)
        if e is None:
            return self._resolved.pop(request_id, None) is not None
        if type(e) is _CallEntry:
            if not e.future.done():
                e.future.set_exception(call_error)
        else:
            assert isinstance(e, _SubEntry)
            e.finish(sub_error)
        return True

    def on_completed(self, request_id: str) -> bool:
        """``call.completed``: ends a subscription; a plain call without a response fails with ``ABORTED``."""
        return self._end(request_id, CallError(ErrorCode.ABORTED, "completed without response", False), None)

    def on_error(self, request_id: str, err: CallError) -> bool:
        return self._end(request_id, err, err)

    def on_aborted(self, request_id: str) -> bool:
        """``call.aborted`` from the callee: the waiter fails with ``ABORTED``."""
        err = CallError(ErrorCode.ABORTED, "aborted by callee", False)
        return self._end(request_id, err, err)

    # ------------------------------------------------------------------------------------- local actions

    def abort(self, request_id: str) -> bool:
        """Local abort: queue ``call.aborted``, fail the waiter with ``ABORTED`` and remove the entry.

        Returns False, sending nothing, for an unknown id.
        """
        if request_id not in self._entries:
            return False
        err = CallError(ErrorCode.ABORTED, "aborted locally", False)
        self._end(request_id, err, err)
        self._send_aborted(request_id)
        return True

    def _future_done(self, request_id: str, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            return
        e = self._entries.get(request_id)
        if type(e) is _CallEntry and e.future is fut:
            del self._entries[request_id]
            self._send_aborted(request_id)

    def _consumer_gone(self, request_id: str, entry: _SubEntry) -> None:
        if self._entries.get(request_id) is entry:
            del self._entries[request_id]
            entry.finish(None)
            self._send_aborted(request_id)
        else:
            entry.finish(None)

    def fail_all(self, err: CallError) -> None:
        """Fail every entry with ``err``; the map is then empty and the sweeper ends."""
        entries, self._entries = self._entries, {}
        self._heap.clear()
        self._resolved.clear()
        for e in entries.values():
            if type(e) is _CallEntry:
                if not e.future.done():
                    e.future.set_exception(err)
            else:
                assert isinstance(e, _SubEntry)
                e.finish(err)
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper is not _current_task():
            sweeper.cancel()

    def close(self, err: CallError | None = None) -> None:
        """Channel close: fail everything with ``UNAVAILABLE`` (``channel closed``); later adds raise it."""
        err = err or channel_closed()
        self._closed = err
        self.fail_all(err)

    # ------------------------------------------------------------------------------------------ expiry

    def next_expiry(self) -> int | None:
        """The earliest scheduled expiry (ms), possibly of an entry that has gone since."""
        return self._heap[0][0] if self._heap else None

    def expire(self, now: int | None = None) -> int:
        """Fail every entry whose deadline or idle timeout has passed at ``now`` (ms); returns how many."""
        now = self.now_ms() if now is None else now
        heap = self._heap
        count = 0
        while heap and heap[0][0] <= now:
            _, _, rid = heapq.heappop(heap)
            e = self._entries.get(rid)
            if e is None:
                continue
            expiry = e.expiry()
            if expiry is None:
                continue
            if expiry > now:
                heapq.heappush(heap, (expiry, next(self._seq), rid))
                continue
            del self._entries[rid]
            count += 1
            if type(e) is _CallEntry:
                if not e.future.done():
                    e.future.set_exception(timeout_error(e.deadline))
            else:
                assert isinstance(e, _SubEntry)
                idle_at = None if e.idle is None else e.last + e.idle
                if (
                    e.deadline is not None
                    and e.deadline <= now
                    and (idle_at is None or e.deadline <= idle_at)
                ):
                    e.finish(timeout_error(e.deadline))
                else:
                    assert e.idle is not None
                    e.finish(_idle_error(e.idle))
            self._send_aborted(rid)
        resolved = self._resolved
        while resolved:
            rid, deadline = next(iter(resolved.items()))
            if deadline > now:
                break
            resolved.popitem(last=False)
        return count

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while self._entries:
            nxt = self.next_expiry()
            delay = self._sweep_interval
            if nxt is not None:
                delay = min(delay, max(0.0, (nxt - self.now_ms()) / 1000))
            await asyncio.sleep(delay)
            self.expire()
        if self._sweeper is _current_task():
            self._sweeper = None


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class _Inbound:
    __slots__ = ("aborted", "on_done", "task")

    def __init__(self, task: asyncio.Task[Any], on_done: Callable[[asyncio.Task[Any]], None]) -> None:
        self.task = task
        self.on_done = on_done
        self.aborted = False


class InboundCalls:
    """The calls this side serves on one channel (callee side): ``requestId`` -> handler task.

    ``admit`` decides before a handler runs: a live duplicate id gets ``PROTOCOL_ERROR`` (the original call
    keeps running), a full table ``UNAVAILABLE``. An entry leaves when its task ends; ``close`` cancels all.
    """

    def __init__(self, *, max_inbound_calls: int = DEFAULT_MAX_INBOUND_CALLS) -> None:
        if max_inbound_calls < 1:
            raise ValueError("max_inbound_calls must be positive")
        self.max_inbound_calls = max_inbound_calls
        self._calls: dict[str, _Inbound] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._calls

    @property
    def closed(self) -> bool:
        return self._closed

    def admit(self, request_id: str) -> CallError | None:
        """None if a call with this id may start now, else the error to answer with."""
        if self._closed:
            return channel_closed()
        if request_id in self._calls:
            return CallError(ErrorCode.PROTOCOL_ERROR, "requestId already in use", False)
        if len(self._calls) >= self.max_inbound_calls:
            return CallError(ErrorCode.UNAVAILABLE, "too many concurrent calls", True)
        return None

    def add(self, request_id: str, task: asyncio.Task[Any]) -> None:
        """Track ``task`` under ``request_id`` (after ``admit`` returned None) until it ends."""
        err = self.admit(request_id)
        if err is not None:
            raise ValueError(f"cannot add inbound call: {err}")
        on_done = functools.partial(self._task_done, request_id)
        self._calls[request_id] = _Inbound(task, on_done)
        task.add_done_callback(on_done)

    def _task_done(self, request_id: str, task: asyncio.Task[Any]) -> None:
        e = self._calls.get(request_id)
        if e is not None and e.task is task:
            del self._calls[request_id]

    def finish(self, request_id: str, task: asyncio.Task[Any] | None) -> None:
        """Called by the handler task itself as its last step: the entry leaves now (a task cancelled
        before it ever ran is removed by its done callback instead)."""
        e = self._calls.get(request_id)
        if e is not None and e.task is task:
            del self._calls[request_id]
            task.remove_done_callback(e.on_done)

    def task(self, request_id: str) -> asyncio.Task[Any] | None:
        e = self._calls.get(request_id)
        return None if e is None else e.task

    def aborted(self, request_id: str) -> bool:
        """True if the live call was cancelled by ``abort`` (its handler must then send nothing)."""
        e = self._calls.get(request_id)
        return e is not None and e.aborted

    def abort(self, request_id: str) -> bool:
        """``call.aborted`` from the caller: cancel the handler task. False for an id that is not live."""
        e = self._calls.get(request_id)
        if e is None:
            return False
        e.aborted = True
        e.task.cancel()
        return True

    def close(self) -> list[asyncio.Task[Any]]:
        """Channel close: cancel every handler task and empty the table; returns the tasks (to await)."""
        self._closed = True
        calls, self._calls = self._calls, {}
        tasks = [e.task for e in calls.values()]
        for t in tasks:
            t.cancel()
        return tasks
