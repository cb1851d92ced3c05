"""JSON Schema (Draft 2020-12) validation of operation input and output (``call-protocol.md`` §6.3).

Schemas are checked and compiled once. A ``$ref`` (or ``$dynamicRef``) other than ``#`` or ``#/...`` is
refused, and the validator's registry can retrieve nothing, so validation never fetches anything.

A schema within a safe subset of keywords also gets a fast checker (``schema_fast``) that can only answer
"valid"; whenever it does not, ``jsonschema`` runs as before, so every error still comes from ``jsonschema``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, Final, NoReturn

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import Draft202012Validator

from alknet.core.call.schema_fast import FastCheck, compile_fast

__all__ = ["MAX_SCHEMA_ERRORS", "SchemaValidator", "compile_schema", "json_pointer"]

MAX_SCHEMA_ERRORS: Final = 20
_COLLECT_LIMIT: Final = 1000
_MAX_ERROR_MESSAGE: Final = 512
# keywords whose values are data, not subschemas: never searched for $ref
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples"})
_REF_KEYWORDS: Final = ("$ref", "$dynamicRef")
# keywords whose values map names (which may look like keywords) to subschemas
_SCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def _no_retrieve(uri: str) -> NoReturn:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


_REGISTRY: Final[referencing.Registry[Any]] = referencing.Registry(retrieve=_no_retrieve)  # type: ignore[call-arg]


def json_pointer(path: Iterator[Any] | tuple[Any, ...] | list[Any]) -> str:
    """The RFC 6901 pointer for a sequence of keys and indices (``("items", 0)`` -> ``/items/0``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _refs(node: Any, nested_id: bool = False) -> Iterator[tuple[str, bool]]:
    """Every ($ref value, inside-a-nested-$id) pair of a schema, skipping data keywords."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _REF_KEYWORDS:
                yield v, nested_id
            elif k in _DATA_KEYWORDS:
                continue
            elif k in _SCHEMA_MAPS:
                if isinstance(v, dict):
                    for sub in v.values():
                        yield from _refs(sub, nested_id or (isinstance(sub, dict) and "$id" in sub))
            else:
                yield from _refs(v, nested_id or (isinstance(v, dict) and "$id" in v))
    elif isinstance(node, list):
        for x in node:
            yield from _refs(x, nested_id or (isinstance(x, dict) and "$id" in x))


def _sort_key(path: tuple[Any, ...]) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


class SchemaValidator:
    """A compiled schema. ``{}`` accepts anything and skips the validator entirely."""

    __slots__ = ("_fast", "_validator", "schema")

    def __init__(self, schema: Mapping[str, Any], *, where: str = "schema") -> None:
        if not isinstance(schema, Mapping):
            raise ValueError(f"{where} must be a JSON object")
        schema = copy.deepcopy(dict(schema))  # later edits by the caller must not split the two checkers
        try:
            Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            at = json_pointer(tuple(exc.absolute_path)) or "/"
            raise ValueError(f"{where} is not a valid JSON Schema at {at}: {exc.message[:200]}") from None
        resolver: Any = None
        for ref, nested in _refs(schema):
            if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
                raise ValueError(f"{where} uses a remote $ref {str(ref)[:80]!r}; only '#/...' is allowed")
            if nested:
                continue  # relative to a nested $id resource: resolved by the validator
            if resolver is None:
                root = referencing.jsonschema.DRAFT202012.create_resource(schema)
                resolver = _REGISTRY.resolver_with_root(root)
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                raise ValueError(f"{where} has an unresolvable $ref {ref[:80]!r}") from None
        self.schema = schema
        self._validator = None if not schema else Draft202012Validator(schema, registry=_REGISTRY)
        # answers True only for values jsonschema accepts; None when the schema leaves the subset
        self._fast: FastCheck | None = None if not schema else compile_fast(schema)

    @property
    def accepts_anything(self) -> bool:
        return self._validator is None

    def errors(self, value: Any) -> list[dict[str, str]]:
        """At most 20 ``{"path": <JSON Pointer into value>, "message": ...}`` sorted by path; [] if valid."""
        if self._validator is None:
            return []
        fast = self._fast
        if fast is not None:
            try:
                known_valid = fast(value)
            except Exception:  # never expected; jsonschema below has the last word either way
                known_valid = False
            if known_valid:
                return []
        found: list[tuple[tuple[Any, ...], str]] = []
        try:
            for err in self._validator.iter_errors(value):
                found.append((tuple(err.absolute_path), err.message))
                if len(found) >= _COLLECT_LIMIT:
                    break
        except referencing.exceptions.Unresolvable:
            found.append(((), "schema reference cannot be resolved"))
        except RecursionError:
            found.append(((), "value nested too deeply to validate"))
        found.sort(key=lambda e: (_sort_key(e[0]), e[1]))
        return [
            {"path": json_pointer(p), "message": m[:_MAX_ERROR_MESSAGE]} for p, m in found[:MAX_SCHEMA_ERRORS]
        ]

    def is_valid(self, value: Any) -> bool:
        return not self.errors(value)


def compile_schema(schema: Mapping[str, Any], *, where: str = "schema") -> SchemaValidator:
    """Check and compile ``schema``; raises ``ValueError`` naming the problem."""
    return SchemaValidator(schema, where=where)
