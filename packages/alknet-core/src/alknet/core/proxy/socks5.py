"""Sans-IO SOCKS5 client handshake (RFC 1928 CONNECT, RFC 1929 username/password).

Names are sent with ATYP 0x03 so the proxy resolves them; IP literals use ATYP 0x01 or 0x04. Reply codes map
to the fixed failure texts of transport-and-ssh.md §10: 0x03 network unreachable, 0x04 host unreachable, 0x05
connection refused, 0x06 timed out, anything else (and any protocol violation) ``proxy failure``.

Usage::

    hs = Socks5ClientHandshake("db.internal", 5432)
    send(hs.data_to_send())
    while (event := hs.next_event()) is None:
        hs.receive_data(recv(hs.max_read()))
        send(hs.data_to_send())
"""

from __future__ import annotations

import enum
import ipaddress
import struct

from alknet.core.proxy.url import FailureReason, ProxyConnected, ProxyRejected

__all__ = ["SOCKS5_REPLY_REASONS", "Socks5ClientHandshake", "encode_socks5_address"]

SOCKS5_REPLY_REASONS: dict[int, FailureReason] = {
    0x03: FailureReason.NETWORK_UNREACHABLE,
    0x04: FailureReason.HOST_UNREACHABLE,
    0x05: FailureReason.CONNECTION_REFUSED,
    0x06: FailureReason.TIMED_OUT,
}

_NO_AUTH = 0x00
_USER_PASS = 0x02
_NO_ACCEPTABLE = 0xFF


def encode_socks5_address(host: str, port: int) -> bytes:
    """ATYP + DST.ADDR + DST.PORT for ``host`` (an IP literal, optionally bracketed, or a name sent
    unresolved).

    Raises ``ValueError`` for a port outside 0-65535 or a name that is empty, longer than 255 bytes, not
    encodable or contains control characters.
    """
    if not 0 <= port <= 65535:
        raise ValueError("port out of range")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\x01" + ip.packed + struct.pack("!H", port)
    if isinstance(ip, ipaddress.IPv6Address):
        return b"\x04" + ip.packed + struct.pack("!H", port)
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in host):
        raise ValueError("host name contains whitespace or control characters")
    try:
        name = host.encode("ascii") if host.isascii() else host.encode("idna")
    except UnicodeError:
        raise ValueError("host name cannot be encoded") from None
    if not 1 <= len(name) <= 255:
        raise ValueError("host name must be 1-255 bytes")
    return b"\x03" + bytes([len(name)]) + name + struct.pack("!H", port)


class _State(enum.Enum):
    METHOD = enum.auto()
    AUTH = enum.auto()
    REPLY = enum.auto()
    DONE = enum.auto()


class Socks5ClientHandshake:
    """One CONNECT handshake. Implements :class:`alknet.core.proxy.url.ProxyHandshake`.

    With credentials the greeting offers NO-AUTH and username/password; without, NO-AUTH only. The request is
    built at construction, so a bad host raises ``ValueError`` before any byte is sent.
    """

    def __init__(
        self, host: str, port: int, *, username: str | None = None, password: str | None = None
    ) -> None:
        self._request = b"\x05\x01\x00" + encode_socks5_address(host, port)
        self._auth: bytes | None = None
        if username is not None:
            user, pw = username.encode(), (password or "").encode()
            if not (1 <= len(user) <= 255 and 1 <= len(pw) <= 255):
                raise ValueError("SOCKS5 user name and password must be 1-255 bytes each")
            self._auth = bytes([1, len(user)]) + user + bytes([len(pw)]) + pw
        methods = bytes([_NO_AUTH, _USER_PASS]) if self._auth is not None else bytes([_NO_AUTH])
        self._out = bytearray(b"\x05" + bytes([len(methods)]) + methods)
        self._buf = bytearray()
        self._state = _State.METHOD
        self._event: ProxyConnected | ProxyRejected | None = None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self._state is _State.DONE:
            if self._event is not None and isinstance(self._event, ProxyConnected):
                self._event = ProxyConnected(
                    self._event.bound_host, self._event.bound_port, self._event.extra + data
                )
            return
        if not data:
            self._fail("proxy closed the connection during the handshake")
            return
        self._buf += data
        self._advance()

    def next_event(self) -> ProxyConnected | ProxyRejected | None:
        return self._event

    def max_read(self) -> int:
        if self._state in (_State.METHOD, _State.AUTH):
            return max(1, 2 - len(self._buf))
        if self._state is _State.REPLY:
            total = self._reply_length()
            return max(1, (total if total is not None else 5) - len(self._buf))
        return 0

    # internals

    def _fail(self, detail: str, reason: FailureReason = FailureReason.PROXY_FAILURE) -> None:
        self._state = _State.DONE
        self._event = ProxyRejected(reason, detail)
        self._out.clear()

    def _reply_length(self) -> int | None:
        if len(self._buf) < 5:
            return None
        atyp = self._buf[3]
        if atyp == 0x01:
            return 10
        if atyp == 0x04:
            return 22
        if atyp == 0x03:
            return 4 + 1 + self._buf[4] + 2
        return -1

    def _advance(self) -> None:
        while self._state is not _State.DONE:
            if self._state is _State.METHOD:
                if len(self._buf) < 2:
                    return
                ver, method = self._buf[0], self._buf[1]
                del self._buf[:2]
                if ver != 5:
                    self._fail("not a SOCKS5 proxy")
                elif method == _NO_AUTH:
                    self._out += self._request
                    self._state = _State.REPLY
                elif method == _USER_PASS and self._auth is not None:
                    self._out += self._auth
                    self._state = _State.AUTH
                elif method == _NO_ACCEPTABLE:
                    self._fail("socks5 proxy accepted no offered authentication method")
                else:
                    self._fail(f"socks5 proxy chose a method that was not offered (0x{method:02x})")
            elif self._state is _State.AUTH:
                if len(self._buf) < 2:
                    return
                status = self._buf[1]
                del self._buf[:2]
                if status != 0:
                    self._fail("socks5 proxy rejected the credentials")
                else:
                    self._out += self._request
                    self._state = _State.REPLY
            else:
                self._advance_reply()
                return

    def _advance_reply(self) -> None:
        if len(self._buf) >= 1 and self._buf[0] != 5:
            self._fail("socks5 reply with a bad version")
            return
        if len(self._buf) >= 2 and self._buf[1] != 0:
            rep = self._buf[1]
            self._fail(
                f"socks5 reply 0x{rep:02x}", SOCKS5_REPLY_REASONS.get(rep, FailureReason.PROXY_FAILURE)
            )
            return
        total = self._reply_length()
        if total is None:
            return
        if total < 0:
            self._fail("socks5 reply with an unknown address type")
            return
        if total > len(self._buf):
            return
        atyp = self._buf[3]
        raw_addr = bytes(self._buf[4 : total - 2])
        port = struct.unpack("!H", self._buf[total - 2 : total])[0]
        if atyp == 0x01:
            bound: str = str(ipaddress.IPv4Address(raw_addr))
        elif atyp == 0x04:
            bound = str(ipaddress.IPv6Address(raw_addr))
        else:
            bound = raw_addr[1:].decode("ascii", "replace")
        extra = bytes(self._buf[total:])
        self._buf.clear()
        self._state = _State.DONE
        self._event = ProxyConnected(bound, port, extra)
