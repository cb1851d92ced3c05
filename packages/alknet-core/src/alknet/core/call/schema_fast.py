"""A fast "is it valid?" check for a safe subset of JSON Schema Draft 2020-12 (``call-protocol.md`` §6.3).

``compile_fast(schema)`` turns a schema into a tree of small closures, or returns ``None`` when the schema uses
anything outside the subset. The checker only ever answers "certainly valid" (``True``) or "ask jsonschema"
(``False``): ``SchemaValidator`` runs ``jsonschema`` on every ``False``, so error messages, paths and ordering
never come from here. A ``True`` must therefore never be given to a value ``Draft202012Validator`` rejects;
a ``False`` for a valid value only costs time.

The subset, mirroring ``jsonschema``'s own keyword functions and Draft 2020-12 type checker:

- boolean schemas ``true`` / ``false``;
- ``type`` (a name or a list of names);
- ``properties``, ``required``, ``additionalProperties`` (boolean or subschema);
- ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` (the failure test is the same Python
  comparison jsonschema makes, negated, so NaN and int/float mixes behave identically);
- ``minLength`` / ``maxLength`` (``len`` of a ``str``: code points, as jsonschema counts);
- ``items`` (a subschema), ``minItems`` / ``maxItems``;
- ``enum`` / ``const``, matched only for scalar instances (``str``, ``int``, ``float``, ``bool``, ``None``)
  against members of those exact types: ``1 == 1.0`` but ``True != 1``, as jsonschema's ``equal``
  (container members are never matched here, so such values always go to jsonschema);
- annotations: ``title``, ``description``, ``default``, ``examples``, ``$comment``, ``deprecated``,
  ``readOnly``, ``writeOnly``, and at the root ``$schema`` naming Draft 2020-12.

Instances are matched by exact type (``type(v) is int``, never ``isinstance``): a subclass such as an
``IntEnum``, an ``OrderedDict`` or a ``str`` subclass simply makes the checker answer ``False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

__all__ = ["FastCheck", "compile_fast"]

FastCheck = Callable[[Any], bool]

_ANNOTATIONS: Final = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
)
_KEYWORDS: Final = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
}
_ROOT_KEYWORDS: Final = _KEYWORDS | {"$schema"}
_INERT: Final = _ANNOTATIONS | {"$schema"}
_DIALECTS: Final = frozenset(
    {"https://json-schema.org/draft/2020-12/schema", "https://json-schema.org/draft/2020-12/schema#"}
)
_TYPE_NAMES: Final = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
_MISSING: Final = object()


class _Unsupported(Exception):
    """The schema leaves the subset: no fast checker."""


def compile_fast(schema: Mapping[str, Any] | bool) -> FastCheck | None:
    """A checker answering ``True`` only for values ``Draft202012Validator(schema)`` accepts, or ``None``.

    ``schema`` is assumed to have passed ``Draft202012Validator.check_schema``; anything unexpected in it
    is treated as outside the subset.
    """
    try:
        return _compile(schema, root=True)
    except (_Unsupported, RecursionError):
        return None


def _always(v: Any) -> bool:
    return True


def _never(v: Any) -> bool:
    return False


def _is_number(x: object) -> bool:
    return type(x) is int or type(x) is float


def _bound(x: Any) -> Any:
    """A numeric bound (for sizes check_schema allows a non-negative integer, 2.0 included)."""
    if not _is_number(x):
        raise _Unsupported
    return x


def _compile(node: Any, *, root: bool = False) -> FastCheck:
    if node is True:
        return _always
    if node is False:
        return _never
    if type(node) is not dict:
        raise _Unsupported
    if not node.keys() <= (_ROOT_KEYWORDS if root else _KEYWORDS):
        raise _Unsupported
    if "$schema" in node and not (type(node["$schema"]) is str and node["$schema"] in _DIALECTS):
        raise _Unsupported
    if node.keys() <= _INERT:
        return _always  # annotations only: jsonschema looks at nothing, so even a tuple is valid
    names = _type_names(node.get("type", _MISSING))
    table: dict[type, FastCheck] = {}
    if "integer" in names or "number" in names:
        num = _numeric(node)
        table[int] = num
        if "number" in names:
            table[float] = num
        elif num is _always:
            table[float] = float.is_integer
        else:
            table[float] = lambda v: v.is_integer() and num(v)
    if "boolean" in names:
        table[bool] = _always
    if "null" in names:
        table[type(None)] = _always
    if "string" in names:
        table[str] = _string(node)
    if "array" in names:
        table[list] = _array(node)
    if "object" in names:
        table[dict] = _object(node)
    check = _dispatch(table)
    for keyword in ("enum", "const"):
        if keyword in node:
            members = node[keyword]
            if keyword == "enum" and type(members) is not list:
                raise _Unsupported
            check = _both(_equals(members if keyword == "enum" else [members]), check)
    return check


def _type_names(value: Any) -> frozenset[str]:
    if value is _MISSING:
        return _TYPE_NAMES
    names = [value] if type(value) is str else value
    if type(names) is not list or not all(type(n) is str and n in _TYPE_NAMES for n in names):
        raise _Unsupported
    return frozenset(names)


def _dispatch(table: dict[type, FastCheck]) -> FastCheck:
    """A check accepting exactly the types in ``table``, each by its own check."""
    if not table:
        return _never
    if all(f is _always for f in table.values()):
        if len(table) == 1:
            (only,) = table

            def one_type(v: Any) -> bool:
                return type(v) is only

            return one_type
        allowed = frozenset(table)

        def some_types(v: Any) -> bool:
            return type(v) in allowed

        return some_types
    if len(table) == 1:
        ((only, f),) = table.items()

        def one_type_checked(v: Any) -> bool:
            return type(v) is only and f(v)

        return one_type_checked
    get = table.get

    def by_type(v: Any) -> bool:
        f = get(type(v))
        return f is not None and f(v)

    return by_type


def _both(first: FastCheck, second: FastCheck) -> FastCheck:
    if first is _always:
        return second
    if second is _always:
        return first

    def both(v: Any) -> bool:
        return first(v) and second(v)

    return both


def _all(checks: list[FastCheck]) -> FastCheck:
    check: FastCheck = _always
    for c in reversed(checks):
        check = _both(c, check)
    return check


# The negation of jsonschema's failure test, exactly: `instance < minimum` fails, so `not v < b` passes
# (which differs from `v >= b` for NaN).
def _not_lt(b: Any) -> FastCheck:
    return lambda v: not v < b


def _not_gt(b: Any) -> FastCheck:
    return lambda v: not v > b


def _not_le(b: Any) -> FastCheck:
    return lambda v: not v <= b


def _not_ge(b: Any) -> FastCheck:
    return lambda v: not v >= b


def _len_not_lt(b: Any) -> FastCheck:
    return lambda v: not len(v) < b


def _len_not_gt(b: Any) -> FastCheck:
    return lambda v: not len(v) > b


_NUMERIC_BOUNDS: Final[tuple[tuple[str, Callable[[Any], FastCheck]], ...]] = (
    ("minimum", _not_lt),
    ("maximum", _not_gt),
    ("exclusiveMinimum", _not_le),
    ("exclusiveMaximum", _not_ge),
)


def _numeric(node: dict[str, Any]) -> FastCheck:
    checks: list[FastCheck] = []
    for keyword, make in _NUMERIC_BOUNDS:
        if keyword in node:
            checks.append(make(_bound(node[keyword])))
    return _all(checks)


def _sized(node: dict[str, Any], low: str, high: str) -> list[FastCheck]:
    checks: list[FastCheck] = []
    if low in node:
        checks.append(_len_not_lt(_bound(node[low])))
    if high in node:
        checks.append(_len_not_gt(_bound(node[high])))
    return checks


def _string(node: dict[str, Any]) -> FastCheck:
    return _all(_sized(node, "minLength", "maxLength"))


def _array(node: dict[str, Any]) -> FastCheck:
    checks = _sized(node, "minItems", "maxItems")
    if "items" in node:
        item = _compile(node["items"])
        if item is not _always:

            def items(v: list[Any]) -> bool:
                return all(map(item, v))

            checks.append(items)
    return _all(checks)


def _object(node: dict[str, Any]) -> FastCheck:
    props_schema = node.get("properties", {})
    required = node.get("required", [])
    if type(props_schema) is not dict or not all(type(k) is str for k in props_schema):
        raise _Unsupported
    if type(required) is not list or not all(type(r) is str for r in required):
        raise _Unsupported
    props = {k: _compile(s) for k, s in props_schema.items()}
    checked = [(k, c) for k, c in props.items() if c is not _always]
    need = frozenset(required)
    extra = _compile(node.get("additionalProperties", True))

    if extra is _never:
        # additionalProperties: false: every key must be a declared property, so walk the value's keys
        known = frozenset(props)
        if not checked:

            def closed_plain(v: dict[Any, Any]) -> bool:
                keys = v.keys()
                return keys <= known and keys >= need

            return closed_plain

        def closed(v: dict[Any, Any]) -> bool:
            keys = v.keys()
            if not (keys <= known and keys >= need):
                return False
            for k, x in v.items():  # noqa: SIM110 -- a plain loop: all(<genexpr>) costs ~0.2 µs more
                if not props[k](x):
                    return False
            return True

        return closed

    if extra is _always:
        # additionalProperties absent/true/{}: only the declared properties that are present matter
        if not checked and not need:
            return _always

        def open_(v: dict[Any, Any]) -> bool:
            if not v.keys() >= need:
                return False
            for k, c in checked:
                x = v.get(k, _MISSING)
                if x is not _MISSING and not c(x):
                    return False
            return True

        return open_

    def constrained(v: dict[Any, Any]) -> bool:
        if not v.keys() >= need:
            return False
        for k, x in v.items():
            c = props.get(k)
            if not (extra(x) if c is None else c(x)):
                return False
        return True

    return constrained


def _equals(members: Iterable[Any]) -> FastCheck:
    """True only when a scalar instance certainly equals a member by jsonschema's ``equal``.

    Members of other types (lists, objects, subclasses) are left to jsonschema. Set membership tests
    identity, then ``==``, after the hash: jsonschema's ``one is two or one == two`` for these types, so even
    a NaN member matches only itself, as there.
    """
    strings: set[str] = set()
    numbers: set[int | float] = set()
    flags: set[bool | None] = set()  # True, False, None: matched by identity
    for m in members:
        if type(m) is str:
            strings.add(m)
        elif type(m) is int or type(m) is float:
            numbers.add(m)
        elif m is True or m is False or m is None:
            flags.add(m)
    frozen_strings, frozen_numbers, frozen_flags = frozenset(strings), frozenset(numbers), frozenset(flags)

    def equals(v: Any) -> bool:
        t = type(v)
        if t is str:
            return v in frozen_strings
        if t is int or t is float:
            return v in frozen_numbers  # holds no bools, so `True` never meets `1` here
        if t is bool or v is None:
            return v in frozen_flags  # holds only True/False/None: `1` never meets `True` here
        return False

    return equals
