"""Paths, scope and path-grant matching, and AccessControl checks (``call-protocol.md`` §6.1, §6.5).

Wildcards appear only in held scopes; required scopes and tested paths are literal. Paths split on ``/``,
capability scopes on ``:``:

- a ``*`` segment matches exactly one segment;
- a trailing ``*`` segment matches one or more remaining segments;
- a ``*`` inside a segment is no wildcard (config validation rejects it, :func:`validate_grant`);
- the bare held scope ``*`` matches every path and every scope.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from alknet.core.auth.identity import Identity, validate_scope
from alknet.core.call.envelope import CallError, ErrorCode

if TYPE_CHECKING:
    from alknet.core.call.registry import OperationSpec

__all__ = [
    "HEAD",
    "MAX_PATH_BYTES",
    "SEGMENT_RE",
    "authorize",
    "canonical_path",
    "check_access_control",
    "has_scope",
    "is_valid_path",
    "matches",
    "namespace_of",
    "path_granted",
    "split_path",
    "validate_grant",
]

SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_PATH_BYTES: Final = 512
HEAD: Final = "head"


def split_path(path: object) -> tuple[str, ...] | None:
    """The segments of a valid operation path (``/a/b`` -> ``("a", "b")``), or None if it is invalid.

    Valid: starts with ``/``, at most 512 bytes, at least one segment, each ``[A-Za-z0-9_.-]{1,64}``
    (so no empty segment and no trailing ``/``). Results are cached (every call checks its path here).
    """
    if type(path) is not str:
        if not isinstance(path, str):
            return None
        path = str(path)
    return _split_path(path)


@functools.lru_cache(maxsize=4096)
def _split_path(path: str) -> tuple[str, ...] | None:
    if not path.startswith("/") or len(path) > MAX_PATH_BYTES:
        return None
    if not path.isascii():
        return None  # every valid character is ASCII, so bytes == characters
    segs = tuple(path[1:].split("/"))
    for s in segs:
        if SEGMENT_RE.fullmatch(s) is None:
            return None
    return segs


def is_valid_path(path: object) -> bool:
    return split_path(path) is not None


def namespace_of(path: str) -> str:
    """The second-to-last segment of a valid path with at least two segments; else ``ValueError``."""
    segs = split_path(path)
    if segs is None or len(segs) < 2:
        raise ValueError(f"invalid operation path {path[:80]!r}")
    return segs[-2]


def canonical_path(path: str) -> str:
    """``path`` with a leading ``head`` segment removed (``/head/fs/readFile`` -> ``/fs/readFile``)."""
    if path.startswith("/head/"):
        return path[5:]
    return path


def _match_segments(held: list[str], tested: list[str]) -> bool:
    last = len(held) - 1
    for i, h in enumerate(held):
        if i == last and h == "*" and i > 0:
            return len(tested) > i  # trailing *: one or more remaining segments
        if i >= len(tested):
            return False
        if h != "*" and h != tested[i]:
            return False
    return len(held) == len(tested)


def matches(held: str, tested: str) -> bool:
    """True if the held scope (possibly a wildcard pattern) covers the literal ``tested`` path or scope."""
    if held == "*":
        return True
    if held == tested:
        return True
    held_is_path = held.startswith("/")
    if held_is_path != tested.startswith("/"):
        return False
    sep = "/" if held_is_path else ":"
    return _match_segments(held.split(sep), tested.split(sep))


def has_scope(held: Iterable[str], required: str) -> bool:
    """True if any held scope matches the literal ``required`` scope."""
    return any(matches(h, required) for h in held)


def path_granted(identity: Identity, path: str) -> bool:
    """The path-grant check on the canonical path (a held scope that is a path pattern matching it)."""
    return _granted(identity.scopes, canonical_path(path))


@functools.lru_cache(maxsize=4096)
def _granted(scopes: tuple[str, ...], cpath: str) -> bool:
    return any(matches(h, cpath) for h in scopes if h == "*" or h.startswith("/"))


def validate_grant(scope: str) -> str:
    """Validate a held scope: the scope grammar, and no ``*`` inside a segment. Raises ``ValueError``."""
    validate_scope(scope)
    if scope == "*":
        return scope
    sep = "/" if scope.startswith("/") else ":"
    for seg in scope.split(sep):
        if "*" in seg and seg != "*":
            raise ValueError(f"invalid scope {scope!r}: '*' inside a segment is not a wildcard")
    return scope


def check_access_control(identity: Identity, spec: OperationSpec) -> str | None:
    """None if ``identity`` passes the spec's AccessControl, else the reason (for a FORBIDDEN message)."""
    ac = spec.access_control
    held = identity.scopes
    for req in ac.required_scopes:
        if not has_scope(held, req):
            return f"missing scope {req}"
    if ac.required_scopes_any and not any(has_scope(held, r) for r in ac.required_scopes_any):
        return "missing one of the scopes " + ", ".join(ac.required_scopes_any)
    if ac.resource_type is not None:
        action = ac.resource_action
        if action is None:
            action = "write" if spec.op_type == "mutation" else "read"
        prefix = f"{ac.resource_type}:"
        for key, actions in identity.resources.items():
            if key.startswith(prefix) and (action in actions or "*" in actions):
                break
        else:
            return f"missing {action} access to a {ac.resource_type} resource"
    return None


def authorize(identity: Identity, spec: OperationSpec, path: str, *, path_grant: bool = True) -> None:
    """The two checks for an untrusted call on ``path``; raises ``CallError(FORBIDDEN)``.

    ``path_grant=False`` skips the path grant (built-in operations).
    """
    if path_grant and not path_granted(identity, path):
        raise CallError(ErrorCode.FORBIDDEN, f"no grant for {canonical_path(path)}", False)
    reason = check_access_control(identity, spec)
    if reason is not None:
        raise CallError(ErrorCode.FORBIDDEN, reason, False)
