"""call-protocol.md §6.1 and §6.5: paths, wildcard matching, path grants and AccessControl."""

from __future__ import annotations

import pytest

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    AccessControl,
    CallError,
    OperationSpec,
    OperationType,
    authorize,
    canonical_path,
    check_access_control,
    has_scope,
    is_valid_path,
    matches,
    namespace_of,
    path_granted,
    split_path,
    validate_grant,
)

# (held, tested, match): every row of the wildcard table of §6.5, plus edge cases
WILDCARD_TABLE = [
    ("/dev1/*", "/dev1/fs/readFile", True),
    ("/dev1/*", "/dev1", False),
    ("/*/fs/*", "/dev2/fs/a/b", True),
    ("/*/fs/*", "/fs/readFile", False),
    ("/*/fs/readFile", "/dev1/fs/readFile", True),
    ("/fs/read*", "/fs/readFile", False),
    ("node:*", "node:dev1", True),
    ("node:*", "node", False),
    ("events:*", "events:publish:jobs.done", True),
    ("*", "/anything/at/all", True),
    ("*", "any:scope", True),
    ("*", "plain", True),
]
EXTRA = [
    ("/*", "/fs", True),
    ("/*", "/fs/readFile", True),
    ("/*/readFile", "/fs/readFile", True),
    ("/*/readFile", "/fs/x/readFile", False),
    ("/fs/readFile", "/fs/readFile", True),
    ("/fs/readFile", "/fs/readFileX", False),
    ("/dev1/*", "node:dev1", False),
    ("node:*", "/node/dev1", False),
    ("*:read", "fs:read", True),
    ("*:read", "fs:write", False),
    ("fs:*", "fs:read", True),
    ("fs:read", "fs:read:x", False),
    ("events:publish:*", "events:publish", False),
    ("node:dev*", "node:dev1", False),
]


@pytest.mark.parametrize(("held", "tested", "expected"), WILDCARD_TABLE + EXTRA)
def test_wildcard_table(held: str, tested: str, expected: bool) -> None:
    assert matches(held, tested) is expected


@pytest.mark.parametrize("good", ["*", "/dev1/*", "/*/fs/*", "node:*", "fs:read", "events:publish:jobs.done"])
def test_validate_grant_accepts(good: str) -> None:
    assert validate_grant(good) == good


@pytest.mark.parametrize("bad", ["/fs/read*", "node:dev*", "**", "/a/*b/c", "bad scope", "", "é"])
def test_validate_grant_rejects_star_inside_a_segment_and_bad_syntax(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_grant(bad)


VALID_PATHS = ["/fs/readFile", "/dev1/fs/readFile", "/a", "/A-b_c.d/x", "/" + "a" * 64 + "/b", "/a/b/c/d/e"]
INVALID_PATHS = [
    "",
    "/",
    "fs/readFile",
    "/fs/",
    "//fs",
    "/fs//readFile",
    "/fs/read file",
    "/fs/read*",
    "/" + "a" * 65 + "/b",
    "/" + "/".join(["abcdefg"] * 64) + "x",  # 513 bytes
    "/fs/é",
    "/fs/readFile\n",
]


@pytest.mark.parametrize("path", VALID_PATHS)
def test_valid_paths(path: str) -> None:
    assert is_valid_path(path) and split_path(path) == tuple(path[1:].split("/"))


@pytest.mark.parametrize("path", INVALID_PATHS)
def test_invalid_paths(path: str) -> None:
    assert split_path(path) is None and not is_valid_path(path)


def test_path_length_limit_is_512_bytes() -> None:
    ok = "/" + "/".join(["abcdefg"] * 63) + "/abcdef"
    assert len(ok) == 511 and is_valid_path(ok)
    assert is_valid_path(ok + "x") and len(ok + "x") == 512
    assert not is_valid_path(ok + "xy")
    assert not is_valid_path(5)


def test_namespace_and_canonical_path() -> None:
    assert namespace_of("/fs/readFile") == "fs" and namespace_of("/dev1/fs/readFile") == "fs"
    with pytest.raises(ValueError):
        namespace_of("/fs")
    assert canonical_path("/head/fs/readFile") == "/fs/readFile"
    assert canonical_path("/head/dev1/fs/readFile") == "/dev1/fs/readFile"
    assert canonical_path("/fs/readFile") == "/fs/readFile"
    assert canonical_path("/header/x") == "/header/x"


READ_FILE = OperationSpec(
    "/fs/readFile", "fs", OperationType.QUERY, access_control=AccessControl(("fs:read",))
)


def _forbidden(identity: Identity, spec: OperationSpec, path: str) -> bool:
    try:
        authorize(identity, spec, path)
    except CallError as exc:
        assert exc.code == "FORBIDDEN" and exc.retryable is False
        return True
    return False


def test_grants_acceptance() -> None:
    both = Identity("SHA256:a", ("/dev1/*", "fs:read"))
    assert not _forbidden(both, READ_FILE, "/dev1/fs/readFile")
    assert _forbidden(Identity("SHA256:a", ("/dev1/*",)), READ_FILE, "/dev1/fs/readFile")
    assert _forbidden(Identity("SHA256:a", ("fs:read",)), READ_FILE, "/dev1/fs/readFile")
    assert _forbidden(Identity("SHA256:a", ("/dev2/*", "fs:read")), READ_FILE, "/dev1/fs/readFile")
    assert not _forbidden(Identity("SHA256:root", ("*",)), READ_FILE, "/dev1/fs/readFile")
    assert not _forbidden(Identity("SHA256:a", ("/*/fs/*", "fs:*")), READ_FILE, "/dev1/fs/readFile")


def test_head_prefix_is_authorised_like_the_plain_path() -> None:
    for scopes, expected in [(("/fs/*", "fs:read"), True), (("/head/*", "fs:read"), False), ((), False)]:
        ident = Identity("SHA256:a", scopes)
        assert path_granted(ident, "/head/fs/readFile") is path_granted(ident, "/fs/readFile") is expected
        assert _forbidden(ident, READ_FILE, "/head/fs/readFile") is _forbidden(
            ident, READ_FILE, "/fs/readFile"
        )


def test_builtins_skip_only_the_path_grant() -> None:
    status = OperationSpec(
        "/services/status", "services", OperationType.QUERY, access_control=AccessControl(("admin:status",))
    )
    authorize(Identity("SHA256:a", ("admin:status",)), status, "/services/status", path_grant=False)
    with pytest.raises(CallError):
        authorize(Identity("SHA256:a"), status, "/services/status", path_grant=False)


def _res(op_type: OperationType, resources: dict[str, list[str]], **ac: str) -> str | None:
    spec = OperationSpec(
        "/git/push", "git", op_type, access_control=AccessControl(resource_type="repo", **ac)
    )
    return check_access_control(Identity("SHA256:a", (), resources), spec)


def test_resources_acceptance() -> None:
    assert _res(OperationType.MUTATION, {"repo:x": ["read"]}) is not None
    assert _res(OperationType.MUTATION, {"repo:x": ["write"]}) is None
    assert _res(OperationType.QUERY, {"repo:x": ["read"]}) is None
    assert _res(OperationType.SUBSCRIPTION, {"repo:x": ["read"]}) is None
    assert _res(OperationType.QUERY, {"repo:x": ["write"]}) is not None
    assert _res(OperationType.MUTATION, {"repo:x": ["*"]}) is None
    assert _res(OperationType.MUTATION, {"repository:x": ["write"]}) is not None
    assert _res(OperationType.MUTATION, {"repo": ["write"]}) is not None
    assert _res(OperationType.QUERY, {"repo:x": ["read"]}, resource_action="admin") is not None
    assert (
        _res(OperationType.QUERY, {"repo:y": ["read"], "repo:x": ["admin"]}, resource_action="admin") is None
    )
    assert _res(OperationType.QUERY, {}) is not None


def test_required_scopes_any_and_all() -> None:
    spec = OperationSpec(
        "/a/b",
        "a",
        OperationType.QUERY,
        access_control=AccessControl(("x:1", "x:2"), ("y:1", "y:2")),
    )

    def ok(*scopes: str) -> bool:
        return check_access_control(Identity("SHA256:a", scopes), spec) is None

    assert ok("x:1", "x:2", "y:2")
    assert not ok("x:1", "x:2")
    assert not ok("x:1", "y:1")
    assert ok("x:*", "y:*")
    assert ok("*")
    assert has_scope(["a:*"], "a:b") and not has_scope([], "a:b")
