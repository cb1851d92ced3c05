"""Sans-IO TLS ClientHello parser: SNI and ALPN from the first TLS record (auth-and-config.md §10).

The listener peeks (``MSG_PEEK``) at the socket until :func:`record_bytes_needed` says the first record is
complete (at most 16,389 bytes), then calls :func:`parse_client_hello`. Anything malformed, truncated or not
TLS gives ``None``: the *normal path* (the default certificate; the handshake itself then decides).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_RECORD", "ClientHelloInfo", "parse_client_hello", "record_bytes_needed"]

_HEADER = 5
_MAX_PAYLOAD = 16384
#: The largest first record the listener waits for: 5 header bytes + 2^14 payload bytes.
MAX_RECORD = _HEADER + _MAX_PAYLOAD

_CONTENT_HANDSHAKE = 0x16
_HS_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    server_name: str | None
    alpn: tuple[str, ...]


def record_bytes_needed(data: bytes) -> int:
    """How many more bytes the first TLS record needs; 0 when complete *or* when ``data`` cannot be TLS."""
    if not data:
        return 1
    if data[0] != _CONTENT_HANDSHAKE:
        return 0
    if len(data) >= 2 and data[1] != 0x03:
        return 0
    if len(data) < _HEADER:
        return _HEADER - len(data)
    length = int.from_bytes(data[3:5], "big")
    if length == 0 or length > _MAX_PAYLOAD:
        return 0
    return max(0, _HEADER + length - len(data))


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def vector(self, length_bytes: int) -> _Reader:
        n = int.from_bytes(self.take(length_bytes), "big")
        return _Reader(self.take(n))

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


def _valid_host_name(raw: bytes) -> str | None:
    if not raw or len(raw) > 253:
        return None
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
    if not set(name) <= allowed:
        return None
    return name.lower().rstrip(".") or None


def _server_name(ext: _Reader) -> str | None:
    names = ext.vector(2)
    if not ext.done:
        raise ValueError("trailing bytes in server_name")
    found: str | None = None
    while not names.done:
        name_type = names.u8()
        value = names.vector(2).data
        if name_type == 0 and found is None:
            found = _valid_host_name(value)
    return found


def _alpn(ext: _Reader) -> tuple[str, ...]:
    protocols = ext.vector(2)
    if not ext.done:
        raise ValueError("trailing bytes in ALPN")
    out: list[str] = []
    while not protocols.done:
        raw = protocols.vector(1).data
        if not raw:
            raise ValueError("empty ALPN protocol")
        out.append(raw.decode("latin-1"))
    return tuple(out)


def parse_client_hello(data: bytes) -> ClientHelloInfo | None:
    """SNI and ALPN from a complete first TLS record, or ``None`` (normal path) for anything else."""
    try:
        return _parse(data)
    except (ValueError, IndexError):
        return None


def _parse(data: bytes) -> ClientHelloInfo | None:
    if record_bytes_needed(data) != 0 or len(data) < _HEADER or data[0] != _CONTENT_HANDSHAKE:
        return None
    record = _Reader(data)
    record.take(3)
    payload = record.vector(2)
    if payload.u8() != _HS_CLIENT_HELLO:
        return None
    length = payload.u24()
    body = _Reader(payload.take(length))  # a ClientHello split over several records is "normal path"
    body.take(2)  # legacy_version
    body.take(32)  # random
    body.vector(1)  # legacy_session_id
    suites = body.vector(2)
    if suites.done or len(suites.data) % 2:
        return None
    if body.vector(1).done:  # legacy_compression_methods, at least one
        return None
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if body.done:
        return ClientHelloInfo(None, ())
    extensions = body.vector(2)
    if not body.done:
        return None
    seen: set[int] = set()
    while not extensions.done:
        ext_type = extensions.u16()
        ext = extensions.vector(2)
        if ext_type in seen:
            return None
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            server_name = _server_name(ext)
        elif ext_type == _EXT_ALPN:
            alpn = _alpn(ext)
    return ClientHelloInfo(server_name, alpn)
