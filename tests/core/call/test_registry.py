"""call-protocol.md §1 and §6: OperationSpec wire form, the registry, input/output validation and built-ins."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from call_helpers import ctx

from alknet.core.auth.identity import Identity
from alknet.core.call import (
    BUILTIN_SPECS,
    AccessControl,
    CallError,
    OperationContext,
    OperationRegistry,
    OperationSpec,
    OperationType,
    Registered,
    check_spec,
    compile_schema,
    is_valid_node_name,
    register_builtins,
)
from alknet.core.call.schema import json_pointer

Q, M, S = OperationType.QUERY, OperationType.MUTATION, OperationType.SUBSCRIPTION
F13_INPUT_SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
READ_FILE = OperationSpec(
    "/fs/readFile", "fs", Q, F13_INPUT_SCHEMA, {"type": "object"}, AccessControl(("fs:read",))
)


async def echo(input: Any, c: OperationContext) -> Any:
    return input


async def tail(input: Any, c: OperationContext) -> AsyncIterator[Any]:
    yield input


def plain(input: Any, c: OperationContext) -> Any:
    return input


def registry(*specs: OperationSpec, builtins: bool = True, **kw: Any) -> OperationRegistry:
    reg = OperationRegistry(validate_output=True)
    if builtins:
        register_builtins(reg, **kw)
    for s in specs:
        reg.register(s, tail if s.op_type is S else echo)
    return reg


async def call(
    reg: OperationRegistry, path: str, value: Any, identity: Identity, *, trusted: bool = False
) -> Any:
    """The local dispatch order of §6.5 on a registry: checks, handler, output validation."""
    r = reg.prepare(path, value, identity, trusted=trusted)
    out = await r.handler(value, ctx(identity, trusted=trusted))  # type: ignore[misc]
    reg.check_output(r, out)
    return out


def code_of(exc: pytest.ExceptionInfo[CallError]) -> str:
    return exc.value.code


# ------------------------------------------------------------------------------------------- wire form

SPECS = [
    READ_FILE,
    *BUILTIN_SPECS,
    OperationSpec("/logs/tail", "logs", S, description="tail a log"),
    OperationSpec(
        "/git/push",
        "git",
        M,
        {"type": "object"},
        {},
        AccessControl(("git:write",), ("a:b", "c:d"), "repo", "admin"),
        "push",
    ),
    OperationSpec("/dev1/fs/readFile", "fs", Q),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_wire_round_trip_and_camel_case(spec: OperationSpec) -> None:
    wire = spec.to_wire()
    assert OperationSpec.from_wire(wire) == spec
    snake = re.compile(r"_")
    assert not [k for k in wire if snake.search(k)]
    assert not [k for k in wire["accessControl"] if snake.search(k)]
    assert "requiredScopes" in wire["accessControl"]
    assert list(wire)[:6] == ["name", "namespace", "opType", "inputSchema", "outputSchema", "accessControl"]
    assert ("description" in wire) is bool(spec.description)


def test_wire_omits_optional_access_control_fields() -> None:
    assert READ_FILE.to_wire()["accessControl"] == {"requiredScopes": ["fs:read"]}
    full = SPECS[-2].to_wire()["accessControl"]
    assert full == {
        "requiredScopes": ["git:write"],
        "requiredScopesAny": ["a:b", "c:d"],
        "resourceType": "repo",
        "resourceAction": "admin",
    }


@pytest.mark.parametrize(
    "wire",
    [
        [],
        {"name": "/a/b", "namespace": "a"},
        {"name": "/a/b", "namespace": "a", "opType": "read"},
        {"name": 1, "namespace": "a", "opType": "query"},
        {"name": "/a/b", "namespace": None, "opType": "query"},
        {"name": "/a/b", "namespace": "a", "opType": "query", "op_type": "query"},
        {"name": "/a/b", "namespace": "a", "opType": "query", "inputSchema": []},
        {"name": "/a/b", "namespace": "a", "opType": "query", "description": 5},
        {"name": "/a/b", "namespace": "a", "opType": "query", "accessControl": []},
        {"name": "/a/b", "namespace": "a", "opType": "query", "accessControl": {"requiredScope": ["x"]}},
        {"name": "/a/b", "namespace": "a", "opType": "query", "accessControl": {"requiredScopes": "x"}},
        {"name": "/a/b", "namespace": "a", "opType": "query", "accessControl": {"requiredScopes": [1]}},
        {"name": "/a/b", "namespace": "a", "opType": "query", "accessControl": {"resourceType": 1}},
    ],
)
def test_from_wire_refuses_bad_shapes(wire: Any) -> None:
    with pytest.raises(ValueError):
        OperationSpec.from_wire(wire)


def test_from_wire_defaults() -> None:
    spec = OperationSpec.from_wire({"name": "/a/b", "namespace": "a", "opType": "mutation"})
    assert spec == OperationSpec("/a/b", "a", M)
    assert OperationSpec("/a/b", "a", "query") == OperationSpec("/a/b", "a", Q)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OperationSpec("/a/b", "a", "read")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- register


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (OperationSpec("/a", "a", Q), "two-segment"),
        (OperationSpec("/a/b/c", "b", Q), "two-segment"),
        (OperationSpec("a/b", "a", Q), "two-segment"),
        (OperationSpec("/a/b/", "a", Q), "two-segment"),
        (OperationSpec("/a/b", "x", Q), "namespace"),
        (OperationSpec("/head/b", "head", Q), "reserved"),
        (OperationSpec("/a/b", "a", Q, access_control=AccessControl(("fs:*",))), r"\*"),
        (OperationSpec("/a/b", "a", Q, access_control=AccessControl((), ("*",))), r"\*"),
        (OperationSpec("/a/b", "a", Q, access_control=AccessControl(("bad scope",))), "scope"),
        (OperationSpec("/a/b", "a", Q, {"type": 5}), "inputSchema is not a valid JSON Schema at /type"),
        (OperationSpec("/a/b", "a", Q, {}, {"minLength": -1}), "outputSchema is not a valid JSON Schema"),
        (OperationSpec("/a/b", "a", Q, {"$ref": "https://example.com/s.json"}), "remote"),
        (OperationSpec("/a/b", "a", Q, {"properties": {"x": {"$ref": "other.json#/a"}}}), "remote"),
        (OperationSpec("/a/b", "a", Q, {"$dynamicRef": "https://x/y"}), "remote"),
        (OperationSpec("/a/b", "a", Q, {"$ref": "#/$defs/missing"}), "unresolvable"),
    ],
)
def test_register_refuses_with_a_named_reason(spec: OperationSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperationRegistry().register(spec, echo)


def test_register_duplicate_and_handler_kind() -> None:
    reg = OperationRegistry()
    reg.register(READ_FILE, echo)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(READ_FILE, echo)
    with pytest.raises(TypeError, match="async generator"):
        reg.register(OperationSpec("/logs/tail", "logs", S), echo)
    with pytest.raises(TypeError, match="coroutine"):
        reg.register(OperationSpec("/a/q", "a", Q), tail)
    with pytest.raises(TypeError, match="coroutine"):
        reg.register(OperationSpec("/a/m", "a", M), plain)
    with pytest.raises(TypeError):
        reg.register(OperationSpec("/a/n", "a", Q), "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reg.register(READ_FILE.to_wire(), echo)  # type: ignore[arg-type]
    assert reg.specs() == [READ_FILE]


def test_registry_bookkeeping() -> None:
    reg = OperationRegistry()
    g = reg.generation
    reg.register(OperationSpec("/b/x", "b", Q), echo)
    reg.register(OperationSpec("/a/x", "a", S), tail)
    assert [s.name for s in reg.specs()] == ["/a/x", "/b/x"] and len(reg) == 2 and "/a/x" in reg
    entry = reg.lookup("/a/x")
    assert isinstance(entry, Registered) and entry.is_subscription and not entry.builtin
    assert reg.lookup("/c/x") is None
    reg.unregister("/a/x")
    with pytest.raises(KeyError):
        reg.unregister("/a/x")
    assert reg.generation == g + 3


def test_local_refs_and_nested_ids_are_allowed() -> None:
    tree = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
        "$defs": {"leaf": {"$id": "https://example.com/leaf", "$ref": "#/$defs/x", "$defs": {"x": {}}}},
    }
    v = compile_schema(tree)
    assert v.is_valid({"name": "a", "children": [{"name": "b", "children": []}]})
    assert v.errors({"name": "a", "children": [{"name": 1}]}) == [
        {"path": "/children/0/name", "message": "1 is not of type 'string'"}
    ]
    compile_schema({"properties": {"enum": {"$ref": "#/$defs/e"}}, "$defs": {"e": {"enum": [1]}}})
    compile_schema({"const": {"$ref": "https://not/a/ref"}, "default": {"$ref": "x"}})  # data, not a $ref
    with pytest.raises(ValueError):
        compile_schema([])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ validation


async def test_invalid_input_acceptance() -> None:
    reg = registry(READ_FILE)
    ident = Identity("SHA256:a", ("/fs/*", "fs:read"))
    with pytest.raises(CallError) as ei:
        await call(reg, "/fs/readFile", {"path": 3}, ident)
    assert ei.value.code == "INVALID_INPUT" and ei.value.retryable is False
    assert ei.value.details is not None
    assert ei.value.details["errors"][0]["path"] == "/path"
    assert await call(reg, "/fs/readFile", {"path": "/x"}, ident) == {"path": "/x"}


def test_if_then_else_validates_by_full_draft_2020_12_rules() -> None:
    schema = {
        "type": "object",
        "if": {"properties": {"kind": {"const": "file"}}, "required": ["kind"]},
        "then": {"required": ["path"]},
        "else": {"required": ["url"]},
        "unevaluatedProperties": False,
        "properties": {"kind": {}, "path": {}, "url": {}},
    }
    reg = OperationRegistry()
    reg.register(OperationSpec("/a/b", "a", Q, schema), echo)
    entry = reg.lookup("/a/b")
    assert entry is not None
    reg.check_input(entry, {"kind": "file", "path": "/x"})
    reg.check_input(entry, {"kind": "web", "url": "u"})
    for bad in ({"kind": "file", "url": "u"}, {"kind": "web"}, {"kind": "file", "path": "/x", "extra": 1}):
        with pytest.raises(CallError) as ei:
            reg.check_input(entry, bad)
        assert ei.value.code == "INVALID_INPUT"


def test_errors_are_sorted_by_path_and_capped_at_20() -> None:
    v = compile_schema({"type": "array", "items": {"type": "string"}})
    errors = v.errors(list(range(30)))
    assert len(errors) == 20
    assert [e["path"] for e in errors] == [f"/{i}" for i in range(20)]  # numeric order: /2 before /10
    v = compile_schema(
        {"type": "object", "properties": {"a/b": {"type": "string"}, "c~d": {"type": "string"}}}
    )
    assert [e["path"] for e in v.errors({"c~d": 1, "a/b": 1})] == ["/a~1b", "/c~0d"]
    assert json_pointer(()) == "" and compile_schema({}).errors(object()) == []
    assert compile_schema({}).accepts_anything


async def test_output_validation() -> None:
    async def bad(input: Any, c: OperationContext) -> Any:
        return {"path": 3}

    spec = OperationSpec(
        "/fs/out", "fs", Q, {}, {"type": "object", "properties": {"path": {"type": "string"}}}
    )
    for validate in (True, False):
        reg = OperationRegistry(validate_output=validate)
        reg.register(spec, bad)
        r = reg.prepare("/fs/out", None, Identity("SHA256:a"), trusted=True)
        out = await r.handler(None, ctx(trusted=True))  # type: ignore[misc]
        if validate:
            with pytest.raises(CallError) as ei:
                reg.check_output(r, out, "rid")
            assert ei.value == CallError("INTERNAL", "internal error", False)
        else:
            reg.check_output(r, out)


async def test_check_order() -> None:
    reg = registry(READ_FILE)
    nobody = Identity("SHA256:a")
    with pytest.raises(CallError) as ei:
        reg.prepare("/fs/unknown", {"path": 3}, nobody)
    assert code_of(ei) == "NOT_FOUND"
    with pytest.raises(CallError) as ei:
        reg.prepare("/fs/readFile", {"path": 3}, nobody)
    assert code_of(ei) == "FORBIDDEN"
    with pytest.raises(CallError) as ei:
        reg.prepare("/fs/readFile", {"path": 3}, nobody, trusted=True)
    assert code_of(ei) == "INVALID_INPUT"
    for bad_path in ("/fs/unknown", "not a path", "/dev1/fs/readFile", "/head", "/head/head/fs/readFile"):
        with pytest.raises(CallError) as ei:
            reg.prepare(bad_path, {"path": "/x"}, nobody, trusted=True)
        assert code_of(ei) == "NOT_FOUND"
    assert reg.prepare("/head/fs/readFile", {"path": "/x"}, nobody, trusted=True).spec is READ_FILE


def test_operation_context_metadata_is_read_only() -> None:
    c = ctx()
    assert isinstance(c.metadata, MappingProxyType)
    with pytest.raises(TypeError):
        c.metadata["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        c.trusted = True  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- built-ins

OPS = [
    READ_FILE,
    OperationSpec("/fs/writeFile", "fs", M, access_control=AccessControl(("fs:write",))),
    OperationSpec("/db/query", "db", Q),
    OperationSpec("/logs/tail", "logs", S),
]
ROUTED = [OperationSpec("/dev1/fs/readFile", "fs", Q, F13_INPUT_SCHEMA, {}, AccessControl(("fs:read",)))]


async def _status(c: OperationContext) -> Mapping[str, Any]:
    return {
        "server": {
            "listeners": ["tcp://127.0.0.1:2222"],
            "version": "0.1.0",
            "uptime_s": 1,
            "endpoint_id": None,
        },
        "sessions": [],
        "workers": [],
    }


async def _register(input: Any, c: OperationContext) -> Any:
    return {"node": input["node"], "operations": []}


def names(out: Any) -> list[str]:
    return [op["name"] for op in out["operations"]]


async def test_services_list_shows_only_what_the_caller_may_call() -> None:
    reg = registry(*OPS, routed=lambda: ROUTED, status=_status)
    fs_only = Identity("SHA256:a", ("/fs/*", "fs:read"))
    out = await call(reg, "/services/list", {}, fs_only)
    assert names(out) == ["/fs/readFile", "/services/list", "/services/schema"]
    user_ops = [n for n in names(out) if not n.startswith("/services/")]
    assert user_ops and all(n.startswith("/fs/") for n in user_ops)
    assert out["operations"][0] == READ_FILE.to_wire()
    assert names(await call(reg, "/services/list", None, Identity("SHA256:b"))) == [
        "/services/list",
        "/services/schema",
    ]
    everything = names(await call(reg, "/services/list", {}, Identity("SHA256:root", ("*",))))
    assert everything == sorted(everything) and "/dev1/fs/readFile" in everything
    assert "/services/status" in everything and "/services/register" not in everything
    head_caller = Identity("SHA256:c", ("/dev1/*", "fs:read"))
    assert "/dev1/fs/readFile" in names(await call(reg, "/services/list", {}, head_caller))
    assert names(await call(reg, "/services/list", {"namespace": "fs"}, Identity("SHA256:r", ("*",)))) == [
        "/dev1/fs/readFile",
        "/fs/readFile",
        "/fs/writeFile",
    ]
    trusted = names(await call(reg, "/services/list", {}, Identity("SHA256:t"), trusted=True))
    assert trusted == everything
    with pytest.raises(CallError) as ei:
        await call(reg, "/services/list", {"bogus": 1}, fs_only)
    assert code_of(ei) == "INVALID_INPUT"


async def test_services_schema() -> None:
    reg = registry(*OPS, routed=lambda: ROUTED)
    fs_only = Identity("SHA256:a", ("/fs/*", "fs:read"))
    assert await call(reg, "/services/schema", {"name": "/fs/readFile"}, fs_only) == READ_FILE.to_wire()
    assert await call(reg, "/services/schema", {"name": "/head/fs/readFile"}, fs_only) == READ_FILE.to_wire()
    wire = await call(reg, "/services/schema", {"name": "/services/list"}, fs_only)
    assert OperationSpec.from_wire(wire).name == "/services/list"
    for name, code in [
        ("/fs/nope", "NOT_FOUND"),
        ("not a path", "NOT_FOUND"),
        ("/db/query", "FORBIDDEN"),
        ("/fs/writeFile", "FORBIDDEN"),
        ("/dev1/fs/readFile", "FORBIDDEN"),
    ]:
        with pytest.raises(CallError) as ei:
            await call(reg, "/services/schema", {"name": name}, fs_only)
        assert code_of(ei) == code, name
    dev1 = Identity("SHA256:c", ("/dev1/*", "fs:read"))
    assert await call(reg, "/services/schema", {"name": "/dev1/fs/readFile"}, dev1) == ROUTED[0].to_wire()


async def test_services_status_needs_admin_status() -> None:
    reg = registry(status=_status)
    with pytest.raises(CallError) as ei:
        await call(reg, "/services/status", {}, Identity("SHA256:a", ("*:read", "/services/*")))
    assert code_of(ei) == "FORBIDDEN"
    out = await call(reg, "/services/status", {}, Identity("SHA256:a", ("admin:status",)))
    assert out["server"]["listeners"] == ["tcp://127.0.0.1:2222"]

    async def broken(c: OperationContext) -> Mapping[str, Any]:
        return {"server": {}}

    reg = registry(status=broken)
    with pytest.raises(CallError) as ei:
        await call(reg, "/services/status", {}, Identity("SHA256:a", ("admin:status",)))
    assert code_of(ei) == "INTERNAL"


async def test_services_register_input_shape() -> None:
    reg = registry(register_worker=_register)
    worker = Identity("SHA256:w", ("node:dev1",))
    assert await call(reg, "/services/register", {"node": "dev1", "operations": []}, worker) == {
        "node": "dev1",
        "operations": [],
    }
    assert (
        await call(
            reg, "/head/services/register", {"node": "dev1", "operations": [READ_FILE.to_wire()]}, worker
        )
    )["node"] == "dev1"
    for bad in [
        {"node": "head", "operations": []},
        {"node": "Dev_1", "operations": []},
        {"node": "dev1\n", "operations": []},
        {"node": "-dev", "operations": []},
        {"node": "a" * 64, "operations": []},
        {"node": "dev1"},
        {"node": "dev1", "operations": [1]},
        {"node": "dev1", "operations": [{}] * 4097},
    ]:
        with pytest.raises(CallError) as ei:
            await call(reg, "/services/register", bad, worker)
        assert code_of(ei) == "INVALID_INPUT", bad
    assert "/services/register" not in registry()


def test_node_names_and_check_spec_for_routed_specs() -> None:
    assert is_valid_node_name("dev1") and is_valid_node_name("a" * 63) and is_valid_node_name("0-a")
    for bad in ("head", "Dev_1", "", "-a", "a" * 64, "dev1\n", 5):
        assert not is_valid_node_name(bad)
    check_spec(ROUTED[0], local=False)
    with pytest.raises(ValueError):
        check_spec(ROUTED[0])
    with pytest.raises(ValueError):
        check_spec(OperationSpec("/fs", "fs", Q), local=False)
