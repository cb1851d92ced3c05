"""Output lines of ``alknet policy check`` and ``alknet policy test`` (cli.md §7, auth-and-config.md §7.8).

Light module: standard library only (plus the policy value types).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from alknet.core.policy.grammar import (
    NEEDS_ADDRESS,
    REASON_DEFAULT,
    Action,
    Decision,
    PolicyTest,
)

__all__ = [
    "PROXY_ADDRESS_RULES_WARNING",
    "TestResult",
    "check_exit_code",
    "describe_decision",
    "format_check_line",
    "format_outcome",
    "format_summary",
    "format_test_line",
    "subject_of",
]

PROXY_ADDRESS_RULES_WARNING = "address rules do not apply to host names behind an outbound proxy"
_FINGERPRINT_SHOWN = len("SHA256:") + 8


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of one ``[[forwarding.tests]]`` entry. ``index`` is 1-based; ``line`` is the printed
    line and ``message`` the part after ``->`` (never the target)."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    index: int
    test: PolicyTest
    decision: Decision
    passed: bool
    line: str

    @property
    def message(self) -> str:
        """``allow (rule 1)`` or ``expected deny got allow (rule 3)``."""
        return format_outcome(self.test, self.decision, self.passed)


def describe_decision(decision: Decision) -> str:
    """``rule 3``, ``default`` or the reason word (``invalid_target``, ``permitopen``,
    ``builtin_listen``...)."""
    if decision.rule is not None:
        return f"rule {decision.rule}"
    return decision.reason


def subject_of(test: PolicyTest) -> str:
    """Who a test is about: a shortened identity (``SHA256:lbmsoA0y...``), else ``scopes=a,b``, else ``-``."""
    if test.identity:
        ident = test.identity
        if ident.startswith("SHA256:") and len(ident) > _FINGERPRINT_SHOWN:
            return ident[:_FINGERPRINT_SHOWN] + "..."
        return ident
    if test.scopes:
        return "scopes=" + ",".join(test.scopes)
    return "-"


def _expected(test: PolicyTest) -> str:
    if test.rule is None:
        return test.expect
    return f"{test.expect} ({'default' if test.rule == 0 else f'rule {test.rule}'})"


def format_outcome(test: PolicyTest, decision: Decision, passed: bool) -> str:
    """The part after ``->``: ``allow (rule 1)`` or ``expected deny got allow (rule 3)`` (never the
    target)."""
    got = f"{decision.action} ({describe_decision(decision)})"
    return got if passed else f"expected {_expected(test)} got {got}"


def format_test_line(index: int, test: PolicyTest, decision: Decision, passed: bool) -> str:
    """``ok 1 alknet-control:0 tls SHA256:lbmsoA0y... -> allow (rule 1)`` or
    ``FAIL 2 db.corp:22 tcp scopes=ops -> expected deny got allow (rule 3)``."""
    head = f"{'ok' if passed else 'FAIL'} {index} {test.target} {test.transport} {subject_of(test)}"
    return f"{head} -> {format_outcome(test, decision, passed)}"


def format_summary(results: Sequence[TestResult]) -> str:
    """``N passed, N failed``."""
    passed = sum(1 for r in results if r.passed)
    return f"{passed} passed, {len(results) - passed} failed"


def format_check_line(decision: Decision, target: str) -> str:
    """The one line of ``policy check``: ``allow rule=2 target="db.internal:5432"``, ``allow default
    target=...``, ``deny default``, ``deny rule=5``, ``deny reason=permitopen``, ``refused
    reason=invalid_target``, ``needs-address rule=4``."""
    if decision.rule is not None:
        how = f"rule={decision.rule}"
    elif decision.reason == REASON_DEFAULT:
        how = "default"
    elif decision.action == NEEDS_ADDRESS:
        how = ""
    else:
        how = f"reason={decision.reason}"
    parts = [str(decision.action)]
    if how:
        parts.append(how)
    if decision.action == Action.ALLOW:
        parts.append("target=" + json.dumps(target, ensure_ascii=False))
    return " ".join(parts)


def check_exit_code(decision: Decision) -> int:
    """``policy check`` exit code: 0 allow, 1 deny or refused, 3 needs-address."""
    if decision.action == Action.ALLOW:
        return 0
    if decision.action == NEEDS_ADDRESS:
        return 3
    return 1
