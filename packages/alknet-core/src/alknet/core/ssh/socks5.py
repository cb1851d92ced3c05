"""The client's SOCKS5 server (RFC 1928, transport-and-ssh.md §13).

Two layers, in the h11 manner:

- ``Socks5ServerConnection``: sans-IO. Feed bytes with ``receive_data``; ``next_event()`` returns
  ``ConnectRequest`` (answer with ``send_reply(code)``), ``CloseConnection`` (write ``data_to_send()``, which
  may be empty, then close) or ``None`` (more bytes needed). It never raises on any input.
- ``Socks5Server``: the asyncio listener. Each client gets 10 s for greeting and request, then one channel
  from the injected ``open_channel(host, port)``; the channel-open failure picks the reply code
  (``reply_for_failure``), and on success bytes are piped both ways with backpressure. Domains go to
  ``open_channel`` unresolved. Nothing about a client connection is logged, so destinations never reach a log.

Only method NO-AUTH (0x00); a greeting without it gets ``05 FF``. A version byte other than 5 (SOCKS4
included) closes without a reply. Only CONNECT; BIND, UDP ASSOCIATE and unknown commands get 0x07; an unknown
ATYP gets 0x08.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import struct
import sys
from dataclasses import dataclass, field

from alknet.core.ssh.forwards import (
    DEFAULT_BIND_HOST,
    ChannelOpenFailure,
    OpenChannel,
    StreamListener,
    pipe,
)

__all__ = [
    "DEFAULT_SOCKS5_PORT",
    "HANDSHAKE_TIMEOUT",
    "CloseConnection",
    "ConnectRequest",
    "Socks5Reply",
    "Socks5Server",
    "Socks5ServerConnection",
    "reply_for_failure",
    "socks5_reply_bytes",
]

DEFAULT_SOCKS5_PORT = 1080
HANDSHAKE_TIMEOUT = 10.0
_READ_CHUNK = 4096


class Socks5Reply(enum.IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


_REASON_REPLIES = {
    "connection refused": Socks5Reply.CONNECTION_REFUSED,
    "host unreachable": Socks5Reply.HOST_UNREACHABLE,
    "name resolution failed": Socks5Reply.HOST_UNREACHABLE,
    "timed out": Socks5Reply.HOST_UNREACHABLE,
    "network unreachable": Socks5Reply.NETWORK_UNREACHABLE,
}


def _failure_fields(exc: BaseException) -> tuple[int, str] | None:
    if isinstance(exc, ChannelOpenFailure):
        return exc.code, exc.reason
    # asyncssh's ChannelOpenError carries the same fields; checked only when asyncssh is already loaded.
    asyncssh = sys.modules.get("asyncssh")
    error_type = getattr(asyncssh, "ChannelOpenError", None) if asyncssh is not None else None
    if isinstance(error_type, type) and isinstance(exc, error_type):
        code, reason = getattr(exc, "code", None), getattr(exc, "reason", None)
        if isinstance(code, int) and isinstance(reason, str):
            return code, reason
    return None


def reply_for_failure(exc: BaseException | None) -> Socks5Reply:
    """The SOCKS5 REP for a failed channel open (transport-and-ssh.md §13 table).

    reason 1 -> 0x02; reason 2 ``connection refused`` -> 0x05; ``host unreachable``, ``name resolution
    failed``, ``timed out`` -> 0x04; ``network unreachable`` -> 0x03; ``proxy failure``, reason 4, other
    texts, ``NotConnected`` and any other exception (or ``None``) -> 0x01.
    """
    fields = _failure_fields(exc) if exc is not None else None
    if fields is None:
        return Socks5Reply.GENERAL_FAILURE
    code, reason = fields
    if code == ChannelOpenFailure.ADMINISTRATIVELY_PROHIBITED:
        return Socks5Reply.NOT_ALLOWED
    if code == ChannelOpenFailure.CONNECT_FAILED:
        # OpenSSH capitalises its texts ("Connection refused"); match them case-insensitively
        return _REASON_REPLIES.get(reason.strip().lower(), Socks5Reply.GENERAL_FAILURE)
    return Socks5Reply.GENERAL_FAILURE


def socks5_reply_bytes(code: int) -> bytes:
    """``05 <code> 00 01 00000000 0000`` (BND.ADDR 0.0.0.0:0 for success and failure alike)."""
    return bytes([5, code & 0xFF, 0, 1, 0, 0, 0, 0, 0, 0])


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """CONNECT to ``host`` (IPv4/IPv6 text or the domain exactly as sent) and ``port``; hidden from
    ``repr``."""

    host: str = field(repr=False)
    port: int = field(repr=False)
    address_type: int = 0x03


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Send ``data_to_send()`` (a refusal reply, or nothing) and close. ``why`` never names a destination."""

    why: str


Socks5Event = ConnectRequest | CloseConnection


class _State(enum.Enum):
    GREETING = enum.auto()
    REQUEST = enum.auto()
    AWAIT_REPLY = enum.auto()
    ESTABLISHED = enum.auto()
    CLOSED = enum.auto()


class Socks5ServerConnection:
    """Sans-IO server side of one SOCKS5 handshake."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._out = bytearray()
        self._state = _State.GREETING
        self._eof = False
        self._trailing = b""

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def trailing_data(self) -> bytes:
        """Bytes the client sent after its request (forward them once the channel is open)."""
        return self._trailing

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means EOF."""
        if self._state in (_State.CLOSED, _State.ESTABLISHED):
            return
        if not data:
            self._eof = True
        elif self._state is _State.AWAIT_REPLY:
            self._trailing += data
        else:
            self._buf += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Socks5Event | None:
        """The next event, or ``None`` when more bytes are needed."""
        if self._state is _State.GREETING:
            event = self._parse_greeting()
            if event is not None or self._state is _State.GREETING:
                return self._or_truncated(event)
        if self._state is _State.REQUEST:
            return self._or_truncated(self._parse_request())
        return None

    def send_reply(self, code: int) -> bytes:
        """The reply bytes for a ``ConnectRequest``: 0x00 establishes, any other code closes."""
        if self._state is not _State.AWAIT_REPLY:
            raise RuntimeError("send_reply() is only valid after a ConnectRequest")
        self._state = _State.ESTABLISHED if code == Socks5Reply.SUCCEEDED else _State.CLOSED
        return socks5_reply_bytes(code)

    # internals

    def _or_truncated(self, event: Socks5Event | None) -> Socks5Event | None:
        if event is None and self._eof:
            return self._close("truncated handshake")
        return event

    def _close(self, why: str, reply: bytes = b"") -> CloseConnection:
        self._state = _State.CLOSED
        self._out += reply
        self._buf.clear()
        return CloseConnection(why)

    def _parse_greeting(self) -> Socks5Event | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != 5:
            return self._close("not SOCKS5")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return None
        methods = bytes(buf[2 : 2 + buf[1]])
        del buf[: 2 + len(methods)]
        if 0x00 not in methods:
            return self._close("no acceptable authentication method", b"\x05\xff")
        self._out += b"\x05\x00"
        self._state = _State.REQUEST
        return None

    def _refuse(self, why: str, code: Socks5Reply) -> CloseConnection:
        return self._close(why, socks5_reply_bytes(code))

    def _parse_request(self) -> Socks5Event | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != 5:
            return self._close("not SOCKS5")
        if len(buf) < 2:
            return None
        if buf[1] != 0x01:
            return self._refuse("command not supported", Socks5Reply.COMMAND_NOT_SUPPORTED)
        if len(buf) < 4:
            return None
        atyp = buf[3]
        if atyp == 0x01:
            end = 4 + 4
        elif atyp == 0x04:
            end = 4 + 16
        elif atyp == 0x03:
            if len(buf) < 5:
                return None
            end = 5 + buf[4]
        else:
            return self._refuse("address type not supported", Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        if len(buf) < end + 2:
            return None
        raw = bytes(buf[4:end])
        port = struct.unpack("!H", buf[end : end + 2])[0]
        self._trailing = bytes(buf[end + 2 :])
        buf.clear()
        if atyp == 0x01:
            host = str(ipaddress.IPv4Address(raw))
        elif atyp == 0x04:
            host = ipaddress.IPv6Address(raw).compressed
        else:
            try:
                host = raw[1:].decode("utf-8")
            except UnicodeDecodeError:
                host = ""
            if not host:  # an empty or undecodable name is reported like one that does not resolve
                return self._refuse("invalid domain name", Socks5Reply.HOST_UNREACHABLE)
        self._state = _State.AWAIT_REPLY
        return ConnectRequest(host, port, atyp)


class Socks5Server(StreamListener):
    """SOCKS5 listener (default ``127.0.0.1:1080``) opening one channel per CONNECT through ``open_channel``.

    ``open_channel(host, port)`` returns ``(reader, writer)`` or raises ``ChannelOpenFailure`` (or asyncssh's
    ``ChannelOpenError``); ``NotConnected`` or any other exception gives reply 0x01 at once. The listener
    stays bound across SSH outages. ``start()`` logs ``msg="socks5 listening" addr=...`` and raises
    ``ListenError``.
    """

    def __init__(
        self,
        open_channel: OpenChannel,
        host: str = DEFAULT_BIND_HOST,
        port: int = DEFAULT_SOCKS5_PORT,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(host, port, self._serve, label="socks5")
        self._open_channel = open_channel
        self.handshake_timeout = handshake_timeout

    async def _handshake(
        self, conn: Socks5ServerConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> ConnectRequest | None:
        while True:
            event = conn.next_event()
            out = conn.data_to_send()
            if out:
                writer.write(out)
                if event is None:
                    await writer.drain()
            if isinstance(event, ConnectRequest):
                return event
            if isinstance(event, CloseConnection):
                return None
            conn.receive_data(await reader.read(_READ_CHUNK))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Socks5ServerConnection()
        try:
            async with asyncio.timeout(self.handshake_timeout):
                request = await self._handshake(conn, reader, writer)
        except (TimeoutError, OSError):
            return
        if request is None:
            return  # the refusal (if any) is buffered in the writer; the listener closes it
        try:
            chan_reader, chan_writer = await self._open_channel(request.host, request.port)
        except Exception as exc:
            writer.write(conn.send_reply(reply_for_failure(exc)))
            return
        try:
            writer.write(conn.send_reply(Socks5Reply.SUCCEEDED))
            if conn.trailing_data:
                chan_writer.write(conn.trailing_data)
        except Exception:
            chan_writer.close()
            return
        await pipe(reader, writer, chan_reader, chan_writer)
