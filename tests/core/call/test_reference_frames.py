"""call-protocol.md §4: the reference frames F1-F13 and the msgpack vector, byte for byte.

Each frame is held verbatim as printed in the spec. Encoding the envelope built with the payload builders
(or ``EventEnvelope`` for the non-call frames) must give exactly ``prefix + body``; decoding the body must
give the envelope back; the prefix is the UTF-8 byte count (F3 is 160, not 159).
"""

from __future__ import annotations

from typing import Any

import pytest
from call_helpers import R1, R2, R3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alknet.core.auth.keys import public_key_of
from alknet.core.auth.token import mint_token
from alknet.core.call import (
    JSON_CODEC,
    MSGPACK_CODEC,
    AccessControl,
    CallError,
    EventEnvelope,
    FrameDecoder,
    OperationSpec,
    OperationType,
    call_aborted,
    call_completed,
    call_error,
    call_requested,
    call_responded,
    encode_frame,
)

# (name, byte count, prefix, body) exactly as in call-protocol.md §4
REFERENCE: list[tuple[str, int, str, str]] = [
    # F1 call.requested /services/list with deadline
    (
        "F1",
        199,
        "00 00 00 c7",
        r'{"type":"call.requested","id":"00000000-0000-4000-8000-000000000001","payload":{"requestId":"00000000-0000-4000-8000-000000000001","operationId":"/services/list","input":{},"deadline":1767225630000}}',
    ),
    # F2 call.requested without optional fields
    (
        "F2",
        190,
        "00 00 00 be",
        r'{"type":"call.requested","id":"00000000-0000-4000-8000-000000000002","payload":{"requestId":"00000000-0000-4000-8000-000000000002","operationId":"/fs/readFile","input":{"path":"/etc/motd"}}}',
    ),
    # F3 call.responded; é is 2 bytes and \n is escaped
    (
        "F3",
        160,
        "00 00 00 a0",
        r'{"type":"call.responded","id":"00000000-0000-4000-8000-000000000002","payload":{"requestId":"00000000-0000-4000-8000-000000000002","output":{"text":"café\n"}}}',
    ),
    # F4 call.error without details
    (
        "F4",
        195,
        "00 00 00 c3",
        r'{"type":"call.error","id":"00000000-0000-4000-8000-000000000001","payload":{"requestId":"00000000-0000-4000-8000-000000000001","code":"NOT_FOUND","message":"unknown operation","retryable":false}}',
    ),
    # F5 subscription request with all optional fields except deadline
    (
        "F5",
        284,
        "00 00 01 1c",
        r'{"type":"call.requested","id":"00000000-0000-4000-8000-000000000003","payload":{"requestId":"00000000-0000-4000-8000-000000000003","operationId":"/logs/tail","input":{"lines":2},"parentRequestId":"00000000-0000-4000-8000-000000000001","idleTimeout":5000,"metadata":{"traceId":"t-1"}}}',
    ),
    # F6 call.completed
    (
        "F6",
        132,
        "00 00 00 84",
        r'{"type":"call.completed","id":"00000000-0000-4000-8000-000000000003","payload":{"requestId":"00000000-0000-4000-8000-000000000003"}}',
    ),
    # F7 call.aborted
    (
        "F7",
        130,
        "00 00 00 82",
        r'{"type":"call.aborted","id":"00000000-0000-4000-8000-000000000003","payload":{"requestId":"00000000-0000-4000-8000-000000000003"}}',
    ),
    # F8 call.error with details
    (
        "F8",
        229,
        "00 00 00 e5",
        r'{"type":"call.error","id":"00000000-0000-4000-8000-000000000002","payload":{"requestId":"00000000-0000-4000-8000-000000000002","code":"TIMEOUT","message":"deadline exceeded","retryable":true,"details":{"deadline":1767225630000}}}',
    ),
    # F9 __subscribe
    ("F9", 72, "00 00 00 48", r'{"type":"__subscribe","id":"","payload":{"type":"head.node.registered"}}'),
    # F10 pubsub event, topic = node name
    (
        "F10",
        104,
        "00 00 00 68",
        r'{"type":"head.node.registered","id":"dev1","payload":{"node":"dev1","operations":["/dev1/fs/readFile"]}}',
    ),
    # F11 auth.token (first frame of raw framing)
    (
        "F11",
        191,
        "00 00 00 bf",
        r'{"type":"auth.token","id":"","payload":{"token":"If4x36FUomFia_hUBG_SJxt77UtqvkWqWId-9H-XIbkAAAAAaVW5AIImUqzWZEL1ov3mbtz2CNvcsxAiAKaHnuI1dB_15qY4tKGqKuEERlMraAW-4FcqIcjO0IlABzi5n3-4vPS62Q4"}}',
    ),
    # F12 auth.ok
    (
        "F12",
        123,
        "00 00 00 7b",
        r'{"type":"auth.ok","id":"","payload":{"id":"SHA256:bbXpuKG6zhzdmnxq256TlqzFBzRl2f6OOg722cYNbU8","scopes":["relay:connect"]}}',
    ),
    # F13 worker registration
    (
        "F13",
        441,
        "00 00 01 b9",
        r'{"type":"call.requested","id":"00000000-0000-4000-8000-000000000001","payload":{"requestId":"00000000-0000-4000-8000-000000000001","operationId":"/head/services/register","input":{"node":"dev1","operations":[{"name":"/fs/readFile","namespace":"fs","opType":"query","inputSchema":{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]},"outputSchema":{"type":"object"},"accessControl":{"requiredScopes":["fs:read"]}}]}}}',
    ),
]

# F2 in msgpack: 166 bytes, prefix 00 00 00 a6
MSGPACK_F2_PREFIX = "00 00 00 a6"
MSGPACK_F2_BODY = """
83 a4 74 79 70 65 ae 63 61 6c 6c 2e 72 65 71 75 65 73 74 65 64 a2 69 64 d9 24 30 30 30 30 30 30 30 30 2d 30 30 30 30
2d 34 30 30 30 2d 38 30 30 30 2d 30 30 30 30 30 30 30 30 30 30 30 32 a7 70 61 79 6c 6f 61 64 83 a9 72 65 71 75 65 73
74 49 64 d9 24 30 30 30 30 30 30 30 30 2d 30 30 30 30 2d 34 30 30 30 2d 38 30 30 30 2d 30 30 30 30 30 30 30 30 30 30
30 32 ab 6f 70 65 72 61 74 69 6f 6e 49 64 ac 2f 66 73 2f 72 65 61 64 46 69 6c 65 a5 69 6e 70 75 74 81 a4 70 61 74 68
a9 2f 65 74 63 2f 6d 6f 74 64
"""

TOKEN = (
    "If4x36FUomFia_hUBG_SJxt77UtqvkWqWId-9H-XIbkAAAAAaVW5AIImUqzWZEL1ov3mbtz2CNvcsxAiAKaHnuI1dB_15qY4tKGqKuEERlMraAW"
    "-4FcqIcjO0IlABzi5n3-4vPS62Q4"
)
FINGERPRINT = "SHA256:bbXpuKG6zhzdmnxq256TlqzFBzRl2f6OOg722cYNbU8"
RFC8032_TEST1 = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"

READ_FILE = OperationSpec(
    "/fs/readFile",
    "fs",
    OperationType.QUERY,
    {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    {"type": "object"},
    AccessControl(("fs:read",)),
)

ENVELOPES: dict[str, EventEnvelope] = {
    "F1": call_requested(R1, "/services/list", {}, deadline=1767225630000),
    "F2": call_requested(R2, "/fs/readFile", {"path": "/etc/motd"}),
    "F3": call_responded(R2, {"text": "café\n"}),
    "F4": call_error(R1, CallError("NOT_FOUND", "unknown operation")),
    "F5": call_requested(
        R3, "/logs/tail", {"lines": 2}, parent_request_id=R1, idle_timeout=5000, metadata={"traceId": "t-1"}
    ),
    "F6": call_completed(R3),
    "F7": call_aborted(R3),
    "F8": call_error(R2, CallError("TIMEOUT", "deadline exceeded", details={"deadline": 1767225630000})),
    "F9": EventEnvelope("__subscribe", "", {"type": "head.node.registered"}),
    "F10": EventEnvelope(
        "head.node.registered", "dev1", {"node": "dev1", "operations": ["/dev1/fs/readFile"]}
    ),
    "F11": EventEnvelope("auth.token", "", {"token": TOKEN}),
    "F12": EventEnvelope("auth.ok", "", {"id": FINGERPRINT, "scopes": ["relay:connect"]}),
    "F13": call_requested(
        R1, "/head/services/register", {"node": "dev1", "operations": [READ_FILE.to_wire()]}
    ),
}


def _prefix(hexbytes: str) -> bytes:
    return bytes.fromhex(hexbytes.replace(" ", ""))


def test_reference_table_is_complete() -> None:
    assert [r[0] for r in REFERENCE] == [f"F{i}" for i in range(1, 14)]
    assert set(ENVELOPES) == {r[0] for r in REFERENCE}


@pytest.mark.parametrize(("name", "size", "prefix", "body"), REFERENCE, ids=[r[0] for r in REFERENCE])
def test_encode_gives_the_reference_bytes(name: str, size: int, prefix: str, body: str) -> None:
    raw = body.encode("utf-8")
    assert len(raw) == size
    assert _prefix(prefix) == size.to_bytes(4, "big")
    assert encode_frame(ENVELOPES[name], JSON_CODEC) == _prefix(prefix) + raw


@pytest.mark.parametrize(("name", "size", "prefix", "body"), REFERENCE, ids=[r[0] for r in REFERENCE])
def test_decode_gives_the_envelope_back(name: str, size: int, prefix: str, body: str) -> None:
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(_prefix(prefix) + body.encode("utf-8"))
    assert dec.next_envelope() == ENVELOPES[name]
    assert dec.next_envelope() is None
    dec.eof()


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_every_reference_envelope_round_trips_through_msgpack(name: str) -> None:
    env = ENVELOPES[name]
    dec = FrameDecoder(MSGPACK_CODEC)
    dec.feed(encode_frame(env, MSGPACK_CODEC))
    assert dec.envelopes() == [env]


def test_f3_prefix_counts_utf8_bytes() -> None:
    frame = encode_frame(ENVELOPES["F3"], JSON_CODEC)
    assert frame[:4] == bytes.fromhex("000000a0")
    assert len(frame) - 4 == 160
    assert b"caf\xc3\xa9\\n" in frame  # é is 2 bytes, the newline is escaped


def test_msgpack_vector_of_f2() -> None:
    body = bytes.fromhex("".join(MSGPACK_F2_BODY.split()))
    assert len(body) == 166
    assert encode_frame(ENVELOPES["F2"], MSGPACK_CODEC) == _prefix(MSGPACK_F2_PREFIX) + body
    assert MSGPACK_CODEC.decode(body) == ENVELOPES["F2"]


def test_f13_operation_spec_round_trips() -> None:
    wire: Any = ENVELOPES["F13"].payload["input"]["operations"][0]
    assert OperationSpec.from_wire(wire) == READ_FILE


def test_f11_token_is_minted_from_the_rfc8032_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_TEST1))
    assert mint_token(key, 1767225600) == TOKEN
    assert public_key_of(key).fingerprint == FINGERPRINT
