"""``DynamicConfig``: the hot-swapped part of the configuration (auth, forwarding policy, rate limits)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alknet.core.auth.policy import AuthPolicy
from alknet.core.policy.forwarding import ForwardingPolicy

__all__ = ["DynamicConfig", "RateLimits"]


@dataclass(frozen=True, slots=True)
class RateLimits:
    max_connections_per_ip: int = 0  # 0 = unlimited
    max_auth_attempts: int = 10  # 0 = unlimited

    def __post_init__(self) -> None:
        for name in ("max_connections_per_ip", "max_auth_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"rate_limits.{name} must be an integer >= 0")


@dataclass(frozen=True, slots=True)
class DynamicConfig:
    auth: AuthPolicy = field(default_factory=AuthPolicy)
    forwarding: ForwardingPolicy = field(default_factory=ForwardingPolicy)
    rate_limits: RateLimits = field(default_factory=RateLimits)
