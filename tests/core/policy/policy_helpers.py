"""Shared identities, rule sets and a recording fake resolver for the forwarding-policy tests."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

from alknet.core.auth.identity import Identity
from alknet.core.policy.canon import IPAddress
from alknet.core.policy.forwarding import ForwardingPolicy

FP_A = "SHA256:" + "A" * 43
FP_B = "SHA256:" + "B" * 43
FP_C = "SHA256:" + "C" * 43

A = Identity(FP_A, ("relay:connect",))
B = Identity(FP_B, ("relay:connect", "role:db"))
C = Identity(FP_C, ("ops",))
IDENTITIES = {"A": A, "B": B, "C": C}

# auth-and-config.md §7.9 rule sets, written in the TOML shape of [forwarding].
P1_TOML: dict[str, object] = {
    "default": "deny",
    "rules": [
        {"target": "alknet-*", "action": "allow"},
        {"target": "db.internal:5432", "action": "allow", "principals": ["role:db"]},
        {"target": "*.svc.local:80-443", "action": "allow"},
        {"target": "10.0.0.0/8:22", "action": "allow", "principals": ["ops"], "transports": ["tls", "iroh"]},
        {"target": "[fd00::/8]:22", "action": "allow", "principals": ["ops"]},
    ],
}
P2_TOML: dict[str, object] = {
    "default": "allow",
    "rules": [
        {"target": "localhost", "action": "deny"},
        {"target": "127.0.0.0/8", "action": "deny"},
        {"target": "::1/128", "action": "deny"},
        {"target": "169.254.0.0/16", "action": "deny"},
        {"target": "10.0.0.0/8", "action": "deny"},
        {"target": "alknet-control:1", "action": "deny"},
    ],
}
P3_TOML: dict[str, object] = {
    "default": "allow",
    "rules": [
        {"target": "unix:/run/app/*.sock", "action": "allow", "principals": [FP_A]},
        {"target": "alknet-*", "action": "allow", "transports": ["quic"]},
        {"target": "*", "action": "deny", "transports": ["quic"]},
    ],
}

P1 = ForwardingPolicy.from_mapping(P1_TOML)
P2 = ForwardingPolicy.from_mapping(P2_TOML)
P3 = ForwardingPolicy.from_mapping(P3_TOML)
BUILTIN = ForwardingPolicy()
POLICIES = {"P1": P1, "P2": P2, "P3": P3, "builtin": BUILTIN}


class FakeResolver:
    """An async resolver with a fixed answer that records every name it is asked for."""

    def __init__(self, answer: Sequence[str] = ()) -> None:
        self.answer: tuple[IPAddress, ...] = tuple(ip_address(a) for a in answer)
        self.calls: list[str] = []

    async def __call__(self, name: str) -> Sequence[IPAddress]:
        self.calls.append(name)
        return self.answer


class SyncResolver(FakeResolver):
    """The same, answering synchronously."""

    def __call__(self, name: str) -> Sequence[IPAddress]:  # type: ignore[override]
        self.calls.append(name)
        return self.answer
