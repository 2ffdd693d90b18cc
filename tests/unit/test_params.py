"""A DAG's params: their schemas checked at registration, a trigger's conf checked against them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from stateport.domain.dags import dag_version, validate_spec
from stateport.domain.errors import Invalid, InvalidParams
from stateport.domain.models import DagSpec, ParamSpec
from stateport.domain.params import (
    CHEAP_CHECK,
    MAX_PATTERNS,
    MAX_SCHEMA_BYTES,
    check_conf_params,
    check_cost,
    check_defaults,
    compile_all,
    schema_bytes,
)

TASKS = b'"tasks": [{"task_id": "a"}]'


def spec(params: dict[str, Any] | None) -> DagSpec:
    body = b"{" + TASKS + (b"" if params is None else b', "params": ' + msgspec.json.encode(params)) + b"}"
    return msgspec.json.decode(body, type=DagSpec)


def register(dag: DagSpec) -> None:
    """What registration checks of a spec: its shape (``validate_spec``), then its params compiled and
    their defaults checked (``RunService.register_dag`` compiles them in a thread)."""
    validate_spec(dag)
    if dag.params:
        check_defaults(dag.params, compile_all(dag.params))


NUMBER = {"n": {"default": 3, "schema": {"type": "integer", "minimum": 1}}}


def test_a_spec_without_params_keeps_the_version_it_had_before_params_existed() -> None:
    assert dag_version(spec(None)) == dag_version(msgspec.json.decode(b"{" + TASKS + b"}", type=DagSpec))
    assert dag_version(spec(NUMBER)) != dag_version(spec(None))


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"n": {"schema": {"type": "integr"}}}, "params.n.schema", "not valid JSON Schema"),
        ({"n": {"schema": {"minimum": "one"}}}, "params.n.schema", "not valid JSON Schema"),
        ({"n": {"default": 0, "schema": {"type": "integer", "minimum": 1}}}, "params.n.default", "minimum"),
        ({"n": {"schema": {"enum": ["x" * MAX_SCHEMA_BYTES]}}}, "params.n.schema", "over"),
    ],
)
def test_a_param_whose_schema_or_default_is_bad_is_refused_at_registration(
    params: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(Invalid, match=words) as refused:
        register(spec(params))
    assert refused.value.field == field


def chain(links: int) -> dict[str, Any]:
    """A schema of ``links`` definitions, each referring twice to the next: 2^links paths to check."""
    defs: dict[str, Any] = {
        f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(links)
    }
    defs[f"d{links}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "http://10.255.255.1/schema.json"},  # never fetched
        {"$ref": "https://json-schema.org/draft/2020-12/schema"},
        {"properties": {"a": {"$dynamicRef": "#x"}}},
        chain(20),  # an outsider's find: 1.4 KB that held the event loop for a minute at every trigger
    ],
)
def test_a_schema_that_refers_to_another_is_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(Invalid, match=r"may not use \$ref") as refused:
        register(spec({"n": {"schema": schema}}))
    assert refused.value.field == "params.n.schema"


def test_a_property_named_like_a_reference_keyword_is_a_property() -> None:
    register(spec({"n": {"schema": {"type": "object", "properties": {"$ref": {"type": "string"}}}}}))


def test_a_params_name_follows_the_naming_rules_and_their_schemas_have_a_total_bound() -> None:
    with pytest.raises(Invalid, match="control characters"):
        register(spec({"a\u0000b": {"schema": {}}}))
    # Pointed at the param (an outsider's find: the loc was "params (a param's name)").
    with pytest.raises(Invalid, match="whitespace") as refused:
        register(spec({"a b ": {"schema": {}}}))
    assert refused.value.field == "params.a b "
    big = {"enum": ["x" * (MAX_SCHEMA_BYTES - 100)]}
    with pytest.raises(Invalid, match="in all"):
        register(spec({f"p{i}": {"schema": big} for i in range(5)}))


def test_a_value_failing_an_any_of_over_a_long_list_is_told_at_once() -> None:
    # iter_errors built every item's every error (the process was killed for its memory); the first is enough.
    params = {
        "xs": ParamSpec(schema={"type": "array", "items": {"anyOf": [{"const": i} for i in range(400)]}})
    }
    with pytest.raises(InvalidParams, match=r"is not valid under any of the schemas .*\(at \[0\]\)"):
        check_conf_params("test-any-of", params, {"xs": [999_999] * 150_000})


def test_a_conf_is_checked_against_the_params_with_their_defaults() -> None:
    params = spec({**NUMBER, "tags": {"schema": {"type": "array", "items": {"type": "string"}}}}).params
    assert params is not None
    version = "test-conf-checked"
    check_conf_params(version, params, {"tags": ["a"]})  # n from its default
    check_conf_params(version, params, {"n": 5, "tags": [], "other": {"any": "thing"}})  # extra members pass
    cases: dict[str, dict[str, Any]] = {
        "Invalid input for param n: 0 is less than the minimum of 1": {"n": 0, "tags": []},
        'Invalid input for param n: "5" is not of type "integer"': {"n": "5", "tags": []},
        "Invalid input for param tags: No value passed and Param has no default value": {"n": 1},
        'Invalid input for param tags: 2 is not of type "string" (at [1])': {"tags": ["a", 2]},
    }
    for said, conf in cases.items():
        with pytest.raises(InvalidParams) as refused:
            check_conf_params(version, params, conf)
        assert refused.value.detail == said


def test_a_null_default_is_a_value_not_a_missing_one() -> None:
    params = {"n": ParamSpec(default=None, schema={"type": ["null", "integer"]})}
    check_conf_params("test-null-default", params, {})
    with pytest.raises(InvalidParams, match=r"is not valid under|is not of type"):
        check_conf_params("test-null-default", params, {"n": "x"})


def test_a_pattern_that_would_backtrack_is_matched_in_linear_time() -> None:
    # Python's re takes minutes on this; the linear-time engine answers at once (no timing assert: a hang
    # would stop the suite).
    params = {"s": ParamSpec(schema={"type": "string", "pattern": "^(a+)+$"})}
    with pytest.raises(InvalidParams, match="does not match"):
        check_conf_params("test-pattern", params, {"s": "a" * 5000 + "b"})


def test_a_pattern_that_compiles_to_too_large_a_program_is_refused() -> None:
    # An outsider's find: 1000 of these took a minute of the event loop to compile at registration.
    with pytest.raises(Invalid, match="compiles to over") as refused:
        register(spec({"s": {"schema": {"type": "string", "pattern": "[\\p{L}\\p{N}]{200}"}}}))
    assert refused.value.field == "params.s.schema"
    register(spec({"s": {"schema": {"type": "string", "pattern": "^[a-z0-9-]{1,63}$"}}}))


def test_a_checks_cost_is_its_schemas_size_times_its_values() -> None:
    params = {"x": ParamSpec(schema={"type": "array"}), "y": ParamSpec(schema={})}
    assert check_cost(params, {"x": [1, 2], "z": [1] * 1000}) == len(b'{"type":"array"}') * len(b"[1,2]")
    # A trigger's: the schemas' sizes kept by DAG version, the same cost.
    sizes = schema_bytes("v-cost", params)
    assert sizes == {"x": len(b'{"type":"array"}'), "y": len(b"{}")}
    assert schema_bytes("v-cost", params) is sizes  # measured once
    assert check_cost(params, {"x": [1, 2]}, sizes) == check_cost(params, {"x": [1, 2]})
    costly = {"x": ParamSpec(schema={"anyOf": [{"contains": {"const": -1}}] * 400})}
    assert check_cost(costly, {"x": list(range(150_000))}) > CHEAP_CHECK
    # A default whose check would be as long is refused at registration, unchecked.
    big = {"x": {"default": list(range(150_000)), "schema": {"anyOf": [{"contains": {"const": -1}}] * 400}}}
    with pytest.raises(Invalid, match="too large to check") as refused:
        register(spec(big))
    assert refused.value.field == "params.x.default"


def test_a_dags_params_hold_a_bounded_number_of_regular_expressions() -> None:
    # An outsider's find: 430 patterns of a Unicode class compiled to half a gigabyte, kept by version.
    one = {"type": "string", "pattern": "^[a-z]+$"}
    register(spec({f"p{i}": {"schema": one} for i in range(MAX_PATTERNS)}))
    with pytest.raises(Invalid, match=f"17 regular expressions .* the limit is {MAX_PATTERNS}") as refused:
        register(
            spec(
                {
                    **{f"p{i}": {"schema": one} for i in range(MAX_PATTERNS)},
                    "q": {
                        "schema": {
                            "type": "object",
                            "patternProperties": {"^x": {}},
                            "properties": {"pattern": {"type": "string"}},
                        }
                    },
                }
            )
        )
    assert refused.value.field == "params"
