"""Shared helpers of the call-protocol tests (bytes only: no sockets)."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hypothesis import HealthCheck, settings

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    JSON_CODEC,
    Codec,
    EventEnvelope,
    FrameDecoder,
    OperationContext,
    ResponseEnvelope,
)

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
#: Hypothesis settings of the call tests: the default run, and the ``-m slow`` run.
FAST = settings(max_examples=500, **_COMMON)
SLOW = settings(max_examples=20_000, **_COMMON)

R1 = "00000000-0000-4000-8000-000000000001"
R2 = "00000000-0000-4000-8000-000000000002"
R3 = "00000000-0000-4000-8000-000000000003"


def frame(body: bytes | str) -> bytes:
    """A length-prefixed frame around ``body`` (str is UTF-8 encoded)."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return struct.pack(">I", len(raw)) + raw


def jframe(obj: Any) -> bytes:
    """A frame holding ``obj`` as compact JSON in the given key order."""
    return frame(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def decode_all(data: bytes, codec: Codec = JSON_CODEC) -> list[EventEnvelope]:
    dec = FrameDecoder(codec)
    dec.feed(data)
    out = dec.envelopes()
    dec.eof()
    return out


class NoEnv:
    """An ``OperationEnvLike`` for tests that never make nested calls."""

    async def invoke(
        self,
        namespace: str,
        op: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ResponseEnvelope:
        raise AssertionError("no nested calls in this test")

    def subscribe(
        self, namespace: str, op: str, input: Any = None, *, idle_timeout: float | None = None
    ) -> AsyncIterator[Any]:
        raise AssertionError("no nested calls in this test")


def ctx(identity: Identity | None = None, *, trusted: bool = False, request_id: str = R1) -> OperationContext:
    return OperationContext(
        request_id=request_id,
        parent_request_id=None,
        identity=identity or Identity("SHA256:test"),
        metadata={},
        env=NoEnv(),
        trusted=trusted,
        deadline_ms=None,
    )
