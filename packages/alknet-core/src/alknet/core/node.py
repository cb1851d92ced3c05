"""``Node``: an operation registry, a routing table of workers and an event bus (``call-protocol.md`` §8).

Every channel a node serves is a ``CallPeer(stream, node=node)``; the node is its dispatcher. Resolution of a
path ``/s1/.../sn``: a leading ``head`` is stripped; two segments go to the local registry; three or more
whose first segment is a registered worker are forwarded to that worker's channel with the segment
stripped; anything else is ``NOT_FOUND``.

A head (``accept_workers=True``) serves ``/services/register`` (called as ``/head/services/register``):
the caller needs scope ``node:<name>`` (or a wildcard such as ``node:*``), a name held by another live channel is
``CONFLICT``, and a route vanishes when its channel closes. ``head.node.registered`` and
``head.node.removed`` are published on the bus. Forwarded calls keep the caller's deadline (or get the
default) and ``idleTimeout``, carry ``alknet.forwardedFor`` and ``alknet.hops`` (``UNAVAILABLE`` ``hop limit``
beyond 8), and relay answers, aborts and disconnects under the caller's request id.

A node that is itself a worker (:meth:`Node.register_with`) registers upward its local operations plus its
routed ones, and re-registers, debounced by 100 ms, whenever its routing table changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

from alknet.core.auth.identity import Identity
from alknet.core.call.acl import HEAD, authorize, has_scope, split_path
from alknet.core.call.env import (
    FORWARDED_FOR,
    HOPS,
    MAX_HOPS,
    AbortCall,
    EnvSubscription,
    InboundRequest,
    LocalDispatcher,
    OperationEnv,
    Prepared,
    aborted_by_callee,
    unknown_operation,
)
from alknet.core.call.envelope import CallError, ErrorCode, EventEnvelope, strip_reserved
from alknet.core.call.peer import CallPeer, ChannelLimits, ChannelTrust, current_peer
from alknet.core.call.pending import Clock
from alknet.core.call.registry import (
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
    check_spec,
    is_valid_node_name,
    register_builtins,
)
from alknet.core.call.schema import SchemaValidator
from alknet.core.events import ChannelEvents, EventBus
from alknet.core.logfmt import log_event

__all__ = ["MAX_REGISTERED_OPERATIONS", "REREGISTER_DEBOUNCE", "Node", "RoutedOperation", "WorkerRoute"]

log = logging.getLogger("alknet.node")

MAX_REGISTERED_OPERATIONS: Final = 4096
REREGISTER_DEBOUNCE: Final = 0.1
NODE_REGISTERED: Final = "head.node.registered"
NODE_REMOVED: Final = "head.node.removed"

StatusProvider = Callable[[OperationContext], Awaitable[Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True, slots=True)
class RoutedOperation:
    """One operation of a worker, named by its full path on this node (``/dev1/fs/readFile``)."""

    spec: OperationSpec
    validator: SchemaValidator

    @property
    def streaming(self) -> bool:
        return self.spec.op_type is OperationType.SUBSCRIPTION


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerRoute:
    node: str
    peer: CallPeer
    ops: Mapping[str, RoutedOperation]
    registered_at: float


def _invalid(message: str) -> CallError:
    return CallError(ErrorCode.INVALID_INPUT, message, False)


def _version() -> str:
    try:
        return importlib.metadata.version("alknet-core")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Node:
    """Registry + routing table + event bus; the dispatcher of every channel attached to it."""

    def __init__(
        self,
        name: str = HEAD,
        registry: OperationRegistry | None = None,
        bus: EventBus | None = None,
        *,
        accept_workers: bool = False,
        limits: ChannelLimits | None = None,
        identity: Identity | None = None,
        status: StatusProvider | None = None,
        strict: bool = False,
        clock: Clock = time.time,
        listen_addrs: tuple[str, ...] = (),
        endpoint_id: str | None = None,
    ) -> None:
        if name != HEAD and not is_valid_node_name(name):
            raise ValueError(f"invalid node name {name!r}")
        self.name = name
        self.registry = registry if registry is not None else OperationRegistry()
        self.bus = bus if bus is not None else EventBus()
        self.accept_workers = accept_workers
        self.limits = limits or ChannelLimits()
        self.listen_addrs = listen_addrs
        self.endpoint_id = endpoint_id
        self.started_at = time.time()
        self.env = OperationEnv(
            strict=strict,
            identity=identity or Identity(name),
            router=self,
            default_timeout=self.limits.default_call_timeout,
            clock=clock,
        ).local(self.registry)
        local = self.env.dispatcher
        assert local is not None
        self._local: LocalDispatcher = local
        self._routes: dict[str, WorkerRoute] = {}
        self._route_of: dict[CallPeer, WorkerRoute] = {}
        self._peers: dict[CallPeer, ChannelEvents] = {}
        self._upstreams: dict[CallPeer, str] = {}
        self._reregister: dict[CallPeer, asyncio.Task[Any]] = {}
        if "/services/list" not in self.registry:
            register_builtins(
                self.registry,
                routed=self._routed_specs,
                status=status or self._status,
                register_worker=self._register_worker if accept_workers else None,
            )

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {len(self.registry)} operations, {len(self._routes)} workers)"

    # ------------------------------------------------------------------------------------- channels

    def peer(self, stream: object, **kwargs: Any) -> CallPeer:
        """A ``CallPeer`` over ``stream`` served by this node (keywords as for ``CallPeer``)."""
        return CallPeer(stream, node=self, **kwargs)

    async def serve_channel(self, stream: object, **kwargs: Any) -> None:
        """Serve one channel until it closes.

        ``stream`` is anything with ``reader``, ``writer`` and ``codec``, plus optionally ``identity``,
        ``transport`` and ``remote_addr`` (the SSH server's ``ControlChannel``, a ``ControlStream``, a
        ``ChannelStream``), so ``control_registry.install(node.serve_channel)`` wires the SSH control channel.
        """
        await self.peer(stream, **kwargs).serve_forever()

    def attach(self, peer: CallPeer) -> None:
        """Called by ``CallPeer.start``: pubsub for the channel, and cleanup when it closes."""
        if peer in self._peers:
            return
        events = ChannelEvents(
            self.bus,
            peer,
            queue=peer.limits.pubsub_queue,
            max_subscriptions=peer.limits.max_pubsub_subscriptions,
        )
        self._peers[peer] = events
        peer.add_event_listener(events.on_envelope)
        peer.add_close_callback(self._detach)

    def _detach(self, peer: CallPeer) -> None:
        events = self._peers.pop(peer, None)
        if events is not None:
            events.close()
        self._upstreams.pop(peer, None)
        self._reregister.pop(peer, None)
        self.env.unbind_remote(HEAD, peer)
        route = self._route_of.pop(peer, None)
        if route is not None and self._routes.get(route.node) is route:
            del self._routes[route.node]
            log_event(log, logging.INFO, "worker removed", node=route.node, reason="closed")
            self.bus.publish(
                EventEnvelope(NODE_REMOVED, route.node, {"node": route.node, "reason": "closed"})
            )
            self._changed()

    @property
    def channels(self) -> list[CallPeer]:
        return list(self._peers)

    async def close(self) -> None:
        """Close every channel attached to this node."""
        peers = list(self._peers)
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)

    # ------------------------------------------------------------------------------------ resolution

    def has_route(self, node: str) -> bool:
        return node in self._routes

    def routes(self) -> dict[str, list[str]]:
        """Node name -> full operation paths (sorted)."""
        return {name: sorted(r.ops) for name, r in sorted(self._routes.items())}

    def prepare(self, request: InboundRequest) -> Prepared:
        """The dispatcher of attached channels (and of ``env`` calls to routed paths)."""
        segs = split_path(request.operation_id)
        if segs is None:
            raise unknown_operation()
        if segs[0] == HEAD:
            segs = segs[1:]
        if len(segs) == 2:
            return self._local.prepare(request, "/" + "/".join(segs))
        route = self._routes.get(segs[0]) if len(segs) >= 3 else None
        if route is None:
            raise unknown_operation()
        return self._prepare_forward(request, route, segs)

    def _prepare_forward(self, req: InboundRequest, route: WorkerRoute, segs: tuple[str, ...]) -> Prepared:
        cpath = "/" + "/".join(segs)
        op = route.ops.get(cpath)
        if op is None:
            raise unknown_operation()
        if not req.trusted:
            authorize(req.identity, op.spec, cpath)
        errors = op.validator.errors(req.input)
        if errors:
            raise CallError(
                ErrorCode.INVALID_INPUT, "input does not match the schema", False, {"errors": errors}
            )
        hops = req.hops + 1
        if hops > MAX_HOPS:
            raise CallError(ErrorCode.UNAVAILABLE, "hop limit", False)
        md = strip_reserved(req.metadata)
        md[FORWARDED_FOR] = req.forwarded_for or req.identity.id
        md[HOPS] = hops
        wire = cpath[len(segs[0]) + 1 :]
        peer = route.peer
        if op.streaming:
            return Prepared(stream=lambda deadline: _relay_stream(peer, wire, req, md, deadline))
        return Prepared(call=lambda deadline: _relay_call(peer, wire, req, md, deadline))

    # ---------------------------------------------------------------------------------- registration

    def _routed_specs(self) -> list[OperationSpec]:
        return [op.spec for r in self._routes.values() for op in r.ops.values()]

    def export_specs(self, *, exclude: CallPeer | None = None) -> list[OperationSpec]:
        """What this node registers upward: its local operations (built-ins left out) and its routed ones,
        except those reached through ``exclude`` (the channel registered on)."""
        specs = [r.spec for r in self.registry.entries() if not r.builtin]
        for route in self._routes.values():
            if route.peer is not exclude:
                specs.extend(op.spec for op in route.ops.values())
        return sorted(specs, key=lambda s: s.name)

    async def _register_worker(self, input: Any, ctx: OperationContext) -> dict[str, Any]:
        name = input.get("node") if isinstance(input, dict) else None
        raw = input.get("operations") if isinstance(input, dict) else None
        if not is_valid_node_name(name) or not isinstance(raw, list):
            raise _invalid("node must match ^[a-z0-9][a-z0-9-]{0,62}$ (not head) and operations be a list")
        assert isinstance(name, str)
        if not ctx.trusted and not has_scope(ctx.identity.scopes, f"node:{name}"):
            raise CallError(ErrorCode.FORBIDDEN, f"missing scope node:{name}", False)
        peer = current_peer()
        if peer is None or peer.node is not self or ctx.request_id not in peer.inbound:
            raise _invalid("registration needs a call from a channel of this node")
        if peer.closed:
            raise CallError(ErrorCode.UNAVAILABLE, "channel closed", True)
        held = self._routes.get(name)
        if held is not None and held.peer is not peer:
            raise CallError(ErrorCode.CONFLICT, f"node {name} is already registered", False)
        mine = self._route_of.get(peer)
        if mine is not None and mine.node != name:
            raise _invalid(f"this channel is already registered as {mine.node}")
        ops = _parse_operations(name, raw)
        route = WorkerRoute(name, peer, ops, time.time())
        self._routes[name] = route
        self._route_of[peer] = route
        paths = sorted(ops)
        log_event(
            log,
            logging.INFO,
            "worker registered",
            node=name,
            operations=len(paths),
            key_fingerprint=peer.identity.id,
        )
        self.bus.publish(EventEnvelope(NODE_REGISTERED, name, {"node": name, "operations": paths}))
        self._changed()
        return {"node": name, "operations": paths}

    async def register_with(self, peer: CallPeer, name: str, *, bind_head: bool = True) -> list[str]:
        """Register this node as worker ``name`` over ``peer`` and keep that registration up to date.

        ``bind_head`` binds ``env.remote("head", peer)`` in place of any earlier ``head`` binding.
        """
        paths = await peer.register(name, self.export_specs(exclude=peer))
        if peer.closed:
            return paths
        if peer not in self._upstreams:
            peer.add_close_callback(self._drop_upstream)
        self._upstreams[peer] = name
        if bind_head:
            self.env.unbind_remote(HEAD)
            self.env.remote(HEAD, peer)
        log_event(log, logging.INFO, "registered", node=name, operations=len(paths))
        return paths

    def _drop_upstream(self, peer: CallPeer) -> None:
        self._upstreams.pop(peer, None)
        self._reregister.pop(peer, None)
        self.env.unbind_remote(HEAD, peer)

    def _changed(self) -> None:
        for peer, name in list(self._upstreams.items()):
            task = self._reregister.get(peer)
            if (task is None or task.done()) and not peer.closed:
                self._reregister[peer] = peer.spawn(
                    self._reregister_later(peer, name), name="alknet-reregister"
                )

    async def _reregister_later(self, peer: CallPeer, name: str) -> None:
        await asyncio.sleep(REREGISTER_DEBOUNCE)
        self._reregister.pop(peer, None)
        try:
            paths = await peer.register(name, self.export_specs(exclude=peer))
        except CallError as exc:
            log_event(log, logging.WARNING, "re-registration refused", node=name, error=str(exc))
            return
        log_event(log, logging.INFO, "registered", node=name, operations=len(paths))

    # ------------------------------------------------------------------------------------ local calls

    async def call(
        self,
        path: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Any:
        """A trusted call from this process (routed paths reach workers); raises ``CallError``."""
        ns, op = _split_op(path)
        resp = await self.env.invoke(ns, op, input, timeout=timeout, metadata=metadata)
        return resp.unwrap()

    def subscribe(
        self, path: str, input: Any = None, *, idle_timeout: float | None = None
    ) -> EnvSubscription:
        ns, op = _split_op(path)
        return self.env.subscribe(ns, op, input, idle_timeout=idle_timeout)

    # ----------------------------------------------------------------------------------------- status

    def workers(self) -> list[dict[str, Any]]:
        """``/services/status`` workers: node, identity, operation count, connected at."""
        return [
            {
                "node": r.node,
                "identity": r.peer.identity.id,
                "operations": len(r.ops),
                "connected_at": _rfc3339(r.peer.connected_at),
            }
            for _, r in sorted(self._routes.items())
        ]

    async def _status(self, ctx: OperationContext) -> dict[str, Any]:
        sessions = [
            {
                "identity": p.identity.id,
                "transport": p.transport,
                "remote_addr": p.remote_addr,
                "connected_at": _rfc3339(p.connected_at),
                "channels": 1,
                "remote_forwards": 0,
            }
            for p in self._peers
            if p.trust is not ChannelTrust.HEAD
        ]
        return {
            "server": {
                "listeners": list(self.listen_addrs),
                "version": _version(),
                "uptime_s": round(time.time() - self.started_at, 3),
                "endpoint_id": self.endpoint_id,
            },
            "sessions": sessions,
            "workers": self.workers(),
        }


def _split_op(path: str) -> tuple[str, str]:
    segs = split_path(path)
    if segs is None or len(segs) < 2:
        raise unknown_operation()
    return "/".join(segs[:-1]), segs[-1]


def _parse_operations(node: str, raw: list[Any]) -> dict[str, RoutedOperation]:
    if len(raw) > MAX_REGISTERED_OPERATIONS:
        raise _invalid(f"at most {MAX_REGISTERED_OPERATIONS} operations")
    ops: dict[str, RoutedOperation] = {}
    for i, wire in enumerate(raw):
        try:
            spec = OperationSpec.from_wire(wire)
            validator, _ = check_spec(spec, local=False)
        except (ValueError, TypeError) as exc:
            raise _invalid(f"operations[{i}]: {exc}"[:1024]) from None
        full = f"/{node}{spec.name}"
        if split_path(full) is None:
            raise _invalid(f"operations[{i}]: {full[:80]} is too long")
        if full in ops:
            raise _invalid(f"operations[{i}]: duplicate name {spec.name}")
        ops[full] = RoutedOperation(dataclasses.replace(spec, name=full), validator)
    return ops


async def _relay_call(
    peer: CallPeer, wire: str, req: InboundRequest, md: dict[str, Any], deadline: int | None
) -> Any:
    resp = await peer.request(
        wire, req.input, deadline_ms=deadline, metadata=md, parent_request_id=req.request_id
    )
    if resp.error is not None:
        if resp.error == aborted_by_callee():
            raise AbortCall()
        raise resp.error
    return resp.output


async def _relay_stream(
    peer: CallPeer, wire: str, req: InboundRequest, md: dict[str, Any], deadline: int | None
) -> AsyncIterator[Any]:
    sub = peer.open_subscription(
        wire,
        req.input,
        idle_timeout_ms=req.idle_timeout_ms,
        enforce_idle=False,
        deadline_ms=deadline,
        metadata=md,
        parent_request_id=req.request_id,
    )
    try:
        async for item in sub:
            yield item
    except CallError as exc:
        if exc == aborted_by_callee():
            raise AbortCall() from None
        raise
    finally:
        await sub.aclose()
