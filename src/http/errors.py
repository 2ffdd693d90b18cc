"""The one place where errors become HTTP responses.

Domain errors map to status codes by type, and both APIs answer in Airflow's shapes (read from Airflow
3.3.2's FastAPI apps): a 422 is FastAPI's ``HTTPValidationError``, ``{"detail": [{"type", "loc", "msg",
"input"}]}``, on both; any other error is ``{"detail": {"reason", "message"}}`` on the Execution API (a plain
string for the authentication cases) and ``{"detail": "..."}`` (Airflow's ``HTTPExceptionResponse``) on the
public API. Statuses follow Airflow's too, with one difference between the two APIs: an expired token is 403
on the Execution API and 401 on the public API, as Airflow answers them. Every body is JSON sent with
``content-type: application/json`` and no charset parameter: the Airflow SDK compares it literally.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from stateport.domain.engine.reports import TaskNotRunning
from stateport.domain.errors import (
    MAX_ECHO,
    BatchMismatch,
    Conflict,
    Forbidden,
    Invalid,
    InvalidParams,
    NotFound,
    Overloaded,
    Refused,
    StateportError,
    TokenExpired,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnreadableValue,
    Unsupported,
    VersionMismatch,
    echo,
)
from stateport.domain.jsontext import LONE_SURROGATE, MAX_BODY_DEPTH, check_body, decode_json, lone_surrogate
from stateport.domain.state import SUBJECT_MISMATCH
from stateport.http.bodies import BODY_REFUSED, too_large
from stateport.http.schemas import RUN_ID_PATTERN

log = logging.getLogger("stateport.http")

JSON = "application/json"
_encode = msgspec.json.Encoder().encode

STATUS: dict[type[StateportError], int] = {
    NotFound: 404,
    Unauthenticated: 401,
    Forbidden: 403,
    VersionMismatch: 412,
    Conflict: 409,
    TooLarge: 413,
    Invalid: 422,
    InvalidParams: 400,
    Unsupported: 501,
    UnreadableValue: 502,
    Refused: 429,
    Unavailable: 503,
}
RETRY_AFTER_S = "1"
# No "input" in a 422 item: what was sent at its loc is not known (better than a null that looks sent).
NO_INPUT: Any = object()
# nginx's "client closed request": what a request whose caller went away is counted as (never a 500).
CLIENT_CLOSED = 499
# Litestar raises InternalServerException with this detail when a body's sender disconnects mid-body.
_BODY_DISCONNECTED = "client disconnected prematurely"


class CallerGone(Exception):  # an event, not an error: nobody hears the answer
    """The caller's connection went away while it waited (``stateport.http.disconnects.watched``)."""


class RequestInvalid(Exception):
    """The request failed validation before reaching a use case; ``errors`` in FastAPI's item form."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors))
        self.errors = errors

    def __reduce__(self) -> tuple[type[RequestInvalid], tuple[list[dict[str, Any]]]]:
        # As built, not from ``args`` (the joined messages): it comes back from a body check's process.
        return RequestInvalid, (self.errors,)

    @classmethod
    def one(cls, kind: str, loc: list[str | int], msg: str, value: Any = None) -> RequestInvalid:
        item: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg}
        if value is not NO_INPUT:
            item["input"] = bounded(header_text(value) if loc[:1] == ["header"] else value)
        return cls([item])


def header_text(value: Any) -> Any:
    """A header's value as its sender wrote it: the server reads header bytes as Latin-1 (HTTP's historic
    charset), so UTF-8 text came back in a 422 as mojibake ("é" as "Ã©": an outsider's find)."""
    if not isinstance(value, str) or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def bounded(value: Any) -> Any:
    """An input as a 422 item carries it: text cut by ``echo``, a list of them each cut; a container whose
    JSON is longer than ``MAX_ECHO`` (of ``stateport.domain.errors``) as its JSON text, cut."""
    if isinstance(value, str):
        return echo(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [echo(item) for item in value[:10]]
    if isinstance(value, dict | list):
        text = _encode(value).decode()
        return value if len(text) <= MAX_ECHO else echo(text)
    return value


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[bytes]:
    """A JSON response from a plain object, encoded once with msgspec."""
    return Response(content=_encode(body), status_code=status, media_type=JSON, headers=headers)


def is_execution(request: Request[Any, Any, Any]) -> bool:
    return request.scope["path"].startswith("/execution")


# --- msgspec errors in FastAPI's vocabulary ---------------------------------------------------------------

# msgspec's location: `$.a.b`, or for a dict's key that fails its constraint, `key` in `$.a` (pydantic's
# loc then ends with "[key]").
_AT = re.compile(r" - at `(key` in `)?\$(.*)`$")
# A member, an index, or "[...]": msgspec's mark for a key of a dict, which it does not name.
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])")


_PATTERN = "Expected `str` matching regex "
# The patterns of the API's bodies, in words.
# A worker's names (its id, queues, DAG ids) and its hostname, as the worker routes' bodies take them.
NAME_TEXT = r"^[^\x00-\x1f\x7f]+(?![\s\S])"
NO_NUL_TEXT = r"^[^\x00]*(?![\s\S])"
PATTERN_WORDS = {
    RUN_ID_PATTERN: "a run id has no '/' and no control characters",
    # An outsider's find: these 422s showed the regex alone.
    NAME_TEXT: "must not contain control characters",
    NO_NUL_TEXT: "must not contain NUL (\\u0000)",
}


def json_invalid(error: str, where: tuple[str, ...] = ("body",)) -> RequestInvalid:
    """A 422 for a body (or a JSON header) that is not JSON, as FastAPI words it; ``error`` says why."""
    item = {"type": "json_invalid", "loc": list(where), "msg": "JSON decode error", "input": {}}
    return RequestInvalid([{**item, "ctx": {"error": error}}])


def from_msgspec(exc: msgspec.MsgspecError, where: tuple[str, ...] = ("body",)) -> RequestInvalid:
    """Translate a msgspec decode or validation error into a 422 with a FastAPI-style ``loc`` that starts
    with ``where`` (``("body",)``, or ``("header", name)`` for a header that carries JSON)."""
    message = str(exc)
    # ValidationError subclasses DecodeError: only a bare DecodeError is malformed JSON.
    if not isinstance(exc, msgspec.ValidationError):
        return json_invalid(message, where)
    loc: list[str | int] = list(where)
    at = _AT.search(message)
    if at:
        message = message[: at.start()]
        for name, index, unnamed in _SEGMENT.findall(at.group(2)):
            if unnamed:
                break  # the key is not known: the location ends at the dict that holds it
            loc.append(name if name else int(index))
        if at.group(1):  # a key of that dict is refused (an empty param name: it was ["body"] alone)
            loc.append("[key]")
    field = re.search(r"field `([^`]+)`", message)
    if message.startswith("Object contains unknown field") and field:
        return RequestInvalid.one("extra_forbidden", [*loc, field.group(1)], "Extra inputs are not permitted")
    if message.startswith("Object missing required field") and field:
        return RequestInvalid.one("missing", [*loc, field.group(1)], "Field required")
    if "with a timezone component" in message:
        return RequestInvalid.one("timezone_aware", loc, "Input should have timezone info")
    if message.startswith(_PATTERN):
        # msgspec names the regex alone, as its repr (FastAPI names it too): said in words where the
        # pattern is one of ours, whose repr is known (no unescaping of what msgspec wrote).
        said = f"String should match pattern {message.removeprefix(_PATTERN)}"
        for regex, words in PATTERN_WORDS.items():
            if message == _PATTERN + repr(regex):
                said = f"String should match pattern '{regex}': {words}"
        return RequestInvalid.one("string_pattern_mismatch", loc, said)
    return RequestInvalid.one("value_error", loc, message)


class Decodes(Protocol):
    """What reads a body: a msgspec decoder, or ``stateport.domain.jsontext.JsonDecoder``."""

    def decode(self, text: bytes, /) -> Any: ...


def decode_body(
    decoder: Decodes,
    body: bytes,
    where: tuple[str, ...] = ("body",),
    *,
    depth: int = MAX_BODY_DEPTH,
    checked: bool = False,
) -> Any:
    """Decode a JSON request body with the route's decoder, after the rules every body follows
    (``stateport.domain.jsontext``): no recursive decoder ever sees a body nested deeper than ``depth``.
    ``where`` starts each error's ``loc``: a header that carries JSON names itself. ``checked``: this
    body already passed those rules (decoded once before), so they are not applied again."""
    if not checked:
        try:
            check_body(body, depth)
        except Invalid as exc:
            if where == ("body",):
                raise
            # A header carrying JSON (``Stateport-Claim``): its 422 names the header, not the body (an
            # outsider's find: a claim header nested too deep was reported at ["body"], the body valid).
            member = (exc.field or "body").split(".")[1:]
            said = exc.detail.replace("the body", "the value", 1)
            raise RequestInvalid.one("value_error", [*where, *member], said, NO_INPUT) from exc
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _with_input(from_msgspec(exc, where), body, len(where)) from exc
    except msgspec.MsgspecError as exc:
        if lone_surrogate(exc, body):
            raise json_invalid(LONE_SURROGATE, where) from exc
        raise from_msgspec(exc, where) from exc


# The largest body whose refusal echoes what was sent (``_with_input``): finding it decodes the whole body
# again, which for an 11 MiB DAG spec held the event loop for about 0.3 s more, for an answer.
ECHO_MAX_BYTES = 1024 * 1024


def _with_input(invalid: RequestInvalid, body: bytes, skip: int) -> RequestInvalid:
    """``invalid`` (from a body that is JSON) with the value found at each item's ``loc`` as its ``input``,
    bounded (for a missing field the object that lacks it, as FastAPI gives it); without ``input`` when
    the ``loc`` cannot be followed (a dict key msgspec does not name), or the body is over
    ``ECHO_MAX_BYTES``."""
    if len(body) > ECHO_MAX_BYTES:
        for item in invalid.errors:
            item.pop("input", None)
        return invalid
    try:
        whole: Any = decode_json(body)
    except msgspec.MsgspecError:
        whole = NO_INPUT
    for item in invalid.errors:
        steps = item["loc"][skip : -1 if item["type"] == "missing" else None]
        found = whole
        if found is not NO_INPUT:
            for step in steps:
                try:
                    found = found[step] if isinstance(found, dict | list) else NO_INPUT
                except (KeyError, IndexError, TypeError):
                    found = NO_INPUT
                if found is NO_INPUT:
                    break
        if found is NO_INPUT:
            item.pop("input", None)
        else:
            item["input"] = bounded(found)
    return invalid


class NoFields(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of a ``POST`` that takes no input but its query: none at all, or an empty JSON object."""


_no_fields_decoder = msgspec.json.Decoder(NoFields)


def refuse_body(body: bytes) -> None:
    """Check the body of a route that takes none (``{}`` or nothing), so that what a caller meant to send
    (``{"batch_size": 5}``, malformed JSON) is a 422 and never silently ignored."""
    if body:
        decode_body(_no_fields_decoder, body)


# Fields of a domain error that are parts of the address; any other field is part of the body.
ADDRESS_FIELDS = frozenset({"key", "dag_id", "run_id", "dag_run_id", "task_id", "map_index", "name", "uri"})
# Fields of a domain error that are query parameters (a key listing's, the listings' search patterns).
QUERY_FIELDS = frozenset(
    {
        "prefix",
        "cursor",
        "limit",
        "dag_id_pattern",
        "dag_id_prefix_pattern",
        "run_id_pattern",
        "run_id_prefix_pattern",
        "name_pattern",
        "name_prefix_pattern",
        "uri_pattern",
        "uri_prefix_pattern",
        "dag_ids",
    }
)


# One step of a field's path in a domain error: a member, or an index (``tasks[0].outlets[1].uri``).
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _loc(field: str) -> list[str | int]:
    """FastAPI's ``loc`` of the field a domain error names (``tasks[0].timeout``: body, tasks, 0, timeout)."""
    if field == "idempotency-key":
        return ["header", field]
    if field in ADDRESS_FIELDS:
        return ["path", field]
    if field in QUERY_FIELDS:
        return ["query", field]
    if field.startswith("query."):  # a parameter whose name is also a body member's (result)
        return ["query", field.removeprefix("query.")]
    member = "" if field == "body" else field.removeprefix("body.")
    steps: list[str | int] = [name or int(index) for name, index in _STEP.findall(member)]
    return ["body", *steps]


# --- exception handlers -----------------------------------------------------------------------------------


def _domain_status(request: Request[Any, Any, Any], exc: StateportError) -> int:
    if isinstance(exc, TokenExpired) and not is_execution(request):
        return 401  # Airflow's public API: "Token Expired" is 401, every other bad token 403
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


# An API token without a route's scope (``auth.api_claims``, ``auth.worker_claims``): an authentication case,
# a string ``detail`` on the Execution API's worker routes too (an outsider's find).
MISSING_SCOPE = "This token lacks the '"


def _auth_detail(exc: StateportError) -> bool:
    """Whether Airflow answers this error with a plain string ``detail`` (the authentication cases)."""
    if isinstance(exc, Unauthenticated):
        return True
    return isinstance(exc, Forbidden) and (
        exc.detail == SUBJECT_MISMATCH
        or exc.detail.startswith(("Invalid auth token", "Token type '", MISSING_SCOPE))
    )


# Set in a request's state when its answer is a store's failure (``Unavailable``, not a process's own
# ``Overloaded``): its token's renewal then does not read the store again (``headers.renewed_token``).
STORE_FAILED_KEY = "stateport_store_failed"


def handle_domain_error(request: Request[Any, Any, Any], exc: StateportError) -> Response[bytes]:
    """Map a domain error to its status and the body shape of the API that raised it."""
    status = _domain_status(request, exc)
    if isinstance(exc, Unavailable) and not isinstance(exc, Overloaded):
        request.scope["state"][STORE_FAILED_KEY] = True
    headers = {"Retry-After": RETRY_AFTER_S} if isinstance(exc, Unavailable) else None
    if isinstance(exc, Refused):
        headers = {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, Invalid) and exc.field == "order_by" and not is_execution(request):
        # Airflow's public API answers an ordering it cannot apply with 400, not a validation error.
        return json_response(400, {"detail": exc.detail})
    if isinstance(exc, Invalid):
        # A 422 in FastAPI's form on both APIs; a bad field is a request validation error naming it.
        if exc.field is not None:
            # The domain names the field, not what was sent there: no "input" rather than a null.
            invalid = RequestInvalid.one(
                "value_error", _loc(exc.field), f"Value error, {exc.detail}", NO_INPUT
            )
            return handle_request_invalid(request, invalid)
        return handle_request_invalid(request, RequestInvalid.one("value_error", [], exc.detail, NO_INPUT))
    if isinstance(exc, BatchMismatch):
        return _batch_mismatch(request, exc)
    if not is_execution(request) or _auth_detail(exc):
        return json_response(status, {"detail": exc.detail}, headers)
    return json_response(status, {"detail": execution_detail(exc)}, headers)


def execution_detail(exc: StateportError) -> dict[str, str]:
    """An Execution API error's ``detail``: its reason and message, and for a try that is not running
    the state it is in (Airflow's ``invalid_state``, ``openapi.NotRunningError``)."""
    detail = {"reason": exc.reason, "message": exc.detail}
    if isinstance(exc, TaskNotRunning):
        detail["current_state"] = exc.current_state.value
    return detail


def _batch_mismatch(request: Request[Any, Any, Any], exc: BatchMismatch) -> Response[bytes]:
    """A state batch's failed precondition: 412, as a single key's, naming the operation that failed by
    its index and its ``loc`` in the body (``["body", "operations", 3, "if_version"]``). Nothing of the
    batch was written."""
    where = {"index": exc.index, "loc": _loc(exc.field or "body")}
    if is_execution(request):
        return json_response(412, {"detail": {"reason": exc.reason, "message": exc.detail, **where}})
    return json_response(412, {"detail": exc.detail, **where})


def handle_request_invalid(request: Request[Any, Any, Any], exc: RequestInvalid) -> Response[bytes]:
    """Airflow's request validation error, FastAPI's ``HTTPValidationError``, on both APIs."""
    return json_response(422, {"detail": exc.errors})


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (no route, wrong method, body too large, parameter validation)."""
    if isinstance(exc, ValidationException):
        return handle_request_invalid(request, _from_litestar_validation(exc))
    status = exc.status_code
    if status == 500 and exc.detail == _BODY_DISCONNECTED:
        # The caller closed its connection before its body was all sent: its doing, not the server's; or
        # the server answered the body itself (stopped coming: 408; refused by the parser: 400 or 501), and
        # nothing more is written.
        answered: int | None = request.scope.get(BODY_REFUSED)  # type: ignore[assignment]
        return Response(b"", status_code=answered or CLIENT_CLOSED)
    if status == 404:
        return json_response(404, {"detail": "Not Found"})
    if status == 405:
        return json_response(405, {"detail": "Method Not Allowed"}, exc.headers)
    if status == 413:
        # The route's limit, so that a client knows what it may send.
        message = too_large(request.route_handler.resolve_request_max_body_size())
        if is_execution(request):
            detail: Any = {"reason": TooLarge.reason, "message": message}
            return json_response(413, {"detail": detail})
        return json_response(413, {"detail": message})
    return json_response(status, {"detail": exc.detail}, exc.headers)


def client_closed() -> Response[bytes]:
    """The answer to a caller that went away: counted as 499, and nothing is written (nobody reads it)."""
    return Response(b"", status_code=CLIENT_CLOSED)


def handle_caller_gone(request: Request[Any, Any, Any], exc: CallerGone) -> Response[bytes]:
    return client_closed()


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.scope["path"], exc_info=exc)
    return json_response(500, {"message": "Internal server error"})


def _from_litestar_validation(exc: ValidationException) -> RequestInvalid:
    errors: list[dict[str, Any]] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid"))
        # Litestar names the source with its ParamType enum: its value ("query") is what a client reads.
        source = item.get("source", "query")
        loc: list[str | int] = [str(getattr(source, "value", source)), str(item.get("key", ""))]
        if message.startswith("Missing required"):
            errors.append({"type": "missing", "loc": loc, "msg": "Field required", "input": None})
        else:
            errors.append({"type": "value_error", "loc": loc, "msg": message, "input": None})
    return RequestInvalid(errors or [{"type": "value_error", "loc": [], "msg": exc.detail, "input": None}])


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    StateportError: handle_domain_error,
    RequestInvalid: handle_request_invalid,
    HTTPException: handle_http_exception,
    CallerGone: handle_caller_gone,
    Exception: handle_unexpected,
}
