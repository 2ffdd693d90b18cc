"""The other calls the Airflow Task SDK's supervisor makes while it runs a task, on the Execution API.

A task run by the SDK unchanged (``airflow.sdk.execution_time.supervisor.supervise_task``) calls more than
start, heartbeat, state and the end of its try (``ti_run``, ``workers``): it stores the task's rendered
template fields, asks whether its inlets and outlets are active assets, may store a rendered map index,
pushes the task's return value to XCom and pulls its upstream tasks' return values from it. Each answered
404 here, and the SDK fails the try on any error answer: a templated task, a task that declared an asset
and a task that returned a value all failed before or after their code ran (an outsider's find).

- Rendered fields and the rendered map index are accepted and not kept: they are what Airflow's UI shows,
  and Stateport has no such page.
- Every asset a Stateport DAG declares is registered with it, so none is inactive.
- XCom: the return value the SDK pushes (``return_value``) is kept with the try and becomes its result
  when the SDK reports success (which carries none); a pull of an upstream's ``return_value`` reads that
  task's result. A value pushed under another key (``ti.xcom_push(key=...)``, each output of a
  ``multiple_outputs`` task, a ``TriggerDagRunOperator``'s ``trigger_run_id``) is kept with the try that
  pushed it (at most ``MAX_XCOM_KEYS`` keys a try) until its run goes, and a pull reads the latest try's;
  once it answered 422, and such a task failed. ``skipmixin_key``, Airflow's own record of a branch, is
  accepted and not kept.
- A branch or short-circuit operator's ``skip-downstream`` skips the listed downstream task instances
  that have not started (``RunAdvancer.skip_downstream``).
- ``assets/by-name`` and ``assets/by-uri``: an ``Asset.ref`` among a task's inlets or outlets is resolved
  by them before the task's code runs; each answered 404, and such a task failed (an outsider's find).
  Only an asset the caller's task declares is answered (403 otherwise), as for its state.
- ``previous-successful-dagrun`` (read for the context's ``prev_*_success`` values): Airflow finds the
  latest successful run whose logical date is before the task instance's, and answers all nulls for a run
  without one; a Stateport run never has one, so the answer is Airflow's all-null one (a task reading
  ``prev_start_date_success`` failed on a 404: an outsider's find).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, head, patch, post, put
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from msgspec import Meta, Struct

from stateport.domain.errors import Forbidden, Invalid, NotFound
from stateport.domain.jsontext import check_body, check_numbers
from stateport.domain.models import MAX_TASKS, Asset, TaskInstance
from stateport.domain.ports import TokenClaims
from stateport.domain.state import StateService
from stateport.domain.values import check_name, check_result
from stateport.http import openapi
from stateport.http.airflow import NameQuery, UriQuery, query_addressed, required_query_value
from stateport.http.asset_responses import ASSET_GROUP
from stateport.http.auth import share_of
from stateport.http.bodies import SMALL_BODY, announced_size, bounded_body
from stateport.http.errors import RequestInvalid, decode_body, json_response
from stateport.http.listing import sent_once
from stateport.http.members import decode_members
from stateport.http.params import DagId, RunId, TaskId, path, query
from stateport.http.providers import (
    AnyRequest,
    Core,
    States,
    body_budget_of,
    checks_of,
    services_of,
    token_caller,
)
from stateport.http.queries import plain_int
from stateport.http.workers import TAGS, TASK_INSTANCE, TI_CALLER

# The key Airflow pushes a task's return value under.
RETURN_VALUE = "return_value"
# Airflow's own bookkeeping, pushed by a branch or short-circuit operator (which branches it followed, for
# a later clear of the run, which Stateport has not): accepted and not kept; a pull of it finds nothing.
SKIPMIXIN_KEY = "skipmixin_key"
XCOM = "/xcoms/{dag_id:str}/{run_id:str}/{task_id:str}/{key:path}"
XCOM_TAGS = ["XComs"]
# Rendered template fields: Airflow truncates each to 4,096 characters by default; what a task has of
# them fits this, and none of it is kept.
RTIF_MAX_BYTES = 1024 * 1024


class Message(Struct, frozen=True, kw_only=True):
    message: str


class InactiveAssets(Struct, frozen=True, kw_only=True):
    """Airflow's ``InactiveAssetsResponse``."""

    inactive_assets: list[Any]


class AssetDefinition(Struct, frozen=True, kw_only=True):
    """Airflow's Execution API ``AssetResponse``: what the Task SDK resolves an ``Asset.ref`` to. Stateport
    keeps no group or extra of an asset: Airflow's defaults for an ``Asset`` are given."""

    name: str
    uri: str
    group: str
    extra: dict[str, Any]


def _definition(asset: Asset) -> AssetDefinition:
    return AssetDefinition(name=asset.name, uri=asset.airflow_uri, group=ASSET_GROUP, extra={})


class XComValue(Struct, frozen=True, kw_only=True):
    """Airflow's ``XComResponse``: the key and its value."""

    key: str
    value: Any


_fields = msgspec.json.Decoder(dict[str, Any])
# Airflow's is a string (its column holds 250 characters; more is not refused here, as nothing is kept).
_map_index = msgspec.json.Decoder(Annotated[str, Meta(max_length=64 * 1024)])


@put(
    TASK_INSTANCE + "/rtif",
    tags=TAGS,
    summary="The Airflow Task SDK's rendered template fields of a task instance (task-instance token); 201",
    description="Accepted and not kept (what Airflow's UI shows): a JSON object, at most 1 MiB.",
    status_code=201,
    dependencies={**TI_CALLER, openapi.BODY: openapi.request_body(dict[str, Any])},
    responses=openapi.execution_responses(*openapi.WITH_BODY, 404),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_put_rtif",
)
async def put_rtif(request: AnyRequest, task_instance: NamedDependency[Any], core: Core) -> Message:
    await core.reports.reportable(task_instance.ti_id)
    body = await bounded_body(request, RTIF_MAX_BYTES)
    decode_body(_fields, body)
    # Kept nowhere, but held to every body's rules: a 400-digit integer was taken here alone (an
    # outsider's find; docs/api.md, "every number must be finite and within a double's range").
    check_numbers(body, "body")
    return Message(message="Rendered task instance fields successfully set")


@patch(
    TASK_INSTANCE + "/rendered-map-index",
    tags=TAGS,
    summary="The Airflow Task SDK's rendered map index of a task instance (task-instance token); 204",
    description="A JSON string; accepted and not kept.",
    status_code=204,
    dependencies={**TI_CALLER, openapi.BODY: openapi.request_body(str)},
    responses=openapi.execution_responses(*openapi.WITH_BODY, 404),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_patch_rendered_map_index",
)
async def patch_rendered_map_index(
    request: AnyRequest, task_instance: NamedDependency[Any], core: Core
) -> None:
    await core.reports.reportable(task_instance.ti_id)
    decode_body(_map_index, await bounded_body(request, SMALL_BODY))


@get(
    TASK_INSTANCE + "/validate-inlets-and-outlets",
    tags=TAGS,
    summary="The inactive assets among a task's inlets and outlets (task-instance token): none",
    description="Every asset a DAG declares is registered with it: the list is always empty.",
    dependencies=TI_CALLER,
    responses=openapi.execution_responses(404),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_validate_inlets_and_outlets",
)
async def validate_inlets_and_outlets(task_instance: NamedDependency[Any], core: Core) -> InactiveAssets:
    await core.reports.reportable(task_instance.ti_id)
    return InactiveAssets(inactive_assets=[])


ASSET_TAGS = ["Assets"]
ASSET_DEFINITION_DOC = (
    "The registered asset (Airflow's `AssetResponse`: `name`, `uri`, `group`, `extra`), if the caller's "
    "task declares it as an inlet or outlet (403 otherwise; 404 for an asset no DAG declares): the Task SDK "
    "resolves an `Asset.ref` among a task's inlets and outlets with it. `group` is `asset` and `extra` `{}`: "
    "Stateport keeps neither."
)


ASSET_ROUTE: dict[str, Any] = {
    "tags": ASSET_TAGS,
    "description": ASSET_DEFINITION_DOC,
    "dependencies": {"caller": token_caller},
    "responses": openapi.execution_responses(403, 404),
    "security": openapi.TASK_SECURITY,
    "operation_class": openapi.StateportOperation,
}


@get(
    "/assets/by-name",
    summary="An asset the caller's task declares, by name (task-instance token)",
    operation_id="asset_get_by_name",
    **ASSET_ROUTE,
)
async def asset_by_name(
    request: AnyRequest, caller: NamedDependency[TokenClaims], states: States, name: NameQuery = None
) -> AssetDefinition:
    return await _declared(request, caller, states, "name", name)


@get(
    "/assets/by-uri",
    summary="An asset the caller's task declares, by uri (task-instance token)",
    operation_id="asset_get_by_uri",
    **ASSET_ROUTE,
)
async def asset_by_uri(
    request: AnyRequest, caller: NamedDependency[TokenClaims], states: States, uri: UriQuery = None
) -> AssetDefinition:
    return await _declared(request, caller, states, "uri", uri)


async def _declared(
    request: AnyRequest, caller: TokenClaims, states: StateService, by: str, value: str | None
) -> AssetDefinition:
    with query_addressed(request):
        address = {by: required_query_value(by, value)}
        asset = await states.declared_asset(caller.subject, **address)
    return _definition(asset)


TryNumber = Annotated[
    str | None,
    query(
        "try_number",
        "The try whose first reschedule is asked (Airflow's numbering; Stateport counts from the task "
        "instance's tries that were rescheduled one after the other up to the token's).",
        type="integer",
        minimum=0,
    ),
]


@get(
    "/task-reschedules/{task_instance_id:str}/start_date",
    tags=TAGS,
    summary="When the first of a sensor's rescheduled tries started (task-instance token): a date, or null",
    description=(
        "The Airflow Task SDK's `get_reschedule_start_date`: a sensor in reschedule mode counts its "
        "timeout from there. The start of the earliest of the tries of the task instance that ended "
        "`up_for_reschedule` one after the other just before this one; null when the try before it was "
        "not rescheduled."
    ),
    dependencies=TI_CALLER,
    responses=openapi.execution_responses(404),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_reschedule_start_date",
)
async def reschedule_start_date(
    task_instance: NamedDependency[Any], core: Core, try_number: TryNumber = None
) -> datetime | None:
    plain_int(try_number, "try_number", 1, ge=0, le=2**31 - 1)  # Airflow's; checked, not used (see above)
    ti = await core.reports.task_instance(task_instance.ti_id)
    if ti is None:
        raise NotFound(f"Task instance {task_instance.ti_id} not found")
    chain = await core.reports.reschedules(ti)
    return chain[-1].started_at if chain else None


class PrevSuccessfulDagRun(Struct, frozen=True, kw_only=True):
    """Airflow's ``PrevSuccessfulDagRunResponse``: the previous successful run's interval and times."""

    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None


@get(
    TASK_INSTANCE + "/previous-successful-dagrun",
    tags=TAGS,
    summary="The previous successful run of the task's DAG, for the task's context (task-instance token)",
    description=(
        "The Airflow Task SDK's `get_previous_successful_dagrun`. Airflow answers the latest successful "
        "run whose logical date is before the task instance's, and all nulls for a run without a logical "
        "date: a Stateport run never has one, so every field is null, as Airflow's answer for it."
    ),
    dependencies=TI_CALLER,
    responses=openapi.execution_responses(),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_previous_successful_dagrun",
)
async def previous_successful_dagrun(task_instance: NamedDependency[Any]) -> PrevSuccessfulDagRun:
    # Airflow answers so for a task instance it does not find, too: nothing is read.
    return PrevSuccessfulDagRun()


class SkipDownstreamBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``TISkippedDownstreamTasksStatePayload``: task ids, or [task id, map index] pairs."""

    tasks: Annotated[list[str | tuple[str, int]], Meta(max_length=MAX_TASKS)]


_skip = msgspec.json.Decoder(SkipDownstreamBody)


@patch(
    TASK_INSTANCE + "/skip-downstream",
    tags=TAGS,
    summary="The Airflow Task SDK's branch: skip downstream task instances (task-instance token); 204",
    description=(
        "Sent by a branch or short-circuit operator before it succeeds: the listed task instances (each a "
        "direct downstream of the task, 422 otherwise) are skipped unless they started, and the rules go "
        "on (their own downstream follow their trigger rules). 409 unless the task instance is running."
    ),
    status_code=204,
    dependencies={**TI_CALLER, openapi.BODY: openapi.request_body(SkipDownstreamBody)},
    responses=openapi.execution_responses(*openapi.WITH_BODY, 404, 409, conflict=openapi.NotRunningError),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_skip_downstream",
)
async def skip_downstream(request: AnyRequest, task_instance: NamedDependency[Any], core: Core) -> None:
    body: SkipDownstreamBody = decode_members(_skip, await bounded_body(request, SMALL_BODY))
    tasks = [(task, -1) if isinstance(task, str) else task for task in body.tasks]
    await core.reports.skip_downstream(task_instance.ti_id, tasks)


MapIndex = Annotated[
    str | None,
    query(
        "map_index",
        "The task instance's map index (-1, the default: not mapped).",
        type="integer",
        minimum=-1,
    ),
]
# Airflow's XCom key column holds 512 characters.
MAX_XCOM_KEY = 512
# An XCom under another key than return_value is kept inline with its try (a return value past
# STATEPORT_RESULT_INLINE_BYTES goes to the blob store): 1,000 keys of up to 1 MiB each at most, where the
# result's limit let a try put 64 GiB in the database (an outsider pushed 40 MiB values).
MAX_XCOM_BYTES = 1024 * 1024
XComKey = Annotated[str, path(f"The XCom key (1 to {MAX_XCOM_KEY} characters)")]


# Sent twice, one of them was taken (the last map index, the first slice bound: an outsider's find).
XCOM_ONCE = ("map_index", "start", "stop", "step")


def _map_index_of(raw: str | None) -> int:
    return plain_int(raw, "map_index", -1, ge=-1, le=2**31 - 1)


def check_pushed(body: bytes) -> RequestInvalid | Invalid | None:
    """Every check of a pushed value (``checking``: a large one runs in a process of its own)."""
    try:
        check_body(body)
        check_result(body)
    except (RequestInvalid, Invalid) as exc:
        return exc
    return None


async def _own_try(
    claims: TokenClaims, core: Core, instance: tuple[str, str, str, int], doing: str
) -> TaskInstance:
    """The token's try, which must be of the task instance (dag_id, run_id, task_id, map_index) the path
    names: a token ``doing`` (pushes, deletes) that task instance's XComs only."""
    ti = await token_try(claims, core)
    if ti is None or (ti.dag_id, ti.run_id, ti.task_id, ti.map_index) != instance:
        raise Forbidden(f"a task instance's token {doing} that task instance's XCom only")
    return ti


async def token_try(claims: TokenClaims, core: Core) -> TaskInstance | None:
    """The try the task-instance token names (None if it does not exist)."""
    try:
        ti_id = uuid.UUID(claims.subject)
    except ValueError:
        raise Forbidden("this token names no task instance") from None
    return await core.reports.task_instance(ti_id)


def _xcom_task(task_id: str) -> str:
    """The task id the path names; 422 for one no task may have (PostgreSQL answered a NUL in it with "the
    database cannot store this value", SQLite with a 404: an outsider's find)."""
    try:
        return check_name(task_id, "task_id")
    except Invalid as exc:
        raise RequestInvalid.one("value_error", ["path", "task_id"], exc.detail, task_id) from None


def _xcom_name(key: str) -> str:
    """The key the path names (its route keeps the leading slash); 422 for one no XCom may have."""
    name = key.lstrip("/")
    if not name or len(name) > MAX_XCOM_KEY or "\x00" in name:
        raise RequestInvalid.one(
            "value_error", ["path", "key"], f"an XCom key has 1 to {MAX_XCOM_KEY} characters, none NUL", name
        )
    return name


@post(
    XCOM,
    tags=XCOM_TAGS,
    summary="The Airflow Task SDK's push of an XCom of the token's task instance (task-instance token); 201",
    description=(
        "The token's own task instance only (another's is 403). Key `return_value`: kept with the running "
        "try, it becomes the try's result when the SDK reports success. Another key: kept with the try "
        "until its run goes, at most 1 MiB (413) and 1,000 keys a try (422 past it). No body is null."
    ),
    status_code=201,
    dependencies={"caller": token_caller, openapi.BODY: openapi.request_body(Any)},
    responses=openapi.execution_responses(
        *openapi.WITH_BODY, 403, 404, 409, conflict=openapi.NotRunningError
    ),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="xcom_set",
)
async def push_xcom(
    request: AnyRequest,
    caller: NamedDependency[TokenClaims],
    core: Core,
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    key: XComKey,
    map_index: MapIndex = None,
) -> Message:
    sent_once(request, XCOM_ONCE)
    ti = await _own_try(caller, core, (dag_id, run_id, task_id, _map_index_of(map_index)), "pushes")
    name = _xcom_name(key)
    if name == SKIPMIXIN_KEY:
        return Message(message="XCom successfully set")
    keyed = name != RETURN_VALUE
    # The body is the value itself: a return value is held to STATEPORT_RESULT_MAX_BYTES, as a result.
    limit = MAX_XCOM_BYTES if keyed else services_of(request.scope).settings.result_max_bytes
    size = announced_size(request, limit)
    with body_budget_of(request.scope).reading(size, share_of(request.scope)):
        # A None the SDK pushes is no body at all (httpx's json=None), as Airflow reads it since 3.1.
        raw = await bounded_body(request, limit) or b"null"
        offloaded = await checks_of(request.scope).check(check_pushed, raw)
        if not offloaded:
            error = check_pushed(raw)
            if error is not None:
                raise error
        if keyed:
            await core.reports.push_xcom(ti.id, name, raw, checked=True)
        else:
            await core.reports.push_result(ti.id, raw, checked=True)
    return Message(message="XCom successfully set")


@get(
    XCOM,
    tags=XCOM_TAGS,
    summary="The Airflow Task SDK's pull of a task's XCom in the token's run (task-instance token)",
    description=(
        "Key `return_value`: the result of the task's latest try (of `map_index`, default -1) once it "
        "succeeded, else 404 (the SDK then takes None). `return_value/item/{offset}` and "
        "`return_value/slice?start=&stop=&step=` read a mapped task's results as one sequence, by map "
        "index (its instances whose latest try succeeded; a negative offset counts from the end), as the "
        "SDK reads a mapped upstream. Another key: what the task's latest try pushed under it, else 404. "
        "Another run's is 403."
    ),
    dependencies={"caller": token_caller},
    responses=openapi.execution_responses(403, 404),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="xcom_get",
)
async def pull_xcom(
    request: AnyRequest,
    caller: NamedDependency[TokenClaims],
    core: Core,
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    key: XComKey,
    map_index: MapIndex = None,
) -> Response[Any]:
    sent_once(request, XCOM_ONCE)
    index = _map_index_of(map_index)
    task_id = _xcom_task(task_id)
    caller_id = (await _own_run(caller, core, dag_id, run_id)).id
    name = key.lstrip("/")
    if name == SKIPMIXIN_KEY:
        raise NotFound(f"XCom '{SKIPMIXIN_KEY}' is not kept")
    # The SDK sends map_index with a pull of one instance's value (of 0 or more) and never with the
    # sequence's item or slice: a key that itself ends in /slice or /item/N is read as such then. Without
    # it (an unmapped task's value) the path cannot tell, as on Airflow's routes.
    sequence = "map_index" not in request.query_params
    if sequence and (item := SEQUENCE_ITEM.fullmatch(name)):
        offset = _offset(item[2])
        values = await _sequence(core, caller_id, task_id, item[1])
        if not -len(values) <= offset < len(values):
            raise NotFound(f"Task '{task_id}' has no XCom at offset {offset} of its {len(values)}")
        return json_response(200, values[offset])
    if sequence and name.endswith(SEQUENCE_SLICE):
        params = request.query_params
        bounds = [_bound(params.get(p), p) for p in ("start", "stop", "step")]
        if bounds[2] == 0:
            raise RequestInvalid.one("value_error", ["query", "step"], "step must not be 0", "0")
        values = await _sequence(core, caller_id, task_id, name.removesuffix(SEQUENCE_SLICE))
        return json_response(200, values[slice(*bounds)])
    if name != RETURN_VALUE:
        name = _xcom_name(name)
        raw = await core.reports.upstream_xcom(caller_id, task_id, index, name)
        return json_response(200, XComValue(key=name, value=msgspec.Raw(raw)))
    value = await core.reports.upstream_result(caller_id, task_id, index)
    return json_response(200, XComValue(key=RETURN_VALUE, value=value))


@delete(
    XCOM,
    tags=XCOM_TAGS,
    summary="The Airflow Task SDK's delete of an XCom of the token's task instance (task-instance token)",
    description=(
        "`XCom.delete`: forgets what the token's own running try pushed under the key (another task "
        "instance's is 403; 409 once the try ended); nothing to forget is no error, as in Airflow. "
        "`return_value` is the try's result once it ends, and not deleted here (422)."
    ),
    status_code=204,
    dependencies={"caller": token_caller},
    responses=openapi.execution_responses(403, 404, 409, conflict=openapi.NotRunningError),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="xcom_delete",
)
async def delete_xcom(
    request: AnyRequest,
    caller: NamedDependency[TokenClaims],
    core: Core,
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    key: XComKey,
    map_index: MapIndex = None,
) -> None:
    sent_once(request, XCOM_ONCE)
    ti = await _own_try(
        caller, core, (dag_id, run_id, _xcom_task(task_id), _map_index_of(map_index)), "deletes"
    )
    name = _xcom_name(key)
    if name == RETURN_VALUE:
        raise Invalid(f"XCom '{RETURN_VALUE}' is the try's result, not deleted here", field="key")
    if name != SKIPMIXIN_KEY:
        await core.reports.delete_xcom(ti.id, name)


@head(
    XCOM,
    tags=XCOM_TAGS,
    summary="How many XComs of a key a task has (task-instance token): `Content-Range: map_indexes N`",
    description=(
        "Key `return_value`: its instances in the token's run whose latest try succeeded; another key: its "
        "instances whose latest try pushed one."
    ),
    dependencies={"caller": token_caller},
    responses=openapi.execution_responses(403),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.with_headers(200, {"Content-Range": "`map_indexes N`: how many there are"}),
    operation_id="xcom_head",
)
async def count_xcom(
    caller: NamedDependency[TokenClaims],
    core: Core,
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    key: XComKey,
) -> Response[None]:
    task_id = _xcom_task(task_id)
    caller_id = (await _own_run(caller, core, dag_id, run_id)).id
    count = len(await _sequence(core, caller_id, task_id, key.lstrip("/")))
    return Response(content=None, headers={"Content-Range": f"map_indexes {count}"})


async def _own_run(caller: TokenClaims, core: Core, dag_id: str, run_id: str) -> TaskInstance:
    """The token's try, which must be of the run the path names (a token reads its own run only)."""
    ti = await token_try(caller, core)
    if ti is None or (ti.dag_id, ti.run_id) != (dag_id, run_id):
        raise Forbidden("a task instance's token pulls XComs of its own run only")
    return ti


# The SDK reads an XCom of every map index of a task as a sequence: ``{key}/item/{offset}`` and
# ``{key}/slice`` (a key that itself ends so is read as the sequence, as on Airflow's routes).
SEQUENCE_ITEM = re.compile(r"(.+)/item/([^/]*)")
SEQUENCE_SLICE = "/slice"


async def _sequence(core: Core, caller: uuid.UUID, task_id: str, key: str) -> list[Any]:
    """The task's XCom ``key`` of each map index in the caller's run (``return_value``: its results)."""
    if key == RETURN_VALUE:
        return await core.reports.mapped_results(caller, task_id)
    return [msgspec.Raw(raw) for raw in await core.reports.mapped_xcoms(caller, task_id, _xcom_name(key))]


def _offset(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise RequestInvalid.one(
            "int_parsing", ["path", "offset"], "offset must be an integer", raw
        ) from None


def _bound(raw: str | None, name: str) -> int | None:
    return None if raw is None else plain_int(raw, name, 0, ge=-(2**31), le=2**31 - 1)


def handlers() -> list[HTTPRouteHandler]:
    """The small-bodied calls (the XCom and rendered-fields routes are on the report's router:
    ``xcom_handlers``)."""
    return [
        patch_rendered_map_index,
        validate_inlets_and_outlets,
        reschedule_start_date,
        previous_successful_dagrun,
        skip_downstream,
        asset_by_name,
        asset_by_uri,
    ]


def xcom_handlers() -> list[HTTPRouteHandler]:
    """The XCom routes, on one router (a path's handlers must be): a push's body is a return value of up to
    a result's size. And the rendered fields, up to 1 MiB (``RTIF_MAX_BYTES``): on the small bodies'
    router, 64 KiB was their limit, and an Airflow task rendering more failed (an outsider's find)."""
    return [push_xcom, pull_xcom, count_xcom, delete_xcom, put_rtif]
