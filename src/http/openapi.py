"""What the served OpenAPI document says beyond the handlers' signatures: error bodies, security, bodies.

Handlers declare their parameters and success bodies in their signatures; this module holds what every
route shares: the JSON error bodies of each API (``stateport.http.errors`` builds them), the responses a
route documents for each status it can answer, the two bearer schemes, and the request bodies, which
handlers read themselves (see ``request_body``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.di import Provide
from litestar.enums import ParamType
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    License,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
    Tag,
)
from msgspec import Struct

from stateport import __version__

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

EVENT_STREAM = "text/event-stream"
TASK_TOKEN = "TaskToken"  # noqa: S105  # a security scheme's name
API_TOKEN = "ApiToken"  # noqa: S105  # a security scheme's name
TASK_SECURITY: list[SecurityRequirement] = [{TASK_TOKEN: []}]
API_SECURITY: list[SecurityRequirement] = [{API_TOKEN: []}]


class ReasonDetail(Struct, frozen=True, kw_only=True):
    reason: str
    message: str


class ExecutionError(Struct, frozen=True, kw_only=True):
    """An Execution API error: ``detail`` names a reason, or is a string (authentication, unknown route)."""

    detail: ReasonDetail | str


class NotRunningDetail(Struct, frozen=True, kw_only=True):
    reason: str
    message: str
    current_state: str


class NotRunningError(Struct, frozen=True, kw_only=True):
    """409 of a heartbeat or report: the task instance is no longer running (Airflow's ``invalid_state``)."""

    detail: NotRunningDetail


class ValidationItem(Struct, frozen=True, kw_only=True):
    """One error of a 422 in FastAPI's form; ``ctx`` only for malformed JSON."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrors(Struct, frozen=True, kw_only=True):
    """422 on both APIs (FastAPI's ``HTTPValidationError``)."""

    detail: list[ValidationItem]


class PublicError(Struct, frozen=True, kw_only=True):
    """Every error of the public API but a 422 (Airflow's ``HTTPExceptionResponse``), and the
    authentication errors of both."""

    detail: str


DESCRIPTIONS = {
    304: "Not modified: `If-None-Match` matches the entry's ETag (empty body, `ETag` header)",
    400: "The request could not be read (malformed HTTP, an invalid `Host`)",
    401: "No bearer token (on the public API also: the token has expired)",
    403: "The token is invalid (on the Execution API also: expired), or does not allow this request",
    404: "Not found",
    409: "Conflict",
    412: "A precondition (`If-Match`, `If-None-Match`, `if_version`) does not hold",
    413: "The body or value is over its limit",
    415: "The body is not `application/json` (UTF-8), or is encoded",
    422: "The request is invalid (the error names the field)",
    429: "Too many at once: the DAG has `max_queued_runs` queued runs (a trigger: nothing was created), "
    "(waits) this caller holds `STATEPORT_MAX_WAITERS_PER_CALLER` waits on this server process, or (a "
    "listing sent in parts) `STATEPORT_MAX_STREAMED_PAGES_PER_CALLER` listings; retry after `Retry-After` "
    "seconds",
    501: "The state backend cannot apply a batch atomically (S3): nothing was done",
    503: "A store is unavailable, or (waits) this server process holds `STATEPORT_MAX_WAITERS` waiters; "
    "retry (`Retry-After: 1`)",
}
# Statuses every authenticated route can answer: a request the server cannot read, a missing or bad token,
# an invalid address or parameter, a store that is down.
COMMON = (400, 401, 403, 422, 503)
# Statuses of a route that reads a JSON body: its media type, its size.
WITH_BODY = (413, 415)


def execution_responses(*codes: int, conflict: type[Struct] = ExecutionError) -> dict[int, ResponseSpec]:
    """The error responses of an Execution API route: ``COMMON`` and ``codes``."""
    specs: dict[int, ResponseSpec] = {}
    for code in sorted({*COMMON, *codes}):
        if code == 304:
            specs[code] = ResponseSpec(
                generate_examples=False, data_container=None, description=DESCRIPTIONS[code]
            )
            continue
        body: type[Struct] = ValidationErrors if code == 422 else ExecutionError
        if code == 409:
            body = conflict
        if code in (400, 401):
            body = PublicError
        specs[code] = ResponseSpec(
            generate_examples=False, data_container=body, description=DESCRIPTIONS[code]
        )
    return specs


def public_responses(*codes: int, common: tuple[int, ...] = COMMON) -> dict[int, ResponseSpec]:
    """The error responses of a public API route: a string ``detail`` for every status but 422."""
    bodies: dict[int, type[Struct] | None] = {304: None, 422: ValidationErrors}
    return {
        code: ResponseSpec(
            generate_examples=False,
            data_container=bodies.get(code, PublicError),
            description=DESCRIPTIONS[code],
        )
        for code in sorted({*common, *codes})
    }


class BatchMismatchDetail(Struct, frozen=True, kw_only=True):
    reason: str
    message: str
    index: int
    loc: list[str | int]


class BatchMismatchError(Struct, frozen=True, kw_only=True):
    """412 of an Execution API batch: the first operation whose ``if_version`` did not hold, by its index
    and its ``loc`` in the body. Nothing of the batch was written."""

    detail: BatchMismatchDetail


class PublicBatchMismatchError(Struct, frozen=True, kw_only=True):
    """412 of a raw admin batch (the public API's string ``detail``, and the failed operation)."""

    detail: str
    index: int
    loc: list[str | int]


def batch_responses(*, execution: bool) -> dict[int, ResponseSpec]:
    """The error responses of a batch route: those of a write, 404, 501, and its own 412; on the Execution
    API 409 too (a superseded try's writes)."""
    codes = (*WITH_BODY, 404, 501, *((409,) if execution else ()))
    specs = execution_responses(*codes) if execution else public_responses(*codes)
    specs[412] = ResponseSpec(
        generate_examples=False,
        data_container=BatchMismatchError if execution else PublicBatchMismatchError,
        description="The precondition (`if_version`) of an operation does not hold: nothing was written",
    )
    return specs


def request_body(model: Any) -> Provide:
    """Document ``model`` as the operation's JSON request body; put it in the handler's ``dependencies``.

    Handlers read and decode their bodies themselves, with the JSON rules (``stateport.domain.jsontext``),
    raw values kept byte for byte, and only after the cheap checks (the token, the task instance or DAG the
    path names: docs/api.md "Request bodies"). Litestar's ``data`` parameter would read the body before any
    dependency runs, and decode it to Python objects first. Litestar documents the request body of a
    dependency that takes ``data``; this provider takes ``model`` as ``data`` and no handler ever asks for
    it, so it only documents.
    """

    def documented_body(data: Any) -> None:
        raise AssertionError("a request-body declaration is never resolved")

    documented_body.__annotations__ = {"data": model, "return": "None"}
    return Provide(documented_body, sync_to_thread=False)


BODY = "request_body"


# Headers an answer of a status may carry, whatever the operation (name: description).
RETRY_AFTER = "Retry-After"
ANSWER_HEADERS: dict[str, dict[str, str]] = {
    "429": {RETRY_AFTER: "Seconds to wait before trying again"},
    "503": {RETRY_AFTER: "Seconds to wait before trying again, when the server can say"},
    "304": {"ETag": "The version the client already has"},
}
# The server's renewal of a token near its expiry (docs/api.md, Authentication): use it from then on.
REFRESHED_TOKEN = "Refreshed-API-Token"  # noqa: S105  # a header's name
REFRESHED_TOKEN_DOC = "A renewed token, sent when the one used nears its expiry: use it from then on"  # noqa: S105


# Query parameters the handlers check themselves (declared optional, so that a missing one is answered after
# the token is checked, with the API's own error): required wherever they appear.
REQUIRED_QUERY = frozenset({"name", "uri", "key", "ref", "interval"})


@dataclass
class StateportOperation(Operation):
    """Every operation of the app (``operation_class``): what Litestar's generation leaves out.

    - A 204 or 304 has no body: Litestar documents the 204 of a handler typed ``Response[None]`` (one that
      sets headers, as an ``ETag``) with a JSON ``null`` body.
    - A response header has a schema (a string): OpenAPI 3.1 requires a schema or a content, and Litestar's
      ``ResponseHeader`` documents neither (client generators and validators refused the ``ETag``s).
    - The query parameters of ``REQUIRED_QUERY`` are required.
    - A body that is one of several Structs is ``anyOf`` them, where Litestar says ``oneOf``: where one
      extends the other (a trigger's answer with its outcome is a run with more) an answer is valid under
      both, and ``oneOf`` (exactly one) refused every such answer (an outsider's validator).
    - The headers every such answer may carry (``ANSWER_HEADERS``): ``Retry-After`` on a 429 or 503,
      ``ETag`` on a 304, and ``Refreshed-API-Token`` on a success of an operation that takes a token.
    - An operation that takes no token says so (``security: []``): linters read an operation without
      ``security`` as one that forgot it.
    """

    def __post_init__(self) -> None:
        if self.security is None:
            self.security = []
        for code, response in (self.responses or {}).items():
            if not isinstance(response, OpenAPIResponse):
                continue
            if code in ("204", "304") or _null_body(response):
                response.content = None
            headers = dict(ANSWER_HEADERS.get(code, {}))
            if code.startswith("2") and self.security:
                headers[REFRESHED_TOKEN] = REFRESHED_TOKEN_DOC
            _declare(response, headers, required=False, replace=False)
            for media in (response.content or {}).values():
                union = media.schema
                if isinstance(union, Schema) and union.one_of and _all_references(union.one_of):
                    union.any_of, union.one_of = union.one_of, None
            for header in (response.headers or {}).values():
                if isinstance(header, OpenAPIHeader) and header.schema is None and header.content is None:
                    header.schema = Schema(type=OpenAPIType.STRING)
        for parameter in self.parameters or []:
            if (
                not isinstance(parameter, Reference)
                and parameter.param_in == ParamType.QUERY
                and parameter.name in REQUIRED_QUERY
            ):
                parameter.required = True


def _declare(response: OpenAPIResponse, headers: dict[str, str], *, required: bool, replace: bool) -> None:
    """Declare ``headers`` (name: description, string values) on ``response``; one it declares already is
    kept unless ``replace``."""
    if not headers:
        return
    declared = dict(response.headers or {})
    for name, text in headers.items():
        if replace or name not in declared:
            declared[name] = OpenAPIHeader(
                description=text, schema=Schema(type=OpenAPIType.STRING), required=required
            )
    response.headers = declared


def _null_body(response: OpenAPIResponse) -> bool:
    """Whether Litestar documented a handler typed ``Response[None]`` (a HEAD's answer, headers only) as a
    JSON ``null`` body: a generated client then parsed the empty body as JSON, and failed on every answer
    (an outsider's find)."""
    media = (response.content or {}).get("application/json")
    schema = None if media is None else media.schema
    return isinstance(schema, Schema) and schema.type == OpenAPIType.NULL and len(response.content or {}) == 1


def _all_references(schemas: Sequence[Schema | Reference]) -> bool:
    return all(isinstance(schema, Reference) for schema in schemas)


# The ``data`` of an ``event: error``, the last event of a stream the server ends (``state_watch``).
ERROR_EVENT_DATA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "message": {"type": "string"}},
}


# ``event: token``: the stream renewed the token that opened it (``state_watch.until_expiry``).
TOKEN_EVENT_DATA: dict[str, Any] = {
    "type": "object",
    "properties": {"token": {"type": "string"}},
    "required": ["token"],
}


def event_stream(names: Sequence[str], data: Any, description: str) -> OpenAPIMediaType:
    """A ``text/event-stream`` body, as OpenAPI 3.1 can say it: the schema of one event, an object of its
    fields, which is how tools check a stream (schemathesis checks each event against it: documenting an
    event's ``data`` as if it were the event failed every one), its ``data`` JSON text whose schema is
    ``data`` (``contentSchema``). Comment lines (``: heartbeat``) are no events."""
    event = {
        "type": "object",
        "description": description,
        "properties": {
            "event": {"type": "string", "enum": list(names)},
            "id": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            "retry": {"type": "integer"},
        },
    }
    return OpenAPIMediaType(schema=cast(Schema, event))  # a JSON Schema dict is rendered as it is


def _key_event_data() -> dict[str, Any]:
    # Imported here: state_watch imports waits, which imports this module.
    from stateport.http.state_watch import KeyEvent

    own = msgspec.json.schema(KeyEvent)
    data: dict[str, Any] = own["$defs"]["KeyEvent"]
    return {"anyOf": [data, ERROR_EVENT_DATA, TOKEN_EVENT_DATA]}


@dataclass
class WatchOperation(StateportOperation):
    """A state read that also watches (``Accept: text/event-stream``, ``stateport.http.state_watch``): its
    200 documents the stream besides the JSON answer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        response = (self.responses or {}).get("200")
        if isinstance(response, OpenAPIResponse):
            response.content = {
                **(response.content or {}),
                EVENT_STREAM: event_stream(
                    ["put", "delete", "error", "token"],
                    _key_event_data(),
                    "With `Accept: text/event-stream`: `event: put` (`id` the version) with the entry, "
                    "`event: delete` (`id: 0`) with why the key is missing, `event: error` when the server "
                    "ends the stream, `event: token` when the stream renewed its token (use it from then on)",
                ),
            }


@dataclass
class RunEventsOperation(StateportOperation):
    """The run events stream: its 200 is events whose ``data`` is the ``RunEvent`` its handler names."""

    def __post_init__(self) -> None:
        super().__post_init__()
        response = (self.responses or {}).get("200")
        if isinstance(response, OpenAPIResponse) and response.content:
            run_event = response.content[EVENT_STREAM].schema
            data = {"anyOf": [run_event, ERROR_EVENT_DATA, TOKEN_EVENT_DATA]}
            description = (
                "`event: run` with the run that changed, `event: recheck` (`{}`: re-read what you show), "
                "`event: error` when the server ends the stream, `event: token` when the stream renewed "
                "its token (use it from then on)"
            )
            names = ["run", "recheck", "error", "token"]
            response.content[EVENT_STREAM] = event_stream(names, data, description)


@dataclass
class OptionalBodyOperation(StateportOperation):
    """An operation whose documented request body may be left out (a ``POST`` that takes none, or ``{}``):
    Litestar documents every body as required."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


class StructSchemas(StructSchemaPlugin):
    """msgspec Structs as Litestar documents them, with what msgspec knows and Litestar leaves out.

    - ``forbid_unknown_fields``: ``additionalProperties: false`` (an unknown field is a 422).
    - A field whose constraints Litestar drops (those of an array's items, or of one member of a union,
      as ``Annotated[int, Meta(ge=0)] | None``): msgspec's own JSON schema of the field.
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct = field_definition.type_
        info = msgspec.inspect.type_info(struct)
        if not isinstance(info, msgspec.inspect.StructType):
            return schema
        if info.forbid_unknown_fields:
            schema.additional_properties = False
        own = msgspec.json.schema(struct)
        properties: dict[str, Any] = own.get("$defs", {}).get(struct.__name__, own).get("properties", {})
        documented = schema.properties or {}
        for name, msgspec_schema in properties.items():
            if name in documented and _nested_constraints(msgspec_schema):
                documented[name] = _with_items(msgspec_schema)  # a JSON Schema dict is rendered as it is
        for name, documented_schema in documented.items():
            _drop_any_of_one(documented_schema)
            # A format Litestar leaves out (``Meta(extra_json_schema={"format": "uuid"})`` on a str).
            found = properties.get(name, {}).get("format")
            if found and isinstance(documented_schema, Schema) and documented_schema.format is None:
                documented_schema.format = found
            _nested_string_format(documented_schema, properties.get(name, {}))
        return schema


def _nested_string_format(documented: Any, own: dict[str, Any]) -> None:
    """The format of a nullable string (``Annotated[str, Meta(extra_json_schema={"format": "duration"})]
    | None``), which Litestar leaves out of the union's string member, from msgspec's own schema."""
    formats = [m["format"] for m in own.get("anyOf", []) if m.get("type") == "string" and "format" in m]
    if len(formats) != 1 or not isinstance(documented, Schema):
        return
    strings = [
        m
        for m in (documented.one_of or documented.any_of or [])
        if isinstance(m, Schema) and m.type == OpenAPIType.STRING and m.format is None
    ]
    if len(strings) == 1:
        strings[0].format = formats[0]


def _drop_any_of_one(schema: Any) -> None:
    """A raw JSON value (``msgspec.Raw``) is any JSON: Litestar documents it as ``oneOf: [{}]``, a choice
    of one that linters flag; ``{}`` alone says the same."""
    if isinstance(schema, Schema) and schema.one_of and len(schema.one_of) == 1:
        only = schema.one_of[0]
        if isinstance(only, Schema) and not only.to_schema():
            schema.one_of = None


_CONSTRAINTS = frozenset({"minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems"})


def _nested_constraints(schema: dict[str, Any]) -> bool:
    """Whether constraints sit below the top of ``schema`` (where Litestar drops them: those of an array's
    items, of a union's members, of a tuple's length), with no reference to another schema and no
    Litestar-only keyword in it."""
    if "$ref" in str(schema) or "extra" in schema:
        return False
    nested = [*schema.get("anyOf", []), *([schema["items"]] if isinstance(schema.get("items"), dict) else [])]
    return any(_CONSTRAINTS & part.keys() or _nested_constraints(part) for part in nested)


def _with_items(schema: Any) -> Any:
    """``schema`` with ``items: {}`` on every array that names no items (and none ``false``). msgspec
    leaves ``items`` out for ``list[Any]``; JSON Schema allows that, but client generators
    (openapi-python-client) drop the whole body whose array has none (the report's ``SuccessBody`` was
    left out of a generated client)."""
    if isinstance(schema, list):
        return [_with_items(part) for part in schema]
    if not isinstance(schema, dict):
        return schema
    fixed = {key: _with_items(value) for key, value in schema.items()}
    if fixed.get("type") == "array" and "items" not in fixed and "prefixItems" not in fixed:
        fixed["items"] = {}
    if fixed.get("items") is False and "maxItems" in fixed:
        # msgspec closes a tuple with ``items: false``, which generators refuse (an ``items`` that is not
        # a schema); its ``maxItems`` says as much.
        del fixed["items"]
    return fixed


def with_headers(
    status: int, headers: dict[str, str], *, sometimes: dict[int, dict[str, str]] | None = None
) -> type[Operation]:
    """An operation class documenting ``headers`` (name: description, string values) on ``status``, and
    the headers of ``sometimes`` (status: headers) as optional.

    Litestar documents response headers on the success status only (``response_headers``).
    """

    @dataclass
    class HeadersOperation(StateportOperation):
        def __post_init__(self) -> None:
            super().__post_init__()
            responses = self.responses or {}
            for code, named, required in (
                (status, headers, True),
                *((code, named, False) for code, named in (sometimes or {}).items()),
            ):
                response = responses.get(str(code))
                if isinstance(response, OpenAPIResponse):
                    _declare(response, named, required=required, replace=True)

    return HeadersOperation


def with_header_parameters(
    headers: dict[str, str], patterns: dict[str, str] | None = None
) -> type[Operation]:
    """An operation class documenting optional request ``headers`` (name: description, string values, each
    matching its entry of ``patterns`` if it has one) that its handler, or a middleware, reads from the
    request itself (a parameter in its signature would be parsed for nothing)."""

    @dataclass
    class HeaderParametersOperation(StateportOperation):
        def __post_init__(self) -> None:
            super().__post_init__()
            self.parameters = [
                *(self.parameters or []),
                *(
                    Parameter(
                        name=name,
                        param_in=ParamType.HEADER,
                        required=False,
                        description=text,
                        schema=Schema(type=OpenAPIType.STRING, pattern=(patterns or {}).get(name)),
                    )
                    for name, text in headers.items()
                ),
            ]

    return HeaderParametersOperation


def tags_of(routes: Sequence[Any]) -> list[Tag]:
    """The tags of the documented operations of ``routes`` (the app's), sorted."""
    names = {
        tag
        for route in routes
        for handler in getattr(route, "route_handlers", ())
        if handler.include_in_schema
        for tag in handler.resolve_tags()
    }
    return [Tag(name=name) for name in sorted(names)]


def config() -> OpenAPIConfig:
    """The document served at ``/schema/openapi.json``."""
    bearer = "a JWT signed with the server's key (`stateport token ...`); see docs/api.md, Authentication"
    return OpenAPIConfig(
        title="Stateport",
        version=__version__,
        license=License(name="Apache-2.0", identifier="Apache-2.0"),
        path="/schema",
        use_handler_docstrings=False,
        components=Components(
            security_schemes={
                TASK_TOKEN: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT",
                    description=(
                        "A task-instance token (`aud=urn:airflow.apache.org:task`, `sub` = the task instance "
                        f"id, `scope=execution`): {bearer}"
                    ),
                ),
                API_TOKEN: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT",
                    description=(
                        "A public API token (`aud=urn:stateport:api`, `scope` naming some of `dags:write "
                        f"runs:write runs:read state:admin worker`): {bearer}"
                    ),
                ),
            }
        ),
    )
