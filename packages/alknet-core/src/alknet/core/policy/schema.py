"""Strict reading of the ``[forwarding]`` TOML table (auth-and-config.md §6.3, cli.md §12).

Every problem is collected and reported as ``<dotted.key>: <message>`` with 1-based list indexes
(``forwarding.rules[2].transports: unknown transport 'udp' (tcp, tls, quic, iroh)``).

Light module: standard library plus the policy value types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import ip_address
from typing import Any, Literal, NamedTuple, cast

from alknet.core.auth.identity import validate_scope
from alknet.core.errors import ConfigError
from alknet.core.policy.canon import IPAddress
from alknet.core.policy.grammar import (
    TRANSPORTS,
    Action,
    PolicyTest,
    Rule,
    bind_from_text,
    parse_target,
    request_from_text,
)

__all__ = ["ForwardingFields", "parse_forwarding_mapping"]

_TOP_KEYS = ("default", "listen_default", "rules", "listen", "tests")
_RULE_KEYS = ("target", "action", "principals", "transports")
_TEST_KEYS = ("identity", "scopes", "target", "transport", "address", "bind", "expect", "rule")
_EXPECT = ("allow", "deny", "refused")


class ForwardingFields(NamedTuple):
    default: Action
    rules: tuple[Rule, ...]
    listen_default: Action
    listen: tuple[Rule, ...] | None
    tests: tuple[PolicyTest, ...]


def _shown(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


class _Reader:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def unknown_keys(self, table: Mapping[Any, Any], allowed: Sequence[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                self.error(f"{path}.{key}", "unknown key")

    def string(self, table: Mapping[Any, Any], key: str, path: str, *, required: bool) -> str | None:
        if key not in table:
            if required:
                self.error(f"{path}.{key}", "missing required key")
            return None
        value = table[key]
        if not isinstance(value, str):
            self.error(f"{path}.{key}", "must be a string")
            return None
        return value

    def choice(
        self, table: Mapping[Any, Any], key: str, path: str, choices: Sequence[str], *, required: bool
    ) -> str | None:
        value = self.string(table, key, path, required=required)
        if value is not None and value not in choices:
            self.error(f"{path}.{key}", "must be " + " or ".join(f'"{c}"' for c in choices))
            return None
        return value

    def string_list(self, table: Mapping[Any, Any], key: str, path: str) -> list[str] | None:
        value = table[key]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.error(f"{path}.{key}", "must be an array of strings")
            return None
        return list(value)

    def tables(self, value: object, path: str) -> list[Mapping[Any, Any]]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
            self.error(path, "must be an array of tables")
            return []
        return list(value)

    # --- entries --------------------------------------------------------------------------------------------

    def rule(self, entry: Mapping[Any, Any], path: str, *, listen: bool) -> Rule | None:
        before = len(self.errors)
        self.unknown_keys(entry, _RULE_KEYS, path)
        text = self.string(entry, "target", path, required=True)
        target = None
        if text is not None:
            try:
                target = parse_target(text, listen=listen)
            except ValueError as exc:
                self.error(f"{path}.target", str(exc))
        action = self.choice(entry, "action", path, ("allow", "deny"), required=True)
        principals: list[str] | None = None
        if "principals" in entry:
            principals = self.string_list(entry, "principals", path)
            if principals is not None and not principals:
                self.error(f"{path}.principals", 'must not be empty (omit it, or use ["*"] for everyone)')
            elif principals is not None and not all(principals):
                self.error(f"{path}.principals", "entries must be non-empty strings")
        transports: list[str] | None = None
        if "transports" in entry:
            transports = self.string_list(entry, "transports", path)
            if transports is not None and not transports:
                self.error(f"{path}.transports", "must not be empty (omit it for every transport)")
            for name in transports or ():
                if name not in TRANSPORTS:
                    self.error(
                        f"{path}.transports", f"unknown transport {_shown(name)} (tcp, tls, quic, iroh)"
                    )
        if len(self.errors) > before or target is None or action is None or text is None:
            return None
        return Rule(
            target,
            Action(action),
            None if principals is None else frozenset(principals),
            None if transports is None else frozenset(transports),
            text,
        )

    def test(self, entry: Mapping[Any, Any], path: str) -> PolicyTest | None:
        before = len(self.errors)
        self.unknown_keys(entry, _TEST_KEYS, path)
        identity = self.string(entry, "identity", path, required=False)
        if identity == "":
            self.error(f"{path}.identity", "must not be empty")
        scopes: list[str] = []
        if "scopes" in entry:
            scopes = self.string_list(entry, "scopes", path) or []
            for index, scope in enumerate(scopes, 1):
                try:
                    validate_scope(scope)
                except ValueError as exc:
                    self.error(f"{path}.scopes[{index}]", str(exc))
        transport = self.choice(entry, "transport", path, sorted(TRANSPORTS), required=False) or "tcp"
        bind = False
        if "bind" in entry:
            if isinstance(entry["bind"], bool):
                bind = entry["bind"]
            else:
                self.error(f"{path}.bind", "must be true or false")
        target = self.string(entry, "target", path, required=True)
        if target is not None:
            try:
                bind_from_text(target) if bind else request_from_text(target)
            except ValueError as exc:
                self.error(f"{path}.target", str(exc))
        addresses: list[IPAddress] | None = None
        if "address" in entry:
            if bind:
                self.error(f"{path}.address", "is not used with bind = true")
            texts = self.string_list(entry, "address", path)
            addresses = []
            for index, text in enumerate(texts or (), 1):
                try:
                    addresses.append(ip_address(text))
                except ValueError:
                    self.error(f"{path}.address[{index}]", "must be an IP address")
        expect = self.choice(entry, "expect", path, _EXPECT, required=True)
        rule: int | None = None
        if "rule" in entry:
            value = entry["rule"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self.error(f"{path}.rule", "must be an integer >= 0 (0 = the default)")
            else:
                rule = value
        if len(self.errors) > before or target is None or expect is None:
            return None
        return PolicyTest(
            target=target,
            expect=cast(Literal["allow", "deny", "refused"], expect),
            identity=identity,
            scopes=tuple(scopes),
            transport=transport,
            address=None if addresses is None else tuple(addresses),
            bind=bind,
            rule=rule,
        )


def parse_forwarding_mapping(obj: object, *, prefix: str = "forwarding") -> ForwardingFields:
    """Validate a mapping in the TOML shape of ``[forwarding]``; raise ``ConfigError`` listing every problem.
    An absent or empty ``listen`` array means the built-in loopback listen rules (``listen = None``)."""
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{prefix}: must be a table")
    reader = _Reader()
    reader.unknown_keys(obj, _TOP_KEYS, prefix)
    default = reader.choice(obj, "default", prefix, ("allow", "deny"), required=False) or "allow"
    listen_default = reader.choice(obj, "listen_default", prefix, ("allow", "deny"), required=False) or "deny"
    rules: list[Rule] = []
    if "rules" in obj:
        for index, entry in enumerate(reader.tables(obj["rules"], f"{prefix}.rules"), 1):
            rule = reader.rule(entry, f"{prefix}.rules[{index}]", listen=False)
            if rule is not None:
                rules.append(rule)
    listen: list[Rule] = []
    if "listen" in obj:
        for index, entry in enumerate(reader.tables(obj["listen"], f"{prefix}.listen"), 1):
            rule = reader.rule(entry, f"{prefix}.listen[{index}]", listen=True)
            if rule is not None:
                listen.append(rule)
    tests: list[PolicyTest] = []
    if "tests" in obj:
        for index, entry in enumerate(reader.tables(obj["tests"], f"{prefix}.tests"), 1):
            test = reader.test(entry, f"{prefix}.tests[{index}]")
            if test is not None:
                tests.append(test)
    if reader.errors:
        raise ConfigError(reader.errors)
    return ForwardingFields(
        default=Action(default),
        rules=tuple(rules),
        listen_default=Action(listen_default),
        listen=tuple(listen) or None,
        tests=tuple(tests),
    )
