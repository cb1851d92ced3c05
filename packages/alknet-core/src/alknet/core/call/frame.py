"""Framing and body codecs (``call-protocol.md`` §2).

A frame is a big-endian u32 ``length`` followed by ``length`` bytes of body. :class:`FrameDecoder` is sans-IO
(bytes in, envelopes out); :class:`FrameReader` and :class:`FrameWriter` are the thin asyncio glue over it.

Value model, identical in both codecs: null, bool, 64-bit signed int, finite float, str, list (tuples are
written as lists) and maps with str keys, nested at most :data:`MAX_DEPTH` containers deep inside a payload.
Anything else is refused when encoding (:class:`ValueModelError`) and when decoding
(:class:`BodyDecodeError`), so a payload means the same whichever codec carries it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any, Final, NoReturn, Protocol, runtime_checkable

import msgpack

from alknet.core.call.envelope import EventEnvelope

__all__ = [
    "CODECS",
    "DEFAULT_MAX_FRAME",
    "JSON_CODEC",
    "MAX_DEPTH",
    "MAX_MAX_FRAME",
    "MIN_MAX_FRAME",
    "MSGPACK_CODEC",
    "BodyDecodeError",
    "Codec",
    "ConnectionClosed",
    "EmptyFrame",
    "FrameDecoder",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "FrameWriter",
    "JsonCodec",
    "MsgpackCodec",
    "StreamReaderLike",
    "StreamWriterLike",
    "ValueModelError",
    "check_max_frame",
    "check_value",
    "codec_by_name",
    "encode_frame",
    "roundtrip",
]

DEFAULT_MAX_FRAME: Final = 16 * 2**20
MIN_MAX_FRAME: Final = 1024
MAX_MAX_FRAME: Final = 64 * 2**20
MAX_DEPTH: Final = 256
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1
_HEADER = struct.Struct(">I")
_BOM = b"\xef\xbb\xbf"


class FrameError(Exception):
    """A protocol error in the byte stream; it closes the channel that carried it."""


class EmptyFrame(FrameError):
    """A frame header with length 0."""


class FrameTooLarge(FrameError):
    """A frame longer than ``max_frame``: raised from the header before reading the body, or on encode."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds max_frame {limit}")


class BodyDecodeError(FrameError):
    """A body that does not decode with the channel's codec into an envelope of the value model."""


class ConnectionClosed(Exception):
    """The stream ended inside a frame (a truncated close)."""


class ValueModelError(ValueError):
    """A value outside the wire value model (or not encodable as UTF-8) was given to an encoder."""


def check_max_frame(max_frame: int) -> int:
    """Return ``max_frame`` if it lies in 1 KiB..64 MiB, else raise ``ValueError``."""
    if isinstance(max_frame, bool) or not isinstance(max_frame, int):
        raise ValueError("max_frame must be an int")
    if not MIN_MAX_FRAME <= max_frame <= MAX_MAX_FRAME:
        raise ValueError(
            f"max_frame must be between {MIN_MAX_FRAME} and {MAX_MAX_FRAME} bytes, got {max_frame}"
        )
    return max_frame


# ------------------------------------------------------------------------------------------- value model

_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse(reason: str) -> NoReturn:
    raise ValueModelError(reason)


def _walk(v: Any, depth: int, text: bool) -> None:
    """Check ``v`` against the value model.

    ``depth`` counts the containers enclosing ``v``; ``text`` also refuses lone surrogates in strings.
    """
    t = type(v)
    if t is dict:
        _walk_container(v, True, depth, text)
    elif t is list or t is tuple:
        _walk_container(v, False, depth, text)
    elif t is str:
        if text and _SURROGATE.search(v) is not None:
            _refuse("string contains a lone surrogate")
    elif t is int:
        if not _INT_MIN <= v <= _INT_MAX:
            _refuse("integer outside the 64-bit range")
    elif t is float:
        if not math.isfinite(v):
            _refuse("float is not finite")
    elif v is None or t is bool:
        pass
    elif isinstance(v, dict):
        _walk_container(v, True, depth, text)
    elif isinstance(v, list | tuple):
        _walk_container(v, False, depth, text)
    elif isinstance(v, str):
        _walk(str(v), depth, text)
    elif isinstance(v, int):
        _walk(int(v), depth, text)
    elif isinstance(v, float):
        _walk(float(v), depth, text)
    else:
        _refuse(f"{type(v).__name__} is not a wire value")


def _walk_container(v: Any, is_map: bool, depth: int, text: bool) -> None:
    if depth >= MAX_DEPTH:
        _refuse(f"value nested deeper than {MAX_DEPTH}")
    if is_map:
        for k in v:
            if type(k) is not str and not isinstance(k, str):
                _refuse("map key is not a str")
            if text and _SURROGATE.search(k) is not None:
                _refuse("string contains a lone surrogate")
        children = v.values()
    else:
        children = v
    depth += 1
    for x in children:  # scalar leaves inline: most of a payload, and a call each would double the cost
        tx = type(x)
        if tx is str:
            if text and _SURROGATE.search(x) is not None:
                _refuse("string contains a lone surrogate")
        elif tx is int:
            if not _INT_MIN <= x <= _INT_MAX:
                _refuse("integer outside the 64-bit range")
        elif x is None or tx is bool:
            pass
        else:
            _walk(x, depth, text)


def check_value(value: Any) -> None:
    """Raise :class:`ValueModelError` unless ``value`` (a payload) fits the value model of §2."""
    _walk(value, 0, True)


def _check_envelope(env: EventEnvelope) -> None:
    if not isinstance(env, EventEnvelope):
        raise TypeError(f"expected an EventEnvelope, got {type(env).__name__}")
    if not isinstance(env.type, str) or not isinstance(env.id, str):
        raise ValueModelError("envelope type and id must be str")
    _walk(env.payload, 0, False)


def _to_envelope(obj: Any) -> EventEnvelope:
    if type(obj) is not dict:
        raise BodyDecodeError("top level is not a map")
    t = obj.get("type")
    i = obj.get("id")
    if type(t) is not str:
        raise BodyDecodeError("envelope type missing or not a str")
    if type(i) is not str:
        raise BodyDecodeError("envelope id missing or not a str")
    if "payload" not in obj:
        raise BodyDecodeError("envelope payload missing")
    return EventEnvelope(t, i, obj["payload"])


# ------------------------------------------------------------------------------------------------ codecs


@runtime_checkable
class Codec(Protocol):
    """A body codec: ``encode`` raises ``ValueModelError``; ``decode`` raises ``BodyDecodeError``."""

    @property
    def name(self) -> str: ...

    def encode(self, env: EventEnvelope) -> bytes: ...

    def decode(self, body: bytes) -> EventEnvelope: ...


def _json_int(s: str) -> int:
    v = int(s)
    if not _INT_MIN <= v <= _INT_MAX:
        raise ValueError("integer outside the 64-bit range")
    return v


def _json_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError("float is not finite")
    return v


def _json_constant(s: str) -> NoReturn:
    raise ValueError(f"{s} is refused")


_JSON_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)
_JSON_DECODER = json.JSONDecoder(
    parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant, strict=True
)
_JSON_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class JsonCodec:
    """UTF-8 JSON, compact separators, canonical (insertion) key order; strict UTF-8 without BOM on decode."""

    name: Final = "json"

    def encode(self, env: EventEnvelope) -> bytes:
        _check_envelope(env)
        try:
            text = _JSON_ENCODER.encode({"type": env.type, "id": env.id, "payload": env.payload})
            return text.encode("utf-8")
        except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError: a lone surrogate
            raise ValueModelError(f"not encodable as JSON: {type(exc).__name__}") from None

    def decode(self, body: bytes) -> EventEnvelope:
        if body[:3] == _BOM:
            raise BodyDecodeError("JSON body starts with a byte order mark")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise BodyDecodeError("JSON body is not valid UTF-8") from None
        try:
            obj = _JSON_DECODER.decode(text)
        except Exception as exc:  # JSONDecodeError, hook ValueError, RecursionError
            raise BodyDecodeError(f"invalid JSON body: {type(exc).__name__}") from None
        env = _to_envelope(obj)
        deep = body.count(b"[") + body.count(b"{") > MAX_DEPTH + 1
        if deep or _JSON_ESCAPED_SURROGATE.search(body) is not None:
            try:
                _walk(env.payload, 0, True)
                _walk(env.type, 0, True)
                _walk(env.id, 0, True)
            except ValueModelError as exc:
                raise BodyDecodeError(f"JSON body outside the value model: {exc}") from None
            except RecursionError:
                raise BodyDecodeError("JSON body nested too deeply") from None
        return env

    def __repr__(self) -> str:
        return "JSON_CODEC"


def _msgpack_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError("msgpack ext type refused")


class MsgpackCodec:
    """msgpack, ``use_bin_type=True``, float64, canonical key order; ``bin`` and ``ext`` are refused."""

    name: Final = "msgpack"

    def encode(self, env: EventEnvelope) -> bytes:
        _check_envelope(env)
        try:
            body: bytes = msgpack.packb(
                {"type": env.type, "id": env.id, "payload": env.payload}, use_bin_type=True
            )
        except (ValueError, TypeError, OverflowError) as exc:  # UnicodeEncodeError: a lone surrogate
            raise ValueModelError(f"not encodable as msgpack: {type(exc).__name__}") from None
        return body

    def decode(self, body: bytes) -> EventEnvelope:
        try:
            obj = msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=True,
                ext_hook=_msgpack_ext,
                max_bin_len=0,
                max_ext_len=0,
            )
        except Exception as exc:  # ExtraData, FormatError, StackError, OutOfData, ValueError, ...
            raise BodyDecodeError(f"invalid msgpack body: {type(exc).__name__}") from None
        env = _to_envelope(obj)
        try:
            _walk(env.payload, 0, False)
        except ValueModelError as exc:
            raise BodyDecodeError(f"msgpack body outside the value model: {exc}") from None
        return env

    def __repr__(self) -> str:
        return "MSGPACK_CODEC"


JSON_CODEC: Final = JsonCodec()
MSGPACK_CODEC: Final = MsgpackCodec()
CODECS: Final[dict[str, Codec]] = {"json": JSON_CODEC, "msgpack": MSGPACK_CODEC}


def codec_by_name(name: str) -> Codec:
    """``"json"`` or ``"msgpack"``; anything else raises ``ValueError``."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r}") from None


def roundtrip(value: Any, codec: Codec = JSON_CODEC) -> Any:
    """``value`` encoded and decoded again with ``codec`` (strict mode of ``OperationEnv``).

    Raises ``ValueModelError`` for a value outside the value model.
    """
    return codec.decode(codec.encode(EventEnvelope("", "", value))).payload


def encode_frame(env: EventEnvelope, codec: Codec, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix + body. Raises ``ValueModelError``, or ``FrameTooLarge`` for a body over ``max_frame``."""
    check_max_frame(max_frame)
    body = codec.encode(env)
    n = len(body)
    if n > max_frame:
        raise FrameTooLarge(n, max_frame)
    return _HEADER.pack(n) + body


# ------------------------------------------------------------------------------------------ sans-IO decoder


class FrameDecoder:
    """Bytes in, envelopes out.

    ``feed(data)`` buffers bytes; ``next_envelope()`` returns the next envelope, or ``None`` when more
    bytes are needed. A zero or oversize length raises ``EmptyFrame`` / ``FrameTooLarge`` as soon as the 4 header bytes
    are there, before any of the body is awaited. ``eof()`` marks the end of the stream: it raises
    ``ConnectionClosed`` when the buffer ends inside a frame; frames still buffered stay readable. After a
    ``FrameError`` the decoder is broken and raises that error again. ``codec`` may be swapped between frames
    (raw framing switches after ``auth.ok``).
    """

    __slots__ = ("_buf", "_eof", "_error", "_pos", "codec", "max_frame")

    def __init__(self, codec: Codec, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.codec = codec
        self.max_frame = check_max_frame(max_frame)
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: FrameError | None = None

    @property
    def at_eof(self) -> bool:
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as envelopes."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("feed() after eof()")
        if not data:
            return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def _frame_length(self) -> int | None:
        """The validated length of the frame at the head of the buffer; None if its header is incomplete."""
        if len(self._buf) - self._pos < 4:
            return None
        (n,) = _HEADER.unpack_from(self._buf, self._pos)
        if n == 0:
            self._error = EmptyFrame("frame of length 0")
            raise self._error
        if n > self.max_frame:
            self._error = FrameTooLarge(n, self.max_frame)
            raise self._error
        return int(n)

    def next_envelope(self) -> EventEnvelope | None:
        if self._error is not None:
            raise self._error
        n = self._frame_length()
        avail = len(self._buf) - self._pos
        if n is None or avail < 4 + n:
            if self._eof and avail:
                raise self._truncated()
            return None
        start = self._pos + 4
        body = bytes(self._buf[start : start + n])
        self._pos = start + n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        try:
            return self.codec.decode(body)
        except BodyDecodeError as exc:
            self._error = exc
            raise

    def envelopes(self) -> list[EventEnvelope]:
        """Every complete envelope buffered now (raises like ``next_envelope``)."""
        out: list[EventEnvelope] = []
        while (env := self.next_envelope()) is not None:
            out.append(env)
        return out

    def _truncated(self) -> ConnectionClosed:
        avail = len(self._buf) - self._pos
        if avail < 4:
            return ConnectionClosed(f"stream ended after {avail} of 4 header bytes")
        (n,) = _HEADER.unpack_from(self._buf, self._pos)
        return ConnectionClosed(f"stream ended after {avail - 4} of {n} body bytes")

    def eof(self) -> None:
        """Mark the end of the stream; raises ``ConnectionClosed`` if it ends inside a frame."""
        self._eof = True
        if self._error is not None or not self.buffered:
            return
        try:
            n = self._frame_length()
        except FrameError:
            return  # next_envelope() raises it
        if n is None or self.buffered < 4 + n:
            raise self._truncated()


# ----------------------------------------------------------------------------------------- asyncio glue


class StreamReaderLike(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class StreamWriterLike(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class FrameReader:
    """``await read()`` returns the next envelope, or ``None`` on a clean EOF between frames.

    Raises ``FrameError`` subclasses for protocol errors and ``ConnectionClosed`` for a truncated stream.
    """

    def __init__(
        self,
        reader: StreamReaderLike,
        codec: Codec,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        read_size: int = 65536,
    ) -> None:
        self._reader = reader
        self._decoder = FrameDecoder(codec, max_frame)
        self._read_size = read_size

    @property
    def codec(self) -> Codec:
        return self._decoder.codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        self._decoder.codec = codec

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    async def read(self) -> EventEnvelope | None:
        dec = self._decoder
        while True:
            env = dec.next_envelope()
            if env is not None:
                return env
            if dec.at_eof:
                return None
            data = await self._reader.read(self._read_size)
            if not data:
                dec.eof()
                return dec.next_envelope()
            dec.feed(data)


class FrameWriter:
    """Encodes envelopes and writes one frame per ``write``; ``send`` also awaits ``drain()``."""

    def __init__(self, writer: StreamWriterLike, codec: Codec, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._writer = writer
        self.codec = codec
        self.max_frame = check_max_frame(max_frame)

    def write(self, env: EventEnvelope) -> int:
        """Encode and write one frame without waiting; returns the frame size. Nothing is written on error."""
        frame = encode_frame(env, self.codec, self.max_frame)
        self._writer.write(frame)
        return len(frame)

    async def drain(self) -> None:
        await self._writer.drain()

    async def send(self, env: EventEnvelope) -> None:
        self.write(env)
        await self._writer.drain()
