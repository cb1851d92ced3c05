"""The forwarding policy: which channel opens and remote-forward binds an identity may make
(auth-and-config.md §7, transport-and-ssh.md §9).

- ``ForwardingPolicy.decide`` / ``decide_bind``: the global policy for one request (pure, synchronous).
- ``ForwardingPolicy.evaluate``: steps 1-5 of §7.3 for one channel open with already known DNS answers
  (key options, canonicalisation, per-key ``permitopen`` gate, policy, unknown reserved names);
  ``evaluate_open`` is the same with lazy resolution through an injectable (async or sync) resolver,
  called at most once and only when an applicable address rule is reached.
- ``run_policy_tests`` / ``check_policy_tests``: the ``[[forwarding.tests]]`` runner and its output lines.

Light module: no asyncssh; standard library plus ``alknet.core.auth.identity`` and ``alknet.core.errors``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, TypeAlias

from alknet.core.auth.identity import Identity, KeyOptions
from alknet.core.errors import ConfigError
from alknet.core.policy.canon import (
    Canonical,
    Invalid,
    IPAddress,
    canonical_ip,
    canonicalise_host,
    canonicalise_unix_path,
)
from alknet.core.policy.grammar import (
    NEEDS_ADDRESS,
    REASON_BUILTIN_LISTEN,
    REASON_DEFAULT,
    REASON_INVALID_ADDRESS,
    REASON_INVALID_TARGET,
    REASON_KEY_OPTION,
    REASON_NEEDS_ADDRESS,
    REASON_NO_ADDRESS,
    REASON_NO_UNIX_RULE,
    REASON_PERMITOPEN,
    REASON_RULE,
    REASON_UNKNOWN_RESERVED,
    REFUSED,
    TRANSPORTS,
    Action,
    Decision,
    Match,
    PolicyTest,
    Request,
    Rule,
    Target,
    TargetKind,
    bind_from_text,
    canonical_bind_host,
    is_known_reserved,
    match_bind_target,
    match_target,
    parse_ports,
    parse_target,
    request_from_text,
)
from alknet.core.policy.report import (
    PROXY_ADDRESS_RULES_WARNING,
    TestResult,
    check_exit_code,
    format_check_line,
    format_outcome,
    format_summary,
    format_test_line,
)
from alknet.core.policy.schema import parse_forwarding_mapping

__all__ = [
    "BUILTIN_LISTEN_RULES",
    "PROXY_ADDRESS_RULES_WARNING",
    "TRANSPORTS",
    "Action",
    "Canonical",
    "Decision",
    "ForwardingPolicy",
    "IPAddress",
    "Invalid",
    "PolicyTest",
    "Request",
    "Resolver",
    "Rule",
    "Target",
    "TargetKind",
    "TestResult",
    "bind_from_text",
    "canonicalise_host",
    "canonicalise_unix_path",
    "check_exit_code",
    "check_policy_tests",
    "evaluate_open",
    "format_check_line",
    "format_outcome",
    "format_summary",
    "format_test_line",
    "parse_ports",
    "parse_target",
    "proxy_warning",
    "request_from_text",
    "run_policy_tests",
]

Resolver: TypeAlias = Callable[[str], Awaitable[Sequence[IPAddress]] | Sequence[IPAddress]]

# §7.7: without any [[forwarding.listen]] entry, loopback binds on port 0 (server-chosen) or 1024-65535
# are allowed.
BUILTIN_LISTEN_RULES: tuple[Rule, ...] = tuple(
    Rule.of(f"{host}:{ports}", Action.ALLOW, listen=True)
    for host in ("localhost", "127.0.0.1", "[::1]")
    for ports in ("0", "1024-65535")
)

_REFUSED_KEY_OPTION = Decision(REFUSED, None, REASON_KEY_OPTION)
_REFUSED_INVALID = Decision(REFUSED, None, REASON_INVALID_TARGET)
_DENY_PERMITOPEN = Decision(Action.DENY, None, REASON_PERMITOPEN)


def _gate(
    permitopen: tuple[Target, ...] | None,
    canon: Canonical,
    port: int | None,
    address: IPAddress | None,
    proxy: bool,
) -> Match:
    """§7.6: the per-key allowlist (principal/transport filters do not apply)."""
    if permitopen is None:
        return Match.YES
    need = False
    for target in permitopen:
        result = match_target(target, canon, port, address, proxy=proxy)
        if result is Match.YES:
            return Match.YES
        need = need or result is Match.NEED
    return Match.NEED if need else Match.NO


def _as_address(value: object) -> IPAddress | Invalid:
    if isinstance(value, str):
        try:
            value = ip_address(value)
        except ValueError:
            return Invalid("not an IP address")
    if not isinstance(value, IPAddress):
        return Invalid("not an IP address")
    return canonical_ip(value)


def _canonical_answers(addresses: Iterable[object]) -> list[IPAddress | Invalid]:
    """The DNS answer as canonical addresses (IPv4-mapped -> IPv4), duplicates dropped, order kept."""
    out: list[IPAddress | Invalid] = []
    for raw in addresses:
        address = _as_address(raw)
        if isinstance(address, Invalid) or address not in out:
            out.append(address)
    return out


@dataclass(frozen=True, slots=True)
class ForwardingPolicy:
    """The hot-swapped forwarding policy. ``ForwardingPolicy()`` is the built-in one: channel opens allowed
    (default allow, no rules), binds limited to the built-in loopback listen rules, then denied."""

    default: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    listen_default: Action = Action.DENY
    listen: tuple[Rule, ...] | None = None  # None = BUILTIN_LISTEN_RULES
    tests: tuple[PolicyTest, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", Action(self.default))
        object.__setattr__(self, "listen_default", Action(self.listen_default))
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "tests", tuple(self.tests))
        if self.listen is not None:
            object.__setattr__(self, "listen", tuple(self.listen))
        for rule in (*self.rules, *(self.listen or ())):
            if not isinstance(rule, Rule):
                raise TypeError("rules and listen must hold Rule objects")
        for test in self.tests:
            if not isinstance(test, PolicyTest):
                raise TypeError("tests must hold PolicyTest objects")

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any] | object, *, prefix: str = "forwarding") -> ForwardingPolicy:
        """Build from the TOML shape of ``[forwarding]``; ``ConfigError`` names every bad dotted key."""
        fields = parse_forwarding_mapping(obj, prefix=prefix)
        return cls(fields.default, fields.rules, fields.listen_default, fields.listen, fields.tests)

    @property
    def has_address_deny_rules(self) -> bool:
        """True when a channel rule is an ADDRESS/NETWORK deny rule (§7.5: such rules cannot protect host
        names behind an outbound proxy; see ``proxy_warning``)."""
        return any(
            r.action is Action.DENY and r.target.kind in (TargetKind.ADDRESS, TargetKind.NETWORK)
            for r in self.rules
        )

    # --- channel opens --------------------------------------------------------------------------------------

    def _decide_canonical(
        self,
        canon: Canonical,
        port: int | None,
        identity: Identity,
        transport: str,
        address: IPAddress | None,
        proxy: bool,
    ) -> Decision:
        for number, rule in enumerate(self.rules, 1):
            if not rule.applies_to(identity.id, identity.scopes, transport):
                continue
            result = match_target(rule.target, canon, port, address, proxy=proxy)
            if result is Match.NEED:
                return Decision(NEEDS_ADDRESS, number, REASON_NEEDS_ADDRESS)
            if result is Match.YES:
                return self._final(rule.action, number, REASON_RULE, canon, address)
        if canon.kind == "unix":
            return Decision(Action.DENY, None, REASON_NO_UNIX_RULE)
        return self._final(self.default, None, REASON_DEFAULT, canon, address)

    @staticmethod
    def _final(
        action: Action, rule: int | None, reason: str, canon: Canonical, address: IPAddress | None
    ) -> Decision:
        addresses: tuple[IPAddress, ...] = ()
        if action is Action.ALLOW:
            if canon.kind == "ip":
                assert not isinstance(canon.value, str)
                addresses = (canon.value,)
            elif address is not None:
                addresses = (address,)
        return Decision(action, rule, reason, addresses)

    def decide(
        self,
        req: Request,
        identity: Identity,
        transport: str,
        address: IPAddress | None = None,
        *,
        proxy: bool = False,
    ) -> Decision:
        """The global policy for one channel open (canonicalisation included; no key options, no
        ``permitopen``). For a host name that reaches an applicable address rule, ``address`` is the
        resolved address to judge; without one the result is ``needs-address`` (or, with ``proxy=True``,
        address rules simply do not match names)."""
        canon = req.canonical()
        if isinstance(canon, Invalid):
            return _REFUSED_INVALID
        checked: IPAddress | None = None
        if address is not None and canon.kind == "name":
            converted = _as_address(address)
            if isinstance(converted, Invalid):
                return Decision(Action.DENY, None, REASON_INVALID_ADDRESS)
            checked = converted
        return self._decide_canonical(canon, req.port, identity, transport, checked, proxy)

    def evaluate(
        self,
        req: Request,
        identity: Identity,
        transport: str,
        *,
        options: KeyOptions | None = None,
        port_forwarding: bool = True,
        addresses: Sequence[IPAddress | str] | None = None,
        proxy: bool = False,
    ) -> Decision:
        """Steps 1-5 of §7.3 for one channel open. ``port_forwarding=False`` is a certificate without
        ``permit-port-forwarding``. ``addresses`` is the DNS answer (in resolver order) if already known; it
        is only consulted when an applicable address rule (or ``permitopen`` address target) is reached, else
        ``None`` gives ``needs-address``. Unknown reserved names that the policy allows are refused with
        ``unknown_reserved`` (the server answers those with OPEN_CONNECT_FAILED, every other refusal or deny
        with OPEN_ADMINISTRATIVELY_PROHIBITED)."""
        opts = options if options is not None else KeyOptions()
        if opts.no_port_forwarding or not port_forwarding:
            return _REFUSED_KEY_OPTION
        canon = req.canonical()
        if isinstance(canon, Invalid):
            return _REFUSED_INVALID
        port = req.port
        gate = _gate(opts.permitopen, canon, port, None, proxy)
        if gate is Match.NO:
            return _DENY_PERMITOPEN
        decision = self._decide_canonical(canon, port, identity, transport, None, proxy)
        if gate is Match.NEED and decision.action == Action.ALLOW:
            decision = Decision(NEEDS_ADDRESS, None, REASON_NEEDS_ADDRESS)
        if decision.action == NEEDS_ADDRESS:
            if addresses is None:
                return decision
            return self._per_address(canon, port, identity, transport, opts.permitopen, addresses, proxy)
        if decision.allowed and canon.kind == "reserved" and not is_known_reserved(str(canon.value), port):
            return Decision(REFUSED, None, REASON_UNKNOWN_RESERVED)
        return decision

    def _per_address(
        self,
        canon: Canonical,
        port: int | None,
        identity: Identity,
        transport: str,
        permitopen: tuple[Target, ...] | None,
        addresses: Sequence[IPAddress | str],
        proxy: bool,
    ) -> Decision:
        """§7.5: one decision per resolved address; connect only to the allowed ones, in resolver order."""
        decisions: list[Decision] = []
        for address in _canonical_answers(addresses):
            if isinstance(address, Invalid):
                decisions.append(Decision(Action.DENY, None, REASON_INVALID_ADDRESS))
            elif _gate(permitopen, canon, port, address, proxy) is not Match.YES:
                decisions.append(_DENY_PERMITOPEN)
            else:
                decisions.append(self._decide_canonical(canon, port, identity, transport, address, proxy))
        if not decisions:
            return Decision(Action.DENY, None, REASON_NO_ADDRESS)
        allowed = [d for d in decisions if d.allowed]
        if not allowed:
            return decisions[0]
        first = allowed[0]
        return Decision(
            Action.ALLOW, first.rule, first.reason, tuple(a for d in allowed for a in d.addresses)
        )

    # --- binds ----------------------------------------------------------------------------------------------

    def decide_bind(self, host: str, port: int, identity: Identity, transport: str) -> Decision:
        """§7.7: a ``tcpip-forward`` request against ``listen`` (or the built-in loopback rules), then
        ``listen_default``. Host names other than ``localhost`` are refused."""
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            return _REFUSED_INVALID
        bind_host = canonical_bind_host(host)
        if isinstance(bind_host, Invalid):
            return _REFUSED_INVALID
        if self.listen is None:
            if any(match_bind_target(rule.target, bind_host, port) for rule in BUILTIN_LISTEN_RULES):
                return Decision(Action.ALLOW, None, REASON_BUILTIN_LISTEN)
        else:
            for number, rule in enumerate(self.listen, 1):
                if rule.applies_to(identity.id, identity.scopes, transport) and match_bind_target(
                    rule.target, bind_host, port
                ):
                    return Decision(rule.action, number, REASON_RULE)
        return Decision(self.listen_default, None, REASON_DEFAULT)

    def evaluate_bind(
        self,
        host: str,
        port: int,
        identity: Identity,
        transport: str,
        *,
        options: KeyOptions | None = None,
        port_forwarding: bool = True,
    ) -> Decision:
        """``restrict``/``no-port-forwarding`` or a certificate without ``permit-port-forwarding`` refuse
        every bind (``permitopen`` never affects binds); otherwise ``decide_bind``."""
        if (options is not None and options.no_port_forwarding) or not port_forwarding:
            return _REFUSED_KEY_OPTION
        return self.decide_bind(host, port, identity, transport)


async def evaluate_open(
    policy: ForwardingPolicy,
    req: Request,
    identity: Identity,
    transport: str,
    *,
    options: KeyOptions | None = None,
    port_forwarding: bool = True,
    resolver: Resolver | None = None,
    proxy: bool = False,
) -> Decision:
    """``policy.evaluate`` with lazy DNS: ``resolver(canonical_name)`` (async or sync) is called at most once,
    and only when evaluation reaches an applicable address rule; without a resolver the result is then
    ``needs-address``. A resolver exception propagates (the server reports it as ``name resolution failed``).
    """
    decision = policy.evaluate(
        req, identity, transport, options=options, port_forwarding=port_forwarding, proxy=proxy
    )
    if decision.action != NEEDS_ADDRESS or resolver is None:
        return decision
    canon = req.canonical()
    assert isinstance(canon, Canonical) and canon.kind == "name"
    answer = resolver(str(canon.value))
    if inspect.isawaitable(answer):
        answer = await answer
    return policy.evaluate(
        req,
        identity,
        transport,
        options=options,
        port_forwarding=port_forwarding,
        addresses=tuple(answer),
        proxy=proxy,
    )


def proxy_warning(policy: ForwardingPolicy, proxy: bool) -> str | None:
    """The §7.5 WARNING message to log when a policy with address deny rules is loaded behind an outbound
    proxy.
    """
    if proxy and policy.has_address_deny_rules:
        return PROXY_ADDRESS_RULES_WARNING
    return None


# --- policy tests -------------------------------------------------------------------------------------------


def _run_one(policy: ForwardingPolicy, test: PolicyTest, proxy: bool) -> Decision:
    identity = Identity(test.identity or "-", test.scopes)
    if test.bind:
        host, port = bind_from_text(test.target)
        return policy.decide_bind(host, port, identity, test.transport)
    return policy.evaluate(
        request_from_text(test.target), identity, test.transport, addresses=test.address, proxy=proxy
    )


def run_policy_tests(
    policy: ForwardingPolicy, tests: Sequence[PolicyTest] | None = None, *, proxy: bool = False
) -> list[TestResult]:
    """Run ``tests`` (default: ``policy.tests``) against the global policy (no key options). A test passes
    when the action equals ``expect`` and, if ``rule`` is given, the deciding rule number does too (0 =
    default).
    """
    results: list[TestResult] = []
    for index, test in enumerate(policy.tests if tests is None else tests, 1):
        decision = _run_one(policy, test, proxy)
        passed = decision.action == test.expect and (test.rule is None or (decision.rule or 0) == test.rule)
        results.append(
            TestResult(index, test, decision, passed, format_test_line(index, test, decision, passed))
        )
    return results


def check_policy_tests(
    policy: ForwardingPolicy, *, prefix: str = "forwarding", proxy: bool = False
) -> list[TestResult]:
    """Run ``policy.tests``; raise ``ConfigError`` with one ``forwarding.tests[N]: expected ... got ...``
    error per failing test (no targets in the messages), else return the results."""
    results = run_policy_tests(policy, proxy=proxy)
    failed = [r for r in results if not r.passed]
    if failed:
        raise ConfigError(f"{prefix}.tests[{r.index}]: {r.message}" for r in failed)
    return results
