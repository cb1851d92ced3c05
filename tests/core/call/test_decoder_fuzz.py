"""Hypothesis fuzzing of the sans-IO frame decoder (call-protocol.md §2, issue 4 "Tests").

Random bytes, mutated valid frames, truncated streams and huge lengths, fed in random chunks: the decoder
never crashes or hangs; it only returns envelopes (which fit the value model, re-encode in both codecs and
classify without error), returns None for "need more bytes", or raises a ``FrameError`` subclass or
``ConnectionClosed``. Every property runs 500 examples by default and 20 000 under ``-m slow``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from call_helpers import FAST, SLOW
from hypothesis import given, settings
from hypothesis import strategies as st

from alknet.core.call import (
    JSON_CODEC,
    MSGPACK_CODEC,
    Codec,
    ConnectionClosed,
    EmptyFrame,
    EventEnvelope,
    FrameDecoder,
    FrameError,
    FrameReader,
    FrameTooLarge,
    check_value,
    encode_frame,
    parse_inbound,
)

CODECS = st.sampled_from([JSON_CODEC, MSGPACK_CODEC])
LIMITS = st.sampled_from([1024, 4096, 16 * 2**20])
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=12)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
TYPES = st.sampled_from(
    [
        "call.requested",
        "call.responded",
        "call.completed",
        "call.aborted",
        "call.error",
        "__subscribe",
        "ev",
        "",
    ]
) | st.text(max_size=16)
REQUEST_IDS = st.sampled_from(["00000000-0000-4000-8000-000000000001", "", "x" * 129]) | TEXT
CALL_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "requestId": REQUEST_IDS | VALUES,
        "operationId": st.sampled_from(["/fs/readFile", "bad"]) | VALUES,
        "input": VALUES,
        "output": VALUES,
        "deadline": st.integers(-5, 2**40) | VALUES,
        "idleTimeout": st.integers(-5, 10) | VALUES,
        "metadata": VALUES,
        "code": st.sampled_from(["NOT_FOUND", "bad code"]) | VALUES,
        "message": VALUES,
        "retryable": st.booleans() | VALUES,
        "details": VALUES,
    },
)
ENVELOPES = st.builds(EventEnvelope, TYPES, REQUEST_IDS, CALL_FIELDS | VALUES)


def _check_envelope(env: EventEnvelope) -> None:
    assert isinstance(env, EventEnvelope) and type(env.type) is str and type(env.id) is str
    check_value(env.payload)
    for codec in (JSON_CODEC, MSGPACK_CODEC):
        assert codec.decode(codec.encode(env)) == env
    parse_inbound(env)  # classification never raises


def run_decoder(codec: Codec, max_frame: int, data: bytes, cuts: list[int]) -> list[EventEnvelope]:
    """Feed ``data`` split at ``cuts``; return the envelopes decoded before a clean end or an error."""
    dec = FrameDecoder(codec, max_frame)
    out: list[EventEnvelope] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in itertools.pairwise(bounds):
            dec.feed(data[a:b])
            out.extend(dec.envelopes())
        dec.eof()
        out.extend(dec.envelopes())
        assert dec.next_envelope() is None
    except (FrameError, ConnectionClosed):
        pass
    for env in out:
        _check_envelope(env)
    return out


# ------------------------------------------------------------------------------------- random bytes


def prop_random_bytes(codec: Codec, max_frame: int, data: bytes, cuts: list[int]) -> None:
    run_decoder(codec, max_frame, data, cuts)


def prop_random_bodies(codec: Codec, bodies: list[bytes]) -> None:
    """Well-framed random bodies: each decodes or raises BodyDecodeError (never another exception)."""
    data = b"".join(len(b).to_bytes(4, "big") + b for b in bodies if b)
    run_decoder(codec, 1024, data, [])


# ----------------------------------------------------------------------------------- valid and mutated


def prop_valid_round_trip(codec: Codec, envs: list[EventEnvelope], cuts: list[int]) -> None:
    data = b"".join(encode_frame(e, codec) for e in envs)
    assert run_decoder(codec, 16 * 2**20, data, cuts) == envs
    for env in envs:  # both codecs carry the same values
        assert JSON_CODEC.decode(JSON_CODEC.encode(env)) == MSGPACK_CODEC.decode(MSGPACK_CODEC.encode(env))


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[Codec, bytes, list[int]]:
    codec = draw(CODECS)
    envs = draw(st.lists(ENVELOPES, min_size=1, max_size=3))
    data = bytearray(b"".join(encode_frame(e, codec) for e in envs))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "length", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "length" and len(data) >= 4:
            data[0:4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
        elif op == "truncate":
            del data[pos:]
    return codec, bytes(data), draw(st.lists(st.integers(0, 2**16), max_size=6))


def prop_mutated(stream: tuple[Codec, bytes, list[int]]) -> None:
    codec, data, cuts = stream
    run_decoder(codec, 16 * 2**20, data, cuts)


def prop_truncated(codec: Codec, envs: list[EventEnvelope], cut: int) -> None:
    data = b"".join(encode_frame(e, codec) for e in envs)
    cut %= len(data) + 1
    ends = set()
    pos = 0
    for e in envs:
        pos += len(encode_frame(e, codec))
        ends.add(pos)
    dec = FrameDecoder(codec)
    dec.feed(data[:cut])
    got = dec.envelopes()
    if cut == 0 or cut in ends:
        dec.eof()
        assert got == envs[: len(got)] and dec.next_envelope() is None
    else:
        with pytest.raises(ConnectionClosed):
            dec.eof()


def prop_huge_lengths(max_frame: int, length: int, body: bytes) -> None:
    dec = FrameDecoder(JSON_CODEC, max_frame)
    dec.feed(length.to_bytes(4, "big") + body)
    if length == 0:
        with pytest.raises(EmptyFrame):
            dec.next_envelope()
    elif length > max_frame:
        with pytest.raises(FrameTooLarge):
            dec.next_envelope()
    elif len(body) < length:
        assert dec.next_envelope() is None
        with pytest.raises(ConnectionClosed):
            dec.eof()
    else:
        run_decoder(JSON_CODEC, max_frame, length.to_bytes(4, "big") + body, [])


def prop_frame_reader(codec: Codec, data: bytes, chunk: int) -> None:
    """The asyncio FrameReader over a StreamReader: same outcomes, and it always terminates."""

    async def main() -> None:
        sr = asyncio.StreamReader()
        sr.feed_data(data)
        sr.feed_eof()
        reader = FrameReader(sr, codec, 1024, read_size=chunk)
        try:
            while (env := await reader.read()) is not None:
                _check_envelope(env)
        except (FrameError, ConnectionClosed):
            pass

    asyncio.run(asyncio.wait_for(main(), 10))


# ----------------------------------------------------------------------------- fast and slow variants

PROPS: list[tuple[str, Callable[..., None], dict[str, Any]]] = [
    (
        "random_bytes",
        prop_random_bytes,
        {
            "codec": CODECS,
            "max_frame": LIMITS,
            "data": st.binary(max_size=2048),
            "cuts": st.lists(st.integers(0, 4096), max_size=8),
        },
    ),
    (
        "random_bodies",
        prop_random_bodies,
        {"codec": CODECS, "bodies": st.lists(st.binary(max_size=64), max_size=4)},
    ),
    (
        "valid_round_trip",
        prop_valid_round_trip,
        {
            "codec": CODECS,
            "envs": st.lists(ENVELOPES, max_size=4),
            "cuts": st.lists(st.integers(0, 4096), max_size=8),
        },
    ),
    ("mutated", prop_mutated, {"stream": mutated_streams()}),
    (
        "truncated",
        prop_truncated,
        {"codec": CODECS, "envs": st.lists(ENVELOPES, min_size=1, max_size=3), "cut": st.integers(0, 2**16)},
    ),
    (
        "huge_lengths",
        prop_huge_lengths,
        {
            "max_frame": LIMITS,
            "length": st.integers(0, 2**32 - 1) | st.integers(0, 2048),
            "body": st.binary(max_size=256),
        },
    ),
    (
        "frame_reader",
        prop_frame_reader,
        {"codec": CODECS, "data": st.binary(max_size=512), "chunk": st.integers(1, 64)},
    ),
]


def _make(prop: Callable[..., None], strategies: dict[str, Any], cfg: settings) -> Callable[..., None]:
    @cfg
    @given(**strategies)
    def test(**kwargs: Any) -> None:
        prop(**kwargs)

    return test


for _name, _prop, _strategies in PROPS:
    globals()[f"test_fuzz_{_name}"] = _make(_prop, _strategies, FAST)
    globals()[f"test_fuzz_{_name}_slow"] = pytest.mark.timeout(3600)(
        pytest.mark.slow(_make(_prop, _strategies, SLOW))
    )
