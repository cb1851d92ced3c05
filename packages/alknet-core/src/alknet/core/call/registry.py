"""Operation specs, the registry, handler contexts and the built-in operations (``call-protocol.md`` §6).

The registry is local: it holds two-segment operations (``/{service}/{op}``). Routing to workers lives in the
node; it can feed routed specs into ``/services/list`` and ``/services/schema`` through ``register_builtins``.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeAlias

from alknet.core.auth.identity import Identity, validate_scope
from alknet.core.call.acl import (
    HEAD,
    authorize,
    canonical_path,
    check_access_control,
    path_granted,
    split_path,
)
from alknet.core.call.envelope import INTERNAL_MESSAGE, CallError, ErrorCode, ResponseEnvelope
from alknet.core.call.schema import SchemaValidator

__all__ = [
    "BUILTIN_SPECS",
    "NODE_NAME_RE",
    "SERVICES_LIST",
    "SERVICES_REGISTER",
    "SERVICES_SCHEMA",
    "SERVICES_STATUS",
    "AccessControl",
    "Handler",
    "OperationContext",
    "OperationEnvLike",
    "OperationRegistry",
    "OperationSpec",
    "OperationType",
    "QueryHandler",
    "Registered",
    "SubscriptionHandler",
    "check_spec",
    "is_valid_node_name",
    "register_builtins",
]

log = logging.getLogger("alknet.call")

NODE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def is_valid_node_name(name: object) -> bool:
    """``^[a-z0-9][a-z0-9-]{0,62}$`` and not ``head`` (§8)."""
    return isinstance(name, str) and name != HEAD and NODE_NAME_RE.fullmatch(name) is not None


class OperationType(StrEnum):
    QUERY = "query"
    MUTATION = "mutation"
    SUBSCRIPTION = "subscription"


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise TypeError(f"{what} must be a list of strings")
    for v in value:
        if not isinstance(v, str):
            raise TypeError(f"{what} must be a list of strings")
    return tuple(value)


def _opt_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    return value


@dataclass(frozen=True, slots=True)
class AccessControl:
    """What a caller must hold (§6.5). Empty ``required_scopes_any`` means "not set"."""

    required_scopes: tuple[str, ...] = ()
    required_scopes_any: tuple[str, ...] = ()
    resource_type: str | None = None
    resource_action: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "required_scopes", _str_tuple(self.required_scopes, "required_scopes"))
        object.__setattr__(
            self, "required_scopes_any", _str_tuple(self.required_scopes_any, "required_scopes_any")
        )
        _opt_str(self.resource_type, "resource_type")
        _opt_str(self.resource_action, "resource_action")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requiredScopes": list(self.required_scopes)}
        if self.required_scopes_any:
            out["requiredScopesAny"] = list(self.required_scopes_any)
        if self.resource_type is not None:
            out["resourceType"] = self.resource_type
        if self.resource_action is not None:
            out["resourceAction"] = self.resource_action
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> AccessControl:
        if not isinstance(obj, Mapping):
            raise ValueError("accessControl must be an object")
        unknown = set(obj) - _AC_WIRE_KEYS
        if unknown:
            raise ValueError(f"unknown accessControl field {sorted(unknown)[0]!r}")
        try:
            return cls(
                _str_tuple(obj.get("requiredScopes", []), "accessControl.requiredScopes"),
                _str_tuple(obj.get("requiredScopesAny", []), "accessControl.requiredScopesAny"),
                _opt_str(obj.get("resourceType"), "accessControl.resourceType"),
                _opt_str(obj.get("resourceAction"), "accessControl.resourceAction"),
            )
        except TypeError as exc:
            raise ValueError(str(exc)) from None


_AC_WIRE_KEYS: Final = frozenset({"requiredScopes", "requiredScopesAny", "resourceType", "resourceAction"})
_SPEC_WIRE_KEYS: Final = frozenset(
    {"name", "namespace", "opType", "inputSchema", "outputSchema", "accessControl", "description"}
)


@dataclass(frozen=True)
class OperationSpec:
    """One operation. Python names are snake_case; ``to_wire``/``from_wire`` convert to camelCase."""

    name: str
    namespace: str
    op_type: OperationType
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] = field(default_factory=dict)
    access_control: AccessControl = field(default_factory=AccessControl)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not isinstance(self.namespace, str):
            raise TypeError("OperationSpec name and namespace must be strings")
        try:
            object.__setattr__(self, "op_type", OperationType(self.op_type))
        except ValueError:
            raise ValueError(
                f"opType must be query, mutation or subscription, got {self.op_type!r}"
            ) from None
        for what in ("input_schema", "output_schema"):
            if not isinstance(getattr(self, what), dict):
                raise TypeError(f"OperationSpec.{what} must be a dict")
        if not isinstance(self.access_control, AccessControl):
            raise TypeError("OperationSpec.access_control must be an AccessControl")
        if not isinstance(self.description, str):
            raise TypeError("OperationSpec.description must be a string")

    def to_wire(self) -> dict[str, Any]:
        """The camelCase wire form in canonical order; ``description`` is left out when empty."""
        out: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "opType": self.op_type.value,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "accessControl": self.access_control.to_wire(),
        }
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> OperationSpec:
        """Parse the wire form; raises ``ValueError`` naming the problem (shape only; see ``check_spec``)."""
        if not isinstance(obj, Mapping):
            raise ValueError("an operation spec must be an object")
        unknown = set(obj) - _SPEC_WIRE_KEYS
        if unknown:
            raise ValueError(f"unknown operation spec field {sorted(unknown)[0]!r}")
        name, namespace, op_type = obj.get("name"), obj.get("namespace"), obj.get("opType")
        if not isinstance(name, str):
            raise ValueError("operation spec name must be a string")
        if not isinstance(namespace, str):
            raise ValueError(f"{name}: namespace must be a string")
        if op_type not in ("query", "mutation", "subscription"):
            raise ValueError(f"{name}: opType must be query, mutation or subscription")
        input_schema = obj.get("inputSchema", {})
        output_schema = obj.get("outputSchema", {})
        if not isinstance(input_schema, dict) or not isinstance(output_schema, dict):
            raise ValueError(f"{name}: inputSchema and outputSchema must be objects")
        description = obj.get("description", "")
        if not isinstance(description, str):
            raise ValueError(f"{name}: description must be a string")
        access = AccessControl.from_wire(obj.get("accessControl", {}))
        return cls(name, namespace, OperationType(op_type), input_schema, output_schema, access, description)


def check_spec(spec: OperationSpec, *, local: bool = True) -> tuple[SchemaValidator, SchemaValidator]:
    """Validate a spec for registration and compile its schemas; raises ``ValueError`` naming the reason.

    ``local=True``: the name must be a two-segment path (a registry entry); otherwise any valid path of two or
    more segments (routed specs of a head). The first segment ``head`` is reserved.
    """
    segs = split_path(spec.name)
    if segs is None or (len(segs) != 2 if local else len(segs) < 2):
        kind = "a two-segment path /{service}/{op}" if local else "a path of two or more segments"
        raise ValueError(f"operation name {spec.name[:80]!r} is not {kind}")
    if segs[0] == HEAD:
        raise ValueError(f"{spec.name}: the first segment 'head' is reserved")
    if spec.namespace != segs[-2]:
        raise ValueError(f"{spec.name}: namespace {spec.namespace!r} does not match the path ({segs[-2]!r})")
    ac = spec.access_control
    for scope in (*ac.required_scopes, *ac.required_scopes_any):
        if "*" in scope:
            raise ValueError(
                f"{spec.name}: required scope {scope!r} contains '*' (required scopes are literal)"
            )
        try:
            validate_scope(scope)
        except ValueError as exc:
            raise ValueError(f"{spec.name}: {exc}") from None
    inp = SchemaValidator(spec.input_schema, where=f"{spec.name}: inputSchema")
    out = SchemaValidator(spec.output_schema, where=f"{spec.name}: outputSchema")
    return inp, out


# ------------------------------------------------------------------------------------------- contexts


class OperationEnvLike(Protocol):
    """What handlers use of ``ctx.env`` (``OperationEnv``, §7, satisfies it)."""

    async def invoke(
        self,
        namespace: str,
        op: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ResponseEnvelope: ...

    def subscribe(
        self, namespace: str, op: str, input: Any = None, *, idle_timeout: float | None = None
    ) -> AsyncIterator[Any]: ...


@dataclass(frozen=True, slots=True)
class OperationContext:
    """What a handler knows about its call (§6.6). ``identity`` comes from the session, never from a payload;
    ``metadata`` is read-only."""

    request_id: str
    parent_request_id: str | None
    identity: Identity
    metadata: Mapping[str, Any]
    env: OperationEnvLike
    trusted: bool
    deadline_ms: int | None

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


QueryHandler: TypeAlias = Callable[[Any, OperationContext], Awaitable[Any]]
SubscriptionHandler: TypeAlias = Callable[[Any, OperationContext], AsyncIterator[Any]]
Handler: TypeAlias = QueryHandler | SubscriptionHandler


@dataclass(frozen=True, slots=True)
class Registered:
    """A registry entry: the spec, its handler and its compiled schemas."""

    spec: OperationSpec
    handler: Handler
    input_validator: SchemaValidator
    output_validator: SchemaValidator
    builtin: bool = False

    @property
    def is_subscription(self) -> bool:
        return self.spec.op_type is OperationType.SUBSCRIPTION


def _check_handler_kind(spec: OperationSpec, handler: object) -> None:
    if not callable(handler):
        raise TypeError(f"{spec.name}: handler is not callable")
    if spec.op_type is OperationType.SUBSCRIPTION:
        if not inspect.isasyncgenfunction(handler):
            raise TypeError(f"{spec.name}: a subscription handler must be an async generator function")
    elif not inspect.iscoroutinefunction(handler):
        raise TypeError(f"{spec.name}: a {spec.op_type.value} handler must be a coroutine function")


class OperationRegistry:
    """Local operations of a node, with schemas compiled at ``register``."""

    def __init__(self, *, validate_output: bool = False) -> None:
        self.validate_output = validate_output
        self._ops: dict[str, Registered] = {}
        self._generation = 0

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    @property
    def generation(self) -> int:
        """Bumped on every register/unregister (lets a node notice changes)."""
        return self._generation

    def register(self, spec: OperationSpec, handler: Handler, *, builtin: bool = False) -> None:
        """Add an operation; raises ``ValueError`` or ``TypeError`` naming the reason (§6.2).

        ``builtin=True`` marks an operation that needs no path grant (the ``/services/*`` built-ins).
        """
        if not isinstance(spec, OperationSpec):
            raise TypeError("register() needs an OperationSpec")
        if spec.name in self._ops:
            raise ValueError(f"operation {spec.name} is already registered")
        inp, out = check_spec(spec, local=True)
        _check_handler_kind(spec, handler)
        self._ops[spec.name] = Registered(spec, handler, inp, out, builtin)
        self._generation += 1

    def unregister(self, name: str) -> None:
        """Remove an operation; ``KeyError`` if it is not registered."""
        if name not in self._ops:
            raise KeyError(f"operation {name} is not registered")
        del self._ops[name]
        self._generation += 1

    def lookup(self, name: str) -> Registered | None:
        return self._ops.get(name)

    def specs(self) -> list[OperationSpec]:
        """Every registered spec, sorted by name."""
        return [self._ops[n].spec for n in sorted(self._ops)]

    def entries(self) -> list[Registered]:
        return [self._ops[n] for n in sorted(self._ops)]

    # ------------------------------------------------------------------------------------ call checks

    def resolve(self, path: str, identity: Identity, *, trusted: bool = False) -> Registered:
        """``NOT_FOUND``, then ``FORBIDDEN``, for a call of the local operation ``path`` (``/head/...`` too).

        Trusted calls skip the path grant and the AccessControl check.
        """
        cpath = canonical_path(path)
        reg = self._ops.get(cpath) if split_path(cpath) is not None else None
        if reg is None:
            raise CallError(ErrorCode.NOT_FOUND, "unknown operation", False)
        if not trusted:
            authorize(identity, reg.spec, cpath, path_grant=not reg.builtin)
        return reg

    def check_input(self, reg: Registered, value: Any) -> None:
        """``INVALID_INPUT`` with ``details {"errors": [...]}`` when ``value`` fails the input schema."""
        errors = reg.input_validator.errors(value)
        if errors:
            raise CallError(
                ErrorCode.INVALID_INPUT, "input does not match the schema", False, {"errors": errors}
            )

    def check_output(self, reg: Registered, value: Any, request_id: str = "") -> None:
        """With ``validate_output``, an output failing the output schema raises ``INTERNAL`` (logged here)."""
        if not self.validate_output:
            return
        errors = reg.output_validator.errors(value)
        if errors:
            first = errors[0]
            log.error(
                "invalid handler output: operation=%s request_id=%s path=%s error=%s",
                reg.spec.name,
                request_id,
                first["path"] or "/",
                first["message"],
            )
            raise CallError(ErrorCode.INTERNAL, INTERNAL_MESSAGE, False)

    def prepare(self, path: str, value: Any, identity: Identity, *, trusted: bool = False) -> Registered:
        """The checks in the order of §6.5: ``NOT_FOUND``, ``FORBIDDEN``, ``INVALID_INPUT``."""
        reg = self.resolve(path, identity, trusted=trusted)
        self.check_input(reg, value)
        return reg

    def may_call(self, identity: Identity, spec: OperationSpec, *, trusted: bool = False) -> bool:
        """Whether an untrusted caller passes both checks for ``spec`` (built-ins need no path grant)."""
        if trusted:
            return True
        reg = self._ops.get(spec.name)
        builtin = reg is not None and reg.builtin
        if not builtin and not path_granted(identity, spec.name):
            return False
        return check_access_control(identity, spec) is None


# ---------------------------------------------------------------------------------------- built-ins

_NULLABLE_OBJECT: Final = ["object", "null"]
_OPS_OUTPUT: Final = {
    "type": "object",
    "properties": {"operations": {"type": "array", "items": {"type": "object"}}},
    "required": ["operations"],
}

SERVICES_LIST: Final = OperationSpec(
    "/services/list",
    "services",
    OperationType.QUERY,
    {
        "type": _NULLABLE_OBJECT,
        "properties": {"namespace": {"type": "string"}},
        "additionalProperties": False,
    },
    _OPS_OUTPUT,
    description="operations this caller may call, sorted by name",
)
SERVICES_SCHEMA: Final = OperationSpec(
    "/services/schema",
    "services",
    OperationType.QUERY,
    {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    },
    {"type": "object", "required": ["name", "namespace", "opType"]},
    description="the spec of one operation",
)
SERVICES_REGISTER: Final = OperationSpec(
    "/services/register",
    "services",
    OperationType.MUTATION,
    {
        "type": "object",
        "properties": {
            # (?!\n) keeps Python's "$ before a final newline" from accepting "dev1\n"
            "node": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}(?!\\n)$", "not": {"const": HEAD}},
            "operations": {"type": "array", "maxItems": 4096, "items": {"type": "object"}},
        },
        "required": ["node", "operations"],
    },
    {
        "type": "object",
        "properties": {
            "node": {"type": "string"},
            "operations": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["node", "operations"],
    },
    description="register this channel as a worker node",
)
SERVICES_STATUS: Final = OperationSpec(
    "/services/status",
    "services",
    OperationType.QUERY,
    {"type": _NULLABLE_OBJECT, "additionalProperties": False},
    {
        "type": "object",
        "properties": {
            "server": {
                "type": "object",
                "properties": {
                    "listeners": {"type": "array", "items": {"type": "string"}},
                    "version": {"type": "string"},
                    "uptime_s": {"type": "number"},
                    "endpoint_id": {"type": ["string", "null"]},
                },
                "required": ["listeners", "version", "uptime_s", "endpoint_id"],
            },
            "sessions": {"type": "array", "items": {"type": "object"}},
            "workers": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["server", "sessions", "workers"],
    },
    AccessControl(("admin:status",)),
    description="read-only snapshot of this node",
)
BUILTIN_SPECS: Final = (SERVICES_LIST, SERVICES_REGISTER, SERVICES_SCHEMA, SERVICES_STATUS)

RoutedSpecs: TypeAlias = Callable[[], Iterable[OperationSpec]]
StatusProvider: TypeAlias = Callable[[OperationContext], Awaitable[Mapping[str, Any]]]
RegisterHandler: TypeAlias = Callable[[Any, OperationContext], Awaitable[Any]]


def register_builtins(
    registry: OperationRegistry,
    *,
    routed: RoutedSpecs | None = None,
    status: StatusProvider | None = None,
    register_worker: RegisterHandler | None = None,
) -> None:
    """Add the ``/services/*`` built-ins (no path grant needed).

    ``/services/list`` and ``/services/schema`` always; ``routed()`` returns the specs a head routes, named
    by their full paths (``/dev1/fs/readFile``). ``/services/status`` is added when ``status`` is given (it
    builds the snapshot of ``cli.md`` §10), ``/services/register`` when ``register_worker`` is (nodes that accept
    workers; it runs after the input shape has been checked).
    """

    def all_specs() -> list[tuple[OperationSpec, bool]]:
        items = [(r.spec, r.builtin) for r in registry.entries()]
        if routed is not None:
            items.extend((s, False) for s in routed())
        items.sort(key=lambda it: it[0].name)
        return items

    def allowed(ctx: OperationContext, spec: OperationSpec, builtin: bool) -> bool:
        if ctx.trusted:
            return True
        if not builtin and not path_granted(ctx.identity, spec.name):
            return False
        return check_access_control(ctx.identity, spec) is None

    async def services_list(input: Any, ctx: OperationContext) -> dict[str, Any]:
        ns = input.get("namespace") if isinstance(input, dict) else None
        ops = [
            spec.to_wire()
            for spec, builtin in all_specs()
            if (ns is None or spec.namespace == ns) and allowed(ctx, spec, builtin)
        ]
        return {"operations": ops}

    async def services_schema(input: Any, ctx: OperationContext) -> dict[str, Any]:
        name = input.get("name") if isinstance(input, dict) else None
        if not isinstance(name, str) or split_path(name) is None:
            raise CallError(ErrorCode.NOT_FOUND, "unknown operation", False)
        cname = canonical_path(name)
        for spec, builtin in all_specs():
            if spec.name == cname:
                if not allowed(ctx, spec, builtin):
                    raise CallError(ErrorCode.FORBIDDEN, f"no access to {cname}", False)
                return spec.to_wire()
        raise CallError(ErrorCode.NOT_FOUND, "unknown operation", False)

    registry.register(SERVICES_LIST, services_list, builtin=True)
    registry.register(SERVICES_SCHEMA, services_schema, builtin=True)

    if status is not None:
        status_provider = status

        async def services_status(input: Any, ctx: OperationContext) -> dict[str, Any]:
            return dict(await status_provider(ctx))

        registry.register(SERVICES_STATUS, services_status, builtin=True)

    if register_worker is not None:
        worker_handler = register_worker

        async def services_register(input: Any, ctx: OperationContext) -> Any:
            return await worker_handler(input, ctx)

        registry.register(SERVICES_REGISTER, services_register, builtin=True)
