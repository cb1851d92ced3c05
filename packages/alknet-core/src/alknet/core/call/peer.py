"""``CallPeer``: one call-protocol channel over an asyncio byte stream (``call-protocol.md`` §5, §10, §11).

Any ``(reader, writer)`` pair with ``reader.read(n)`` and ``writer.write``/``drain`` carries it: an SSH
``alknet-control`` channel, raw framing on tcp, a service socket, an in-memory pipe. Both ends run the same
class: each keeps a ``PendingRequestMap`` for the calls it made and an ``InboundCalls`` table for the calls it
serves. One reader task never waits on a consumer or the writer; each inbound call runs in its own task
(the callee side lives in :mod:`alknet.core.call.serving`); one :class:`ChannelWriter` sends a lone frame at
once and every frame queued behind it during one event-loop iteration in one transport write.

Inbound calls run with the channel's authenticated identity (``identity=``, or the stream's), never a
payload ``identity``. ``trust`` says which reserved ``alknet.*`` metadata the far end may set:
:attr:`ChannelTrust.UNTRUSTED` (clients: none), :attr:`ChannelTrust.HEAD` (the head a worker dialed:
``alknet.forwardedFor`` and ``alknet.hops``), :attr:`ChannelTrust.SERVICE` (a service socket: trusted calls whose
identity is ``alknet.identity``).

A protocol error (bad frame, undecodable body, a ``call.requested`` without a usable id) closes this channel
only, sending nothing more. Closing fails every pending call with ``UNAVAILABLE`` (``channel closed``),
cancels every handler and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from alknet.core.auth.identity import Identity
from alknet.core.call.channel import (
    CLOSE_GRACE,
    ChannelLimits,
    ChannelStream,
    ChannelWriter,
    WriterLike,
)
from alknet.core.call.env import (
    Dispatcher,
    OperationEnv,
    not_wire_input,
)
from alknet.core.call.envelope import (
    CallAborted,
    CallCompleted,
    CallError,
    CallErrored,
    CallRequested,
    CallResponded,
    CloseChannel,
    Drop,
    ErrorCode,
    EventEnvelope,
    RejectRequest,
    ResponseEnvelope,
    call_aborted,
    call_requested,
    input_too_large,
    parse_inbound,
)
from alknet.core.call.frame import (
    Codec,
    ConnectionClosed,
    FrameError,
    FrameReader,
    FrameTooLarge,
    ValueModelError,
    codec_by_name,
)
from alknet.core.call.pending import (
    Clock,
    InboundCalls,
    PendingRequestMap,
    Subscription,
    deadline_after,
    new_request_id,
)
from alknet.core.call.registry import OperationRegistry, OperationSpec
from alknet.core.call.serving import CURRENT_PEER, ChannelTrust, InboundServing, current_peer
from alknet.core.logfmt import log_event

if TYPE_CHECKING:
    from alknet.core.node import Node

__all__ = [
    "ANONYMOUS",
    "CURRENT_PEER",
    "CallPeer",
    "ChannelLimits",
    "ChannelStream",
    "ChannelTrust",
    "ChannelWriter",
    "WriterLike",
    "current_peer",
]

log = logging.getLogger("alknet.call")

ANONYMOUS: Final = Identity("anonymous")
REGISTER_PATH: Final = "/head/services/register"
#: Frames handled from one burst of bytes before the reader lets the loop run the handlers and the writer.
_READ_SLICE: Final = 32


def _stream_attr(stream: object, name: str) -> Any:
    v = getattr(stream, name, None)
    if v is None:
        v = getattr(getattr(stream, "info", None), name, None)
    return v


def _transport_name(t: object) -> str:
    if t is None:
        return ""
    kind = getattr(t, "kind", None)
    return str(kind if kind is not None else t)


# -------------------------------------------------------------------------------------------------- peer


class _ProtocolError(Exception):
    pass


EventListener = Callable[[EventEnvelope], None]
CloseCallback = Callable[["CallPeer"], None]
FrameObserver = Callable[[str, EventEnvelope], None]


class CallPeer(InboundServing):
    """One end of a call-protocol channel (§5.4, §11).

    ``node`` serves inbound calls through a ``Node`` (routing, pubsub); ``registry`` through a plain
    registry; with neither, inbound calls get ``NOT_FOUND``. ``on_frame(direction, env)`` sees every ``call.*``
    frame (``"in"``/``"out"``), e.g. for call recording. ``preread`` holds bytes already read from the stream
    (frames a raw-framing client pipelined after ``auth.token``). Reading starts at ``async with``,
    :meth:`start`, or the first ``call``, ``subscribe``, ``register`` or ``serve_forever``.
    """

    def __init__(
        self,
        stream: object,
        *,
        node: Node | None = None,
        registry: OperationRegistry | None = None,
        limits: ChannelLimits | None = None,
        identity: Identity | None = None,
        transport: str | None = None,
        remote_addr: str | None = None,
        trust: ChannelTrust | str = ChannelTrust.UNTRUSTED,
        codec: str | Codec | None = None,
        clock: Clock = time.time,
        on_frame: FrameObserver | None = None,
        preread: bytes = b"",
    ) -> None:
        if node is not None and registry is not None:
            raise ValueError("give node or registry, not both")
        reader = getattr(stream, "reader", None)
        writer = getattr(stream, "writer", None)
        if reader is None or writer is None:
            raise TypeError("stream needs reader and writer attributes")
        c = codec if codec is not None else getattr(stream, "codec", None) or "json"
        self.codec: Codec = codec_by_name(c) if isinstance(c, str) else c
        self.limits = limits or (node.limits if node is not None else ChannelLimits())
        self.identity: Identity = identity or _stream_attr(stream, "identity") or ANONYMOUS
        self.transport = (
            transport if transport is not None else _transport_name(_stream_attr(stream, "transport"))
        )
        self.remote_addr = remote_addr or _stream_attr(stream, "remote_addr") or "-"
        self.trust = ChannelTrust(trust)
        self.node = node
        self.connected_at = time.time()
        self._clock = clock
        self._on_frame = on_frame
        self._dispatcher: Dispatcher | None = node
        if registry is not None:
            env = OperationEnv(clock=clock, default_timeout=self.limits.default_call_timeout).local(registry)
            self._dispatcher = env.dispatcher
        self._registry = registry
        self._reader = FrameReader(reader, self.codec, self.limits.max_frame)
        self._reader.decoder.feed(preread)
        self._writer = ChannelWriter(
            writer,
            self.codec,
            max_frame=self.limits.max_frame,
            high_water=self.limits.write_high_water,
            on_error=self._writer_failed,
        )
        self._pending = PendingRequestMap(
            clock=clock,
            subscription_queue=self.limits.subscription_queue,
            max_pending=self.limits.max_outbound_pending,
            send_aborted=self._send_aborted,
        )
        self._inbound = InboundCalls(max_inbound_calls=self.limits.max_inbound_calls)
        self._listeners: list[EventListener] = []
        self._close_callbacks: list[CloseCallback] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader_task: asyncio.Task[None] | None = None
        self._finalizer: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None
        self._init_serving()
        self._started = False
        self._closing = False
        self.close_reason: str | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"CallPeer({self.identity.id!r}, {self.codec.name}, {state})"

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def pending(self) -> PendingRequestMap:
        return self._pending

    @property
    def inbound(self) -> InboundCalls:
        return self._inbound

    @property
    def writer(self) -> ChannelWriter:
        return self._writer

    def start(self) -> None:
        """Start the reader and writer tasks (idempotent); a node attaches the channel here."""
        if self._started or self._closing:
            return
        self._started = True
        self._done = asyncio.Event()
        self._writer.start()
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(), name="alknet-channel-reader"
        )
        if self.node is not None:
            self.node.attach(self)

    async def __aenter__(self) -> CallPeer:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Serve until the stream closes (EOF, protocol error, ``close()``)."""
        self.start()
        if self._done is not None:
            await self._done.wait()

    async def close(self) -> None:
        """Close the channel (idempotent): pending calls fail with ``UNAVAILABLE``, handlers are cancelled."""
        self._begin_close("closed", discard=False)
        fin = self._finalizer
        if fin is not None:
            await asyncio.shield(fin)

    def add_close_callback(self, cb: CloseCallback) -> None:
        """``cb(peer)`` runs once, synchronously, when the channel starts closing."""
        if self._closing:
            cb(self)
        else:
            self._close_callbacks.append(cb)

    def add_event_listener(self, listener: EventListener) -> None:
        """``listener(env)`` gets every ``__*`` frame and every pubsub event received."""
        self._listeners.append(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """A task that belongs to this channel: cancelled and awaited when it closes."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if self._closing:
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _writer_failed(self, exc: BaseException) -> None:
        log_event(log, logging.DEBUG, "channel write failed", error=type(exc).__name__)
        self._begin_close("write failed", discard=True)

    def _begin_close(self, reason: str, *, discard: bool) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        self._pending.close()
        self._stop_serving()
        handlers = self._inbound.close()
        self._writer.close(discard=discard)
        callbacks, self._close_callbacks = self._close_callbacks, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("channel close callback failed")
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        rt = self._reader_task
        if rt is not None and rt is not asyncio.current_task():
            rt.cancel()
        if self._started:
            self._finalizer = asyncio.get_running_loop().create_task(self._finalize([*handlers, *tasks]))

    async def _finalize(self, tasks: list[asyncio.Task[Any]]) -> None:
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await self._writer.wait_closed()
        rt = self._reader_task
        if rt is not None and not rt.done():
            await asyncio.wait({rt}, timeout=CLOSE_GRACE)
        await asyncio.sleep(0)  # let the cancelled sweeper of the pending map finish
        if self._done is not None:
            self._done.set()

    # ------------------------------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        reason, discard = "eof", False
        reader, decoder, writer = self._reader, self._reader.decoder, self._writer
        burst = 0
        try:
            while True:
                env = await reader.read()
                if env is None:
                    break
                if not burst:
                    writer.rearm()  # fresh bytes: a later iteration than any direct write so far
                self._on_envelope(env)
                if not decoder.buffered:
                    burst = 0
                else:
                    burst += 1
                    if burst >= _READ_SLICE:
                        # A long burst (a pipelining peer) is served in slices: the answers of one slice are
                        # flushed while the next is decoded, so both ends work at the same time.
                        burst = 0
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            reason = "closed"
        except (FrameError, _ProtocolError) as exc:
            reason, discard = "protocol error", True
            log_event(log, logging.WARNING, "protocol error, closing channel", error=str(exc)[:200])
        except ConnectionClosed as exc:
            reason = "truncated"
            log_event(log, logging.WARNING, "channel truncated", error=str(exc))
        except (OSError, EOFError) as exc:
            reason = "connection lost"
            log_event(log, logging.DEBUG, "channel read failed", error=type(exc).__name__)
        except Exception:
            reason, discard = "internal error", True
            log.exception("channel reader failed")
        finally:
            self._begin_close(reason, discard=discard)

    def _on_envelope(self, env: EventEnvelope) -> None:
        if self._on_frame is not None and env.type.startswith("call."):
            self._observe("in", env)
        match parse_inbound(env):
            case CallResponded(rid, output):
                known = self._pending.on_responded(rid, output)
            case CallRequested() as ev:
                known = self._on_requested(ev)
            case CallCompleted(rid):
                known = self._pending.on_completed(rid)
            case CallErrored(rid, err):
                known = self._pending.on_error(rid, err)
            case CallAborted(rid):
                known = self._inbound.abort(rid) or self._pending.on_aborted(rid)
            case RejectRequest() as ev:
                known = self._post(ev.reply)
            case CloseChannel(reason):
                raise _ProtocolError(reason)
            case Drop(type=t, reason=reason, level=level):
                known = True
                log_event(log, level, "frame dropped", type=t[:64], reason=reason)
            case _:
                known = True
                for listener in tuple(self._listeners):
                    try:
                        listener(env)
                    except Exception:
                        log.exception("event listener failed")
        if not known:
            log.debug("%s for an unknown id dropped", env.type)

    # ------------------------------------------------------------------------------------------ sending

    def _send_aborted(self, request_id: str) -> None:
        if not self._closing:
            self._post(call_aborted(request_id))

    def post_envelope(self, env: EventEnvelope) -> bool:
        """Queue any envelope (a pubsub frame) without waiting; False once closed."""
        return self._post(env)

    async def send_envelope(self, env: EventEnvelope) -> None:
        """Queue an envelope and wait while the writer is over its high-water mark."""
        self._post(env)
        w = self._writer
        if w.buffered > w.high_water:
            await w.writable()

    # ------------------------------------------------------------------------------------------ calling

    def _encode_request(self, env: EventEnvelope) -> bytes:
        try:
            return self._writer.encode(env)
        except FrameTooLarge as exc:
            raise input_too_large(exc.size, exc.limit) from None
        except ValueModelError:
            raise not_wire_input() from None

    def _deadline(self, timeout: float | None, deadline_ms: int | None) -> int:
        if deadline_ms is not None:
            return deadline_ms
        return deadline_after(self.limits.default_call_timeout if timeout is None else timeout, self._clock)

    async def request(
        self,
        op: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        deadline_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_request_id: str | None = None,
    ) -> ResponseEnvelope:
        """Like :meth:`call`, but the outcome comes back as a ``ResponseEnvelope`` (``source="remote"``)."""
        self.start()
        rid = new_request_id()
        deadline = self._deadline(timeout, deadline_ms)
        env = call_requested(
            rid, op, input, parent_request_id=parent_request_id, deadline=deadline, metadata=metadata
        )
        try:
            frame = self._encode_request(env)
            fut = self._pending.add_call(rid, deadline)
        except CallError as exc:
            return ResponseEnvelope(rid, error=exc, source="remote")
        if self._on_frame is not None:
            self._observe("out", env)
        self._writer.post_frame(frame)
        try:
            if self._writer.buffered > self._writer.high_water:
                await self._writer.writable()
            output = await fut
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except CallError as exc:
            return ResponseEnvelope(rid, error=exc, source="remote")
        return ResponseEnvelope(rid, output, source="remote")

    async def call(
        self,
        op: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        deadline_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_request_id: str | None = None,
    ) -> Any:
        """Call ``op`` and return its output; raises ``CallError``. ``timeout`` defaults to the limits' 30 s."""
        resp = await self.request(
            op,
            input,
            timeout=timeout,
            deadline_ms=deadline_ms,
            metadata=metadata,
            parent_request_id=parent_request_id,
        )
        return resp.unwrap()

    def subscribe(
        self,
        op: str,
        input: Any = None,
        *,
        idle_timeout: float | None = None,
        deadline_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Subscription:
        """Start a subscription: an async iterator and context manager; leaving it sends ``call.aborted``."""
        idle_ms = None if idle_timeout is None else max(1, round(idle_timeout * 1000))
        return self.open_subscription(
            op, input, idle_timeout_ms=idle_ms, deadline_ms=deadline_ms, metadata=metadata
        )

    def open_subscription(
        self,
        op: str,
        input: Any = None,
        *,
        idle_timeout_ms: int | None = None,
        enforce_idle: bool = True,
        deadline_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_request_id: str | None = None,
    ) -> Subscription:
        """The low-level form of :meth:`subscribe` (ms values; a relay forwards ``idleTimeout`` unenforced)."""
        self.start()
        rid = new_request_id()
        env = call_requested(
            rid,
            op,
            input,
            parent_request_id=parent_request_id,
            deadline=deadline_ms,
            idle_timeout=idle_timeout_ms,
            metadata=metadata,
        )
        frame = self._encode_request(env)
        sub = self._pending.add_subscription(
            rid, idle_timeout_ms=idle_timeout_ms if enforce_idle else None, deadline_ms=deadline_ms
        )
        if self._on_frame is not None:
            self._observe("out", env)
        self._writer.post_frame(frame)
        return sub

    def abort(self, request_id: str) -> bool:
        """Abort a call or subscription this peer made: ``call.aborted`` is sent, the waiter gets ``ABORTED``."""
        return self._pending.abort(request_id)

    async def batch(
        self, calls: Iterable[tuple[str, Any]], *, concurrency: int = 64, timeout: float | None = None
    ) -> list[ResponseEnvelope]:
        """``(op, input)`` calls with at most ``concurrency`` in flight; results in input order."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        sem = asyncio.Semaphore(concurrency)

        async def one(op: str, value: Any) -> ResponseEnvelope:
            async with sem:
                return await self.request(op, value, timeout=timeout)

        return list(await asyncio.gather(*(one(op, value) for op, value in calls)))

    async def register(
        self, node_name: str, specs: Iterable[OperationSpec] | None = None, *, timeout: float | None = None
    ) -> list[str]:
        """Register this end as worker ``node_name`` with the head; returns the full paths (sorted).

        ``specs`` default to what this end serves: its node's exported operations, or its registry's
        non-built-in ones.
        """
        if specs is None:
            if self.node is not None:
                specs = self.node.export_specs(exclude=self)
            elif self._registry is not None:
                specs = [r.spec for r in self._registry.entries() if not r.builtin]
            else:
                specs = []
        payload = {"node": node_name, "operations": [s.to_wire() for s in specs]}
        out = await self.call(REGISTER_PATH, payload, timeout=timeout)
        ops = out.get("operations") if isinstance(out, dict) else None
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise CallError(ErrorCode.INTERNAL, "malformed registration answer", False)
        return list(ops)
