"""Small value checks shared by the command-line, environment and TOML layers of the configuration."""

from __future__ import annotations

from collections.abc import Callable

from alknet.core.config.static import NODE_RE

__all__ = ["ACTIONS", "check_node", "problem"]

ACTIONS = ("allow", "deny")


def problem(check: Callable[[], object]) -> str | None:
    """The message of the ``ValueError`` that ``check()`` raises, or ``None``."""
    try:
        check()
    except ValueError as exc:
        return str(exc)
    return None


def check_node(name: str) -> str:
    if NODE_RE.fullmatch(name) is None or name == "head":
        raise ValueError("node name must match [a-z0-9][a-z0-9-]{0,62} and not be 'head'")
    return name
