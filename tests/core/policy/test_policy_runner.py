"""``[[forwarding.tests]]`` runner and the exact output lines of ``policy test`` / ``policy check`` (cli.md
§7, auth-and-config.md §7.8)."""

from __future__ import annotations

import tomllib
from ipaddress import ip_address

import pytest
from policy_helpers import IDENTITIES, P1, FakeResolver

from alknet.core.errors import ConfigError
from alknet.core.policy.forwarding import (
    Action,
    Decision,
    ForwardingPolicy,
    PolicyTest,
    Request,
    check_exit_code,
    check_policy_tests,
    evaluate_open,
    format_check_line,
    format_summary,
    run_policy_tests,
)

FP_SPEC = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"

CLI_EXAMPLE = """
[forwarding]
default = "deny"
listen_default = "deny"
[[forwarding.rules]]
target = "alknet-*"
action = "allow"
[[forwarding.rules]]
target = "10.0.0.0/8:5432"
action = "allow"
principals = ["ops"]
transports = ["tls", "iroh"]
[[forwarding.listen]]
target = "127.0.0.1:8000-8999"
action = "allow"
[[forwarding.tests]]
scopes = ["ops"]
target = "10.1.2.3:5432"
transport = "tls"
expect = "allow"
"""


def _example() -> ForwardingPolicy:
    return ForwardingPolicy.from_mapping(tomllib.loads(CLI_EXAMPLE)["forwarding"])


def test_cli_example_passes() -> None:
    results = run_policy_tests(_example())
    assert [r.passed for r in results] == [True]
    assert results[0].line == "ok 1 10.1.2.3:5432 tls scopes=ops -> allow (rule 2)"
    assert format_summary(results) == "1 passed, 0 failed"
    assert check_policy_tests(_example()) == results


def test_ok_and_fail_lines() -> None:
    policy = ForwardingPolicy.from_mapping(
        {
            "default": "deny",
            "rules": [
                {"target": "alknet-*", "action": "allow"},
                {"target": "db.internal:5432", "action": "allow"},
                {"target": "*.corp:22", "action": "allow", "principals": ["ops"]},
            ],
            "tests": [
                {"identity": FP_SPEC, "scopes": ["relay:connect"], "target": "alknet-control:0",
                 "transport": "tls", "expect": "allow", "rule": 1},
                {"scopes": ["ops"], "target": "db.corp:22", "expect": "deny"},
            ],
        }
    )  # fmt: skip
    results = run_policy_tests(policy)
    assert [r.line for r in results] == [
        "ok 1 alknet-control:0 tls SHA256:lbmsoA0y... -> allow (rule 1)",
        "FAIL 2 db.corp:22 tcp scopes=ops -> expected deny got allow (rule 3)",
    ]
    assert format_summary(results) == "1 passed, 1 failed"
    assert results[1].message == "expected deny got allow (rule 3)"
    with pytest.raises(ConfigError) as info:
        check_policy_tests(policy)
    assert info.value.errors == ["forwarding.tests[2]: expected deny got allow (rule 3)"]
    assert "db.corp" not in str(info.value)


def test_rule_numbers_are_checked() -> None:
    policy = ForwardingPolicy.from_mapping(
        {
            "rules": [{"target": "localhost", "action": "deny"}, {"target": "127.0.0.0/8", "action": "deny"}],
            "tests": [
                {"target": "127.0.0.1:80", "expect": "deny", "rule": 2},
                {"target": "127.0.0.1:80", "expect": "deny", "rule": 1},
                {"target": "example.com:80", "expect": "allow", "rule": 0, "address": ["93.184.215.14"]},
                {"target": "example.com:80", "expect": "allow", "rule": 1, "address": ["93.184.215.14"]},
            ],
        }
    )
    results = run_policy_tests(policy)
    assert [r.passed for r in results] == [True, False, True, False]
    assert results[1].line == "FAIL 2 127.0.0.1:80 tcp - -> expected deny (rule 1) got deny (rule 2)"
    assert results[3].message == "expected allow (rule 1) got allow (default)"


def test_simulated_address_and_needs_address() -> None:
    base = {key: value for key, value in tomllib.loads(CLI_EXAMPLE)["forwarding"].items() if key != "tests"}
    policy = ForwardingPolicy.from_mapping(
        {
            **base,
            "tests": [
                {"scopes": ["ops"], "target": "db.corp:5432", "transport": "tls", "address": ["10.0.0.5"],
                 "expect": "allow", "rule": 2},
                {"scopes": ["ops"], "target": "db.corp:5432", "transport": "tls", "expect": "allow"},
                {"scopes": ["ops"], "target": "db.corp:5432", "transport": "tls", "address": ["192.0.2.1"],
                 "expect": "deny", "rule": 0},
            ],
        }
    )  # fmt: skip
    results = run_policy_tests(policy)
    assert [r.passed for r in results] == [True, False, True]
    assert results[1].message == "expected allow got needs-address (rule 2)"


def test_bind_and_refused_tests() -> None:
    policy = ForwardingPolicy.from_mapping(
        {
            "tests": [
                {"target": "127.0.0.1:8080", "bind": True, "expect": "allow"},
                {"target": "0.0.0.0:8080", "bind": True, "expect": "deny", "rule": 0},
                {"target": "[::1]:0", "bind": True, "expect": "allow"},
                {"target": "example.com:8080", "bind": True, "expect": "refused"},
                {"target": "127.1:80", "expect": "refused"},
                {"target": "alknet-nope:0", "expect": "refused"},
                {"target": "unix:/run/x.sock", "expect": "deny"},
            ]
        }
    )
    results = run_policy_tests(policy)
    assert all(r.passed for r in results), [r.line for r in results]
    assert results[0].line == "ok 1 127.0.0.1:8080 tcp - -> allow (builtin_listen)"
    assert results[4].line == "ok 5 127.1:80 tcp - -> refused (invalid_target)"


def test_explicit_tests_argument_and_identity_display() -> None:
    tests = [
        PolicyTest(target="example.com:443", expect="allow", identity="apikey:12"),
        PolicyTest(target="example.com:443", expect="allow", identity=FP_SPEC, scopes=("ops",)),
    ]
    results = run_policy_tests(ForwardingPolicy(), tests)
    assert [r.line for r in results] == [
        "ok 1 example.com:443 tcp apikey:12 -> allow (default)",
        "ok 2 example.com:443 tcp SHA256:lbmsoA0y... -> allow (default)",
    ]
    assert run_policy_tests(ForwardingPolicy()) == []
    assert format_summary([]) == "0 passed, 0 failed"


def test_policy_test_validation() -> None:
    for kwargs in (
        {"expect": "maybe"},
        {"transport": "udp"},
        {"rule": -1},
        {"identity": ""},
        {"scopes": ("a b",)},
    ):
        with pytest.raises(ValueError):
            PolicyTest(**{"target": "a:1", "expect": "allow", **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PolicyTest(target="no-port", expect="allow")
    with pytest.raises(ValueError):
        PolicyTest(target="[::1]", expect="allow", bind=True)


# --- policy check lines -------------------------------------------------------------------------------------


async def test_check_lines_for_acceptance_rows() -> None:
    """Rows 3 (exit 0), 2 (exit 1), 16 (exit 1) and 14 without --address (exit 3)."""
    cases = [
        ("B", "tls", "db.internal", 5432, 'allow rule=2 target="db.internal:5432"', 0),
        ("A", "tls", "db.internal", 5432, "deny default", 1),
        ("C", "tls", "0x0a.1.2.3", 22, "refused reason=invalid_target", 1),
        ("C", "tls", "jump.corp", 22, "needs-address rule=4", 3),
    ]
    for who, transport, host, port, line, code in cases:
        decision = await evaluate_open(P1, Request(host, port), IDENTITIES[who], transport)
        assert format_check_line(decision, f"{host}:{port}") == line
        assert check_exit_code(decision) == code
    # with --address the same target gets a decision
    resolved = await evaluate_open(
        P1, Request("jump.corp", 22), IDENTITIES["C"], "tls", resolver=FakeResolver(["10.0.0.5"])
    )
    assert format_check_line(resolved, "jump.corp:22") == 'allow rule=4 target="jump.corp:22"'


def test_cli_example_check_lines() -> None:
    policy = _example()
    ops = IDENTITIES["C"]
    tls = policy.evaluate(Request("10.1.2.3", 5432), ops, "tls")
    assert format_check_line(tls, "10.1.2.3:5432") == 'allow rule=2 target="10.1.2.3:5432"'
    tcp = policy.evaluate(Request("10.1.2.3", 5432), ops, "tcp")
    assert (format_check_line(tcp, "10.1.2.3:5432"), check_exit_code(tcp)) == ("deny default", 1)
    bad = policy.evaluate(Request("127.1", 80), ops, "tcp")
    assert format_check_line(bad, "127.1:80") == "refused reason=invalid_target"


def test_check_line_shapes() -> None:
    assert format_check_line(Decision(Action.ALLOW, None, "default"), "x:1") == 'allow default target="x:1"'
    assert format_check_line(Decision(Action.DENY, 5, "rule"), "x:1") == "deny rule=5"
    assert format_check_line(Decision(Action.DENY, None, "permitopen"), "x:1") == "deny reason=permitopen"
    assert format_check_line(Decision("needs-address", None, "needs_address"), "x:1") == "needs-address"
    quoted = format_check_line(Decision(Action.ALLOW, 1, "rule", (ip_address("10.0.0.1"),)), 'a"b\\c\n')
    assert quoted == 'allow rule=1 target="a\\"b\\\\c\\n"'
