"""Evaluation details beyond the decision table: lazy DNS, ``permitopen``, key options, listen rules, the
target grammar's matching, and the §7.5 proxy warning."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, ip_address

import pytest
from policy_helpers import FP_A, P1, P2, A, B, C, FakeResolver, SyncResolver

from alknet.core.auth.identity import Identity, KeyOptions
from alknet.core.policy.canon import IPAddress
from alknet.core.policy.forwarding import (
    BUILTIN_LISTEN_RULES,
    PROXY_ADDRESS_RULES_WARNING,
    Action,
    ForwardingPolicy,
    Request,
    Rule,
    Target,
    TargetKind,
    evaluate_open,
    parse_target,
    proxy_warning,
)

JUMP = Request("jump.corp", 22)


# --- lazy DNS -----------------------------------------------------------------------------------------------


async def test_sync_resolver_is_accepted() -> None:
    resolver = SyncResolver(["10.9.9.9"])
    decision = await evaluate_open(P1, JUMP, C, "tls", resolver=resolver)
    assert (decision.action, decision.rule) == ("allow", 4)
    assert resolver.calls == ["jump.corp"]


async def test_resolver_gets_the_canonical_name() -> None:
    resolver = FakeResolver(["10.9.9.9"])
    await evaluate_open(P1, Request("JUMP.Corp.", 22), C, "tls", resolver=resolver)
    assert resolver.calls == ["jump.corp"]
    resolver = FakeResolver(["93.184.215.14"])
    await evaluate_open(P2, Request("bücher.example", 80), A, "tcp", resolver=resolver)
    assert resolver.calls == ["xn--bcher-kva.example"]


async def test_without_resolver_needs_address() -> None:
    decision = await evaluate_open(P1, JUMP, C, "tls")
    assert (decision.action, decision.rule, decision.reason) == ("needs-address", 4, "needs_address")


async def test_resolver_not_called_when_address_rule_does_not_apply() -> None:
    resolver = FakeResolver(["10.9.9.9"])
    # rule 4 needs principal ops and tls/iroh; for A nothing applies -> default deny, no lookup
    decision = await evaluate_open(P1, JUMP, A, "tls", resolver=resolver)
    assert (decision.action, decision.rule) == ("deny", None)
    # ports that do not match the address rule never trigger a lookup either
    decision = await evaluate_open(P1, Request("jump.corp", 23), C, "tls", resolver=resolver)
    assert (decision.action, decision.rule) == ("deny", None)
    assert resolver.calls == []


async def test_resolver_error_propagates() -> None:
    async def broken(name: str) -> Sequence[IPAddress]:
        raise OSError("name resolution failed")

    with pytest.raises(OSError):
        await evaluate_open(P2, Request("example.com", 443), A, "tcp", resolver=broken)


async def test_empty_answer_is_denied() -> None:
    decision = await evaluate_open(P2, Request("example.com", 443), A, "tcp", resolver=FakeResolver([]))
    assert (decision.action, decision.reason, decision.addresses) == ("deny", "no_address", ())


async def test_unspecified_and_mapped_answers() -> None:
    resolver = FakeResolver(["0.0.0.0", "::", "::ffff:93.184.215.14", "93.184.215.14", "::ffff:127.0.0.1"])
    decision = await evaluate_open(P2, Request("example.com", 443), A, "tcp", resolver=resolver)
    # 0.0.0.0 and :: would reach the local host: never allowed; duplicates after mapping collapse.
    assert decision.action == "allow"
    assert decision.addresses == (ip_address("93.184.215.14"),)


async def test_all_answers_denied_reports_first_denial() -> None:
    resolver = FakeResolver(["10.1.1.1", "127.0.0.1"])
    decision = await evaluate_open(P2, Request("evil.example", 80), A, "tcp", resolver=resolver)
    assert (decision.action, decision.rule, decision.addresses) == ("deny", 5, ())


async def test_order_of_allowed_addresses_is_kept() -> None:
    resolver = FakeResolver(["2001:db8::1", "127.0.0.1", "93.184.215.14"])
    decision = await evaluate_open(P2, Request("example.com", 443), A, "tcp", resolver=resolver)
    assert decision.addresses == (ip_address("2001:db8::1"), ip_address("93.184.215.14"))


async def test_proxy_mode_never_resolves_and_address_rules_skip_names() -> None:
    resolver = FakeResolver(["127.0.0.1"])
    decision = await evaluate_open(P2, Request("rebind.example", 80), A, "tcp", resolver=resolver, proxy=True)
    assert (decision.action, decision.rule, decision.addresses) == ("allow", None, ())
    assert resolver.calls == []
    # IP literals are still matched by address rules behind a proxy
    decision = await evaluate_open(P2, Request("127.0.0.1", 80), A, "tcp", resolver=resolver, proxy=True)
    assert (decision.action, decision.rule) == ("deny", 2)


def test_proxy_warning() -> None:
    assert P2.has_address_deny_rules
    assert proxy_warning(P2, True) == PROXY_ADDRESS_RULES_WARNING
    assert proxy_warning(P2, False) is None
    assert not P1.has_address_deny_rules  # address rules there allow
    assert proxy_warning(P1, True) is None
    assert proxy_warning(ForwardingPolicy(), True) is None
    assert PROXY_ADDRESS_RULES_WARNING == "address rules do not apply to host names behind an outbound proxy"


# --- key options and permitopen -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["alknet-control", "example.com", "127.1", "unix:/run/x.sock"])
async def test_key_option_refuses_everything_first(host: str) -> None:
    request = Request(host, None if host.startswith("unix:") else 0)
    resolver = FakeResolver(["10.0.0.1"])
    no_pf = KeyOptions(no_port_forwarding=True)
    policy = ForwardingPolicy()
    for decision in (
        await evaluate_open(policy, request, A, "tcp", options=no_pf, resolver=resolver),
        await evaluate_open(policy, request, A, "tcp", port_forwarding=False, resolver=resolver),
    ):
        assert (decision.action, decision.reason) == ("refused", "port_forwarding_not_permitted")
    assert resolver.calls == []


async def test_permitopen_and_policy_must_both_allow() -> None:
    opts = KeyOptions(permitopen=(parse_target("db.internal:5432"), parse_target("alknet-*")))
    allow_all = ForwardingPolicy()
    assert (await evaluate_open(allow_all, Request("db.internal", 5432), A, "tcp", options=opts)).allowed
    assert (await evaluate_open(allow_all, Request("alknet-control", 1), A, "tcp", options=opts)).allowed
    denied = await evaluate_open(allow_all, Request("db.internal", 5433), A, "tcp", options=opts)
    assert (denied.action, denied.reason) == ("deny", "permitopen")
    deny_all = ForwardingPolicy(default=Action.DENY)
    decision = await evaluate_open(deny_all, Request("db.internal", 5432), A, "tcp", options=opts)
    assert (decision.action, decision.rule) == ("deny", None)


async def test_permitopen_ignores_principal_and_transport_filters() -> None:
    opts = KeyOptions(permitopen=(parse_target("*:443"),))
    decision = await evaluate_open(ForwardingPolicy(), Request("example.com", 443), C, "iroh", options=opts)
    assert decision.allowed


async def test_permitopen_with_address_target_resolves_once() -> None:
    opts = KeyOptions(permitopen=(parse_target("10.0.0.0/8:5432"),))
    resolver = FakeResolver(["192.0.2.1", "10.0.0.7"])
    decision = await evaluate_open(
        ForwardingPolicy(), Request("db.internal", 5432), A, "tcp", options=opts, resolver=resolver
    )
    assert decision.allowed
    assert decision.addresses == (ip_address("10.0.0.7"),)
    assert resolver.calls == ["db.internal"]
    # no resolver: the gate cannot decide yet
    decision = await evaluate_open(ForwardingPolicy(), Request("db.internal", 5432), A, "tcp", options=opts)
    assert decision.action == "needs-address"
    # behind a proxy the address target never matches a name
    decision = await evaluate_open(
        ForwardingPolicy(),
        Request("db.internal", 5432),
        A,
        "tcp",
        options=opts,
        resolver=resolver,
        proxy=True,
    )
    assert (decision.action, decision.reason) == ("deny", "permitopen")


async def test_permitopen_unix_and_reserved() -> None:
    opts = KeyOptions(permitopen=(parse_target("unix:/run/app/*.sock"),))
    policy = ForwardingPolicy.from_mapping({"rules": [{"target": "unix:/run/*/*.sock", "action": "allow"}]})
    assert (
        await evaluate_open(policy, Request("unix:/run/app/a.sock", None), A, "tcp", options=opts)
    ).allowed
    decision = await evaluate_open(policy, Request("unix:/run/db/a.sock", None), A, "tcp", options=opts)
    assert decision.reason == "permitopen"
    decision = await evaluate_open(policy, Request("alknet-control", 0), A, "tcp", options=opts)
    assert decision.reason == "permitopen"


async def test_unknown_reserved_port_is_refused_after_policy() -> None:
    decision = await evaluate_open(ForwardingPolicy(), Request("alknet-control", 7), A, "tcp")
    assert (decision.action, decision.reason) == ("refused", "unknown_reserved")
    # a policy deny wins over the unknown-name refusal (step 4 before step 5)
    deny = ForwardingPolicy(default=Action.DENY)
    decision = await evaluate_open(deny, Request("alknet-nope", 0), A, "tcp")
    assert (decision.action, decision.reason) == ("deny", "default")


def test_invalid_requests_are_refused() -> None:
    policy = ForwardingPolicy()
    for request in [Request("example.com", None), Request("example.com", 70000), Request("example.com", -1),
                    Request("unix:relative", None), Request("unix:/x", 22)]:  # fmt: skip
        decision = policy.decide(request, A, "tcp")
        assert (decision.action, decision.reason) == ("refused", "invalid_target")


def test_default_policy_allows_tcp_but_not_unix() -> None:
    policy = ForwardingPolicy()
    assert policy.decide(Request("example.com", 443), A, "tcp").allowed
    assert policy.decide(Request("10.0.0.1", 22), A, "tcp").addresses == (ip_address("10.0.0.1"),)
    decision = policy.decide(Request("unix:/run/x.sock", None), A, "tcp")
    assert (decision.action, decision.reason) == ("deny", "no_unix_rule")


# --- principals, transports, target matching ----------------------------------------------------------------


def test_principals_match_id_or_any_scope() -> None:
    rule = Rule.of("*", "deny", principals=[FP_A, "role:db"])
    assert rule.applies_to(A.id, A.scopes, "tcp")
    assert rule.applies_to(B.id, B.scopes, "tcp")
    assert not rule.applies_to(C.id, C.scopes, "tcp")
    assert Rule.of("*", "deny", principals=["*"]).applies_to("x", (), "quic")
    assert not Rule.of("*", "deny", transports=["tls"]).applies_to(A.id, A.scopes, "tcp")


@pytest.mark.parametrize(
    ("target", "host", "port", "matches"),
    [
        ("*", "alknet-control", 0, True),
        ("*:22", "alknet-control", 0, False),
        ("*", "unix:/x", None, False),
        ("alknet-*", "alknet-control", 1, True),
        ("alknet-*", "example.com", 1, False),
        ("alknet-control:0", "alknet-control", 0, True),
        ("alknet-control:0", "alknet-control", 1, False),
        ("*.example", "alknet-control", 0, False),
        ("alknet-control", "alknet-control", 5, True),
        ("*.svc.local", "a.svc.local", 1, True),
        ("*.svc.local", "svc.local", 1, False),
        ("*.svc.local", "a.svc.localx", 1, False),
        ("api-*.corp", "api-eu.west.corp", 1, True),
        ("api*", "api", 1, False),
        ("api*", "apix", 1, True),
        ("example.*", "example.org", 1, True),
        ("Example.COM", "example.com.", 1, True),
        ("bücher.example", "xn--bcher-kva.example", 1, True),
        ("10.0.0.1", "10.0.0.1", 5, True),
        ("::ffff:10.0.0.1", "10.0.0.1", 5, True),
        ("10.0.0.0/8:1-5", "10.255.0.1", 5, True),
        ("10.0.0.0/8:1-5", "10.255.0.1", 6, False),
        ("[::ffff:10.0.0.0/104]:5", "10.1.1.1", 5, True),
        ("::/0", "10.0.0.1", 5, False),
        ("0.0.0.0/0", "::1", 5, False),
        ("unix:/run/*.sock", "unix:/run/a.sock", None, True),
        ("unix:/run/*.sock", "unix:/run/a/b.sock", None, False),
        ("unix:/run//x/./*", "unix:/run/x/y", None, True),
        ("unix:/run/x", "unix:/run//x", None, True),
        ("unix:/run/*", "unix:/run/", None, False),  # canonical /run, not /run/
    ],
)  # fmt: skip
def test_target_matching(target: str, host: str, port: int | None, matches: bool) -> None:
    policy = ForwardingPolicy(default=Action.DENY, rules=(Rule.of(target, "allow"),))
    decision = policy.decide(Request(host, port), A, "tcp", ip_address("192.0.2.1"))
    assert decision.allowed is matches, decision


def test_target_values() -> None:
    assert parse_target("10.0.0.1:22") == Target(TargetKind.ADDRESS, IPv4Network("10.0.0.1/32"), (22, 22))
    assert parse_target("*:*") == Target(TargetKind.ANY, None, None)
    assert parse_target("*:0-65535") == Target(TargetKind.ANY, None, (0, 65535))
    assert parse_target("fd00::1").text == "fd00::1"
    assert parse_target("[fd00::1]:1-2").text == "[fd00::1]:1-2"
    assert parse_target("::1:22").text == "::1:22"  # a bare IPv6 address, all ports
    assert parse_target("*.").kind is TargetKind.ANY


# --- binds --------------------------------------------------------------------------------------------------


def _bind(policy: ForwardingPolicy, host: str, port: int, who: Identity = A) -> tuple[str, int | None]:
    decision = policy.decide_bind(host, port, who, "tcp")
    return str(decision.action), decision.rule


@pytest.mark.parametrize(
    ("host", "port", "action"),
    [
        ("localhost", 8080, "allow"), ("LOCALHOST.", 0, "allow"), ("[::1]", 1024, "allow"),
        ("::1", 65535, "allow"), ("127.0.0.1", 1023, "deny"), ("", 8080, "deny"), ("*", 8080, "deny"),
        ("::", 0, "deny"), ("[::]", 8080, "deny"), ("0.0.0.0", 0, "deny"), ("10.0.0.1", 8080, "deny"),
        ("127.0.0.2", 8080, "deny"),
        ("example.com", 0, "refused"), ("127.1", 8080, "refused"), ("fe80::1%eth0", 8080, "refused"),
        ("127.0.0.1", 65536, "refused"), ("127.0.0.1", -1, "refused"),
    ],
)  # fmt: skip
def test_builtin_listen_rules(host: str, port: int, action: str) -> None:
    assert _bind(ForwardingPolicy(), host, port)[0] == action
    assert len(BUILTIN_LISTEN_RULES) == 6


def test_listen_rules_port_zero() -> None:
    ranged = ForwardingPolicy.from_mapping({"listen": [{"target": "127.0.0.1:8000-8999", "action": "allow"}]})
    assert _bind(ranged, "127.0.0.1", 8500) == ("allow", 1)
    assert _bind(ranged, "127.0.0.1", 0) == ("deny", None)
    for target in ("127.0.0.1:*", "127.0.0.1:0", "127.0.0.1"):
        policy = ForwardingPolicy.from_mapping({"listen": [{"target": target, "action": "allow"}]})
        assert _bind(policy, "127.0.0.1", 0) == ("allow", 1)


@pytest.mark.parametrize(
    ("target", "host", "action"),
    [
        ("*:8080", "", "allow"), ("*:8080", "0.0.0.0", "allow"), ("0.0.0.0:8080", "*", "allow"),
        ("[::]:8080", "0.0.0.0", "allow"), ("::", "", "allow"), ("0.0.0.0/0:8080", "0.0.0.0", "deny"),
        ("0.0.0.0/0:8080", "192.0.2.1", "allow"), ("127.0.0.1:8080", "0.0.0.0", "deny"),
        ("0.0.0.0:8080", "127.0.0.1", "deny"), ("localhost:8080", "127.0.0.1", "allow"),
        ("localhost:8080", "::1", "allow"), ("127.0.0.1:8080", "localhost", "allow"),
        ("10.0.0.0/8:8080", "localhost", "deny"), ("10.0.0.0/8:8080", "10.1.2.3", "allow"),
        ("localhost:8080", "10.1.2.3", "deny"),
    ],
)  # fmt: skip
def test_listen_rule_hosts(target: str, host: str, action: str) -> None:
    policy = ForwardingPolicy.from_mapping({"listen": [{"target": target, "action": "allow"}]})
    assert _bind(policy, host, 8080)[0] == action


def test_listen_rule_principals_and_default() -> None:
    policy = ForwardingPolicy.from_mapping(
        {"listen_default": "allow",
         "listen": [{"target": "*", "action": "deny", "principals": ["ops"], "transports": ["tcp"]}]}
    )  # fmt: skip
    assert _bind(policy, "0.0.0.0", 80, C) == ("deny", 1)
    assert _bind(policy, "0.0.0.0", 80, A) == ("allow", None)
    assert policy.decide_bind("0.0.0.0", 80, C, "tls").allowed


def test_evaluate_bind_key_options() -> None:
    policy = ForwardingPolicy()
    refused = policy.evaluate_bind("127.0.0.1", 8080, A, "tcp", options=KeyOptions(no_port_forwarding=True))
    assert (refused.action, refused.reason) == ("refused", "port_forwarding_not_permitted")
    assert policy.evaluate_bind("127.0.0.1", 8080, A, "tcp", port_forwarding=False).action == "refused"
    # permitopen never affects binds
    opts = KeyOptions(permitopen=(parse_target("db.internal:5432"),))
    assert policy.evaluate_bind("127.0.0.1", 8080, A, "tcp", options=opts).allowed
