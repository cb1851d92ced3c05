"""The event bus and pubsub over call-protocol channels (``call-protocol.md`` §9).

Each node has one :class:`EventBus`. ``publish(env)`` is synchronous and never blocks: it validates the
envelope (a ``TypeError``/``ValueError`` at publish time, never at fan-out) and puts it on the bounded queue of
every matching subscriber except the publisher, returning how many got it.

Subscribers:

- :class:`ChannelEvents`: the node side of one channel. It answers ``__subscribe``/``__unsubscribe``, publishes
  the events the channel sends (after the ``events:publish`` check) and feeds the channel's writer from its
  queue with one pump task. When the queue is full, every subscription of the channel is dropped, its queue
  is cleared and one ``__error`` ``slow_subscriber`` is sent; calls on the channel carry on.
- :class:`EventSubscription`: an in-process ``bus.subscribe(type, id=None, queue=1024)``, under the same rule
  (the iterator raises ``CallError UNAVAILABLE``).
- :class:`EventClient`: the other end of a channel: ``subscribe`` sends ``__subscribe`` and ``__unsubscribe``
  and raises ``CallError`` on an ``__error`` for its type; ``publish`` sends an event.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any, Final, Protocol

from alknet.core.auth.identity import Identity
from alknet.core.call.acl import has_scope
from alknet.core.call.envelope import CallError, ErrorCode, EventEnvelope, is_valid_code
from alknet.core.call.frame import check_value
from alknet.core.logfmt import log_event

__all__ = [
    "EVENT_TYPE_RE",
    "MAX_TOPIC_BYTES",
    "ChannelEvents",
    "EventBus",
    "EventClient",
    "EventSubscription",
    "RemoteSubscription",
    "Subscriber",
    "check_event",
    "event_name_error",
    "may_publish",
    "may_subscribe",
    "slow_subscriber",
]

log = logging.getLogger("alknet.events")

EVENT_TYPE_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_TOPIC_BYTES: Final = 256
_RESERVED: Final = ("call.", "auth.", "__")
SUBSCRIBE, UNSUBSCRIBE, ERROR = "__subscribe", "__unsubscribe", "__error"


def event_name_error(type: object, id: object = "") -> str | None:
    """Why ``type``/``id`` cannot name a published event, or None."""
    if not isinstance(type, str) or EVENT_TYPE_RE.fullmatch(type) is None:
        return "event type must be 1-128 characters of [A-Za-z0-9._:-]"
    if type.startswith(_RESERVED):
        return "event type must not start with call., auth. or __"
    if not isinstance(id, str) or len(id.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return "event topic must be a string of at most 256 bytes"
    return None


def check_event(env: object) -> None:
    """Raise ``TypeError`` unless ``env`` is an ``EventEnvelope``, ``ValueError`` unless it is a valid event."""
    if not isinstance(env, EventEnvelope):
        raise TypeError(f"publish() needs an EventEnvelope, got {type(env).__name__}")
    reason = event_name_error(env.type, env.id)
    if reason is not None:
        raise ValueError(reason)
    check_value(env.payload)


def may_subscribe(identity: Identity, type: str) -> bool:
    return has_scope(identity.scopes, "events:subscribe") or has_scope(
        identity.scopes, f"events:subscribe:{type}"
    )


def may_publish(identity: Identity, type: str) -> bool:
    return has_scope(identity.scopes, "events:publish") or has_scope(
        identity.scopes, f"events:publish:{type}"
    )


def slow_subscriber(dropped: int) -> CallError:
    return CallError(
        ErrorCode.UNAVAILABLE, "slow subscriber", True, {"reason": "slow_subscriber", "dropped": dropped}
    )


def _error_frame(
    code: str,
    message: str,
    type: str | None = None,
    id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> EventEnvelope:
    payload: dict[str, Any] = {"code": code, "message": message}
    if type is not None:
        payload["type"] = type
    if id is not None:
        payload["id"] = id
    if details is not None:
        payload["details"] = dict(details)
    return EventEnvelope(ERROR, "", payload)


class Subscriber(Protocol):
    def offer(self, env: EventEnvelope) -> bool:
        """Take ``env`` without blocking; False if it was not queued."""
        ...


class EventBus:
    """Fan-out of events to subscribers by type and optional topic (``id``)."""

    def __init__(self) -> None:
        self._subs: dict[str, dict[Subscriber, set[str | None]]] = {}
        self._types: dict[Subscriber, set[str]] = {}

    def publish(self, env: EventEnvelope, *, source: Subscriber | None = None) -> int:
        """Queue ``env`` for every matching subscriber but ``source``; returns how many took it."""
        check_event(env)
        subs = self._subs.get(env.type)
        if not subs:
            return 0
        n = 0
        for sub, ids in list(subs.items()):
            if sub is not source and (None in ids or env.id in ids) and sub.offer(env):
                n += 1
        return n

    def add(self, sub: Subscriber, type: str, id: str | None = None) -> bool:
        """Subscribe ``sub`` to ``type`` (topic ``id`` only, if given); False if it already was."""
        ids = self._subs.setdefault(type, {}).setdefault(sub, set())
        if id in ids:
            return False
        ids.add(id)
        self._types.setdefault(sub, set()).add(type)
        return True

    def remove(self, sub: Subscriber, type: str, id: str | None = None) -> bool:
        by_sub = self._subs.get(type)
        ids = by_sub.get(sub) if by_sub is not None else None
        if by_sub is None or ids is None or id not in ids:
            return False
        ids.discard(id)
        if not ids:
            del by_sub[sub]
            self._types[sub].discard(type)
            if not self._types[sub]:
                del self._types[sub]
            if not by_sub:
                del self._subs[type]
        return True

    def remove_all(self, sub: Subscriber) -> int:
        """Drop every subscription of ``sub``; returns how many there were."""
        n = 0
        for type in self._types.pop(sub, set()):
            by_sub = self._subs.get(type)
            if by_sub is not None:
                n += len(by_sub.pop(sub, ()))
                if not by_sub:
                    del self._subs[type]
        return n

    def has(self, sub: Subscriber, type: str, id: str | None = None) -> bool:
        by_sub = self._subs.get(type)
        return by_sub is not None and id in by_sub.get(sub, ())

    def count(self, sub: Subscriber) -> int:
        return sum(len(self._subs[t].get(sub, ())) for t in self._types.get(sub, ()))

    def subscribe(self, type: str, id: str | None = None, *, queue: int = 1024) -> EventSubscription:
        """An in-process subscription: an async iterator and async context manager."""
        return EventSubscription(self, type, id, queue)


class _Queue:
    """A bounded queue of events read by one consumer; ``fail`` ends it with an error after nothing else."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("queue must be >= 1")
        self._items: deque[EventEnvelope] = deque()
        self._limit = limit
        self._error: CallError | None = None
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _push(self, env: EventEnvelope) -> bool | None:
        """True if queued, False if ended, None if full."""
        if self._ended:
            return False
        if len(self._items) >= self._limit:
            return None
        self._items.append(env)
        self._wake()
        return True

    def _end(self, error: CallError | None, *, clear: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        if clear:
            self._items.clear()
        self._wake()

    def __aiter__(self) -> _Queue:
        return self

    async def __anext__(self) -> EventEnvelope:
        while True:
            if self._items:
                return self._items.popleft()
            if self._ended:
                err, self._error = self._error, None
                if err is not None:
                    raise err
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class EventSubscription(_Queue):
    """``bus.subscribe(type, id=None, queue=1024)``: events in order; ``slow_subscriber`` on overflow."""

    def __init__(self, bus: EventBus, type: str, id: str | None = None, queue: int = 1024) -> None:
        reason = event_name_error(type, id or "")
        if reason is not None:
            raise ValueError(reason)
        super().__init__(queue)
        self._bus = bus
        self.type = type
        self.id = id
        bus.add(self, type, id)

    def offer(self, env: EventEnvelope) -> bool:
        pushed = self._push(env)
        if pushed is None:
            dropped = len(self._items) + 1
            self._bus.remove_all(self)
            self._end(slow_subscriber(dropped), clear=True)
            return False
        return pushed

    async def aclose(self) -> None:
        self._bus.remove_all(self)
        self._end(None, clear=True)

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# ------------------------------------------------------------------------------------------ node side


class EventChannel(Protocol):
    """What pubsub needs of a channel (``CallPeer`` provides it)."""

    identity: Identity

    def post_envelope(self, env: EventEnvelope) -> bool: ...

    async def send_envelope(self, env: EventEnvelope) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]: ...


def _parse_sub(payload: object) -> tuple[str, str | None] | None:
    if not isinstance(payload, dict):
        return None
    t, i = payload.get("type"), payload.get("id")
    if event_name_error(t, "" if i is None else i) is not None:
        return None
    assert isinstance(t, str)
    return t, i if isinstance(i, str) else None


class ChannelEvents:
    """The node side of pubsub on one channel: its subscriptions, its queue and its pump task."""

    def __init__(
        self, bus: EventBus, channel: EventChannel, *, queue: int = 1024, max_subscriptions: int = 1024
    ) -> None:
        self._bus = bus
        self._channel = channel
        self._limit = queue
        self._max = max_subscriptions
        self._queue: deque[EventEnvelope] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped_total = 0

    @property
    def subscriptions(self) -> int:
        return self._bus.count(self)

    def _error(
        self,
        code: str,
        message: str,
        type: str | None = None,
        id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self._channel.post_envelope(_error_frame(code, message, type, id, details))

    def on_envelope(self, env: EventEnvelope) -> None:
        """An ``__*`` frame or an event received on the channel."""
        if self._closed:
            return
        if env.type in (SUBSCRIBE, UNSUBSCRIBE):
            sub = _parse_sub(env.payload)
            if sub is None:
                self._error(ErrorCode.INVALID_INPUT, f"bad {env.type} payload")
            elif env.type == SUBSCRIBE:
                self._subscribe(*sub)
            else:
                self._bus.remove(self, *sub)
        elif env.type == ERROR:
            log.debug("__error from a channel dropped")
        else:
            self._publish(env)

    def _subscribe(self, type: str, id: str | None) -> None:
        if not may_subscribe(self._channel.identity, type):
            self._error(ErrorCode.FORBIDDEN, f"not allowed to subscribe to {type}", type, id)
            return
        if self._bus.count(self) >= self._max and not self._bus.has(self, type, id):
            self._error(ErrorCode.INVALID_INPUT, "too many subscriptions", type, id)
            return
        self._bus.add(self, type, id)
        if self._pump is None:
            self._pump = self._channel.spawn(self._run(), name="alknet-pubsub-pump")

    def _publish(self, env: EventEnvelope) -> None:
        reason = event_name_error(env.type, env.id)
        if reason is not None:
            self._error(ErrorCode.INVALID_INPUT, reason, env.type[:128])
            return
        if not may_publish(self._channel.identity, env.type):
            self._error(ErrorCode.FORBIDDEN, f"not allowed to publish {env.type}", env.type)
            return
        self._bus.publish(env, source=self)

    def offer(self, env: EventEnvelope) -> bool:
        if self._closed:
            return False
        q = self._queue
        if len(q) >= self._limit:
            dropped = len(q) + 1
            q.clear()
            self._bus.remove_all(self)
            self.dropped_total += dropped
            self._error(
                ErrorCode.UNAVAILABLE,
                "slow subscriber",
                details={"reason": "slow_subscriber", "dropped": dropped},
            )
            log_event(log, logging.WARNING, "slow subscriber dropped", dropped=dropped)
            return False
        q.append(env)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._queue
        while True:
            if q:
                await self._channel.send_envelope(q.popleft())
                continue
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """The channel closed: drop its subscriptions and stop the pump."""
        self._closed = True
        self._bus.remove_all(self)
        self._queue.clear()
        if self._pump is not None:
            self._pump.cancel()


# ---------------------------------------------------------------------------------------- client side


class ClientChannel(EventChannel, Protocol):
    def add_event_listener(self, listener: Any) -> None: ...

    def remove_event_listener(self, listener: Any) -> None: ...

    def add_close_callback(self, cb: Any) -> None: ...


class RemoteSubscription(_Queue):
    """Events of one ``__subscribe`` on a channel; leaving sends ``__unsubscribe``."""

    def __init__(self, client: EventClient, type: str, id: str | None, queue: int) -> None:
        super().__init__(queue)
        self._client = client
        self.type = type
        self.id = id

    def offer(self, env: EventEnvelope) -> bool:
        pushed = self._push(env)
        if pushed is None:
            self._end(slow_subscriber(len(self._items) + 1), clear=True)
            self._client._release(self)
            return False
        return pushed

    def fail(self, error: CallError) -> None:
        self._end(error, clear=False)
        self._client._release(self, send=False)

    async def aclose(self) -> None:
        self._end(None, clear=True)
        self._client._release(self)

    async def __aenter__(self) -> RemoteSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class EventClient:
    """Pubsub from the far side of a channel (``EventTarget`` builds on it)."""

    def __init__(self, channel: ClientChannel) -> None:
        self._channel = channel
        self._subs: dict[tuple[str, str | None], list[RemoteSubscription]] = {}
        channel.add_event_listener(self._on_envelope)
        channel.add_close_callback(self._on_close)

    async def publish(self, type: str, payload: Any, *, id: str = "") -> None:
        env = EventEnvelope(type, id, payload)
        check_event(env)
        await self._channel.send_envelope(env)

    def subscribe(self, type: str, id: str | None = None, *, queue: int = 1024) -> RemoteSubscription:
        """Sends ``__subscribe {type, id?}`` now; the iterator yields ``EventEnvelope``s."""
        reason = event_name_error(type, id or "")
        if reason is not None:
            raise ValueError(reason)
        sub = RemoteSubscription(self, type, id, queue)
        key = (type, id)
        subs = self._subs.setdefault(key, [])
        subs.append(sub)
        if len(subs) == 1:
            self._channel.post_envelope(EventEnvelope(SUBSCRIBE, "", _sub_payload(type, id)))
        return sub

    def _release(self, sub: RemoteSubscription, *, send: bool = True) -> None:
        key = (sub.type, sub.id)
        subs = self._subs.get(key)
        if subs is None or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[key]
            if send:
                self._channel.post_envelope(EventEnvelope(UNSUBSCRIBE, "", _sub_payload(sub.type, sub.id)))

    def _on_envelope(self, env: EventEnvelope) -> None:
        if env.type == ERROR:
            self._on_error(env.payload)
            return
        if env.type.startswith("__"):
            return
        for (t, i), subs in list(self._subs.items()):
            if t == env.type and (i is None or i == env.id):
                for sub in list(subs):
                    sub.offer(env)

    def _on_error(self, p: object) -> None:
        if not isinstance(p, dict):
            return
        code, message = p.get("code"), p.get("message")
        details = p.get("details")
        err = CallError(
            code if is_valid_code(code) else ErrorCode.INTERNAL,  # type: ignore[arg-type]
            message if isinstance(message, str) else "",
            None,
            details if isinstance(details, dict) else None,
        )
        t, i = p.get("type"), p.get("id")
        for (st, si), subs in list(self._subs.items()):
            if t is None or (st == t and (i is None or si == i)):
                for sub in list(subs):
                    sub.fail(err)

    def _on_close(self, channel: object) -> None:
        err = CallError(ErrorCode.UNAVAILABLE, "channel closed", True)
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.fail(err)

    async def close(self) -> None:
        """End every subscription (``__unsubscribe`` is sent) and detach from the channel."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.aclose()
        self._channel.remove_event_listener(self._on_envelope)


def _sub_payload(type: str, id: str | None) -> dict[str, Any]:
    return {"type": type} if id is None else {"type": type, "id": id}
