"""The callee side of :class:`~alknet.core.call.peer.CallPeer` (``call-protocol.md`` §5, §7): admitting
inbound calls, the identity they run with, deadlines, and sending answers.

:class:`InboundServing` is a mixin: ``CallPeer`` owns the state it uses (``_inbound``, ``_dispatcher``,
``_writer``, ...) and inherits the methods. Each inbound call runs in its own task. Deadlines use one timer
per channel, armed at the earliest live deadline (a timer per call is a large share of a small call's cost):
when it fires, every call past its deadline is cancelled and answers ``TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from alknet.core.auth.identity import Identity
from alknet.core.call.channel import ChannelLimits, ChannelWriter
from alknet.core.call.env import (
    FORWARDED_FOR,
    HOPS,
    IDENTITY_KEY,
    AbortCall,
    Dispatcher,
    InboundRequest,
    Prepared,
    not_wire_output,
    unknown_operation,
)
from alknet.core.call.envelope import (
    CallError,
    CallRequested,
    ErrorCode,
    EventEnvelope,
    call_aborted,
    call_completed,
    call_error,
    call_responded,
    output_too_large,
    strip_reserved,
    wire_error,
)
from alknet.core.call.frame import FrameTooLarge, ValueModelError
from alknet.core.call.pending import Clock, InboundCalls, deadline_after, timeout_error
from alknet.core.logfmt import log_event

if TYPE_CHECKING:
    from alknet.core.call.peer import CallPeer

__all__ = ["CURRENT_PEER", "ChannelTrust", "InboundServing", "current_peer"]

log = logging.getLogger("alknet.call")

_FAIR_BATCH: Final = 32
_NEVER: Final = float("inf")
#: A deadline this close (seconds, loop clock) counts as reached when the deadline timer runs.
_DEADLINE_SLACK: Final = 0.0005

#: The channel serving the current inbound call (set in each handler task).
CURRENT_PEER: contextvars.ContextVar[CallPeer | None] = contextvars.ContextVar("alknet_peer", default=None)


def current_peer() -> CallPeer | None:
    """The ``CallPeer`` whose inbound call the running task serves, if any."""
    return CURRENT_PEER.get()


class ChannelTrust(StrEnum):
    UNTRUSTED = "untrusted"
    HEAD = "head"
    SERVICE = "service"


class InboundServing:
    """Serving inbound calls and sending frames; mixed into ``CallPeer``, which sets these attributes."""

    identity: Identity
    trust: ChannelTrust
    limits: ChannelLimits
    _clock: Clock
    _closing: bool
    _writer: ChannelWriter
    _inbound: InboundCalls
    _dispatcher: Dispatcher | None
    _on_frame: Callable[[str, EventEnvelope], None] | None
    _deadlines: dict[str, float]
    _expired: set[str]
    _deadline_timer: asyncio.TimerHandle | None
    _deadline_at: float

    def _init_serving(self) -> None:
        self._deadlines = {}
        self._expired = set()
        self._deadline_timer = None
        self._deadline_at = _NEVER

    def _stop_serving(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _observe(self, direction: str, env: EventEnvelope) -> None:
        assert self._on_frame is not None
        try:
            self._on_frame(direction, env)
        except Exception:
            log.exception("frame observer failed")

    def _post(self, env: EventEnvelope) -> bool:
        if self._on_frame is not None and env.type.startswith("call."):
            self._observe("out", env)
        try:
            return self._writer.post(env)
        except (ValueModelError, FrameTooLarge):
            log.error("unencodable %s frame dropped", env.type)
            return False

    def _on_requested(self, ev: CallRequested) -> bool:
        rid = ev.request_id
        err = self._inbound.admit(rid)
        if err is None and self._dispatcher is None:
            err = unknown_operation()
        if err is not None:
            self._post(call_error(rid, err))
        else:
            self._inbound.add(rid, asyncio.get_running_loop().create_task(self._serve(ev)))
        return True

    def _inbound_request(self, ev: CallRequested) -> InboundRequest:
        md: Mapping[str, Any] = ev.metadata or {}
        metadata = strip_reserved(md)
        identity, trusted, forwarded_for, hops = self.identity, False, None, 0
        if self.trust is ChannelTrust.HEAD:
            ff, h = md.get(FORWARDED_FOR), md.get(HOPS)
            if isinstance(ff, str):
                forwarded_for = metadata[FORWARDED_FOR] = ff
            if isinstance(h, int) and not isinstance(h, bool) and h >= 0:
                hops = metadata[HOPS] = h
        elif self.trust is ChannelTrust.SERVICE:
            trusted = True
            raw = md.get(IDENTITY_KEY)
            if raw is not None:
                try:
                    identity = Identity.from_json(raw)
                except (ValueError, TypeError):
                    raise CallError(ErrorCode.INVALID_INPUT, "invalid alknet.identity", False) from None
                metadata[IDENTITY_KEY] = raw
        return InboundRequest(
            ev.request_id,
            ev.operation_id,
            ev.input,
            ev.parent_request_id,
            ev.deadline,
            ev.idle_timeout,
            metadata,
            identity,
            trusted,
            forwarded_for,
            hops,
        )

    # Deadlines of inbound calls: one timer per channel, armed at the earliest live deadline, instead of a
    # timer per call (most calls end long before their deadline, and a per-call timer is a large share of
    # the cost of a small call). When it fires, each expired call's task is cancelled and answers TIMEOUT.

    def _arm_deadline(self, rid: str, at: float) -> None:
        self._deadlines[rid] = at
        if at < self._deadline_at:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_at = at
            self._deadline_timer = asyncio.get_running_loop().call_at(at, self._expire_deadlines)

    def _expire_deadlines(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline_timer, self._deadline_at = None, _NEVER
        now = loop.time() + _DEADLINE_SLACK
        nxt = _NEVER
        for rid, at in list(self._deadlines.items()):
            if at <= now:
                del self._deadlines[rid]
                task = self._inbound.task(rid)
                if task is not None and not task.done():
                    self._expired.add(rid)
                    task.cancel()
            elif at < nxt:
                nxt = at
        if nxt < _NEVER:
            self._deadline_at = nxt
            self._deadline_timer = loop.call_at(nxt, self._expire_deadlines)

    async def _serve(self, ev: CallRequested) -> None:
        CURRENT_PEER.set(self)  # type: ignore[arg-type]  # always a CallPeer
        rid = ev.request_id
        deadline: int | None = None
        try:
            assert self._dispatcher is not None
            prepared = self._dispatcher.prepare(self._inbound_request(ev))
            deadline = ev.deadline
            if deadline is None and not prepared.streaming:
                deadline = deadline_after(self.limits.default_call_timeout, self._clock)
            if deadline is None:
                await self._run(rid, prepared, None)
            else:
                remaining = deadline / 1000 - self._clock()
                if remaining <= 0:
                    raise timeout_error(deadline)
                self._arm_deadline(rid, asyncio.get_running_loop().time() + remaining)
                try:
                    await self._run(rid, prepared, deadline)
                finally:
                    self._deadlines.pop(rid, None)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if rid in self._expired:  # our deadline timer cancelled it (the finally below forgets it)
                if task is not None and task.cancelling() == 1 and not self._closing:
                    task.uncancel()
                    if deadline is not None and not self._inbound.aborted(rid):
                        self._post(call_error(rid, timeout_error(deadline)))
                return
            if task is None or task.cancelling():
                return  # aborted by the caller, or the channel is closing: send nothing
            self._post(call_error(rid, wire_error(RuntimeError("handler cancelled"), rid)))
        except AbortCall:
            self._post(call_aborted(rid))
        except Exception as exc:
            self._post(call_error(rid, wire_error(exc, rid)))
        finally:
            self._expired.discard(rid)
            self._inbound.finish(rid, asyncio.current_task())

    async def _run(self, rid: str, prepared: Prepared, deadline: int | None) -> None:
        if prepared.call is not None:
            await self._respond(rid, await prepared.call(deadline))
            return
        assert prepared.stream is not None
        agen = prepared.stream(deadline)
        n = 0
        try:
            async for item in agen:
                await self._respond(rid, item)
                n += 1
                if not n % _FAIR_BATCH:
                    await asyncio.sleep(0)  # a generator that never awaits must not starve the channel
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()
        self._post(call_completed(rid))

    async def _respond(self, rid: str, output: Any) -> None:
        env = call_responded(rid, output)
        w = self._writer
        try:
            frame = w.encode(env)
        except FrameTooLarge as exc:
            raise output_too_large(exc.size, exc.limit) from None
        except ValueModelError:
            log_event(log, logging.ERROR, "handler output is not a wire value", request_id=rid)
            raise not_wire_output() from None
        if self._on_frame is not None:
            self._observe("out", env)
        w.post_frame(frame)
        if w.buffered > w.high_water:
            await w.writable()
