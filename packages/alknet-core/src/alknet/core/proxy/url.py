"""Proxy URLs and the types shared by the outbound proxy clients.

``parse_proxy_url`` accepts exactly ``socks5://``, ``socks5h://`` (same meaning: the proxy resolves names) and
``http://`` (HTTP CONNECT), each with an optional ``user:pass@`` and a mandatory port; IPv6 hosts go in
brackets. Every error is one line naming what is wrong and never contains the credentials. Ambient variables
(``HTTP_PROXY``, ``ALL_PROXY``, ...) are never read: a proxy is used only when given explicitly.

The sans-IO handshakes in :mod:`alknet.core.proxy.socks5` and :mod:`alknet.core.proxy.http_connect` share the
``ProxyHandshake`` protocol and the two events defined here. Failures carry a ``FailureReason`` whose values
are the fixed channel-open failure descriptions of transport-and-ssh.md §8/§10.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol
from urllib.parse import unquote

from alknet.core.errors import ConfigError

__all__ = [
    "FailureReason",
    "ProxyConnected",
    "ProxyError",
    "ProxyEvent",
    "ProxyHandshake",
    "ProxyKind",
    "ProxyRejected",
    "ProxyURL",
    "ProxyURLError",
    "format_host_port",
    "parse_proxy_url",
]


class FailureReason(StrEnum):
    """Channel-open failure descriptions (exact texts) an outbound connection can end with."""

    CONNECTION_REFUSED = "connection refused"
    HOST_UNREACHABLE = "host unreachable"
    NETWORK_UNREACHABLE = "network unreachable"
    NAME_RESOLUTION_FAILED = "name resolution failed"
    TIMED_OUT = "timed out"
    PROXY_FAILURE = "proxy failure"


class ProxyError(ConnectionError):
    """An outbound connection through a proxy failed; ``str()`` is the fixed ``reason`` text.

    ``detail`` says what happened (``socks5 reply 0x05``, ``http status 403``) for debugging; like the reason
    it never contains the destination or the credentials.
    """

    reason: FailureReason
    detail: str

    def __init__(self, reason: FailureReason, detail: str = "") -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return self.reason.value


class ProxyURLError(ConfigError):
    """A malformed or unsupported proxy URL (a configuration error: exit 2 at start)."""


class ProxyKind(StrEnum):
    SOCKS5 = "socks5"
    HTTP = "http"


_SCHEMES = {"socks5": ProxyKind.SOCKS5, "socks5h": ProxyKind.SOCKS5, "http": ProxyKind.HTTP}
_NAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def format_host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed proxy URL. ``repr`` and ``describe()`` never show the credentials."""

    kind: ProxyKind
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    def describe(self) -> str:
        """``socks5://127.0.0.1:9050`` (credentials replaced by ``***@`` when present)."""
        auth = "***@" if self.has_credentials else ""
        return f"{self.kind.value}://{auth}{format_host_port(self.host, self.port)}"

    def __str__(self) -> str:
        return self.describe()


def _parse_host(text: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise ProxyURLError("invalid proxy URL: unbalanced '[' in the host")
        inner = text[1:-1]
        try:
            addr = ipaddress.IPv6Address(inner)
        except ValueError:
            raise ProxyURLError("invalid proxy URL: the bracketed host is not an IPv6 address") from None
        if addr.scope_id:
            raise ProxyURLError("invalid proxy URL: IPv6 zone ids are not supported")
        return str(addr)
    if not text:
        raise ProxyURLError("invalid proxy URL: missing host")
    if ":" in text or "]" in text:
        raise ProxyURLError("invalid proxy URL: an IPv6 host must be written in brackets")
    if _NAME_RE.fullmatch(text) is None:
        raise ProxyURLError("invalid proxy URL: the host is not a valid name or address")
    return text.lower()


def parse_proxy_url(text: str) -> ProxyURL:
    """Parse ``socks5://[user:pass@]host:port``, ``socks5h://...`` or ``http://...``.

    Raises ``ProxyURLError`` (a ``ConfigError``) with a one-line message; the message names the scheme when it
    is the problem and never includes the user name or password.
    """
    if not isinstance(text, str):
        raise ProxyURLError("invalid proxy URL: not a string")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise ProxyURLError("invalid proxy URL: whitespace or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ProxyURLError(
            "invalid proxy URL: expected socks5://HOST:PORT, socks5h://HOST:PORT or http://HOST:PORT"
        )
    kind = _SCHEMES.get(scheme.lower())
    if kind is None:
        shown = (
            scheme
            if len(scheme) <= 32 and scheme.isascii()
            else scheme[:32].encode("ascii", "replace").decode()
        )
        raise ProxyURLError(f"unsupported proxy scheme '{shown}' (use socks5://, socks5h:// or http://)")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if tail not in ("", "/"):
        raise ProxyURLError("invalid proxy URL: a path, query or fragment is not allowed")
    userinfo, at, hostport = authority.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_raw, colon, pass_raw = userinfo.partition(":")
        try:
            username = unquote(user_raw, errors="strict")
            password = unquote(pass_raw, errors="strict") if colon else ""
        except UnicodeDecodeError:
            raise ProxyURLError(
                "invalid proxy URL: the credentials are not valid percent-encoded UTF-8"
            ) from None
        if not username:
            raise ProxyURLError("invalid proxy URL: empty user name before '@'")
        if kind is ProxyKind.SOCKS5 and (
            len(username.encode()) > 255 or len(password.encode()) > 255 or not password
        ):
            raise ProxyURLError("invalid proxy URL: SOCKS5 user name and password must be 1-255 bytes each")
    port_text = ""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ProxyURLError("invalid proxy URL: unbalanced '[' in the host")
        host_text, after = hostport[: end + 1], hostport[end + 1 :]
        if after and not after.startswith(":"):
            raise ProxyURLError("invalid proxy URL: unexpected text after the IPv6 host")
        has_port, port_text = bool(after), after[1:]
    else:
        host_text, colon, port_text = hostport.rpartition(":")
        has_port = bool(colon)
        if not has_port:
            host_text = hostport
    host = _parse_host(host_text)
    if not has_port or not port_text:
        raise ProxyURLError(f"invalid proxy URL: missing port (expected {kind.value}://HOST:PORT)")
    if _PORT_RE.fullmatch(port_text) is None or not 1 <= int(port_text) <= 65535:
        shown_port = port_text if len(port_text) <= 12 else port_text[:12] + "..."
        raise ProxyURLError(f"invalid proxy port '{shown_port}' (expected 1-65535)")
    return ProxyURL(kind, host, int(port_text), username, password)


@dataclass(frozen=True, slots=True)
class ProxyConnected:
    """The proxy connected to the target; ``extra`` = bytes received after the handshake (tunnel data)."""

    bound_host: str | None = None
    bound_port: int | None = None
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class ProxyRejected:
    """The handshake failed: the proxy refused, or spoke something that is not the expected protocol."""

    reason: FailureReason
    detail: str


ProxyEvent = ProxyConnected | ProxyRejected


class ProxyHandshake(Protocol):
    """A sans-IO client handshake: write ``data_to_send()``, feed what arrives, until ``next_event()`` is not
    None."""

    def data_to_send(self) -> bytes: ...

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> ProxyConnected | ProxyRejected | None: ...

    def max_read(self) -> int:
        """How many bytes may be read now without reading past the end of the handshake (0 = do not read)."""
        ...
