"""call-protocol.md §6.3: the fast validity check in front of jsonschema never changes a result.

Property tests compare ``SchemaValidator.errors`` (fast path on) against the same validator with the fast path
off and against plain ``Draft202012Validator``, for fixed and generated schemas in the fast subset and
JSON-like values drawn both at random and "near" each schema. 500 examples per property by default; the
``slow`` variants run 20 000 (``uv run pytest -m slow tests/core/call/test_schema_fast.py``).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import pytest
from call_helpers import FAST, SLOW
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from alknet.core.call.schema import SchemaValidator
from alknet.core.call.schema_fast import FastCheck, compile_fast

BENCH = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "offset": {"type": "integer", "minimum": 0},
        "length": {"type": "integer", "minimum": 0},
    },
    "required": ["path"],
    "additionalProperties": False,
}

# every schema here is in the fast subset; EXACT ones get a fast answer equal to jsonschema's for every value
# of exact JSON types (enum members that are containers are left to jsonschema, so INEXACT ones may not)
EXACT: list[dict[str, Any]] = [
    BENCH,
    {
        **BENCH,
        "required": ["path", "offset", "length"],
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    },
    {"type": "object", "properties": {"a": True, "b": False}, "additionalProperties": {"type": "integer"}},
    {
        "type": "object",
        "title": "nested",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 3, "description": "code points"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "😀"]}, "maxItems": 3},
            "inner": {
                "type": ["object", "null"],
                "properties": {"x": {"type": "number", "exclusiveMinimum": 0, "maximum": 1.5}},
                "required": ["x"],
                "additionalProperties": False,
            },
            "mode": {"enum": [1, 2.5, "x", True, None], "default": 1},
            "one": {"const": 1},
            "flag": {"const": False, "$comment": "False, never 0"},
        },
        "required": ["name"],
    },
    {"type": "array", "items": {"type": ["integer", "boolean"], "minimum": -1, "exclusiveMaximum": 3}},
    {"type": "array", "items": False},
    {"type": "array", "minItems": 1, "maxItems": 2.0, "items": {"type": "array", "items": {"type": "null"}}},
    {"type": ["integer", "string"], "maximum": 2**53, "minLength": 2, "examples": [1, "ab"]},
    {"type": "number", "minimum": -0.0, "exclusiveMaximum": 1e300},
    {"enum": [0, -0.0, 2**53 + 1, 1.0, "1", False]},
    {"const": None},
    {"properties": {"k": {"type": "integer"}}, "required": ["k"], "deprecated": True},
    {"type": "object", "additionalProperties": {"enum": ["a", 1]}},
    {"readOnly": True, "writeOnly": False},
    {"type": "object", "properties": {"any": {}, "doc": {"title": "t"}}, "additionalProperties": False},
]
INEXACT: list[dict[str, Any]] = [
    {"enum": [[1, 2], {"a": 1}, "x", 3]},
    {"type": "object", "properties": {"v": {"const": [True, 1.0]}}},
]
OUT_OF_SUBSET: list[dict[str, Any]] = [
    {"type": "string", "pattern": "^a"},
    {"type": "string", "format": "email"},
    {"$defs": {"s": {"type": "string"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/s"}}},
    {"allOf": [{"type": "integer"}, {"minimum": 1}]},
    {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}},
    {"type": "object", "patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False},
    {"type": "object", "unevaluatedProperties": False},
    {"type": "object", "dependentRequired": {"a": ["b"]}},
    {"if": {"type": "integer"}, "then": {"minimum": 0}},
    {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"type": "object", "properties": {"a": {"x-unknown": 1}}},
    {"type": "integer", "$schema": "http://json-schema.org/draft-07/schema#"},
    {"type": "object", "properties": {"a": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}},
]

# ------------------------------------------------------------------------------------------ strategies

NAMES = ["path", "offset", "length", "name", "tags", "inner", "mode", "one", "flag", "a", "b", "k"]
KEYS = st.sampled_from(NAMES) | st.text(max_size=3)
INTS = (
    st.integers()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2, 3, 2**53, 2**53 + 1, 10**400])
)
FLOATS = st.floats() | st.sampled_from([1.0, -0.0, 0.0, 0.5, 1.5, 2.0, 3.0, -1.0, 1e300, float(2**53)])
TEXT = st.text(st.characters(), max_size=5) | st.sampled_from(["", "a", "ab", "😀", "😀😀", "a😀b", "1", "x"])
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
VALUES = st.recursive(
    SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(KEYS, c, max_size=4), max_leaves=12
)


def near(schema: Any) -> st.SearchStrategy[Any]:
    """Values that often satisfy ``schema`` and often miss it by a little, plus arbitrary ones."""
    if not isinstance(schema, dict):
        return VALUES
    options: list[st.SearchStrategy[Any]] = [VALUES]
    if "enum" in schema:
        options.append(st.sampled_from(schema["enum"]))
    if "const" in schema:
        options.append(st.just(schema["const"]))
    names = schema.get("type", ["object", "array", "string", "integer", "number", "boolean", "null"])
    for name in [names] if isinstance(names, str) else names:
        if name in ("integer", "number"):
            bounds = [
                schema[k]
                for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
                if k in schema
            ]
            options.append(st.sampled_from([0, 1, -1, 2, 1.0, -0.0, 0.5, 2.5, *bounds]) | INTS | FLOATS)
            options.append(
                st.sampled_from(bounds or [0]).flatmap(lambda b: st.sampled_from([b - 1, b + 1, b * 1.0]))
            )
        elif name == "string":
            options.append(TEXT)
        elif name == "boolean":
            options.append(st.booleans())
        elif name == "null":
            options.append(st.none())
        elif name == "array":
            options.append(st.lists(near(schema.get("items", True)), max_size=3))
        elif name == "object":
            props = {k: near(s) for k, s in schema.get("properties", {}).items()}
            required = [k for k in schema.get("required", []) if k in props]
            extras = st.just({}) | st.dictionaries(
                KEYS, near(schema.get("additionalProperties", True)), max_size=2
            )
            options.append(
                st.builds(
                    lambda base, more: {**more, **base},
                    st.fixed_dictionaries(
                        {k: props[k] for k in required},
                        optional={k: p for k, p in props.items() if k not in required},
                    )
                    | st.fixed_dictionaries({}, optional=props),
                    extras,
                )
            )
    return st.one_of(options)


NUMBER = st.integers(-3, 3) | st.sampled_from([0.5, -0.0, 2.0, 2**53])


def _leaf_schemas() -> st.SearchStrategy[Any]:
    type_names = st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null"])
    keywords: dict[str, st.SearchStrategy[Any]] = {
        "type": type_names | st.lists(type_names, min_size=1, max_size=3, unique=True),
        "minimum": NUMBER,
        "maximum": NUMBER,
        "exclusiveMinimum": NUMBER,
        "exclusiveMaximum": NUMBER,
        "minLength": st.integers(0, 3),
        "maxLength": st.integers(0, 3) | st.just(2.0),
        "minItems": st.integers(0, 2),
        "maxItems": st.integers(0, 2),
        "enum": st.lists(SCALARS, min_size=1, max_size=4),
        "const": SCALARS,
        "description": st.text(max_size=3),
    }
    return st.booleans() | st.fixed_dictionaries({}, optional=keywords)


def _compound(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    obj = st.fixed_dictionaries(
        {"type": st.just("object")},
        optional={
            "properties": st.dictionaries(st.sampled_from(["a", "b", "path", "k"]), children, max_size=3),
            "required": st.lists(st.sampled_from(["a", "b", "path", "k"]), max_size=3, unique=True),
            "additionalProperties": children,
        },
    )
    arr = st.fixed_dictionaries(
        {"type": st.just("array")},
        optional={"items": children, "minItems": st.integers(0, 2), "maxItems": st.integers(0, 3)},
    )
    return obj | arr


_META = Draft202012Validator(Draft202012Validator.META_SCHEMA)
GENERATED = st.recursive(_leaf_schemas(), _compound, max_leaves=6).filter(_META.is_valid)

# ------------------------------------------------------------------------------------------ properties


Compiled = tuple[Draft202012Validator, FastCheck | None, SchemaValidator | None, SchemaValidator | None]


_CACHE: dict[str, Compiled] = {}


def _compiled(schema: Any) -> Compiled:
    """The reference validator, the fast checker and SchemaValidators with the fast path on and off.

    Cached by ``repr``, which tells 1, 1.0 and True apart, so equal keys mean the same schema."""
    key = repr(schema)
    if key not in _CACHE:
        if len(_CACHE) > 512:
            _CACHE.clear()
        if isinstance(schema, dict):
            without_fast = SchemaValidator(schema)
            without_fast._fast = None
            _CACHE[key] = (
                Draft202012Validator(schema),
                compile_fast(schema),
                SchemaValidator(schema),
                without_fast,
            )
        else:
            _CACHE[key] = (Draft202012Validator(schema), compile_fast(schema), None, None)
    return _CACHE[key]


def check_agrees(schema: Any, value: Any, *, exact: bool) -> None:
    reference, fast, with_fast, without_fast = _compiled(schema)
    expected_valid = reference.is_valid(value)
    assert fast is not None, schema
    if fast(value):
        assert expected_valid, (schema, value)  # never "valid" for a value jsonschema rejects
    if exact:
        assert fast(value) == expected_valid, (schema, value)
    if with_fast is None or without_fast is None:
        return
    got = with_fast.errors(value)
    assert got == without_fast.errors(value)
    assert (got == []) == expected_valid
    assert with_fast.is_valid(value) == expected_valid


SCHEMA_CASES = st.sampled_from([(s, True) for s in EXACT] + [(s, False) for s in INEXACT])


def prop_fixed_schemas(case: tuple[dict[str, Any], bool], data: st.DataObject) -> None:
    schema, exact = case
    check_agrees(schema, data.draw(near(schema)), exact=exact)


def prop_generated_schemas(schema: Any, data: st.DataObject) -> None:
    check_agrees(schema, data.draw(near(schema)), exact=True)


def prop_bench_schema(value: Any) -> None:
    check_agrees(BENCH, value, exact=True)


PROPS: dict[str, tuple[Any, dict[str, st.SearchStrategy[Any]]]] = {
    "fixed_schemas": (prop_fixed_schemas, {"case": SCHEMA_CASES, "data": st.data()}),
    "generated_schemas": (prop_generated_schemas, {"schema": GENERATED, "data": st.data()}),
    "bench_schema": (prop_bench_schema, {"value": near(BENCH)}),
}


@pytest.mark.parametrize("name", sorted(PROPS))
def test_fast_path_agrees_with_jsonschema(name: str) -> None:
    prop, strategies = PROPS[name]
    FAST(given(**strategies)(prop))()


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", sorted(PROPS))
def test_fast_path_agrees_with_jsonschema_slow(name: str) -> None:
    prop, strategies = PROPS[name]
    SLOW(given(**strategies)(prop))()


# ------------------------------------------------------------------------------------------ examples


@pytest.mark.parametrize("schema", EXACT + INEXACT)
def test_subset_schemas_get_a_fast_checker(schema: dict[str, Any]) -> None:
    assert compile_fast(schema) is not None
    assert SchemaValidator(schema)._fast is not None


@pytest.mark.parametrize("schema", OUT_OF_SUBSET)
def test_out_of_subset_schemas_have_no_fast_checker_and_still_validate(schema: dict[str, Any]) -> None:
    assert compile_fast(schema) is None
    validator = SchemaValidator(schema)
    assert validator._fast is None
    reference = Draft202012Validator(schema)
    for value in [
        "abc",
        "xyz",
        "a@b.c",
        1,
        2,
        0,
        -1,
        {"a": 1},
        {"a": "s"},
        {"x1": 1, "y": 2},
        ["s", 1],
        [1, 1],
        {},
    ]:
        assert validator.is_valid(value) == reference.is_valid(value), (schema, value)
        assert (validator.errors(value) == []) == reference.is_valid(value)


def test_valid_values_skip_jsonschema() -> None:
    class Boom:
        def iter_errors(self, value: Any) -> Any:
            raise AssertionError("jsonschema ran")

    validator = SchemaValidator(BENCH)
    real = validator._validator
    validator._validator = Boom()  # type: ignore[assignment]
    assert validator.errors({"path": "/srv/example.txt", "offset": 0, "length": 4096}) == []
    assert validator.errors({"path": "😀", "offset": 1.0}) == []
    validator._validator = real
    assert validator.errors({"path": 1, "extra": True}) == [
        {"path": "", "message": "Additional properties are not allowed ('extra' was unexpected)"},
        {"path": "/path", "message": "1 is not of type 'string'"},
    ]


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "integer", "minimum": 0}, Color.RED),
        ({"type": "string", "maxLength": 1}, Name("ab")),
        ({"type": "string", "maxLength": 2}, Name("ab")),
        (BENCH, OrderedDict(path="x")),
        ({"type": "array"}, ("a", "tuple")),
        ({"type": "integer"}, True),
        ({"type": "number"}, False),
        ({"enum": [1]}, True),
        ({"const": True}, 1),
        ({"type": "integer"}, float("inf")),
        ({"type": "number", "minimum": 0}, float("nan")),
        ({"enum": [float("nan")]}, float("nan")),
        ({"type": "object", "properties": {"a": {"description": "any"}}}, {"a": (1, 2)}),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, {"a": (1, 2)}),
    ],
)
def test_unusual_values_match_jsonschema(schema: dict[str, Any], value: Any) -> None:
    expected = Draft202012Validator(schema).is_valid(value)
    fast = compile_fast(schema)
    assert fast is not None
    assert not fast(value) or expected
    assert SchemaValidator(schema).is_valid(value) == expected


def test_a_failing_fast_checker_falls_back_to_jsonschema() -> None:
    def broken(value: Any) -> bool:
        raise ZeroDivisionError

    validator = SchemaValidator(BENCH)
    validator._fast = broken
    assert validator.errors({"path": "x"}) == []
    assert validator.errors({}) == [{"path": "", "message": "'path' is a required property"}]


def test_empty_schema_needs_no_checker() -> None:
    validator = SchemaValidator({})
    assert validator.accepts_anything
    assert validator.errors(object()) == []
