"""Per-IP connection limit and per-connection auth attempt counting (``auth-and-config.md`` §8).

One ``ConnectionLimiter`` per server, shared by all listeners::

    key = key_for(info.remote_addr, peer_id=info.peer_id)   # or TransportInfo.rate_key()
    if not limiter.try_acquire(key):
        log connection_rejected(..., reason="too_many_connections"); close at once
    try:
        ...serve the connection...
    finally:
        limiter.release(key)

``try_acquire`` reads ``max_connections_per_ip`` from the current ``DynamicConfig`` at each call (0 =
unlimited), so a reload affects the next accept only; open connections are never closed. Connections are
counted even when the limit is 0, so lowering it later applies to what is already open. A ``None`` key (no
address and no endpoint id) is never limited.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from alknet.core.logfmt import normalize_ip

if TYPE_CHECKING:
    from alknet.core.config.atomic import AtomicRef
    from alknet.core.config.dynamic import DynamicConfig

__all__ = ["AuthAttemptCounter", "ConnectionLimiter", "key_for"]


def key_for(ip: object = None, *, peer_id: str | None = None) -> str | None:
    """The limiter key for a peer.

    - iroh (``peer_id`` given): ``"iroh:<endpoint id>"`` (lowercase); the path's IP says nothing about
      the peer.
    - otherwise the IP (a string, ``ipaddress`` object or ``(host, port)`` tuple) with IPv4-mapped IPv6
      reduced to IPv4 and IPv6 compressed, so each IPv6 address is counted on its own.
    - neither: ``None`` (not limited per IP).

    Raises ``ValueError`` for an address that is not an IP (a caller bug, not a reason to skip the limit).
    """
    if peer_id:
        return f"iroh:{peer_id.lower()}"
    if ip is None or ip == ():
        return None
    normalised = normalize_ip(ip)
    if normalised is None:
        raise ValueError(f"not an IP address: {ip!r}")
    return normalised


class ConnectionLimiter:
    """Counts open connections per key and refuses a new one beyond ``max_connections_per_ip``."""

    __slots__ = ("_counts", "_dynamic", "_lock")

    def __init__(self, dynamic: AtomicRef[DynamicConfig]) -> None:
        self._dynamic = dynamic
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()  # accept paths may run on more than one thread (iroh, quic)

    def try_acquire(self, key: str | None) -> bool:
        """Count one more connection for ``key``; ``False`` (and nothing counted) when over the limit."""
        if key is None:
            return True
        limit = self._dynamic.load().rate_limits.max_connections_per_ip
        with self._lock:
            current = self._counts.get(key, 0)
            if limit and current >= limit:
                return False
            self._counts[key] = current + 1
            return True

    def release(self, key: str | None) -> None:
        """One connection of ``key`` ended; the entry is deleted when it reaches zero. Never raises."""
        if key is None:
            return
        with self._lock:
            current = self._counts.get(key, 0)
            if current <= 1:
                self._counts.pop(key, None)
            else:
                self._counts[key] = current - 1

    def count(self, key: str | None) -> int:
        """Open connections currently counted for ``key``."""
        if key is None:
            return 0
        with self._lock:
            return self._counts.get(key, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy of the non-zero counters."""
        with self._lock:
            return dict(self._counts)

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def __repr__(self) -> str:
        with self._lock:
            return f"ConnectionLimiter(keys={len(self._counts)}, connections={sum(self._counts.values())})"


class AuthAttemptCounter:
    """Failed auth attempts of one connection against ``max_auth_attempts`` (0 = unlimited).

    Create it at ``begin_auth`` (``AuthAttemptCounter.from_config(dynamic)``), so a later reload does not
    change the limit of auth already in progress. ``record_failure()`` returns ``True`` when the limit is
    reached: the caller logs the reject line, then ``connection rejected ... reason=too_many_auth_attempts``,
    and disconnects.
    """

    __slots__ = ("failures", "limit")

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError("max_auth_attempts must be an integer >= 0")
        self.limit = limit
        self.failures = 0

    @classmethod
    def from_config(cls, dynamic: AtomicRef[DynamicConfig]) -> AuthAttemptCounter:
        return cls(dynamic.load().rate_limits.max_auth_attempts)

    @property
    def exhausted(self) -> bool:
        return self.limit > 0 and self.failures >= self.limit

    def record_failure(self) -> bool:
        """Count one failed attempt; ``True`` when this one reaches the limit (or it was already reached)."""
        self.failures += 1
        return self.exhausted

    def __repr__(self) -> str:
        return f"AuthAttemptCounter(failures={self.failures}, limit={self.limit})"
