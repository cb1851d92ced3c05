"""Serving operations and calling them from handlers: ``OperationEnv`` (``call-protocol.md`` §6.6, §7).

Callee side: a channel turns each ``call.requested`` into an :class:`InboundRequest` (identity from the
session, reserved metadata already filtered) and asks a :class:`Dispatcher` to :meth:`~Dispatcher.prepare` it.
``prepare`` runs the checks (``NOT_FOUND``, ``FORBIDDEN``, ``INVALID_INPUT``) and returns a :class:`Prepared`
that the channel runs under the call's deadline. :class:`LocalDispatcher` serves an ``OperationRegistry``;
``alknet.core.node.Node`` adds routing to workers.

Caller side: :class:`OperationEnv` picks a backend per path (§7): ``remote(prefix, caller)`` with the prefix
stripped, the node's routing table, ``service(namespace, client)``, the local registry, ``remote("*")``,
else ``NOT_FOUND``. ``invoke`` never raises for call failures; they come back in the ``ResponseEnvelope``.
A ``caller`` is anything with ``request`` and ``open_subscription`` (a ``CallPeer``, a ``ServiceClient``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, NamedTuple, Protocol

from alknet.core.auth.identity import Identity
from alknet.core.call.acl import HEAD, split_path
from alknet.core.call.envelope import (
    CallError,
    ErrorCode,
    ResponseEnvelope,
    strip_reserved,
    wire_error,
)
from alknet.core.call.frame import JSON_CODEC, ValueModelError, roundtrip
from alknet.core.call.pending import (
    DEFAULT_CALL_TIMEOUT,
    Clock,
    deadline_after,
    earliest_deadline,
    new_request_id,
    timeout_error,
)
from alknet.core.call.registry import OperationContext, OperationRegistry, Registered
from alknet.core.call.service import ServiceClient, ServiceServer, peer_uid

__all__ = [
    "FORWARDED_FOR",
    "HOPS",
    "IDENTITY_KEY",
    "MAX_HOPS",
    "AbortCall",
    "Caller",
    "Dispatcher",
    "EnvSubscription",
    "InboundRequest",
    "LocalDispatcher",
    "OperationContext",
    "OperationEnv",
    "Prepared",
    "Router",
    "ServiceClient",
    "ServiceServer",
    "StreamLike",
    "aborted_by_callee",
    "identity_json",
    "idle_error",
    "not_wire_input",
    "not_wire_output",
    "peer_uid",
    "unknown_operation",
]

log = logging.getLogger("alknet.call")

FORWARDED_FOR: Final = "alknet.forwardedFor"
HOPS: Final = "alknet.hops"
IDENTITY_KEY: Final = "alknet.identity"
MAX_HOPS: Final = 8
_LOCAL_IDENTITY: Final = Identity("local")


class AbortCall(Exception):
    """Raised by a handler or a relay to end its call with ``call.aborted`` (the callee gives up)."""


def unknown_operation() -> CallError:
    return CallError(ErrorCode.NOT_FOUND, "unknown operation", False)


def not_wire_input() -> CallError:
    return CallError(ErrorCode.INVALID_INPUT, "input is not a wire value", False)


def not_wire_output() -> CallError:
    return CallError(ErrorCode.INTERNAL, "internal error", False)


def aborted_by_callee() -> CallError:
    return CallError(ErrorCode.ABORTED, "aborted by callee", False)


def idle_error(idle_timeout_ms: int) -> CallError:
    return CallError(ErrorCode.TIMEOUT, "idle timeout exceeded", True, {"idleTimeout": idle_timeout_ms})


def _completed_without_response() -> CallError:
    return CallError(ErrorCode.ABORTED, "completed without response", False)


# ---------------------------------------------------------------------------------------- serving side


@dataclasses.dataclass(frozen=True, slots=True)
class InboundRequest:
    """A call to serve. ``identity`` and ``trusted`` come from the channel, never from the payload;
    ``metadata`` has already lost the ``alknet.*`` keys this channel does not honour."""

    request_id: str
    operation_id: str
    input: Any
    parent_request_id: str | None
    deadline_ms: int | None
    idle_timeout_ms: int | None
    metadata: Mapping[str, Any]
    identity: Identity
    trusted: bool = False
    forwarded_for: str | None = None
    hops: int = 0


class Prepared:
    """A checked call, ready to run under its deadline (``None`` for a subscription without one).

    Exactly one of ``call`` (query/mutation: returns the output) or ``stream`` (subscription: an async
    iterator of outputs) is set.
    """

    __slots__ = ("call", "stream")

    def __init__(
        self,
        *,
        call: Callable[[int | None], Awaitable[Any]] | None = None,
        stream: Callable[[int | None], AsyncIterator[Any]] | None = None,
    ) -> None:
        if (call is None) == (stream is None):
            raise ValueError("Prepared needs exactly one of call or stream")
        self.call = call
        self.stream = stream

    @property
    def streaming(self) -> bool:
        return self.stream is not None


class Dispatcher(Protocol):
    def prepare(self, request: InboundRequest) -> Prepared:
        """Check the call (raising ``CallError``) and return what runs it."""
        ...


class Router(Dispatcher, Protocol):
    def has_route(self, node: str) -> bool: ...


class StreamLike(Protocol):
    def __aiter__(self) -> AsyncIterator[Any]: ...

    def __anext__(self) -> Awaitable[Any]: ...

    def aclose(self) -> Awaitable[None]: ...


class Caller(Protocol):
    """The far end of the remote and service backends (``CallPeer``, ``ServiceClient``)."""

    async def request(
        self,
        op: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        deadline_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_request_id: str | None = None,
    ) -> ResponseEnvelope: ...

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
    ) -> StreamLike: ...


class LocalDispatcher:
    """Serves the operations of one registry; handler contexts get ``env`` bound to them."""

    def __init__(self, registry: OperationRegistry, env: OperationEnv) -> None:
        self.registry = registry
        self.env = env

    def prepare(self, request: InboundRequest, path: str | None = None) -> Prepared:
        reg = self.registry.prepare(
            path or request.operation_id, request.input, request.identity, trusted=request.trusted
        )
        if reg.is_subscription:
            return Prepared(stream=lambda deadline: self._stream(reg, request, deadline))
        return Prepared(call=lambda deadline: self._call(reg, request, deadline))

    def context(self, request: InboundRequest, deadline_ms: int | None) -> OperationContext:
        return new_context(
            self.env,
            request_id=request.request_id,
            parent_request_id=request.parent_request_id,
            identity=request.identity,
            metadata=request.metadata,
            trusted=request.trusted,
            deadline_ms=deadline_ms,
        )

    async def _call(self, reg: Registered, request: InboundRequest, deadline: int | None) -> Any:
        output = await reg.handler(request.input, self.context(request, deadline))  # type: ignore[misc]
        self.registry.check_output(reg, output, request.request_id)
        return output

    async def _stream(
        self, reg: Registered, request: InboundRequest, deadline: int | None
    ) -> AsyncIterator[Any]:
        agen = reg.handler(request.input, self.context(request, deadline))
        try:
            async for item in agen:  # type: ignore[union-attr]
                self.registry.check_output(reg, item, request.request_id)
                yield item
        finally:
            await agen.aclose()  # type: ignore[union-attr]


def new_context(
    env: OperationEnv,
    *,
    request_id: str,
    parent_request_id: str | None,
    identity: Identity,
    metadata: Mapping[str, Any],
    trusted: bool,
    deadline_ms: int | None,
) -> OperationContext:
    """An ``OperationContext`` whose ``env`` is ``env`` bound to it."""
    bound = env._bound(_Parent(request_id, identity, metadata, deadline_ms))
    return OperationContext(request_id, parent_request_id, identity, metadata, bound, trusted, deadline_ms)


class _Parent(NamedTuple):
    """What a bound env keeps of its handler's context."""

    request_id: str
    identity: Identity
    metadata: Mapping[str, Any]
    deadline_ms: int | None


# ---------------------------------------------------------------------------------------- caller side


class EnvSubscription:
    """An async iterator and async context manager over one subscription started by ``OperationEnv``.

    Errors (including ``NOT_FOUND`` and friends) are raised by the first ``__anext__``; leaving the block or
    ``aclose()`` ends the stream (``call.aborted`` on the wire for remote and service backends).
    """

    __slots__ = ("_agen",)

    def __init__(self, agen: AsyncIterator[Any]) -> None:
        self._agen = agen

    def __aiter__(self) -> EnvSubscription:
        return self

    async def __anext__(self) -> Any:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        aclose = getattr(self._agen, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> EnvSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _check_prefix(key: str, what: str) -> None:
    if key != "*" and (split_path("/" + key) is None or "/" in key):
        raise ValueError(f"invalid {what} {key!r}")


class OperationEnv:
    """Calls from handlers and application code to operations, wherever they live (§7).

    ``strict=True`` round-trips local input and output through the JSON codec, so a non-wire value fails the
    same way as over a channel. Unbound calls run as ``identity`` (default ``Identity("local")``) and trusted;
    :meth:`bind` gives a handler's env, whose calls are children of its context.
    """

    __slots__ = (
        "_clock",
        "_ctx",
        "_default_timeout",
        "_identity",
        "_local",
        "_remotes",
        "_router",
        "_services",
        "strict",
    )

    def __init__(
        self,
        *,
        strict: bool = False,
        identity: Identity | None = None,
        router: Router | None = None,
        default_timeout: float = DEFAULT_CALL_TIMEOUT,
        clock: Clock = time.time,
    ) -> None:
        self.strict = strict
        self._identity = identity or _LOCAL_IDENTITY
        self._router = router
        self._default_timeout = default_timeout
        self._clock = clock
        self._local: list[LocalDispatcher] = []
        self._remotes: dict[str, Caller] = {}
        self._services: dict[str, Caller] = {}
        self._ctx: _Parent | None = None

    # ------------------------------------------------------------------------------------- backends

    def local(self, registry: OperationRegistry) -> OperationEnv:
        """Serve two-segment paths from ``registry`` (one registry per env)."""
        if self._local:
            raise ValueError("a local registry is already bound")
        self._local.append(LocalDispatcher(registry, self))
        return self

    def service(self, namespace: str, client: Caller) -> OperationEnv:
        """Send ``/{namespace}/{op}`` to a service socket client."""
        _check_prefix(namespace, "namespace")
        if namespace in self._services:
            raise ValueError(f"namespace {namespace!r} is already bound")
        self._services[namespace] = client
        return self

    def remote(self, prefix: str, peer: Caller) -> OperationEnv:
        """Send ``/{prefix}/...`` to ``peer`` with the prefix stripped; ``"*"`` is the unchanged fallback."""
        _check_prefix(prefix, "prefix")
        if prefix in self._remotes:
            raise ValueError(f"prefix {prefix!r} is already bound")
        self._remotes[prefix] = peer
        return self

    def unbind_remote(self, prefix: str, peer: Caller | None = None) -> bool:
        """Remove a remote binding (only if it is ``peer``, when given); True if one was removed."""
        if prefix in self._remotes and (peer is None or self._remotes[prefix] is peer):
            del self._remotes[prefix]
            return True
        return False

    @property
    def dispatcher(self) -> LocalDispatcher | None:
        return self._local[0] if self._local else None

    def bind(self, ctx: OperationContext) -> OperationEnv:
        """This env for the handler of ``ctx``: same backends, calls are children of ``ctx``."""
        return self._bound(_Parent(ctx.request_id, ctx.identity, ctx.metadata, ctx.deadline_ms))

    def _bound(self, ctx: _Parent) -> OperationEnv:
        env = OperationEnv.__new__(OperationEnv)
        env.strict = self.strict
        env._identity = self._identity
        env._router = self._router
        env._default_timeout = self._default_timeout
        env._clock = self._clock
        env._local = self._local
        env._remotes = self._remotes
        env._services = self._services
        env._ctx = ctx
        return env

    # ------------------------------------------------------------------------------------------ calls

    def _call_fields(
        self, timeout: float | None, metadata: Mapping[str, Any] | None, stream: bool
    ) -> tuple[int | None, dict[str, Any], str | None, Identity]:
        ctx = self._ctx
        own = (
            None
            if stream
            else deadline_after(self._default_timeout if timeout is None else timeout, self._clock)
        )
        deadline = earliest_deadline(own, ctx.deadline_ms if ctx is not None else None)
        md = strip_reserved(ctx.metadata) if ctx is not None else {}
        md.update(strip_reserved(metadata))
        if ctx is None:
            return deadline, md, None, self._identity
        return deadline, md, ctx.request_id, ctx.identity

    def _pick(self, segs: tuple[str, ...]) -> tuple[str, Any]:
        """("remote"|"service", caller) with the path to send, or ("local", dispatcher), or ("none", None)."""
        remote = self._remotes.get(segs[0])
        if remote is not None and segs[0] != "*":
            return "remote", remote
        csegs = segs[1:] if segs[0] == HEAD else segs
        if len(csegs) >= 3 and self._router is not None and self._router.has_route(csegs[0]):
            return "local", self._router
        if len(csegs) == 2:
            svc = self._services.get(csegs[0])
            if svc is not None:
                return "service", svc
            if self._local and "/" + "/".join(csegs) in self._local[0].registry:
                return "local", self._local[0]
        fallback = self._remotes.get("*")
        if fallback is not None:
            return "fallback", fallback
        return "none", None

    async def invoke(
        self,
        namespace: str,
        op: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ResponseEnvelope:
        """Call ``/{namespace}/{op}``; failures come back as ``ResponseEnvelope.error``."""
        path = f"/{namespace}/{op}"
        segs = split_path(path)
        if segs is None or len(segs) < 2:
            return ResponseEnvelope(new_request_id(), error=unknown_operation())
        deadline, md, parent, identity = self._call_fields(timeout, metadata, False)
        kind, target = self._pick(segs)
        if kind in ("remote", "service", "fallback"):
            sent, smd = _outbound(kind, path, segs, md, identity)
            resp: ResponseEnvelope = await target.request(
                sent, input, deadline_ms=deadline, metadata=smd, parent_request_id=parent
            )
            return resp
        rid = new_request_id()
        if kind == "none":
            return ResponseEnvelope(rid, error=unknown_operation())
        req = InboundRequest(rid, path, input, parent, deadline, None, md, identity, True)
        try:
            output = await self._run_local(target, req)
        except Exception as exc:
            return ResponseEnvelope(rid, error=_as_wire(exc, rid))
        return ResponseEnvelope(rid, output)

    async def _run_local(self, dispatcher: Dispatcher, req: InboundRequest) -> Any:
        if self.strict:
            req = dataclasses.replace(req, input=_roundtrip(req.input, not_wire_input))
        prepared = dispatcher.prepare(req)
        deadline = req.deadline_ms
        assert deadline is not None
        remaining = deadline / 1000 - self._clock()
        if remaining <= 0:
            raise timeout_error(deadline)
        cm = asyncio.timeout(remaining)
        try:
            async with cm:
                output = await _first_output(prepared, deadline)
        except TimeoutError:
            if cm.expired():
                raise timeout_error(deadline) from None
            raise
        return _roundtrip(output, not_wire_output) if self.strict else output

    def subscribe(
        self, namespace: str, op: str, input: Any = None, *, idle_timeout: float | None = None
    ) -> EnvSubscription:
        """Subscribe to ``/{namespace}/{op}``; errors are raised from the iterator."""
        return EnvSubscription(self._stream(namespace, op, input, idle_timeout))

    async def _stream(
        self, namespace: str, op: str, input: Any, idle_timeout: float | None
    ) -> AsyncIterator[Any]:
        path = f"/{namespace}/{op}"
        segs = split_path(path)
        if segs is None or len(segs) < 2:
            raise unknown_operation()
        idle_ms = None if idle_timeout is None else max(1, round(idle_timeout * 1000))
        deadline, md, parent, identity = self._call_fields(None, None, True)
        kind, target = self._pick(segs)
        if kind == "none":
            raise unknown_operation()
        if kind != "local":
            sent, smd = _outbound(kind, path, segs, md, identity)
            sub = target.open_subscription(
                sent,
                input,
                idle_timeout_ms=idle_ms,
                deadline_ms=deadline,
                metadata=smd,
                parent_request_id=parent,
            )
            try:
                async for item in sub:
                    yield item
            finally:
                await sub.aclose()
            return
        rid = new_request_id()
        req = InboundRequest(rid, path, input, parent, deadline, idle_ms, md, identity, True)
        try:
            if self.strict:
                req = dataclasses.replace(req, input=_roundtrip(req.input, not_wire_input))
            prepared = target.prepare(req)
            if deadline is not None and deadline <= self._clock() * 1000:
                raise timeout_error(deadline)
            async for item in _local_items(prepared, deadline, idle_ms, self._clock):
                yield _roundtrip(item, not_wire_output) if self.strict else item
        except Exception as exc:
            raise _as_wire(exc, rid) from None


def _outbound(
    kind: str, path: str, segs: tuple[str, ...], md: dict[str, Any], identity: Identity
) -> tuple[str, dict[str, Any] | None]:
    """The path and metadata sent: a remote loses its prefix, a service a leading ``head`` and gets the
    caller's identity in ``alknet.identity``; the ``*`` fallback gets the path unchanged."""
    sent = path
    if kind == "remote" or (kind == "service" and segs[0] == HEAD):
        sent = path[len(segs[0]) + 1 :]
    if kind == "service":
        md = {**md, IDENTITY_KEY: identity_json(identity)}
    return sent, md or None


def identity_json(identity: Identity) -> dict[str, Any]:
    """``{"id", "scopes", "resources"?}``: what a service client puts in ``alknet.identity``."""
    out: dict[str, Any] = {"id": identity.id, "scopes": list(identity.scopes)}
    if identity.resources:
        out["resources"] = {k: list(v) for k, v in identity.resources.items()}
    return out


def _as_wire(exc: BaseException, request_id: str) -> CallError:
    if isinstance(exc, AbortCall):
        return aborted_by_callee()
    return wire_error(exc, request_id)


def _roundtrip(value: Any, error: Callable[[], CallError]) -> Any:
    try:
        return roundtrip(value, JSON_CODEC)
    except ValueModelError:
        raise error() from None


async def _first_output(prepared: Prepared, deadline: int | None) -> Any:
    """A plain call's output, or the first item of a stream (which is then closed)."""
    if prepared.call is not None:
        return await prepared.call(deadline)
    assert prepared.stream is not None
    agen = prepared.stream(deadline)
    try:
        async for item in agen:
            return item
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            await aclose()
    raise _completed_without_response()


async def _local_items(
    prepared: Prepared, deadline: int | None, idle_ms: int | None, clock: Clock
) -> AsyncIterator[Any]:
    """The items of a local call seen as a subscription, under its deadline and idle timeout."""
    if prepared.stream is not None:
        source: AsyncIterator[Any] = prepared.stream(deadline)
    else:
        source = _one_then_wait(prepared, deadline)
    try:
        while True:
            now = clock()
            idle_at = None if idle_ms is None else int(now * 1000) + idle_ms
            until = earliest_deadline(deadline, idle_at)
            cm = asyncio.timeout(None if until is None else max(0.0, until / 1000 - now))
            try:
                async with cm:
                    item = await source.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not cm.expired():
                    raise
                if deadline is not None and (idle_at is None or deadline <= idle_at):
                    raise timeout_error(deadline) from None
                assert idle_ms is not None
                raise idle_error(idle_ms) from None
            yield item
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


async def _one_then_wait(prepared: Prepared, deadline: int | None) -> AsyncIterator[Any]:
    """A query or mutation subscribed to: its one output, then nothing until the consumer leaves."""
    assert prepared.call is not None
    yield await prepared.call(deadline)
    await asyncio.get_running_loop().create_future()
