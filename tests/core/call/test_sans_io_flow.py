"""The sans-IO pieces composed into a minimal caller/callee pair over bytes (no sockets, no CallPeer).

It shows the layers fit: builders -> encode_frame -> FrameDecoder -> parse_inbound -> InboundCalls ->
OperationRegistry.prepare -> handler -> wire_error / builders -> back into PendingRequestMap. The §3
acceptance bullets about identity, INTERNAL and pass-through run end to end here, as bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from call_helpers import ctx

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    JSON_CODEC,
    MSGPACK_CODEC,
    CallError,
    CallErrored,
    CallRequested,
    CallResponded,
    Codec,
    EventEnvelope,
    FrameDecoder,
    InboundCalls,
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
    PendingRequestMap,
    call_error,
    call_requested,
    call_responded,
    deadline_after,
    encode_frame,
    new_request_id,
    parse_inbound,
    register_builtins,
    wire_error,
)


class Callee:
    """Serves plain calls from bytes to bytes with the session identity ``identity``."""

    def __init__(self, registry: OperationRegistry, identity: Identity, codec: Codec) -> None:
        self.registry = registry
        self.identity = identity
        self.codec = codec
        self.decoder = FrameDecoder(codec)
        self.inbound = InboundCalls()
        self.out = bytearray()

    async def receive(self, data: bytes) -> None:
        self.decoder.feed(data)
        for env in self.decoder.envelopes():
            ev = parse_inbound(env)
            assert isinstance(ev, CallRequested)
            err = self.inbound.admit(ev.request_id)
            if err is not None:
                self.send(call_error(ev.request_id, err))
                continue
            task = asyncio.create_task(self.serve(ev))
            self.inbound.add(ev.request_id, task)
            await task

    async def serve(self, ev: CallRequested) -> None:
        try:
            reg = self.registry.prepare(ev.operation_id, ev.input, self.identity)
            output = await reg.handler(ev.input, ctx(self.identity, request_id=ev.request_id))  # type: ignore[misc]
            self.registry.check_output(reg, output, ev.request_id)
            self.send(call_responded(ev.request_id, output))
        except Exception as exc:
            self.send(call_error(ev.request_id, wire_error(exc, ev.request_id)))

    def send(self, env: EventEnvelope) -> None:
        self.out += encode_frame(env, self.codec)


async def round_trip(callee: Callee, op: str, input: Any, **extra: Any) -> tuple[Any, bytes]:
    pending = PendingRequestMap()
    rid = new_request_id()
    fut = pending.add_call(rid, deadline_after(5))
    env = call_requested(rid, op, input, deadline=deadline_after(5))
    if extra:
        env = EventEnvelope(env.type, env.id, {**env.payload, **extra})
    await callee.receive(encode_frame(env, callee.codec))
    reply = bytes(callee.out)
    callee.out.clear()
    dec = FrameDecoder(callee.codec)
    dec.feed(reply)
    for back in dec.envelopes():
        ev = parse_inbound(back)
        if isinstance(ev, CallResponded):
            pending.on_responded(ev.request_id, ev.output)
        elif isinstance(ev, CallErrored):
            pending.on_error(ev.request_id, ev.error)
    try:
        result: Any = await fut
    except CallError as exc:
        result = exc
    assert len(pending) == 0 and len(callee.inbound) == 0
    pending.close()
    return result, reply


seen: list[OperationContext] = []


async def whoami(input: Any, c: OperationContext) -> Any:
    seen.append(c)
    return {"id": c.identity.id}


async def leaky(input: Any, c: OperationContext) -> Any:
    raise ValueError("secret path /x")


async def locked(input: Any, c: OperationContext) -> Any:
    raise CallError("LOCKED", "vault locked")


async def bad_code(input: Any, c: OperationContext) -> Any:
    raise CallError("bad code", "x")


def make_registry() -> OperationRegistry:
    reg = OperationRegistry(validate_output=True)
    register_builtins(reg)
    for name, handler in [("whoami", whoami), ("leaky", leaky), ("locked", locked), ("badCode", bad_code)]:
        reg.register(OperationSpec(f"/t/{name}", "t", OperationType.QUERY), handler)
    return reg


@pytest.fixture(params=[JSON_CODEC, MSGPACK_CODEC], ids=lambda c: c.name)
def codec(request: pytest.FixtureRequest) -> Codec:
    c: Codec = request.param
    return c


async def test_payload_identity_gets_forbidden_and_the_handler_never_runs(codec: Codec) -> None:
    seen.clear()
    callee = Callee(make_registry(), Identity("SHA256:nobody"), codec)
    result, _ = await round_trip(callee, "/t/whoami", {}, identity={"id": "root", "scopes": ["*"]})
    assert isinstance(result, CallError) and result.code == "FORBIDDEN"
    assert seen == []
    session = Identity("SHA256:caller", ("/t/*",))
    callee = Callee(make_registry(), session, codec)
    result, _ = await round_trip(callee, "/t/whoami", {}, identity={"id": "root", "scopes": ["*"]})
    assert result == {"id": "SHA256:caller"} and seen[0].identity == session


async def test_internal_error_does_not_leak(codec: Codec) -> None:
    callee = Callee(make_registry(), Identity("SHA256:c", ("*",)), codec)
    result, reply = await round_trip(callee, "/t/leaky", None)
    assert result == CallError("INTERNAL", "internal error", False)
    assert b"secret" not in reply
    if codec is JSON_CODEC:
        assert b'"code":"INTERNAL","message":"internal error","retryable":false}}' in reply


async def test_pass_through_and_code_grammar(codec: Codec) -> None:
    callee = Callee(make_registry(), Identity("SHA256:c", ("*",)), codec)
    result, _ = await round_trip(callee, "/t/locked", None)
    assert result == CallError("LOCKED", "vault locked", False)
    result, _ = await round_trip(callee, "/t/badCode", None)
    assert result == CallError("INTERNAL", "internal error", False)


async def test_builtins_over_bytes(codec: Codec) -> None:
    callee = Callee(make_registry(), Identity("SHA256:c", ("/t/whoami",)), codec)
    result, _ = await round_trip(callee, "/head/services/list", {})
    assert [op["name"] for op in result["operations"]] == ["/services/list", "/services/schema", "/t/whoami"]
    result, _ = await round_trip(callee, "/services/schema", {"name": "/t/nope"})
    assert isinstance(result, CallError) and result.code == "NOT_FOUND"
    result, _ = await round_trip(callee, "/nope/x", {})
    assert isinstance(result, CallError) and result.code == "NOT_FOUND"
