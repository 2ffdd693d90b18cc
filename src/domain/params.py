"""DAG params (Airflow's ``Param``): the JSON Schemas a run's conf must meet, checked where the run is made.

As Airflow's trigger checks them (``SerializedParamsDict.deep_merge``, then ``validate``): each param takes
the conf's value of its name, else its default; a param with neither, or whose value its schema refuses,
refuses the trigger (``InvalidParams``: ``Invalid input for param <name>: ...``), and no run is made. Conf
members that name no param are kept, unchecked. The conf is stored as it was sent, defaults not written
into it, as Airflow stores it. A spec's schemas and defaults are checked when it is registered.

The schemas run on jsonschema-rs rather than the pure-Python ``jsonschema`` Airflow uses: its regular
expressions run in linear time, so a DAG's ``pattern`` (``^(a+)+$``) cannot hold the event loop for the
trigger that meets it, as a backtracking ``re`` would; and ``offline`` refuses every ``$ref`` it would
fetch, so no schema makes the server request a URL. Formats (``date``, ``email``...) are checked, as
Airflow's ``FormatChecker`` checks them.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
from msgspec import UNSET

from stateport.domain.errors import Invalid, InvalidParams, echo
from stateport.domain.lru import Lru
from stateport.domain.models import DagParam, DagVersion

# The compiled schemas of the DAG versions triggered lately: compiling one is far more than checking a value.
VALIDATORS_KEPT = 1_000


def check_params(params: dict[str, DagParam] | None) -> None:
    """At registration: every schema a JSON Schema, every default one its schema accepts (Invalid)."""
    for name, param in (params or {}).items():
        validator = _compile(name, param)
        if param.default is not UNSET:
            try:
                validator.validate(param.default)
            except jsonschema_rs.ValidationError as exc:
                raise Invalid(
                    f"the default of param '{echo(name)}' does not meet its schema: {_said(exc)}",
                    field=f"params.{name}.default",
                ) from None


def _compile(name: str, param: DagParam) -> Any:  # a jsonschema_rs validator
    try:
        return jsonschema_rs.validator_for(param.schema, validate_formats=True, offline=True)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise Invalid(
            f"the schema of param '{echo(name)}' is not a JSON Schema this server can use: {_said(exc)}",
            field=f"params.{name}.schema",
        ) from None


def _said(exc: Exception) -> str:
    """An error's first line: jsonschema-rs adds the schema and the instance below it."""
    message = getattr(exc, "message", None) or str(exc)
    return echo(message.split("\n", 1)[0])


class ParamChecks:
    """Checks triggers' confs against their DAG's params, each version's schemas compiled once."""

    def __init__(self) -> None:
        self._compiled: Lru[tuple[str, str], dict[str, Any]] = Lru(VALIDATORS_KEPT)

    def check(self, dag: DagVersion, conf: dict[str, Any]) -> None:
        """InvalidParams unless every param of ``dag`` has a value in ``conf`` (or a default) that its
        schema accepts; the first refused, in the spec's order, is named."""
        params = dag.spec.params
        if not params:
            return
        key = (dag.dag_id, dag.version)
        validators = self._compiled.get(key)
        if validators is None:
            validators = {name: _compile(name, param) for name, param in params.items()}
            self._compiled.put(key, validators)
        for name, param in params.items():
            value = conf.get(name, param.default)
            if value is UNSET:
                raise InvalidParams(f"Invalid input for param {name}: No value passed", field="conf")
            try:
                validators[name].validate(value)
            except jsonschema_rs.ValidationError as exc:
                raise InvalidParams(f"Invalid input for param {name}: {_said(exc)}", field="conf") from None
