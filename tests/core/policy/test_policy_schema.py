"""``ForwardingPolicy.from_mapping``: the strict ``[forwarding]`` schema (auth-and-config.md §6.3, cli.md
§12) and the rule-loading errors of §7 Acceptance."""

from __future__ import annotations

import dataclasses
import tomllib
from ipaddress import ip_address
from typing import Any

import pytest
from policy_helpers import P1, P1_TOML

from alknet.core.errors import ConfigError
from alknet.core.policy.forwarding import (
    Action,
    ForwardingPolicy,
    PolicyTest,
    Rule,
    TargetKind,
)

SPEC_EXAMPLE = """
[forwarding]
default        = "allow"
listen_default = "deny"
[[forwarding.rules]]
target = "alknet-*"
action = "allow"
principals = ["*"]
transports = ["tls", "iroh"]
[[forwarding.listen]]
target = "127.0.0.1:8000-8999"
action = "allow"
[[forwarding.tests]]
identity = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"
scopes = ["relay:connect"]
target = "alknet-control:0"
transport = "tls"
bind = false
expect = "allow"
rule = 1
"""


def _errors(obj: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        ForwardingPolicy.from_mapping(obj, **kwargs)
    return info.value.errors


def test_builtin_default() -> None:
    policy = ForwardingPolicy()
    assert policy.default is Action.ALLOW
    assert policy.rules == ()
    assert policy.listen_default is Action.DENY
    assert policy.listen is None
    assert ForwardingPolicy.from_mapping({}) == policy


def test_spec_example_loads() -> None:
    policy = ForwardingPolicy.from_mapping(tomllib.loads(SPEC_EXAMPLE)["forwarding"])
    assert policy.default is Action.ALLOW
    assert policy.rules == (Rule.of("alknet-*", "allow", principals=["*"], transports=["tls", "iroh"]),)
    assert policy.listen == (Rule.of("127.0.0.1:8000-8999", "allow", listen=True),)
    assert policy.tests == (
        PolicyTest(
            identity="SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg",
            scopes=("relay:connect",),
            target="alknet-control:0",
            transport="tls",
            expect="allow",
            rule=1,
        ),
    )


def test_rule_text_and_kinds() -> None:
    kinds = [r.target.kind for r in P1.rules]
    assert kinds == [
        TargetKind.RESERVED_ANY,
        TargetKind.HOST,
        TargetKind.GLOB,
        TargetKind.NETWORK,
        TargetKind.NETWORK,
    ]
    assert [r.text for r in P1.rules] == [r["target"] for r in P1_TOML["rules"]]  # type: ignore[attr-defined]


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        P1.default = Action.ALLOW  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        P1.rules[0].action = Action.DENY  # type: ignore[misc]
    assert isinstance(P1.rules, tuple)
    assert isinstance(P1.rules[3].principals, frozenset)


@pytest.mark.parametrize(
    "target",
    # the §7 Acceptance list first, then more
    ["10.0.0.1/8", "127.1:22", "a*b*c", "alknet-c*", "host:70000", "host:9-3", "unix:relative", "unix:/a/[b]",
     "*:08", "10.0.0.0/33", "", "alknet-foo", "Alknet-*", "[::1]", "0.0.0.0:22", "::1:22:x", "host:",
     "host:1-", "a b"],
)  # fmt: skip
def test_rule_loading_errors_name_the_rule(target: str) -> None:
    errors = _errors(
        {"rules": [{"target": "alknet-*", "action": "allow"}, {"target": target, "action": "deny"}]}
    )
    assert len(errors) == 1
    assert errors[0].startswith("forwarding.rules[2].target: ")
    assert len(errors[0]) > len("forwarding.rules[2].target: ")


def test_cli_acceptance_messages() -> None:
    assert _errors({"default": "maybe"})[0].startswith("forwarding.default: ")
    assert _errors({"rules": [{"target": "10.0.0.0/33", "action": "allow"}]})[0].startswith(
        "forwarding.rules[1].target: "
    )
    assert _errors({"defualt": "deny"}) == ["forwarding.defualt: unknown key"]


def _rule(extra: dict[str, Any]) -> dict[str, Any]:
    return {"rules": [{"target": "*", "action": "allow", **extra}]}


def _test(extra: dict[str, Any]) -> dict[str, Any]:
    return {"tests": [{"target": "a:1", "expect": "allow", **extra}]}


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        (_rule({"principals": []}), "rules[1].principals"),
        (_rule({"transports": []}), "rules[1].transports"),
        (_rule({"transports": ["udp"]}), "rules[1].transports"),
        (_rule({"transports": "tls"}), "rules[1].transports"),
        (_rule({"principals": "ops"}), "rules[1].principals"),
        (_rule({"principals": [""]}), "rules[1].principals"),
        (_rule({"principals": [1]}), "rules[1].principals"),
        ({"rules": [{"target": "*", "action": "permit"}]}, "rules[1].action"),
        ({"rules": [{"target": "*", "action": 1}]}, "rules[1].action"),
        ({"rules": [{"target": 5, "action": "allow"}]}, "rules[1].target"),
        ({"rules": [{"action": "allow"}]}, "rules[1].target"),
        ({"rules": [{"target": "*"}]}, "rules[1].action"),
        (_rule({"comment": "x"}), "rules[1].comment"),
        ({"rules": {"target": "*", "action": "allow"}}, "rules"),
        ({"rules": ["*"]}, "rules"),
        ({"default": True}, "default"),
        ({"listen_default": "maybe"}, "listen_default"),
        ({"listen": [{"target": "example.com:80", "action": "allow"}]}, "listen[1].target"),
        ({"listen": [{"target": "*.example:80", "action": "allow"}]}, "listen[1].target"),
        ({"listen": [{"target": "unix:/x", "action": "allow"}]}, "listen[1].target"),
        ({"listen": [{"target": "alknet-*", "action": "allow"}]}, "listen[1].target"),
        ({"tests": [{"target": "a:1"}]}, "tests[1].expect"),
        ({"tests": [{"expect": "allow"}]}, "tests[1].target"),
        ({"tests": [{"target": "a:1", "expect": "maybe"}]}, "tests[1].expect"),
        ({"tests": [{"target": "a:1", "expect": "needs-address"}]}, "tests[1].expect"),
        ({"tests": [{"target": "a", "expect": "allow"}]}, "tests[1].target"),
        (_test({"rule": -1}), "tests[1].rule"),
        (_test({"rule": True}), "tests[1].rule"),
        (_test({"rule": "1"}), "tests[1].rule"),
        (_test({"bind": "yes"}), "tests[1].bind"),
        (_test({"transport": "udp"}), "tests[1].transport"),
        (_test({"address": ["nope"]}), "tests[1].address[1]"),
        (_test({"address": "10.0.0.1"}), "tests[1].address"),
        (_test({"scopes": ["bad scope"]}), "tests[1].scopes[1]"),
        (_test({"identity": ""}), "tests[1].identity"),
        (_test({"who": "x"}), "tests[1].who"),
        ({"tests": [{"target": "1.2.3.4:1", "expect": "allow", "bind": True, "address": ["10.0.0.1"]}]},
         "tests[1].address"),
    ],
)  # fmt: skip
def test_strict_schema(mapping: dict[str, Any], key: str) -> None:
    errors = _errors(mapping)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"forwarding.{key}: "), errors[0]


def test_not_a_table() -> None:
    assert _errors(["x"]) == ["forwarding: must be a table"]


def test_all_errors_are_collected() -> None:
    errors = _errors(
        {
            "default": "maybe",
            "bogus": 1,
            "rules": [
                {"target": "ok.example", "action": "allow"},
                {"target": "10.0.0.1/8", "action": "allow", "transports": ["udp"]},
                {"target": "a*b*c", "action": "nope"},
            ],
            "tests": [{"target": "x:1", "expect": "allow", "rule": -2}],
        }
    )
    keys = [e.split(": ", 1)[0] for e in errors]
    assert keys == [
        "forwarding.bogus",
        "forwarding.default",
        "forwarding.rules[2].target",
        "forwarding.rules[2].transports",
        "forwarding.rules[3].target",
        "forwarding.rules[3].action",
        "forwarding.tests[1].rule",
    ]
    err = ConfigError(errors)
    assert str(err).startswith("forwarding.bogus: unknown key (and 6 more)")


def test_prefix() -> None:
    errors = _errors({"rules": [{"target": "127.1", "action": "allow"}]}, prefix="cfg.forwarding")
    assert errors[0].startswith("cfg.forwarding.rules[1].target: ")


def test_empty_listen_means_builtin() -> None:
    assert ForwardingPolicy.from_mapping({"listen": []}).listen is None
    explicit = ForwardingPolicy.from_mapping({"listen": [{"target": "127.0.0.1:0", "action": "allow"}]})
    assert explicit.listen is not None and len(explicit.listen) == 1


def test_test_entries_are_parsed() -> None:
    policy = ForwardingPolicy.from_mapping(
        {
            "tests": [
                {"target": "jump.corp:22", "scopes": ["ops"], "address": ["10.9.9.9", "::ffff:10.0.0.1"],
                 "expect": "allow", "rule": 0},
                {"target": ":8080", "bind": True, "expect": "deny"},
                {"target": "unix:/run/x.sock", "expect": "deny", "identity": "apikey:7"},
            ]
        }
    )  # fmt: skip
    first, second, third = policy.tests
    assert first.address == (ip_address("10.9.9.9"), ip_address("::ffff:10.0.0.1"))
    assert first.identity is None and first.transport == "tcp" and first.rule == 0
    assert second.bind and second.address is None
    assert third.identity == "apikey:7"


def test_principals_star_and_values() -> None:
    policy = ForwardingPolicy.from_mapping(
        {"rules": [{"target": "*", "action": "deny", "principals": ["*", "ops"]}]}
    )
    assert policy.rules[0].principals == frozenset({"*", "ops"})


def test_rule_constructor_validates() -> None:
    target = Rule.of("*", "allow").target
    with pytest.raises(ValueError):
        Rule(target, Action.ALLOW, frozenset())
    with pytest.raises(ValueError):
        Rule(target, Action.ALLOW, None, frozenset({"udp"}))
    with pytest.raises(ValueError):
        Rule.of("*", "allow", principals="ops")
    with pytest.raises(ValueError):
        Rule.of("*", "maybe")
    with pytest.raises(TypeError):
        ForwardingPolicy(rules=("*",))  # type: ignore[arg-type]
