"""A DAG's params (Airflow's ``Param``): their schemas checked when the DAG is registered, a trigger's conf
checked against them before its run is made.

Airflow checks a trigger's conf against the DAG file's params and answers 400, making no run; Stateport,
with no DAG file, made the run and each task failed as it started, when the Task SDK checked them (an
outsider's find). The spec now carries the params, and the server checks them as Airflow does: a param's
value is the conf's member of its name, else its default; a param with neither is refused, as is a value
its schema refuses. Conf members no param names pass, as in Airflow.

The schemas are JSON Schema (draft 2020-12, Airflow's), checked by ``jsonschema_rs``, a well-kept
validator, with two settings a server needs: ``offline`` (nothing is ever fetched) and ``RegexOptions``,
the linear-time engine (a ``pattern`` that backtracks would otherwise hold the event loop for as long as
a caller's value makes it). The check runs in the event loop, so its cost is bounded by what a schema may
hold: no ``$ref`` (a chain of references each used twice made 1.4 KB of schema cost a minute of the loop
at every trigger: an outsider's find; without references a schema's parts are each checked once per part
of the value), at most ``MAX_SCHEMA_BYTES`` each and ``MAX_SCHEMAS_BYTES`` in all; and a value is checked
for its first error only (``validate``: ``iter_errors`` built every error of every item, gigabytes for an
``anyOf`` over a long list).
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import msgspec

from stateport.domain.errors import Invalid, InvalidParams
from stateport.domain.lru import Lru
from stateport.domain.models import ParamSpec
from stateport.domain.values import check_name

# A param's schema at most, and a DAG's params' schemas in all, as compact JSON: each is compiled at
# registration and checked at every trigger, in the event loop.
MAX_SCHEMA_BYTES = 16 * 1024
MAX_SCHEMAS_BYTES = 64 * 1024
# The keywords that refer to other schemas: refused (see above).
REFERENCES = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})
# Compiled params of this many DAG versions are kept (a trigger compiles its DAG's once).
CACHED_VERSIONS = 1_000

Validators = dict[str, jsonschema_rs.Validator]

_compiled: Lru[str, Validators] = Lru(CACHED_VERSIONS)


def _compile(name: str, schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The validator of param ``name``'s schema; Invalid naming it if the schema is not one."""
    where = f"params.{name}.schema"
    if len(msgspec.json.encode(schema)) > MAX_SCHEMA_BYTES:
        raise Invalid(f"param '{name}': its schema is over {MAX_SCHEMA_BYTES} bytes as JSON", field=where)
    if _refers(schema):
        raise Invalid(
            f"param '{name}': its schema may not use $ref, $dynamicRef or $recursiveRef (write it out)",
            field=where,
        )
    try:
        return jsonschema_rs.Draft202012Validator(
            schema, offline=True, pattern_options=jsonschema_rs.RegexOptions()
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        said = " ".join(str(exc).split())[:300]
        raise Invalid(f"param '{name}': its schema is not valid JSON Schema: {said}", field=where) from None


def _refers(schema: Any) -> bool:
    """Whether a reference keyword is used anywhere in ``schema`` (a keyword's value is a string; a
    property that happens to be named ``$ref`` has a schema, an object, as its value)."""
    if isinstance(schema, dict):
        return any(
            (key in REFERENCES and isinstance(value, str)) or _refers(value) for key, value in schema.items()
        )
    if isinstance(schema, list):
        return any(_refers(item) for item in schema)
    return False


def check_params(params: dict[str, ParamSpec]) -> None:
    """At registration: each param's name is a name, its schema compiles, and its default (if it has one)
    satisfies it."""
    total = sum(len(msgspec.json.encode(param.schema)) for param in params.values())
    if total > MAX_SCHEMAS_BYTES:
        said = f"the params' schemas are {total} bytes as JSON in all; the limit is {MAX_SCHEMAS_BYTES}"
        raise Invalid(said, field="params")
    for name, param in params.items():
        check_name(name, "params (a param's name)", new=True)
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
    try:
        validator.validate(value)
    except jsonschema_rs.ValidationError as error:
        where = "".join(f"[{part!r}]" for part in error.instance_path)
        return f"{error.message}{f' (at {where})' if where else ''}"
    return None
