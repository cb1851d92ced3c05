"""Every row of the required decision table (auth-and-config.md §7.9), evaluated purely: ``decide`` /
``evaluate_open`` for channel opens and ``decide_bind`` / ``evaluate_bind`` for binds, with a fake
resolver that records its calls ("-" rows must never call it)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

import pytest
from policy_helpers import IDENTITIES, POLICIES, FakeResolver

from alknet.core.auth.identity import KeyOptions
from alknet.core.policy.forwarding import (
    Action,
    Decision,
    Request,
    evaluate_open,
    parse_target,
)

ALLOW, DENY, REFUSED = "allow", "deny", "refused"


@dataclass(frozen=True)
class Row:
    n: int
    policy: str
    who: str
    transport: str
    host: str
    port: int | None
    dns: tuple[str, ...] | None  # None = "-": the resolver must not be called
    action: str
    rule: int | None
    reason: str | None = None  # checked when given
    connects: tuple[str, ...] | None = None  # checked when given: Decision.addresses
    bind: bool = False
    proxy: bool = False
    options: KeyOptions | None = None
    decide_action: str | None = None  # what the bare policy (decide) says when it differs from evaluate_open
    decide_rule: int | None = None


PERMIT_DB = KeyOptions(permitopen=(parse_target("db.internal:5432"),))
NO_PF = KeyOptions(no_port_forwarding=True)

ROWS = [
    Row(1, "P1", "A", "tcp", "alknet-control", 0, None, ALLOW, 1),
    Row(2, "P1", "A", "tls", "db.internal", 5432, None, DENY, None, "default"),
    Row(3, "P1", "B", "tls", "db.internal", 5432, None, ALLOW, 2),
    Row(4, "P1", "B", "tls", "DB.Internal.", 5432, None, ALLOW, 2),
    Row(5, "P1", "B", "tls", "db.internal", 5433, None, DENY, None, "default"),
    Row(6, "P1", "A", "tcp", "api.svc.local", 443, None, ALLOW, 3),
    Row(7, "P1", "A", "tcp", "api.svc.local", 444, None, DENY, None, "default"),
    Row(8, "P1", "A", "tcp", "svc.local", 80, None, DENY, None, "default"),
    Row(9, "P1", "A", "tcp", "a.b.svc.local", 80, None, ALLOW, 3),
    Row(10, "P1", "C", "tls", "10.1.2.3", 22, None, ALLOW, 4, connects=("10.1.2.3",)),
    Row(11, "P1", "C", "tcp", "10.1.2.3", 22, None, DENY, None, "default"),
    Row(12, "P1", "A", "tls", "10.1.2.3", 22, None, DENY, None, "default"),
    Row(13, "P1", "C", "iroh", "::ffff:10.1.2.3", 22, None, ALLOW, 4, connects=("10.1.2.3",)),
    Row(14, "P1", "C", "tls", "jump.corp", 22, ("10.9.9.9",), ALLOW, 4, connects=("10.9.9.9",),
        decide_action="needs-address", decide_rule=4),
    Row(15, "P1", "C", "tls", "fd00::5", 22, None, ALLOW, 5, connects=("fd00::5",)),
    Row(16, "P1", "C", "tls", "0x0a.1.2.3", 22, None, REFUSED, None, "invalid_target"),
    Row(17, "P2", "A", "tcp", "127.0.0.1", 8080, None, DENY, 2),
    Row(18, "P2", "A", "tcp", "127.1", 8080, None, REFUSED, None, "invalid_target"),
    Row(19, "P2", "A", "tcp", "2130706433", 80, None, REFUSED, None, "invalid_target"),
    Row(20, "P2", "A", "tcp", "::ffff:127.0.0.1", 80, None, DENY, 2),
    Row(21, "P2", "A", "tcp", "LOCALHOST.", 22, None, DENY, 1),
    Row(22, "P2", "A", "tcp", "ｌｏｃａｌｈｏｓｔ", 22, None, DENY, 1),
    Row(23, "P2", "A", "tcp", "example.com", 443, ("93.184.215.14",), ALLOW, None, "default",
        connects=("93.184.215.14",), decide_action="needs-address", decide_rule=2),
    Row(24, "P2", "A", "tcp", "rebind.example", 80, ("127.0.0.1",), DENY, 2, connects=(),
        decide_action="needs-address", decide_rule=2),
    Row(25, "P2", "A", "tcp", "multi.example", 80, ("10.0.0.5", "93.184.215.14"), ALLOW, None, "default",
        connects=("93.184.215.14",), decide_action="needs-address", decide_rule=2),
    Row(26, "P2", "A", "tcp", "169.254.169.254", 80, None, DENY, 4),
    Row(27, "P2", "A", "tcp", "::1", 22, None, DENY, 3),
    Row(28, "P2", "A", "tcp", "0.0.0.0", 22, None, REFUSED, None, "invalid_target"),
    Row(29, "P2", "A", "tcp", "fe80::1%eth0", 22, None, REFUSED, None, "invalid_target"),
    Row(30, "P2", "A", "tcp", "alknet-control", 1, None, DENY, 6),
    Row(31, "P2", "A", "tcp", "alknet-control", 0, None, ALLOW, None, "default", connects=()),
    Row(32, "P2", "A", "tcp", "Alknet-control", 0, None, REFUSED, None, "invalid_target"),
    # policy allows (default); step 5 refuses the unknown reserved name (OPEN_CONNECT_FAILED)
    Row(33, "P2", "A", "tcp", "alknet-nope", 0, None, REFUSED, None, "unknown_reserved",
        decide_action=ALLOW, decide_rule=None),
    Row(34, "P2", "A", "tcp", "unix:/run/x.sock", None, None, DENY, None, "no_unix_rule"),
    Row(35, "P3", "A", "tcp", "unix:/run/app/api.sock", None, None, ALLOW, 1, connects=()),
    Row(36, "P3", "A", "tcp", "unix:/run/app/sub/api.sock", None, None, DENY, None, "no_unix_rule"),
    Row(37, "P3", "A", "tcp", "unix:/run/app/../docker.sock", None, None, REFUSED, None, "invalid_target"),
    Row(38, "P3", "B", "tcp", "unix:/run/app/api.sock", None, None, DENY, None, "no_unix_rule"),
    Row(39, "P3", "A", "quic", "alknet-control", 0, None, ALLOW, 2),
    Row(40, "P3", "A", "quic", "example.com", 443, None, DENY, 3),
    Row(41, "P3", "A", "tls", "example.com", 443, None, ALLOW, None, "default", connects=()),
    Row(42, "P2", "A", "tcp", "internal.corp", 80, None, ALLOW, None, "default", connects=(), proxy=True),
    Row(43, "P2", "A", "tcp", "db.internal", 5432, ("10.0.0.7",), DENY, 5, connects=(), options=PERMIT_DB,
        decide_action="needs-address", decide_rule=2),
    Row(44, "P2", "A", "tcp", "example.com", 443, None, DENY, None, "permitopen", options=PERMIT_DB,
        decide_action="needs-address", decide_rule=2),
    Row(45, "P2", "A", "tcp", "alknet-control", 0, None, REFUSED, None, "port_forwarding_not_permitted",
        options=NO_PF, decide_action=ALLOW, decide_rule=None),
    Row(46, "builtin", "A", "tcp", "127.0.0.1", 8080, None, ALLOW, None, "builtin_listen", bind=True),
    Row(47, "builtin", "A", "tcp", "0.0.0.0", 8080, None, DENY, None, "default", bind=True),
    Row(48, "builtin", "A", "tcp", "127.0.0.1", 80, None, DENY, None, "default", bind=True),
    Row(49, "builtin", "A", "tcp", "example.com", 8080, None, REFUSED, None, "invalid_target", bind=True),
    Row(50, "builtin", "A", "tcp", "127.0.0.1", 0, None, ALLOW, None, "builtin_listen", bind=True),
]  # fmt: skip


def test_table_is_complete() -> None:
    assert [r.n for r in ROWS] == list(range(1, 51))


def _check(decision: Decision, action: str, rule: int | None, reason: str | None) -> None:
    assert decision.action == action
    assert decision.rule == rule
    if reason is not None:
        assert decision.reason == reason


def _host_not_in_reason(row: Row, decision: Decision) -> None:
    shown = row.host.removeprefix("unix:")
    if len(shown) >= 4:
        assert shown.lower() not in decision.reason.lower()


@pytest.mark.parametrize("row", ROWS, ids=[f"row{r.n}" for r in ROWS])
async def test_decision_table(row: Row) -> None:
    policy = POLICIES[row.policy]
    identity = IDENTITIES[row.who]
    resolver = FakeResolver(row.dns or ())

    if row.bind:
        assert row.port is not None
        decision = policy.decide_bind(row.host, row.port, identity, row.transport)
        _check(decision, row.action, row.rule, row.reason)
        assert policy.evaluate_bind(row.host, row.port, identity, row.transport) == decision
        _host_not_in_reason(row, decision)
        return

    request = Request(row.host, row.port)
    decision = await evaluate_open(
        policy, request, identity, row.transport, options=row.options, resolver=resolver, proxy=row.proxy
    )
    _check(decision, row.action, row.rule, row.reason)
    _host_not_in_reason(row, decision)

    if row.dns is None:
        assert resolver.calls == [], "a '-' row must not resolve"
    else:
        assert len(resolver.calls) == 1, "resolved at most once"
        canonical = request.canonical()
        assert resolver.calls == [str(canonical)]

    if row.connects is not None:
        assert decision.addresses == tuple(ip_address(a) for a in row.connects)
    if decision.action != Action.ALLOW:
        assert decision.addresses == (), "a denied open never connects"

    # The bare global policy (no key options, no permitopen, no resolver).
    bare = policy.decide(request, identity, row.transport, proxy=row.proxy)
    if row.decide_action is not None:
        assert bare.action == row.decide_action
        assert bare.rule == row.decide_rule
    else:
        assert (bare.action, bare.rule) == (decision.action, decision.rule)

    # With the DNS answer given directly, the sync evaluation agrees with the lazy one.
    answer = None if row.dns is None else tuple(ip_address(a) for a in row.dns)
    direct = policy.evaluate(
        request, identity, row.transport, options=row.options, addresses=answer, proxy=row.proxy
    )
    assert direct == decision


@pytest.mark.parametrize(
    ("n", "address", "action", "rule"),
    [(14, "10.9.9.9", ALLOW, 4), (23, "93.184.215.14", ALLOW, None), (24, "127.0.0.1", DENY, 2),
     (25, "10.0.0.5", DENY, 5), (25, "93.184.215.14", ALLOW, None)],
)  # fmt: skip
def test_decide_per_address(n: int, address: str, action: str, rule: int | None) -> None:
    """``decide(..., address)`` is the per-address decision the server makes for each DNS answer."""
    row = ROWS[n - 1]
    policy = POLICIES[row.policy]
    decision = policy.decide(
        Request(row.host, row.port), IDENTITIES[row.who], row.transport, ip_address(address)
    )
    assert (decision.action, decision.rule) == (action, rule)
