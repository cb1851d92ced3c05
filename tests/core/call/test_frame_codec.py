"""call-protocol.md §2: framing, limits, EOF handling and the strictness of both body codecs (bytes only)."""

from __future__ import annotations

import asyncio
import enum
import math
import struct
from typing import Any

import msgpack
import pytest
from call_helpers import R1, decode_all, frame, jframe

from alknet.core.call import (
    DEFAULT_MAX_FRAME,
    JSON_CODEC,
    MSGPACK_CODEC,
    BodyDecodeError,
    Codec,
    ConnectionClosed,
    EmptyFrame,
    EventEnvelope,
    FrameDecoder,
    FrameReader,
    FrameTooLarge,
    FrameWriter,
    ValueModelError,
    call_error,
    call_requested,
    call_responded,
    check_max_frame,
    check_value,
    codec_by_name,
    encode_frame,
    input_too_large,
    output_too_large,
    roundtrip,
)
from alknet.core.call.frame import MAX_DEPTH

CODECS = [JSON_CODEC, MSGPACK_CODEC]
ENV = call_responded(R1, {"text": "hello"})


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


def mp(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def mp_env(payload_bytes: bytes) -> bytes:
    """A msgpack envelope body whose payload is the given raw msgpack bytes."""
    return b"\x83" + mp("type") + mp("x") + mp("id") + mp("") + mp("payload") + payload_bytes


# ------------------------------------------------------------------------------------------------ limits


def test_zero_length_raises_empty_frame() -> None:
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(b"\x00\x00\x00\x00")
    with pytest.raises(EmptyFrame):
        dec.next_envelope()


def test_oversize_header_alone_raises_before_the_body() -> None:
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(bytes.fromhex("01000001"))
    with pytest.raises(FrameTooLarge) as ei:
        dec.next_envelope()
    assert (ei.value.size, ei.value.limit) == (2**24 + 1, DEFAULT_MAX_FRAME)


def test_limit_is_inclusive_and_configurable() -> None:
    body = JSON_CODEC.encode(ENV)
    dec = FrameDecoder(JSON_CODEC, max_frame=1024)
    dec.feed(struct.pack(">I", 1025))
    with pytest.raises(FrameTooLarge):
        dec.next_envelope()
    big = call_responded(R1, "x" * (1024 - len(body) + len('"hello"') - 2 - 2))
    enc = encode_frame(big, JSON_CODEC, 1024)
    assert len(enc) - 4 <= 1024
    assert decode_all(enc) == [big]


def test_decoder_stays_broken_after_a_frame_error() -> None:
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(b"\x00\x00\x00\x00" + frame(JSON_CODEC.encode(ENV)))
    for _ in range(2):
        with pytest.raises(EmptyFrame):
            dec.next_envelope()


@pytest.mark.parametrize("bad", [512, 65 * 2**20, 0, -1, 1023, 64 * 2**20 + 1])
async def test_max_frame_out_of_range_raises_value_error(bad: int) -> None:
    with pytest.raises(ValueError):
        check_max_frame(bad)
    with pytest.raises(ValueError):
        FrameDecoder(JSON_CODEC, bad)
    with pytest.raises(ValueError):
        encode_frame(ENV, JSON_CODEC, bad)
    with pytest.raises(ValueError):
        FrameReader(asyncio.StreamReader(), JSON_CODEC, bad)


@pytest.mark.parametrize("good", [1024, 16 * 2**20, 64 * 2**20])
def test_max_frame_bounds_are_accepted(good: int) -> None:
    assert check_max_frame(good) == good
    assert FrameDecoder(JSON_CODEC, good).max_frame == good


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_oversize_send_raises_frame_too_large_and_writes_nothing(codec: Codec) -> None:
    class Spy:
        def __init__(self) -> None:
            self.data: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.data.append(data)

        async def drain(self) -> None:
            return None

    spy = Spy()
    w = FrameWriter(spy, codec, 1024)
    with pytest.raises(FrameTooLarge) as ei:
        w.write(call_responded(R1, "x" * 2000))
    assert ei.value.limit == 1024 and ei.value.size > 1024
    assert spy.data == []
    n = w.write(ENV)
    assert spy.data == [encode_frame(ENV, codec)] and n == len(spy.data[0])


# ------------------------------------------------------------------------------------------ reassembly


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_64_kib_payload_round_trips(codec: Codec) -> None:
    env = call_responded(R1, {"data": "é" * 32768, "n": list(range(100))})
    assert len(encode_frame(env, codec)) > 64 * 1024
    assert decode_all(encode_frame(env, codec), codec) == [env]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_three_frames_in_one_write_and_one_byte_at_a_time(codec: Codec) -> None:
    envs = [call_responded(R1, i) for i in range(3)]
    data = b"".join(encode_frame(e, codec) for e in envs)
    assert decode_all(data, codec) == envs
    dec = FrameDecoder(codec)
    got = []
    for b in data:
        dec.feed(bytes([b]))
        got.extend(dec.envelopes())
    dec.eof()
    assert got == envs


def test_eof_positions() -> None:
    data = encode_frame(ENV, JSON_CODEC)
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(data[:2])
    assert dec.next_envelope() is None
    with pytest.raises(ConnectionClosed, match="2 of 4 header bytes"):
        dec.eof()
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(data[:10])
    assert dec.next_envelope() is None
    with pytest.raises(ConnectionClosed, match="body bytes"):
        dec.eof()
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(data + data)
    dec.eof()  # complete frames stay readable
    assert dec.envelopes() == [ENV, ENV]
    assert dec.next_envelope() is None


def test_eof_with_undrained_partial_frame_raises_from_next_envelope() -> None:
    data = encode_frame(ENV, JSON_CODEC)
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(data + data[:3])
    dec.eof()
    assert dec.next_envelope() == ENV
    with pytest.raises(ConnectionClosed):
        dec.next_envelope()


def test_codec_switch_between_frames() -> None:
    """Raw framing: the auth frame is JSON, the frames pipelined after it are in the negotiated codec."""
    auth = EventEnvelope("auth.token", "", {"token": "t", "codec": "msgpack"})
    call = call_requested(R1, "/fs/readFile", {"path": "/x"})
    dec = FrameDecoder(JSON_CODEC)
    dec.feed(encode_frame(auth, JSON_CODEC) + encode_frame(call, MSGPACK_CODEC))
    assert dec.next_envelope() == auth
    dec.codec = MSGPACK_CODEC
    assert dec.next_envelope() == call


# --------------------------------------------------------------------------------------- asyncio glue


async def _read_all(data: bytes, *, chunks: int = 1, codec: Codec = JSON_CODEC) -> list[Any]:
    sr = asyncio.StreamReader()
    step = max(1, len(data) // chunks) if data else 1
    for i in range(0, len(data), step):
        sr.feed_data(data[i : i + step])
    sr.feed_eof()
    reader = FrameReader(sr, codec, read_size=7)
    out: list[Any] = []
    while (env := await reader.read()) is not None:
        out.append(env)
    out.append(None)
    assert await reader.read() is None
    return out


async def test_frame_reader_three_frames_and_clean_eof() -> None:
    envs = [call_responded(R1, i) for i in range(3)]
    data = b"".join(encode_frame(e, JSON_CODEC) for e in envs)
    assert await _read_all(data) == [*envs, None]
    assert await _read_all(data, chunks=len(data)) == [*envs, None]
    assert await _read_all(b"") == [None]


async def test_frame_reader_truncated() -> None:
    data = encode_frame(ENV, JSON_CODEC)
    for cut in (2, 10):
        with pytest.raises(ConnectionClosed):
            await _read_all(data[:cut])


async def test_frame_reader_protocol_errors() -> None:
    with pytest.raises(EmptyFrame):
        await _read_all(b"\x00\x00\x00\x00")
    sr = asyncio.StreamReader()
    sr.feed_data(bytes.fromhex("01000001"))  # no body, no EOF: must not wait for 16 MiB
    with pytest.raises(FrameTooLarge):
        await asyncio.wait_for(FrameReader(sr, JSON_CODEC).read(), 1)


async def test_frame_reader_codec_property_and_writer_send() -> None:
    class Sink:
        def __init__(self) -> None:
            self.buf = bytearray()
            self.drains = 0

        def write(self, data: bytes) -> None:
            self.buf += data

        async def drain(self) -> None:
            self.drains += 1

    sink = Sink()
    w = FrameWriter(sink, MSGPACK_CODEC)
    await w.send(ENV)
    await w.drain()
    assert sink.drains == 2
    sr = asyncio.StreamReader()
    sr.feed_data(bytes(sink.buf))
    sr.feed_eof()
    r = FrameReader(sr, JSON_CODEC)
    r.codec = MSGPACK_CODEC
    assert r.codec is MSGPACK_CODEC and r.decoder.codec is MSGPACK_CODEC
    assert await r.read() == ENV


# ------------------------------------------------------------------------------------- BodyDecodeError

BAD_BODIES: list[tuple[str, Codec, bytes]] = [
    ("json NaN payload", JSON_CODEC, b'{"type":"x","id":"","payload":NaN}'),
    ("json Infinity", JSON_CODEC, b'{"type":"x","id":"","payload":Infinity}'),
    ("json -Infinity", JSON_CODEC, b'{"type":"x","id":"","payload":-Infinity}'),
    ("json float overflow", JSON_CODEC, b'{"type":"x","id":"","payload":1e400}'),
    ("json int over 2^63-1", JSON_CODEC, b'{"type":"x","id":"","payload":9223372036854775808}'),
    ("json int under -2^63", JSON_CODEC, b'{"type":"x","id":"","payload":-9223372036854775809}'),
    ("json top-level array", JSON_CODEC, b"[1]"),
    ("json top-level string", JSON_CODEC, b'"x"'),
    ("json invalid utf-8", JSON_CODEC, b'{"type":"x","id":"","payload":"\xff"}'),
    ("json overlong utf-8", JSON_CODEC, b'{"type":"x","id":"","payload":"\xc0\xaf"}'),
    ("json encoded surrogate", JSON_CODEC, b'{"type":"x","id":"","payload":"\xed\xa0\x80"}'),
    ("json escaped lone surrogate", JSON_CODEC, b'{"type":"x","id":"","payload":"\\ud800"}'),
    ("json escaped lone surrogate key", JSON_CODEC, b'{"type":"x","id":"","payload":{"\\uDC00":1}}'),
    ("json BOM", JSON_CODEC, b'\xef\xbb\xbf{"type":"x","id":"","payload":1}'),
    ("json utf-16", JSON_CODEC, '{"type":"x","id":"","payload":1}'.encode("utf-16")),
    ("json trailing data", JSON_CODEC, b'{"type":"x","id":"","payload":1} {}'),
    ("json control char in string", JSON_CODEC, b'{"type":"x","id":"","payload":"a\nb"}'),
    ("json single quotes", JSON_CODEC, b"{'type':'x','id':'','payload':1}"),
    ("json missing payload", JSON_CODEC, b'{"type":"x","id":""}'),
    ("json missing id", JSON_CODEC, b'{"type":"x","payload":1}'),
    ("json id not a str", JSON_CODEC, b'{"type":"x","id":1,"payload":1}'),
    ("json type not a str", JSON_CODEC, b'{"type":null,"id":"","payload":1}'),
    ("json too deep", JSON_CODEC, b'{"type":"x","id":"","payload":' + b"[" * 300 + b"]" * 300 + b"}"),
    ("json recursion", JSON_CODEC, b'{"type":"x","id":"","payload":' + b"[" * 100000 + b"]" * 100000 + b"}"),
    ("msgpack bin", MSGPACK_CODEC, mp_env(mp(b"abc"))),
    ("msgpack empty bin", MSGPACK_CODEC, mp_env(mp(b""))),
    ("msgpack bin key", MSGPACK_CODEC, mp_env(b"\x81\xc4\x00\x01")),
    ("msgpack ext", MSGPACK_CODEC, mp_env(mp(msgpack.ExtType(5, b"x")))),
    ("msgpack timestamp ext", MSGPACK_CODEC, mp_env(b"\xd6\xff\x00\x00\x00\x01")),
    ("msgpack int key", MSGPACK_CODEC, mp_env(b"\x81\x01\x02")),
    ("msgpack uint64 over 2^63-1", MSGPACK_CODEC, mp_env(b"\xcf" + b"\xff" * 8)),
    ("msgpack NaN", MSGPACK_CODEC, mp_env(b"\xcb" + struct.pack(">d", math.nan))),
    ("msgpack float32 inf", MSGPACK_CODEC, mp_env(b"\xca" + struct.pack(">f", math.inf))),
    ("msgpack invalid utf-8 str", MSGPACK_CODEC, mp_env(b"\xa1\xff")),
    ("msgpack top-level array", MSGPACK_CODEC, mp([1])),
    ("msgpack trailing data", MSGPACK_CODEC, mp({"type": "x", "id": "", "payload": 1}) + b"\xc0"),
    ("msgpack truncated", MSGPACK_CODEC, mp({"type": "x", "id": "", "payload": 1})[:-1]),
    ("msgpack too deep", MSGPACK_CODEC, mp_env(b"\x91" * 300 + b"\xc0")),
    ("msgpack stack", MSGPACK_CODEC, mp_env(b"\x91" * 5000 + b"\xc0")),
    ("msgpack reserved byte", MSGPACK_CODEC, mp_env(b"\xc1")),
    ("json body on a msgpack channel", MSGPACK_CODEC, b'{"type":"x","id":"","payload":1}'),
    ("msgpack body on a json channel", JSON_CODEC, mp({"type": "x", "id": "", "payload": 1})),
]


@pytest.mark.parametrize(("what", "codec", "body"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_raise_body_decode_error(what: str, codec: Codec, body: bytes) -> None:
    with pytest.raises(BodyDecodeError):
        codec.decode(body)
    dec = FrameDecoder(codec)
    dec.feed(frame(body) + encode_frame(ENV, codec))
    with pytest.raises(BodyDecodeError):
        dec.next_envelope()
    with pytest.raises(BodyDecodeError):  # the decoder stays broken: the channel closes
        dec.next_envelope()


def test_json_decode_is_lenient_where_the_spec_says_so() -> None:
    body = b' \r\n\t{ "payload" : [1, 2.5, true, null, "\\u00e9\\ud83d\\ude00"],\n"id":"i", "x": 1, "type" : "t" } \n'
    assert JSON_CODEC.decode(body) == EventEnvelope("t", "i", [1, 2.5, True, None, "é😀"])
    # a repeated key keeps its last value
    assert JSON_CODEC.decode(b'{"type":"a","type":"b","id":"","payload":{"k":1,"k":2}}') == EventEnvelope(
        "b", "", {"k": 2}
    )
    lim = b'{"type":"x","id":"","payload":[9223372036854775807,-9223372036854775808,1e308]}'
    assert JSON_CODEC.decode(lim).payload == [2**63 - 1, -(2**63), 1e308]


def test_msgpack_decode_accepts_other_valid_encodings() -> None:
    # float32, non-minimal int width, str8 for a short str, extra top-level keys, any key order
    body = b"\x84" + mp("payload") + b"\x93\xca" + struct.pack(">f", 1.5) + b"\xd2\x00\x00\x00\x07\xd9\x01a"
    body += mp("id") + mp("") + mp("type") + mp("t") + mp("extra") + mp(1)
    assert MSGPACK_CODEC.decode(body) == EventEnvelope("t", "", [1.5, 7, "a"])


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_depth_limit_is_the_same_for_both_codecs(codec: Codec) -> None:
    ok = call_responded(R1, nested(MAX_DEPTH - 1))  # payload map + MAX_DEPTH-1 lists
    assert decode_all(encode_frame(ok, codec), codec) == [ok]
    with pytest.raises(ValueModelError):
        codec.encode(call_responded(R1, nested(MAX_DEPTH)))


# ------------------------------------------------------------------------------------------ value model


class Color(enum.StrEnum):
    RED = "red"


class Num(enum.IntEnum):
    ONE = 1


NOT_WIRE_VALUES: list[tuple[str, Any]] = [
    ("set", {1}),
    ("bytes", b"x"),
    ("bytearray", bytearray(b"x")),
    ("int key", {1: 2}),
    ("None key", {None: 2}),
    ("NaN", math.nan),
    ("inf", math.inf),
    ("2^63", 2**63),
    ("-2^63-1", -(2**63) - 1),
    ("object", object()),
    ("lone surrogate", "\ud800"),
    ("lone surrogate key", {"\udfff": 1}),
    ("too deep", nested(MAX_DEPTH + 1)),
]


@pytest.mark.parametrize(("what", "value"), NOT_WIRE_VALUES, ids=[v[0] for v in NOT_WIRE_VALUES])
def test_values_outside_the_model_fail_the_same_way_in_both_codecs(what: str, value: Any) -> None:
    for codec in CODECS:
        with pytest.raises(ValueModelError):
            encode_frame(call_responded(R1, value), codec)
        with pytest.raises(ValueModelError):
            roundtrip(value, codec)
    with pytest.raises(ValueError):
        check_value(value)


def test_circular_value_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for codec in CODECS:
        with pytest.raises(ValueModelError):
            codec.encode(call_responded(R1, loop))


def test_wire_values_and_subclasses_encode_identically() -> None:
    value = {"t": (1, 2), "e": Color.RED, "n": Num.ONE, "f": -0.5, "b": False, "z": None, "u": "ü"}
    expect = {"t": [1, 2], "e": "red", "n": 1, "f": -0.5, "b": False, "z": None, "u": "ü"}
    for codec in CODECS:
        got = roundtrip(value, codec)
        assert got == expect
        assert type(got["e"]) is str and type(got["n"]) is int and type(got["b"]) is bool
    check_value(expect)
    with pytest.raises(TypeError):
        JSON_CODEC.encode({"type": "x"})  # type: ignore[arg-type]


def test_envelope_type_and_id_must_be_str() -> None:
    with pytest.raises(ValueModelError):
        JSON_CODEC.encode(EventEnvelope("x", 1, None))  # type: ignore[arg-type]


def test_codec_names() -> None:
    assert codec_by_name("json") is JSON_CODEC and JSON_CODEC.name == "json"
    assert codec_by_name("msgpack") is MSGPACK_CODEC and MSGPACK_CODEC.name == "msgpack"
    assert isinstance(JSON_CODEC, Codec) and isinstance(MSGPACK_CODEC, Codec)
    with pytest.raises(ValueError):
        codec_by_name("cbor")


def test_canonical_order_is_insertion_order_not_sorted() -> None:
    env = EventEnvelope("t", "i", {"z": 1, "a": 2})
    assert JSON_CODEC.encode(env) == b'{"type":"t","id":"i","payload":{"z":1,"a":2}}'
    assert MSGPACK_CODEC.encode(env) == mp({"type": "t", "id": "i", "payload": {"z": 1, "a": 2}})
    assert jframe({"type": "t", "id": "i", "payload": {"z": 1, "a": 2}}) == encode_frame(env, JSON_CODEC)


def test_oversize_errors_for_the_peer() -> None:
    try:
        encode_frame(call_responded(R1, "x" * 2000), JSON_CODEC, 1024)
    except FrameTooLarge as exc:
        out = output_too_large(exc.size, exc.limit)
        inp = input_too_large(exc.size, exc.limit)
    assert out.code == "INTERNAL" and out.message == "internal error" and out.retryable is False
    assert out.details == {"reason": "output too large", "size": out.details["size"], "limit": 1024}
    assert inp.code == "INVALID_INPUT" and inp.details is not None and inp.details["limit"] == 1024
    reply = encode_frame(call_error(R1, out), JSON_CODEC)
    assert b'"details":{"reason":"output too large","size":' in reply
