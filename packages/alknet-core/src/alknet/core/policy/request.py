"""Channel requests and bind addresses: ``Request``, ``request_from_text`` and ``bind_from_text``.

Pure. Re-exported by ``alknet.core.policy.grammar``.

Light module: standard library plus ``alknet.core.policy.canon``.
"""

from __future__ import annotations

from dataclasses import dataclass

from alknet.core.policy.canon import Canonical, Invalid, canonicalise_host, canonicalise_unix_path
from alknet.core.policy.target import PORT_RE

__all__ = ["Request", "bind_from_text", "request_from_text"]


@dataclass(frozen=True, slots=True)
class Request:
    """One channel open as received: ``direct-tcpip`` host and port, or ``unix:<path>`` with ``port=None``."""

    host: str
    port: int | None

    @property
    def is_unix(self) -> bool:
        return self.port is None and self.host.startswith("unix:")

    def canonical(self) -> Canonical | Invalid:
        """Step 2 of §7.3: the canonical destination (``ip``/``name``/``reserved``/``unix``) or
        ``Invalid``."""
        if not isinstance(self.host, str):
            return Invalid("host must be a string")
        if self.port is None:
            if not self.host.startswith("unix:"):
                return Invalid("missing port")
            return canonicalise_unix_path(self.host[len("unix:") :])
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            return Invalid("port out of range")
        return canonicalise_host(self.host)


def request_from_text(text: str) -> Request:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH`` (as typed on the command line or in a policy test) ->
    ``Request``; ``ValueError`` if the shape is wrong (the host itself is canonicalised later, by the check).
    """
    if not isinstance(text, str) or not text:
        raise ValueError("empty target")
    if text.startswith("unix:"):
        return Request(text, None)
    host, port = _split_host_port(text)
    return Request(host, port)


def bind_from_text(text: str) -> tuple[str, int]:
    """A bind address ``HOST:PORT`` / ``[V6]:PORT`` / ``:PORT`` / ``*:PORT`` -> ``(host, port)``."""
    if not isinstance(text, str) or not text:
        raise ValueError("empty bind address")
    return _split_host_port(text)


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected '[V6]:PORT'")
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("an IPv6 address with a port needs brackets: '[V6]:PORT'")
    if PORT_RE.fullmatch(port_text) is None or int(port_text) > 65535:
        raise ValueError("port must be a number 0..65535 without leading zeros")
    return host, int(port_text)
