"""Envelopes, ``call.*`` payloads, error codes and inbound-frame classification (``call-protocol.md`` §3).

Sans-IO: nothing here reads or writes a stream. :func:`parse_inbound` turns a decoded :class:`EventEnvelope`
into one frozen event that tells the channel what to do (h11/wsproto style): run a request, route a
response to the pending map, reply ``call.error PROTOCOL_ERROR``, close the channel, or drop the frame
and log it at the given level.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "CALL_ABORTED",
    "CALL_COMPLETED",
    "CALL_ERROR",
    "CALL_REQUESTED",
    "CALL_RESPONDED",
    "CODE_RE",
    "INTERNAL_MESSAGE",
    "MAX_MESSAGE_CHARS",
    "MAX_REQUEST_ID_BYTES",
    "PUBSUB_CONTROL_TYPES",
    "RESERVED_METADATA_PREFIX",
    "CallAborted",
    "CallCompleted",
    "CallError",
    "CallErrored",
    "CallRequested",
    "CallResponded",
    "CloseChannel",
    "Drop",
    "ErrorCode",
    "EventEnvelope",
    "Inbound",
    "PubsubControl",
    "PubsubEvent",
    "RejectRequest",
    "ResponseEnvelope",
    "call_aborted",
    "call_completed",
    "call_error",
    "call_requested",
    "call_responded",
    "input_too_large",
    "is_valid_code",
    "is_valid_request_id",
    "output_too_large",
    "parse_inbound",
    "strip_reserved",
    "wire_error",
]

log = logging.getLogger("alknet.call")

CALL_REQUESTED = "call.requested"
CALL_RESPONDED = "call.responded"
CALL_COMPLETED = "call.completed"
CALL_ABORTED = "call.aborted"
CALL_ERROR = "call.error"
PUBSUB_CONTROL_TYPES = frozenset({"__subscribe", "__unsubscribe", "__error"})

CODE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
MAX_MESSAGE_CHARS = 1024
MAX_REQUEST_ID_BYTES = 128
INTERNAL_MESSAGE = "internal error"
RESERVED_METADATA_PREFIX = "alknet."


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One frame: ``type``, ``id`` and ``payload``, encoded in that order."""

    type: str
    id: str
    payload: Any


class ErrorCode(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    FORBIDDEN = "FORBIDDEN"
    INVALID_INPUT = "INVALID_INPUT"
    TIMEOUT = "TIMEOUT"
    ABORTED = "ABORTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    CONFLICT = "CONFLICT"


_RETRYABLE_BY_DEFAULT = frozenset({"TIMEOUT", "UNAVAILABLE"})


def is_valid_code(code: object) -> bool:
    """True if ``code`` matches ``^[A-Z][A-Z0-9_]{0,63}$``."""
    return isinstance(code, str) and CODE_RE.fullmatch(code) is not None


def is_valid_request_id(rid: object) -> bool:
    """A non-empty str of at most 128 UTF-8 bytes."""
    if not isinstance(rid, str) or not rid:
        return False
    if len(rid) <= MAX_REQUEST_ID_BYTES // 4:
        return True
    try:
        return len(rid.encode("utf-8")) <= MAX_REQUEST_ID_BYTES
    except UnicodeEncodeError:
        return False


class CallError(Exception):
    """A call failure with a wire ``code``; ``retryable`` defaults to true for TIMEOUT and UNAVAILABLE.

    Instances compare by value (code, message, retryable, details), so ``ResponseEnvelope``s compare too.
    """

    code: str
    message: str
    retryable: bool
    details: dict[str, Any] | None

    def __init__(
        self,
        code: str,
        message: str = "",
        retryable: bool | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(code, str):
            raise TypeError("CallError code must be a str")
        if not isinstance(message, str):
            raise TypeError("CallError message must be a str")
        if details is not None and not isinstance(details, Mapping):
            raise TypeError("CallError details must be a mapping or None")
        self.code = str(code)
        self.message = message
        self.retryable = (self.code in _RETRYABLE_BY_DEFAULT) if retryable is None else bool(retryable)
        self.details = None if details is None else dict(details)
        super().__init__(self.code, message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self) -> str:
        extra = f", details={self.details!r}" if self.details is not None else ""
        return f"CallError({self.code!r}, {self.message!r}, retryable={self.retryable}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CallError):
            return NotImplemented
        return (self.code, self.message, self.retryable, self.details) == (
            other.code,
            other.message,
            other.retryable,
            other.details,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message, self.retryable))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.retryable, self.details))

    def to_payload(self, request_id: str) -> dict[str, Any]:
        """The ``call.error`` payload in canonical order; ``details`` is left out when None."""
        payload: dict[str, Any] = {
            "requestId": request_id,
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.details is not None:
            payload["details"] = self.details
        return payload


def wire_error(exc: BaseException, request_id: str = "") -> CallError:
    """The error a callee puts on the wire for ``exc`` raised by a handler (§3).

    A ``CallError`` with a valid code passes through with its ``retryable`` flag (message cut to 1024
    characters). ``INTERNAL`` always carries the fixed message ``internal error``. A code that breaks the
    grammar, or any other exception, becomes ``INTERNAL``; the exception is logged locally with the
    request id.
    """
    if isinstance(exc, CallError) and is_valid_code(exc.code):
        if exc.code == ErrorCode.INTERNAL:
            if exc.message != INTERNAL_MESSAGE:
                log.error("handler failed: request_id=%s error=INTERNAL %s", request_id, exc.message)
            return CallError(ErrorCode.INTERNAL, INTERNAL_MESSAGE, exc.retryable, exc.details)
        if len(exc.message) <= MAX_MESSAGE_CHARS:
            return exc
        return CallError(exc.code, exc.message[:MAX_MESSAGE_CHARS], exc.retryable, exc.details)
    log.error("handler failed: request_id=%s error=%s", request_id, type(exc).__name__, exc_info=exc)
    return CallError(ErrorCode.INTERNAL, INTERNAL_MESSAGE, False)


def output_too_large(size: int, limit: int) -> CallError:
    """What a callee sends when a handler's output does not fit in ``max_frame`` (§2)."""
    return CallError(
        ErrorCode.INTERNAL,
        INTERNAL_MESSAGE,
        False,
        {"reason": "output too large", "size": size, "limit": limit},
    )


def input_too_large(size: int, limit: int) -> CallError:
    """The local failure of a caller whose own input does not fit in ``max_frame``; nothing is sent (§2)."""
    return CallError(
        ErrorCode.INVALID_INPUT,
        "input too large",
        False,
        {"reason": "input too large", "size": size, "limit": limit},
    )


@dataclass(frozen=True, slots=True)
class ResponseEnvelope:
    """The outcome of a call: ``output`` or ``error``.

    ``source`` ("local", "service" or "remote") is left out of equality.
    """

    request_id: str
    output: Any = None
    error: CallError | None = None
    source: str = field(default="local", compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        """The output, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.output


def strip_reserved(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``metadata`` without the reserved ``alknet.*`` keys."""
    if not metadata:
        return {}
    return {k: v for k, v in metadata.items() if not k.startswith(RESERVED_METADATA_PREFIX)}


# --------------------------------------------------------------------------------------------- builders


def _check_rid(request_id: str) -> None:
    if not is_valid_request_id(request_id):
        raise ValueError("requestId must be a non-empty str of at most 128 bytes")


def call_requested(
    request_id: str,
    operation_id: str,
    input: Any = None,
    *,
    parent_request_id: str | None = None,
    deadline: int | None = None,
    idle_timeout: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> EventEnvelope:
    """``call.requested``: requestId, operationId, input, parentRequestId?, deadline?, idleTimeout?, metadata?.

    Optional fields are left out when None; ``input`` is written as null when None.
    """
    _check_rid(request_id)
    if not isinstance(operation_id, str):
        raise TypeError("operationId must be a str")
    payload: dict[str, Any] = {"requestId": request_id, "operationId": operation_id, "input": input}
    if parent_request_id is not None:
        payload["parentRequestId"] = parent_request_id
    if deadline is not None:
        if not _is_int(deadline) or deadline < 0:
            raise ValueError("deadline must be a non-negative int (ms since the epoch)")
        payload["deadline"] = deadline
    if idle_timeout is not None:
        if not _is_int(idle_timeout) or idle_timeout <= 0:
            raise ValueError("idleTimeout must be an int > 0 (ms)")
        payload["idleTimeout"] = idle_timeout
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError("metadata must be a mapping")
        payload["metadata"] = dict(metadata)
    return EventEnvelope(CALL_REQUESTED, request_id, payload)


def call_responded(request_id: str, output: Any = None) -> EventEnvelope:
    """``call.responded``: requestId, output (written as null when None)."""
    return EventEnvelope(CALL_RESPONDED, request_id, {"requestId": request_id, "output": output})


def call_completed(request_id: str) -> EventEnvelope:
    return EventEnvelope(CALL_COMPLETED, request_id, {"requestId": request_id})


def call_aborted(request_id: str) -> EventEnvelope:
    return EventEnvelope(CALL_ABORTED, request_id, {"requestId": request_id})


def call_error(request_id: str, error: CallError) -> EventEnvelope:
    """``call.error`` for ``error`` as it is (use :func:`wire_error` first for handler exceptions)."""
    return EventEnvelope(CALL_ERROR, request_id, error.to_payload(request_id))


# ---------------------------------------------------------------------------------- inbound classification


@dataclass(frozen=True, slots=True)
class CallRequested:
    """A well-formed ``call.requested``; ``identity`` and other unknown payload fields are not carried."""

    request_id: str
    operation_id: str
    input: Any = None
    parent_request_id: str | None = None
    deadline: int | None = None
    idle_timeout: int | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallResponded:
    request_id: str
    output: Any


@dataclass(frozen=True, slots=True)
class CallCompleted:
    request_id: str


@dataclass(frozen=True, slots=True)
class CallAborted:
    request_id: str


@dataclass(frozen=True, slots=True)
class CallErrored:
    request_id: str
    error: CallError


@dataclass(frozen=True, slots=True)
class RejectRequest:
    """Answer ``reply`` (``call.error PROTOCOL_ERROR``) and keep the channel open; nothing runs."""

    request_id: str
    reason: str

    @property
    def error(self) -> CallError:
        return CallError(ErrorCode.PROTOCOL_ERROR, self.reason, False)

    @property
    def reply(self) -> EventEnvelope:
        return call_error(self.request_id, self.error)


@dataclass(frozen=True, slots=True)
class CloseChannel:
    """A protocol error: close this channel only and send nothing more."""

    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop the frame and log ``reason`` at ``level`` (WARNING or DEBUG)."""

    type: str
    reason: str
    level: int


@dataclass(frozen=True, slots=True)
class PubsubControl:
    """``__subscribe``, ``__unsubscribe`` or ``__error`` (handled by pubsub, §9)."""

    envelope: EventEnvelope


@dataclass(frozen=True, slots=True)
class PubsubEvent:
    """Any type outside the ``call.*``, ``__*`` and ``auth.*`` namespaces: a published event."""

    envelope: EventEnvelope


Inbound: TypeAlias = (
    CallRequested
    | CallResponded
    | CallCompleted
    | CallAborted
    | CallErrored
    | RejectRequest
    | CloseChannel
    | Drop
    | PubsubControl
    | PubsubEvent
)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad_non_negative_int(v: object) -> bool:
    return not _is_int(v) or v < 0  # type: ignore[operator]


def _parse_requested(env: EventEnvelope) -> CallRequested | RejectRequest | CloseChannel:
    p = env.payload
    if not isinstance(p, dict):
        return CloseChannel("call.requested payload is not a map")
    rid = p.get("requestId")
    if not is_valid_request_id(rid):
        return CloseChannel("call.requested without a valid requestId")
    assert isinstance(rid, str)
    if env.id and env.id != rid:
        return RejectRequest(rid, "envelope id differs from requestId")
    op = p.get("operationId")
    if not isinstance(op, str):
        return RejectRequest(rid, "operationId missing or not a str")
    deadline = p.get("deadline")
    if "deadline" in p and _bad_non_negative_int(deadline):
        return RejectRequest(rid, "deadline is not a non-negative int")
    idle = p.get("idleTimeout")
    if "idleTimeout" in p and (_bad_non_negative_int(idle) or idle == 0):
        return RejectRequest(rid, "idleTimeout is not an int > 0")
    metadata = p.get("metadata")
    if "metadata" in p and not isinstance(metadata, dict):
        return RejectRequest(rid, "metadata is not a map")
    parent = p.get("parentRequestId")
    return CallRequested(
        rid,
        op,
        p.get("input"),
        parent if isinstance(parent, str) else None,
        deadline,
        idle,
        metadata,
    )


def _response_rid(env: EventEnvelope) -> str | None:
    p = env.payload
    if not isinstance(p, dict):
        return None
    rid = p.get("requestId")
    if not is_valid_request_id(rid):
        return None
    assert isinstance(rid, str)
    if env.id and env.id != rid:
        return None
    return rid


def _parse_error_payload(p: dict[str, Any]) -> CallError | None:
    code, message, retryable = p.get("code"), p.get("message"), p.get("retryable")
    details = p.get("details")
    if not is_valid_code(code) or not isinstance(message, str) or not isinstance(retryable, bool):
        return None
    if "details" in p and not isinstance(details, dict):
        return None
    assert isinstance(code, str)
    return CallError(code, message, retryable, details)


def _malformed(env: EventEnvelope, what: str) -> Drop:
    return Drop(env.type, f"malformed {env.type} payload: {what}", logging.WARNING)


def parse_inbound(env: EventEnvelope) -> Inbound:
    """Classify one decoded frame by the bad-input table of §3 (no side effects)."""
    t = env.type
    if t.startswith("call."):
        if t == CALL_REQUESTED:
            return _parse_requested(env)
        if t not in (CALL_RESPONDED, CALL_COMPLETED, CALL_ABORTED, CALL_ERROR):
            return Drop(t, "unknown call type", logging.DEBUG)
        rid = _response_rid(env)
        if rid is None:
            return _malformed(env, "requestId")
        if t == CALL_RESPONDED:
            return CallResponded(rid, env.payload.get("output"))
        if t == CALL_COMPLETED:
            return CallCompleted(rid)
        if t == CALL_ABORTED:
            return CallAborted(rid)
        err = _parse_error_payload(env.payload)
        if err is None:
            return _malformed(env, "code, message, retryable or details")
        return CallErrored(rid, err)
    if t.startswith("__"):
        if t in PUBSUB_CONTROL_TYPES:
            return PubsubControl(env)
        return Drop(t, "unknown pubsub control type", logging.DEBUG)
    if t.startswith("auth."):
        return Drop(t, "auth frame outside the handshake", logging.DEBUG)
    return PubsubEvent(env)
