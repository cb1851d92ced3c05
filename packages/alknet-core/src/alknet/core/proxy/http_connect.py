"""Sans-IO HTTP CONNECT client handshake (transport-and-ssh.md §10).

Sends ``CONNECT host:port HTTP/1.1`` with ``Host:`` (and ``Proxy-Authorization: Basic`` when credentials are
given). A 2xx status succeeds and bytes after the header block belong to the tunnel; 504 maps to ``timed
out``; every other status, a malformed response or a header block over 64 KiB is ``proxy failure``.

``max_read()`` never asks for more bytes than could still belong to the header block, so a caller reading from
a raw socket leaves the tunnelled bytes in the socket.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import re

from alknet.core.proxy.url import FailureReason, ProxyConnected, ProxyRejected

__all__ = ["MAX_HEADER_BYTES", "HttpConnectHandshake", "connect_authority"]

MAX_HEADER_BYTES = 65536
_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?:[ \t][^\r\n]*)?\r?")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}")


def connect_authority(host: str, port: int) -> str:
    """The request target ``host:port`` (IPv6 in brackets, non-ASCII names IDNA-encoded).

    Raises ``ValueError`` for a port outside 0-65535 or a host that could inject into the request.
    """
    if not 0 <= port <= 65535:
        raise ValueError("port out of range")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip.compressed}]:{port}"
    if ip is not None:
        return f"{ip}:{port}"
    try:
        name = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("host name cannot be encoded") from None
    if _NAME_RE.fullmatch(name) is None:
        raise ValueError("host name contains characters not allowed in a CONNECT request")
    return f"{name}:{port}"


class _State(enum.Enum):
    HEADERS = enum.auto()
    DONE = enum.auto()


class HttpConnectHandshake:
    """One CONNECT exchange. Implements :class:`alknet.core.proxy.url.ProxyHandshake`."""

    def __init__(
        self, host: str, port: int, *, username: str | None = None, password: str | None = None
    ) -> None:
        authority = connect_authority(host, port)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            lines.append(f"Proxy-Authorization: Basic {token}")
        self._out = bytearray(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        self._buf = bytearray()
        self._scan_from = 0
        self._state = _State.HEADERS
        self._event: ProxyConnected | ProxyRejected | None = None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self._state is _State.DONE:
            if isinstance(self._event, ProxyConnected):
                self._event = ProxyConnected(None, None, self._event.extra + data)
            return
        if not data:
            self._fail("proxy closed the connection during the handshake")
            return
        self._buf += data
        self._advance()

    def next_event(self) -> ProxyConnected | ProxyRejected | None:
        return self._event

    def max_read(self) -> int:
        if self._state is _State.DONE:
            return 0
        # The shortest header terminator is "\n\n": after a CR or LF one more byte may end the block, else
        # two.
        return 1 if self._buf.endswith((b"\r", b"\n")) else 2

    def _fail(self, detail: str, reason: FailureReason = FailureReason.PROXY_FAILURE) -> None:
        self._state = _State.DONE
        self._event = ProxyRejected(reason, detail)

    def _advance(self) -> None:
        end, sep_len = self._find_end()
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                self._fail("http proxy response header too large")
            return
        if end > MAX_HEADER_BYTES:
            self._fail("http proxy response header too large")
            return
        head = bytes(self._buf[:end])
        extra = bytes(self._buf[end + sep_len :])
        self._buf.clear()
        status_line = head.split(b"\n", 1)[0]
        match = _STATUS_RE.fullmatch(status_line)
        if match is None:
            self._fail("not an HTTP proxy response")
            return
        status = int(match.group(1))
        if 200 <= status <= 299:
            self._state = _State.DONE
            self._event = ProxyConnected(None, None, extra)
        elif status == 504:
            self._fail("http status 504", FailureReason.TIMED_OUT)
        else:
            self._fail(f"http status {status}")

    def _find_end(self) -> tuple[int, int]:
        start = self._scan_from
        self._scan_from = max(0, len(self._buf) - 3)  # a terminator can only straddle the last 3 bytes
        crlf = self._buf.find(b"\r\n\r\n", start)
        lf = self._buf.find(b"\n\n", start)
        candidates = [(i, n) for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
        if not candidates:
            return -1, 0
        return min(candidates)
