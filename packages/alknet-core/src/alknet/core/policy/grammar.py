"""Forwarding-policy value types (auth-and-config.md §7.1): rules, decisions, policy tests and reasons.

Everything here is pure. The rule target grammar lives in ``alknet.core.policy.target``, channel requests
and bind addresses in ``alknet.core.policy.request``, matching in ``alknet.core.policy.matching``; all are
re-exported here. The evaluation order (rules, principals, transports, defaults, DNS) lives in
``alknet.core.policy.forwarding``.

Light module: standard library plus ``alknet.core.auth.identity``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal, TypeAlias

from alknet.core.auth.identity import validate_scope
from alknet.core.policy.canon import (
    BIND_ALL,
    BIND_LOCALHOST,
    BindHost,
    IPAddress,
    canonical_bind_host,
)
from alknet.core.policy.matching import Match, is_known_reserved, match_bind_target, match_target
from alknet.core.policy.request import Request, bind_from_text, request_from_text
from alknet.core.policy.target import (
    RESERVED_DESTINATIONS,
    IPNetwork,
    Target,
    TargetKind,
    parse_ports,
    parse_target,
)

__all__ = [
    "BIND_ALL",
    "BIND_LOCALHOST",
    "NEEDS_ADDRESS",
    "REASON_BUILTIN_LISTEN",
    "REASON_DEFAULT",
    "REASON_INVALID_ADDRESS",
    "REASON_INVALID_TARGET",
    "REASON_KEY_OPTION",
    "REASON_NEEDS_ADDRESS",
    "REASON_NO_ADDRESS",
    "REASON_NO_UNIX_RULE",
    "REASON_PERMITOPEN",
    "REASON_RULE",
    "REASON_UNKNOWN_RESERVED",
    "REFUSED",
    "RESERVED_DESTINATIONS",
    "TRANSPORTS",
    "Action",
    "BindHost",
    "Decision",
    "DecisionAction",
    "IPNetwork",
    "Match",
    "PolicyTest",
    "Request",
    "Rule",
    "Target",
    "TargetKind",
    "bind_from_text",
    "canonical_bind_host",
    "is_known_reserved",
    "match_bind_target",
    "match_target",
    "parse_ports",
    "parse_target",
    "request_from_text",
]

TRANSPORTS: frozenset[str] = frozenset({"tcp", "tls", "quic", "iroh"})

REFUSED: Literal["refused"] = "refused"
NEEDS_ADDRESS: Literal["needs-address"] = "needs-address"

# Decision reasons: fixed words, never containing the destination.
REASON_RULE = "rule"
REASON_DEFAULT = "default"
REASON_BUILTIN_LISTEN = "builtin_listen"
REASON_NO_UNIX_RULE = "no_unix_rule"
REASON_INVALID_TARGET = "invalid_target"
REASON_KEY_OPTION = "port_forwarding_not_permitted"
REASON_PERMITOPEN = "permitopen"
REASON_UNKNOWN_RESERVED = "unknown_reserved"
REASON_NEEDS_ADDRESS = "needs_address"
REASON_NO_ADDRESS = "no_address"
REASON_INVALID_ADDRESS = "invalid_address"


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


DecisionAction: TypeAlias = Action | Literal["refused", "needs-address"]


def _frozen_strings(values: Iterable[str] | None, what: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise ValueError(f"{what} must be a collection of strings, not a string")
    items = frozenset(values)
    if not items:
        raise ValueError(f"{what} must not be empty")
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{what} entries must be non-empty strings")
    return items


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[forwarding.rules]]`` or ``[[forwarding.listen]]`` entry. ``principals``/``transports`` ``None``
    mean everyone / every transport; a ``"*"`` principal also means everyone."""

    target: Target
    action: Action
    principals: frozenset[str] | None = None
    transports: frozenset[str] | None = None
    text: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "principals", _frozen_strings(self.principals, "principals"))
        transports = _frozen_strings(self.transports, "transports")
        if transports is not None and not transports <= TRANSPORTS:
            raise ValueError("transports must be among tcp, tls, quic, iroh")
        object.__setattr__(self, "transports", transports)
        if not self.text:
            object.__setattr__(self, "text", self.target.text)

    @classmethod
    def of(
        cls,
        target: str,
        action: Action | str,
        *,
        principals: Iterable[str] | None = None,
        transports: Iterable[str] | None = None,
        listen: bool = False,
    ) -> Rule:
        """Build a rule from target text (raises ``ValueError`` like ``parse_target``)."""
        if isinstance(principals, str) or isinstance(transports, str):
            raise ValueError("principals and transports must be collections of strings, not strings")
        return cls(
            parse_target(target, listen=listen),
            Action(action),
            None if principals is None else frozenset(principals),
            None if transports is None else frozenset(transports),
            target,
        )

    def applies_to(self, identity_id: str, scopes: Iterable[str], transport: str) -> bool:
        """Principal and transport filters (the target is matched separately)."""
        if self.transports is not None and transport not in self.transports:
            return False
        if self.principals is None or "*" in self.principals:
            return True
        if identity_id in self.principals:
            return True
        return any(scope in self.principals for scope in scopes)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check. ``rule`` is 1-based (``None`` = default or no rule); ``reason`` is one of the
    ``REASON_*`` words and never contains the destination. ``addresses`` are the only addresses the server may
    connect to when DNS was done during the check (or the literal address of an IP request), in resolver
    order; empty for names that were not resolved, reserved names and unix paths."""

    action: DecisionAction
    rule: int | None
    reason: str
    addresses: tuple[IPAddress, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.action == Action.ALLOW


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyTest:
    """One ``[[forwarding.tests]]`` entry (auth-and-config.md §6.3). ``rule`` 0 means "decided by the
    default".
    """

    target: str
    expect: Literal["allow", "deny", "refused"]
    identity: str | None = None
    scopes: tuple[str, ...] = ()
    transport: str = "tcp"
    address: tuple[IPAddress, ...] | None = None
    bind: bool = False
    rule: int | None = None

    def __post_init__(self) -> None:
        if self.expect not in ("allow", "deny", "refused"):
            raise ValueError('expect must be "allow", "deny" or "refused"')
        if self.transport not in TRANSPORTS:
            raise ValueError("transport must be one of tcp, tls, quic, iroh")
        if self.identity is not None and (not isinstance(self.identity, str) or not self.identity):
            raise ValueError("identity must be a non-empty string")
        if isinstance(self.scopes, str):
            raise ValueError("scopes must be a list of strings")
        object.__setattr__(self, "scopes", tuple(validate_scope(s) for s in self.scopes))
        if self.address is not None:
            object.__setattr__(self, "address", tuple(self.address))
        if self.rule is not None and (isinstance(self.rule, bool) or self.rule < 0):
            raise ValueError("rule must be an integer >= 0")
        if self.bind:
            bind_from_text(self.target)
        else:
            request_from_text(self.target)

    __test__: ClassVar[bool] = False
