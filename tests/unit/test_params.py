"""A DAG's params: their schemas checked at registration, a trigger's conf checked against them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from stateport.domain.dags import dag_version, validate_spec
from stateport.domain.errors import Invalid, InvalidParams
from stateport.domain.models import DagSpec, ParamSpec
from stateport.domain.params import MAX_SCHEMA_BYTES, check_conf_params

TASKS = b'"tasks": [{"task_id": "a"}]'


def spec(params: dict[str, Any] | None) -> DagSpec:
    body = b"{" + TASKS + (b"" if params is None else b', "params": ' + msgspec.json.encode(params)) + b"}"
    return msgspec.json.decode(body, type=DagSpec)


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
        validate_spec(spec(params))
    assert refused.value.field == field


def test_a_schema_that_refers_to_a_url_is_refused_not_fetched() -> None:
    # offline: the server never fetches what a DAG's author names (here, an address nothing answers).
    with pytest.raises(Invalid, match="not valid JSON Schema") as refused:
        validate_spec(spec({"n": {"schema": {"$ref": "http://10.255.255.1/schema.json"}}}))
    assert "Retrieval is disabled" in refused.value.detail


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
