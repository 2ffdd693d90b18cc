"""A DAG's params (Airflow's ``Param``): their schemas checked when the DAG is registered, a trigger's conf
checked against them before its run is made.

Airflow checks a trigger's conf against the DAG file's params and answers 400, making no run; Stateport,
with no DAG file, made the run and each task failed as it started, when the Task SDK checked them (an
outsider's find). The spec now carries the params, and the server checks them as Airflow does: a param's
value is the conf's member of its name, else its default; a param with neither is refused, as is a value
its schema refuses. Conf members no param names pass, as in Airflow.

The schemas are JSON Schema (draft 2020-12, Airflow's), checked by ``jsonschema_rs``, a well-kept
validator, with two settings a server needs: ``offline`` (a ``$ref`` to a URL is refused, never fetched:
a DAG's author could otherwise have the server fetch any address at each trigger) and ``RegexOptions``,
the linear-time engine (a ``pattern`` that backtracks would otherwise hold the event loop for as long as
a caller's value makes it).
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import msgspec

from stateport.domain.errors import Invalid, InvalidParams
from stateport.domain.lru import Lru
from stateport.domain.models import ParamSpec

# A param's schema at most, as compact JSON: it is compiled at registration and at a trigger.
MAX_SCHEMA_BYTES = 64 * 1024
# Compiled params of this many DAG versions are kept (a trigger compiles its DAG's once).
CACHED_VERSIONS = 1_000

Validators = dict[str, jsonschema_rs.Validator]

_compiled: Lru[str, Validators] = Lru(CACHED_VERSIONS)


def _compile(name: str, schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The validator of param ``name``'s schema; Invalid naming it if the schema is not one."""
    where = f"params.{name}.schema"
    if len(msgspec.json.encode(schema)) > MAX_SCHEMA_BYTES:
        raise Invalid(f"param '{name}': its schema is over {MAX_SCHEMA_BYTES} bytes as JSON", field=where)
    try:
        return jsonschema_rs.Draft202012Validator(
            schema, offline=True, pattern_options=jsonschema_rs.RegexOptions()
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        said = " ".join(str(exc).split())[:300]
        raise Invalid(f"param '{name}': its schema is not valid JSON Schema: {said}", field=where) from None


def check_params(params: dict[str, ParamSpec]) -> None:
    """At registration: each param's schema compiles, and its default (if it has one) satisfies it."""
    for name, param in params.items():
        validator = _compile(name, param.schema)
        if param.default is not msgspec.UNSET:
            problem = _problem(validator, param.default)
            if problem is not None:
                raise Invalid(
                    f"param '{name}': its default is not valid: {problem}", field=f"params.{name}.default"
                )


def check_conf_params(version: str, params: dict[str, ParamSpec] | None, conf: dict[str, Any]) -> None:
    """At a trigger: InvalidParams unless every param has a value (``conf``'s, else its default) that its
    schema takes. ``version``: the DAG version the params are of (their compiled schemas are kept by it)."""
    if not params:
        return
    validators = _compiled.get(version)
    if validators is None:
        validators = {name: _compile(name, param.schema) for name, param in params.items()}
        _compiled.put(version, validators)
    for name, param in params.items():
        value = conf.get(name, param.default)
        if value is msgspec.UNSET:
            # Airflow's words (ParamValidationError).
            raise InvalidParams(
                f"Invalid input for param {name}: No value passed and Param has no default value"
            )
        problem = _problem(validators[name], value)
        if problem is not None:
            raise InvalidParams(f"Invalid input for param {name}: {problem}")


def _problem(validator: jsonschema_rs.Validator, value: Any) -> str | None:
    """What the schema finds wrong with ``value`` (its first error, where it is), or None."""
    for error in validator.iter_errors(value):
        where = "".join(f"[{part!r}]" for part in error.instance_path)
        return f"{error.message}{f' (at {where})' if where else ''}"
    return None
