"""call-protocol.md §3: envelopes, payload builders, error codes and the bad-input table (literal frames)."""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import pytest
from call_helpers import R1, R2, ctx, decode_all, frame, jframe

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    JSON_CODEC,
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
    InboundCalls,
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
    PubsubControl,
    PubsubEvent,
    RejectRequest,
    ResponseEnvelope,
    call_error,
    call_requested,
    call_responded,
    encode_frame,
    parse_inbound,
    strip_reserved,
    wire_error,
)
from alknet.core.call.envelope import INTERNAL_MESSAGE, Inbound


def classify(data: bytes) -> Inbound:
    (env,) = decode_all(data)
    return parse_inbound(env)


def req(payload: Any, *, id: str = R1) -> bytes:
    return jframe({"type": "call.requested", "id": id, "payload": payload})


def ok_req(**overrides: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"requestId": R1, "operationId": "/fs/readFile", "input": None}
    p.update(overrides)
    return {k: v for k, v in p.items() if v is not _DROP}


_DROP = object()

# ------------------------------------------------------------------------------------------ builders


def test_builders_write_canonical_order_and_omit_absent_fields() -> None:
    env = call_requested(R1, "/fs/x")
    assert JSON_CODEC.encode(env) == (
        b'{"type":"call.requested","id":"'
        + R1.encode()
        + b'","payload":{"requestId":"'
        + R1.encode()
        + b'","operationId":"/fs/x","input":null}}'
    )
    full = call_requested(R1, "/fs/x", 1, metadata={"m": 1}, idle_timeout=5, deadline=0, parent_request_id=R2)
    assert list(full.payload) == [
        "requestId", "operationId", "input", "parentRequestId", "deadline", "idleTimeout", "metadata"
    ]  # fmt: skip
    err = call_error(R1, CallError("X", "m", details=None))
    assert list(err.payload) == ["requestId", "code", "message", "retryable"]
    assert b"details" not in JSON_CODEC.encode(err)
    err = call_error(R1, CallError("X", "m", details={"a": 1}))
    assert list(err.payload) == ["requestId", "code", "message", "retryable", "details"]
    assert call_responded(R1).payload == {"requestId": R1, "output": None}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_id": ""},
        {"request_id": "x" * 129},
        {"deadline": -1},
        {"deadline": 1.5},
        {"deadline": True},
        {"idle_timeout": 0},
        {"idle_timeout": -5},
    ],
)
def test_builders_refuse_what_receivers_would_refuse(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"request_id": R1, "operation_id": "/fs/x", **kwargs}
    with pytest.raises(ValueError):
        call_requested(**args)


def test_builder_type_errors() -> None:
    with pytest.raises(TypeError):
        call_requested(R1, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        call_requested(R1, "/a/b", metadata=[1])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ errors


def test_call_error_defaults_and_value_semantics() -> None:
    assert CallError("TIMEOUT", "t").retryable is True
    assert CallError(ErrorCode.UNAVAILABLE, "u").retryable is True
    assert CallError("NOT_FOUND", "n").retryable is False
    assert CallError("LOCKED", "vault locked").retryable is False
    assert CallError("UNAVAILABLE", "hop limit", retryable=False).retryable is False
    e = CallError("X", "m", details={"a": 1})
    assert e == CallError("X", "m", False, {"a": 1}) and hash(e) == hash(CallError("X", "m"))
    assert e != CallError("X", "m") and e != CallError("X", "n")
    assert str(e) == "X: m" and str(CallError("X")) == "X"
    assert type(CallError(ErrorCode.TIMEOUT).code) is str
    assert pickle.loads(pickle.dumps(e)) == e
    with pytest.raises(TypeError):
        CallError(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CallError("X", "m", details=[1])  # type: ignore[arg-type]
    assert {c.value for c in ErrorCode} == {
        "NOT_FOUND", "FORBIDDEN", "INVALID_INPUT", "TIMEOUT", "ABORTED", "INTERNAL", "UNAVAILABLE",
        "PROTOCOL_ERROR", "CONFLICT",
    }  # fmt: skip


def test_handler_exception_becomes_internal_without_leaking(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="alknet.call")
    err = wire_error(ValueError("secret path /x"), R1)
    data = encode_frame(call_error(R1, err), JSON_CODEC)
    assert decode_all(data)[0].payload == {
        "requestId": R1,
        "code": "INTERNAL",
        "message": "internal error",
        "retryable": False,
    }
    assert b"secret" not in data
    assert R1 in caplog.text and "ValueError" in caplog.text


def test_call_error_pass_through_and_code_grammar() -> None:
    locked = CallError("LOCKED", "vault locked")
    assert wire_error(locked) is locked
    assert wire_error(CallError("RATE", "x", retryable=True)).retryable is True
    for bad in ("bad code", "lower", "", "1ABC", "A" * 65, "A-B", "É"):
        assert wire_error(CallError(bad, "x")) == CallError("INTERNAL", INTERNAL_MESSAGE, False)
    assert wire_error(CallError("A" * 64, "x")).code == "A" * 64
    internal = wire_error(CallError("INTERNAL", "db password wrong", details={"reason": "output too large"}))
    assert internal == CallError("INTERNAL", "internal error", False, {"reason": "output too large"})
    long = wire_error(CallError("X", "m" * 5000))
    assert long.message == "m" * 1024
    assert wire_error(asyncio.CancelledError()).code == "INTERNAL"


def test_response_envelope() -> None:
    a = ResponseEnvelope(R1, {"x": 1}, source="local")
    b = ResponseEnvelope(R1, {"x": 1}, source="remote")
    assert a == b and a.ok and a.unwrap() == {"x": 1}
    e = ResponseEnvelope(R1, error=CallError("NOT_FOUND", "unknown operation"), source="service")
    assert not e.ok and e == ResponseEnvelope(R1, None, CallError("NOT_FOUND", "unknown operation"))
    with pytest.raises(CallError) as ei:
        e.unwrap()
    assert ei.value.code == "NOT_FOUND"


def test_strip_reserved() -> None:
    assert strip_reserved({"alknet.identity": 1, "alknet.hops": 2, "traceId": "t", "alknetx": 3}) == {
        "traceId": "t",
        "alknetx": 3,
    }
    assert strip_reserved(None) == {}


# ------------------------------------------------------------------------------ bad-input table, row 1

LONG_128 = "a" * 128
CLOSE_CASES: list[tuple[str, Any]] = [
    ("payload not a map", [R1]),
    ("payload null", None),
    ("requestId missing", {"operationId": "/fs/x", "input": None}),
    ("requestId not a str", {"requestId": 1, "operationId": "/fs/x", "input": None}),
    ("requestId null", {"requestId": None, "operationId": "/fs/x", "input": None}),
    ("requestId empty", {"requestId": "", "operationId": "/fs/x", "input": None}),
    ("requestId 129 bytes", {"requestId": "a" * 129, "operationId": "/fs/x", "input": None}),
    ("requestId 130 utf-8 bytes", {"requestId": "é" * 65, "operationId": "/fs/x", "input": None}),
]


@pytest.mark.parametrize(("what", "payload"), CLOSE_CASES, ids=[c[0] for c in CLOSE_CASES])
def test_unanswerable_request_closes_the_channel(what: str, payload: Any) -> None:
    assert isinstance(classify(req(payload, id="")), CloseChannel)
    assert isinstance(classify(req(payload, id=R1)), CloseChannel)


def test_request_id_limits_are_bytes() -> None:
    for rid in (LONG_128, "é" * 64, "x"):
        got = classify(req(ok_req(requestId=rid), id=rid))
        assert isinstance(got, CallRequested) and got.request_id == rid


# ------------------------------------------------------------------------------ bad-input table, row 2

REJECT_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("envelope id differs", R2, ok_req()),
    ("operationId missing", R1, ok_req(operationId=_DROP)),
    ("operationId not a str", R1, ok_req(operationId=["/fs/x"])),
    ("operationId null", R1, ok_req(operationId=None)),
    ("deadline negative", R1, ok_req(deadline=-1)),
    ("deadline float", R1, ok_req(deadline=1767225630000.0)),
    ("deadline str", R1, ok_req(deadline="1767225630000")),
    ("deadline bool", R1, ok_req(deadline=True)),
    ("deadline null", R1, ok_req(deadline=None)),
    ("idleTimeout zero", R1, ok_req(idleTimeout=0)),
    ("idleTimeout negative", R1, ok_req(idleTimeout=-5)),
    ("idleTimeout float", R1, ok_req(idleTimeout=1.5)),
    ("idleTimeout str", R1, ok_req(idleTimeout="5")),
    ("metadata list", R1, ok_req(metadata=[])),
    ("metadata str", R1, ok_req(metadata="x")),
    ("metadata null", R1, ok_req(metadata=None)),
]


@pytest.mark.parametrize(("what", "env_id", "payload"), REJECT_CASES, ids=[c[0] for c in REJECT_CASES])
def test_malformed_request_gets_protocol_error_and_the_channel_stays_open(
    what: str, env_id: str, payload: dict[str, Any]
) -> None:
    good = call_requested(R2, "/fs/readFile", {"path": "/x"})
    envs = decode_all(req(payload, id=env_id) + encode_frame(good, JSON_CODEC))
    got = parse_inbound(envs[0])
    assert isinstance(got, RejectRequest) and got.request_id == R1
    reply = encode_frame(got.reply, JSON_CODEC)
    (sent,) = decode_all(reply)
    assert sent.type == "call.error" and sent.id == R1
    assert sent.payload["requestId"] == R1
    assert sent.payload["code"] == "PROTOCOL_ERROR" and sent.payload["retryable"] is False
    assert "details" not in sent.payload
    assert isinstance(parse_inbound(envs[1]), CallRequested)  # the next frame is served


def test_well_formed_requests() -> None:
    got = classify(req(ok_req(), id=""))  # an empty envelope id is accepted
    assert got == CallRequested(R1, "/fs/readFile", None)
    p = ok_req(
        input=_DROP,
        deadline=0,
        idleTimeout=1,
        metadata={"alknet.x": 1},
        parentRequestId=7,
        identity={"id": "root", "scopes": ["*"]},
        extra=[1],
    )
    got = classify(req(p))
    assert got == CallRequested(R1, "/fs/readFile", None, None, 0, 1, {"alknet.x": 1})
    assert not hasattr(got, "identity")
    got = classify(req(ok_req(parentRequestId=R2, operationId="not a path")))
    assert isinstance(got, CallRequested) and got.parent_request_id == R2  # a bad path is NOT_FOUND later


# ------------------------------------------------------------------------------ bad-input table, row 3


async def test_reusing_a_live_request_id_gets_protocol_error_and_the_original_keeps_running() -> None:
    inbound = InboundCalls()
    first = classify(req(ok_req()))
    assert isinstance(first, CallRequested) and inbound.admit(first.request_id) is None
    release = asyncio.Event()
    task = asyncio.create_task(release.wait())
    inbound.add(first.request_id, task)
    again = classify(req(ok_req()))
    assert isinstance(again, CallRequested)
    err = inbound.admit(again.request_id)
    assert err is not None and err.code == "PROTOCOL_ERROR" and err.retryable is False
    (sent,) = decode_all(encode_frame(call_error(again.request_id, err), JSON_CODEC))
    assert sent.payload["code"] == "PROTOCOL_ERROR"
    await asyncio.sleep(0)
    assert not task.done() and R1 in inbound
    release.set()
    await task
    await asyncio.sleep(0)
    assert len(inbound) == 0 and inbound.admit(R1) is None


# ------------------------------------------------------------------------------ bad-input table, row 4

RESPONSE_TYPES = ["call.responded", "call.completed", "call.error", "call.aborted"]
MALFORMED_RESPONSES: list[tuple[str, str, Any]] = [
    ("payload not a map", R1, [R1]),
    ("payload null", R1, None),
    ("requestId missing", R1, {}),
    ("requestId empty", "", {"requestId": ""}),
    ("requestId not a str", R1, {"requestId": 5}),
    ("requestId too long", "", {"requestId": "a" * 129}),
    ("envelope id differs", R2, {"requestId": R1}),
]


@pytest.mark.parametrize("type_", RESPONSE_TYPES)
@pytest.mark.parametrize(
    ("what", "env_id", "payload"), MALFORMED_RESPONSES, ids=[c[0] for c in MALFORMED_RESPONSES]
)
def test_malformed_responses_are_dropped_at_warning(type_: str, what: str, env_id: str, payload: Any) -> None:
    if type_ == "call.error" and isinstance(payload, dict):
        payload = {**payload, "code": "X", "message": "m", "retryable": False}
    got = classify(jframe({"type": type_, "id": env_id, "payload": payload}))
    assert isinstance(got, Drop) and got.level == logging.WARNING and got.type == type_


BAD_ERROR_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("code missing", {"message": "m", "retryable": False}),
    ("code breaks grammar", {"code": "bad code", "message": "m", "retryable": False}),
    ("code not a str", {"code": 1, "message": "m", "retryable": False}),
    ("message missing", {"code": "X", "retryable": False}),
    ("message not a str", {"code": "X", "message": 1, "retryable": False}),
    ("retryable missing", {"code": "X", "message": "m"}),
    ("retryable not a bool", {"code": "X", "message": "m", "retryable": 0}),
    ("details not a map", {"code": "X", "message": "m", "retryable": False, "details": [1]}),
    ("details null", {"code": "X", "message": "m", "retryable": False, "details": None}),
]


@pytest.mark.parametrize(("what", "fields"), BAD_ERROR_FIELDS, ids=[c[0] for c in BAD_ERROR_FIELDS])
def test_malformed_call_error_is_dropped_at_warning(what: str, fields: dict[str, Any]) -> None:
    got = classify(jframe({"type": "call.error", "id": R1, "payload": {"requestId": R1, **fields}}))
    assert isinstance(got, Drop) and got.level == logging.WARNING


def test_well_formed_responses() -> None:
    assert classify(jframe({"type": "call.responded", "id": "", "payload": {"requestId": R1}})) == (
        CallResponded(R1, None)
    )
    assert classify(encode_frame(call_responded(R1, [1]), JSON_CODEC)) == CallResponded(R1, [1])
    assert classify(jframe({"type": "call.completed", "id": R1, "payload": {"requestId": R1}})) == (
        CallCompleted(R1)
    )
    assert classify(jframe({"type": "call.aborted", "id": R1, "payload": {"requestId": R1, "x": 1}})) == (
        CallAborted(R1)
    )
    err = CallError("LOCKED", "vault locked", True, {"a": 1})
    assert classify(encode_frame(call_error(R1, err), JSON_CODEC)) == CallErrored(R1, err)


# ------------------------------------------------------------------------------ bad-input table, row 5


@pytest.mark.parametrize(
    "type_", ["call.requestd", "call.", "call.x.y", "__foo", "__", "auth.token", "auth.ok"]
)
def test_unknown_reserved_types_are_dropped_at_debug(type_: str) -> None:
    got = classify(jframe({"type": type_, "id": "", "payload": {"requestId": R1}}))
    assert isinstance(got, Drop) and got.level == logging.DEBUG


def test_pubsub_frames() -> None:
    sub = EventEnvelope("__subscribe", "", {"type": "head.node.registered"})
    assert classify(encode_frame(sub, JSON_CODEC)) == PubsubControl(sub)
    for t in ("__unsubscribe", "__error"):
        assert isinstance(classify(jframe({"type": t, "id": "", "payload": {}})), PubsubControl)
    ev = EventEnvelope("head.node.registered", "dev1", {"node": "dev1"})
    assert classify(encode_frame(ev, JSON_CODEC)) == PubsubEvent(ev)
    assert isinstance(classify(frame(b'{"type":"","id":"","payload":null}')), PubsubEvent)
    assert isinstance(classify(frame(b'{"type":"calls.x","id":"","payload":null}')), PubsubEvent)


# --------------------------------------------------------------------------------- identity is ignored


async def test_payload_identity_is_ignored_for_authorisation() -> None:
    runs: list[OperationContext] = []

    async def handler(input: Any, c: OperationContext) -> Any:
        runs.append(c)
        return input

    reg = OperationRegistry(validate_output=True)
    reg.register(OperationSpec("/fs/readFile", "fs", OperationType.QUERY), handler)
    session = Identity("SHA256:caller")  # holds no grants
    payload = ok_req(identity={"id": "root", "scopes": ["*"]})
    got = classify(req(payload))
    assert isinstance(got, CallRequested)
    with pytest.raises(CallError) as ei:
        reg.prepare(got.operation_id, got.input, session)
    assert ei.value.code == "FORBIDDEN"
    assert runs == []
    allowed = Identity("SHA256:caller", ("/fs/*",))
    r = reg.prepare(got.operation_id, got.input, allowed)
    await r.handler(got.input, ctx(allowed))  # type: ignore[misc]
    assert runs[0].identity == allowed


def test_missing_input_is_written_as_null() -> None:
    assert b'"input":null' in JSON_CODEC.encode(call_requested(R1, "/fs/x"))
    assert b'"output":null' in JSON_CODEC.encode(call_responded(R1))
