"""DAG params (Airflow's ``Param``): schemas checked at registration, confs at each trigger, as Airflow."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from stateport.domain.dags import dag_version
from stateport.domain.errors import Invalid, InvalidParams
from stateport.domain.models import DagParam, DagSpec, DagVersion
from stateport.domain.params import ParamChecks, check_params


def spec(params: dict[str, Any] | None) -> DagSpec:
    return msgspec.convert({"tasks": [{"task_id": "t"}], "params": params}, DagSpec)


def version(params: dict[str, Any]) -> DagVersion:
    made = spec(params)
    return DagVersion(dag_id="d", version=dag_version(made), spec=made, created_at=datetime.now(UTC))


PARAMS = {
    "n": {"default": 3, "schema": {"type": "integer", "minimum": 1}},
    "day": {"schema": {"type": "string", "format": "date"}, "description": "the day to load"},
    "note": {"default": None, "schema": {"type": ["null", "string"]}},
}


def test_a_conf_that_meets_every_param_passes_and_defaults_fill_what_it_leaves_out() -> None:
    checks = ParamChecks()
    checks.check(version(PARAMS), {"day": "2026-12-07"})
    checks.check(version(PARAMS), {"day": "2026-12-07", "n": 5, "note": "x", "other": [1]})  # extras pass


@pytest.mark.parametrize(
    ("conf", "said"),
    [
        ({}, "Invalid input for param day: No value passed"),
        ({"day": "2026-13-45"}, "Invalid input for param day: "),
        ({"day": "2026-12-07", "n": 0}, "Invalid input for param n: 0 is less than the minimum of 1"),
        ({"day": "2026-12-07", "n": "3"}, 'Invalid input for param n: "3" is not of type "integer"'),
        ({"day": "2026-12-07", "note": 1}, "Invalid input for param note: "),
    ],
)
def test_a_conf_a_param_refuses_is_refused_naming_the_param(conf: dict[str, Any], said: str) -> None:
    with pytest.raises(InvalidParams) as refused:
        ParamChecks().check(version(PARAMS), conf)
    assert refused.value.detail.startswith(said), refused.value.detail
    assert "\n" not in refused.value.detail


def test_a_dag_without_params_checks_nothing() -> None:
    ParamChecks().check(version({}), {"anything": 1})
    ParamChecks().check(
        DagVersion(dag_id="d", version="v", spec=spec(None), created_at=datetime.now(UTC)), {}
    )


def test_a_pattern_that_backtracks_does_not_hold_the_trigger() -> None:
    # Python's re takes minutes on this; a DAG's author must not be able to stall every trigger's loop.
    checks = ParamChecks()
    dag = version({"s": {"schema": {"type": "string", "pattern": "^(a+)+$"}}})
    started = time.monotonic()
    with pytest.raises(InvalidParams):
        checks.check(dag, {"s": "a" * 5_000 + "!"})
    assert time.monotonic() - started < 5  # a bound for a hang, not a benchmark


@pytest.mark.parametrize(
    ("params", "field", "said"),
    [
        ({"n": {"schema": {"type": "nope"}}}, "params.n.schema", "the schema of param 'n'"),
        ({"n": {"schema": {"minimum": "one"}}}, "params.n.schema", "the schema of param 'n'"),
        ({"n": {"schema": {"$ref": "http://127.0.0.1:9/s.json"}}}, "params.n.schema", "the schema of param"),
        ({"n": {"default": 0, "schema": {"minimum": 1}}}, "params.n.default", "the default of param 'n'"),
    ],
)
def test_a_spec_whose_params_cannot_be_checked_is_refused_at_registration(
    params: dict[str, Any], field: str, said: str
) -> None:
    with pytest.raises(Invalid) as refused:
        check_params(spec(params).params)
    assert refused.value.field == field
    assert refused.value.detail.startswith(said), refused.value.detail


def test_params_leave_the_version_of_a_spec_without_them_as_it_was() -> None:
    assert dag_version(spec(None)) == dag_version(spec({})) == dag_version(DagSpec(tasks=spec(None).tasks))
    assert dag_version(spec(PARAMS)) != dag_version(spec(None))
    # A default left out and a null default are two specs.
    absent = spec({"x": {"schema": {}}})
    null = spec({"x": {"default": None, "schema": {}}})
    assert dag_version(absent) != dag_version(null)
    assert absent.params == {"x": DagParam()}
