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
a caller's value makes it), with a bound on a pattern's compiled size (``MAX_PATTERN_BYTES``: a repeated
Unicode class took 57 ms to compile, and 1000 of them held the loop a minute: an outsider's find).

What a check may cost is bounded too: no ``$ref`` (a chain of references each used twice made 1.4 KB of
schema cost a minute of the loop at every trigger: an outsider's find; without references a schema's parts
are each checked once per part of the value), at most ``MAX_SCHEMA_BYTES`` each and ``MAX_SCHEMAS_BYTES``
in all, and a value is checked for its first error only (``validate``: ``iter_errors`` built every error of
every item, gigabytes for an ``anyOf`` over a long list). Even so, a schema's every part may look at every
part of a value (``anyOf`` of 400 ``contains``: a 1 MiB list held the loop 59 s: an outsider's find). So
``RunService`` compiles the schemas in a thread (``jsonschema_rs`` lets go of the GIL between two), and a
trigger whose check may be long (``check_cost`` over ``CHEAP_CHECK``), or uses a regular expression, has it
run where the server says (``RunService.param_checks``: the HTTP layer's checking processes, under a time
limit); so are the schemas of a DAG with a regular expression compiled and its defaults checked there when
it is registered (16 patterns of a few kilobytes held the loop a second, compiling in one thread: each
schema's compile holds the GIL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

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
# A pattern's compiled program at most (the regex engine's own measure); over it, the schema is refused.
MAX_PATTERN_BYTES = 1024 * 1024
# The largest ``check_cost`` checked in the event loop: about 50 ms on a slow core at worst.
CHEAP_CHECK = 16_000_000
# The largest ``check_cost`` checked at all: about 2 s and 400 MB at worst (an ``anyOf`` of ``contains``
# keeps every branch's error, each quoting the value: 30 KB an item; 150,000 items took a process to 16 GB).
MAX_CHECK = 512_000_000
# How much of the validator's message an answer quotes (it quotes the value: 588 KB for a long list).
MAX_MESSAGE = 300
# The keywords that refer to other schemas: refused (see above).
REFERENCES = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})
# Compiled params of this many DAG versions are kept (a trigger compiles its DAG's once).
CACHED_VERSIONS = 32
# The regular expressions (``pattern``, ``patternProperties``' names) of a DAG's params at most: each may
# compile to MAX_PATTERN_BYTES, and 430 of them made one version's validators half a gigabyte, kept by
# version (an outsider's find).
MAX_PATTERNS = 16

Validators = dict[str, jsonschema_rs.Validator]


class ParamChecks(Protocol):
    """The checks of params made elsewhere than in the event loop (the HTTP layer's checking processes)."""

    async def conf(self, version: str, params: dict[str, ParamSpec], conf: dict[str, Any]) -> None:
        """A trigger's ``conf`` against DAG ``version``'s params, raising as ``check_conf_params`` does."""

    async def schemas(self, params: dict[str, ParamSpec]) -> None:
        """A DAG's params at its registration, raising as ``check_schemas`` does."""


_compiled: Lru[str, Validators] = Lru(CACHED_VERSIONS)


class _VersionFacts(NamedTuple):
    """What every trigger of a DAG version asks of its params: whether they hold a regular expression, and
    each schema's size as JSON (``check_cost``). Kept by version: a walk and an encoding of up to 64 KiB of
    schemas at each trigger are not free."""

    regexes: bool
    schema_bytes: dict[str, int]


_facts: Lru[str, _VersionFacts] = Lru(CACHED_VERSIONS * 32)


def _version_facts(version: str, params: dict[str, ParamSpec]) -> _VersionFacts:
    found = _facts.get(version)
    if found is None:
        sizes = {name: len(msgspec.json.encode(param.schema)) for name, param in params.items()}
        found = _VersionFacts(regexes=has_regexes(params), schema_bytes=sizes)
        _facts.put(version, found)
    return found


def _check_schema(name: str, schema: dict[str, Any]) -> None:
    """What is refused of param ``name``'s schema before it is compiled: its size, references."""
    where = f"params.{name}.schema"
    if len(msgspec.json.encode(schema)) > MAX_SCHEMA_BYTES:
        raise Invalid(f"param '{name}': its schema is over {MAX_SCHEMA_BYTES} bytes as JSON", field=where)
    if _refers(schema):
        raise Invalid(
            f"param '{name}': its schema may not use $ref, $dynamicRef or $recursiveRef (write it out)",
            field=where,
        )


def uses_regexes(version: str, params: dict[str, ParamSpec]) -> bool:
    """Whether the params of DAG ``version`` hold a regular expression (``patterns``), kept by version."""
    return _version_facts(version, params).regexes


def schema_bytes(version: str, params: dict[str, ParamSpec]) -> dict[str, int]:
    """Each param's schema's size as JSON, of DAG ``version`` (for ``check_cost``), kept by version."""
    return _version_facts(version, params).schema_bytes


def patterns(schema: Any) -> int:
    """How many regular expressions ``schema`` holds: ``pattern`` keywords and ``patternProperties``'
    names (a property named "pattern" has a schema, an object, as its value)."""
    if isinstance(schema, dict):
        found = sum(1 for key, value in schema.items() if key == "pattern" and isinstance(value, str))
        regexes = schema.get("patternProperties")
        if isinstance(regexes, dict):
            found += len(regexes)
        return found + sum(patterns(value) for value in schema.values())
    if isinstance(schema, list):
        return sum(patterns(item) for item in schema)
    return 0


def _compile(name: str, schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The validator of param ``name``'s schema (checked by ``check_param_shapes``); Invalid naming it if
    the schema is not one."""
    where = f"params.{name}.schema"
    try:
        return jsonschema_rs.Draft202012Validator(
            schema, offline=True, pattern_options=jsonschema_rs.RegexOptions(size_limit=MAX_PATTERN_BYTES)
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        said = " ".join(str(exc).split())[:300]
        raise Invalid(
            f"param '{name}': its schema is not valid JSON Schema (or a pattern of it compiles to over "
            f"{MAX_PATTERN_BYTES} bytes): {said}",
            field=where,
        ) from None


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


def check_param_shapes(params: dict[str, ParamSpec]) -> None:
    """At registration, before the schemas are compiled (``compile_all``): each param's name is a name, and
    its schema is within the bounds on size and uses no reference (cheap: nothing is compiled)."""
    total = sum(len(msgspec.json.encode(param.schema)) for param in params.values())
    if total > MAX_SCHEMAS_BYTES:
        said = f"the params' schemas are {total} bytes as JSON in all; the limit is {MAX_SCHEMAS_BYTES}"
        raise Invalid(said, field="params")
    for name, param in params.items():
        try:
            check_name(name, "a param's name", new=True)
        except Invalid as exc:  # pointed at the param, as its schema's and default's errors are
            raise Invalid(exc.detail, field=f"params.{name}") from None
        _check_schema(name, param.schema)
    regexes = sum(patterns(param.schema) for param in params.values())
    if regexes > MAX_PATTERNS:
        raise Invalid(
            f"the params' schemas hold {regexes} regular expressions (pattern, patternProperties) in all; "
            f"the limit is {MAX_PATTERNS}",
            field="params",
        )


def check_defaults(params: dict[str, ParamSpec], validators: Validators) -> None:
    """At registration, once the schemas compiled (``compile_all``, in a thread: ``RunService``): each
    param's default, if it has one, satisfies its schema. In the event loop: a default whose check may be
    long (``check_cost`` over ``CHEAP_CHECK``) is refused unchecked."""
    for name, param in params.items():
        if param.default is not msgspec.UNSET:
            if check_cost({name: param}, {name: param.default}) > CHEAP_CHECK:
                raise Invalid(
                    f"param '{name}': its default is too large to check against its schema "
                    f"(its size as JSON times its schema's is over {CHEAP_CHECK})",
                    field=f"params.{name}.default",
                )
            problem = _problem(validators[name], param.default)
            if problem is not None:
                raise Invalid(
                    f"param '{name}': its default is not valid: {problem}", field=f"params.{name}.default"
                )


def check_schemas(params: dict[str, ParamSpec]) -> None:
    """At registration: each param's schema compiles (``compile_all``) and its default, if any, satisfies it
    (``check_defaults``); Invalid naming the first that does not. Holds the GIL while a schema compiles."""
    check_defaults(params, compile_all(params))


def has_regexes(params: dict[str, ParamSpec]) -> bool:
    """Whether ``params`` hold a regular expression (``patterns``): compiling one may take milliseconds."""
    return any(patterns(param.schema) for param in params.values())


def compile_all(params: dict[str, ParamSpec]) -> Validators:
    """Each param's schema compiled; Invalid naming the first that is not valid. Holds the GIL only while
    one compiles: the server runs it in a thread."""
    return {name: _compile(name, param.schema) for name, param in params.items()}


def cached(version: str) -> Validators | None:
    """The compiled params of a DAG version, if this process keeps them."""
    return _compiled.get(version)


def keep(version: str, validators: Validators) -> None:
    _compiled.put(version, validators)


def check_cost(
    params: dict[str, ParamSpec], conf: dict[str, Any], sizes: Mapping[str, int] | None = None
) -> int:
    """What checking ``conf`` against ``params`` may cost, as a measure to compare with ``CHEAP_CHECK``:
    for each param the conf gives a value, its schema's size times its value's, as JSON (each part of a
    schema may look at each part of the value once). Its defaults were checked when the DAG was
    registered. ``sizes``: the schemas' sizes when the caller has them (``schema_bytes``)."""
    return sum(
        (len(msgspec.json.encode(param.schema)) if sizes is None else sizes[name])
        * len(msgspec.json.encode(conf[name]))
        for name, param in params.items()
        if name in conf
    )


def check_conf_params(
    version: str,
    params: dict[str, ParamSpec] | None,
    conf: dict[str, Any],
    validators: Validators | None = None,
) -> None:
    """At a trigger: InvalidParams unless every param has a value (``conf``'s, else its default) that its
    schema takes. ``version``: the DAG version the params are of (their compiled schemas are kept by it);
    ``validators``: those compiled schemas when the caller has them (else compiled here)."""
    if not params:
        return
    if validators is None:
        validators = _compiled.get(version)
    if validators is None:
        validators = compile_all(params)
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
        said = error.message
        if len(said) > MAX_MESSAGE:  # its middle: the value it quotes; what is wrong is said at either end
            said = f"{said[: MAX_MESSAGE // 2]} ... {said[-MAX_MESSAGE // 2 :]}"
        return f"{said}{f' (at {where})' if where else ''}"
    return None
