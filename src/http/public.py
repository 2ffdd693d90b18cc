"""The public API (``/api/v2``): DAG specs, runs, task instances and operators' state, for API tokens.

Errors carry a plain string ``detail``, as Airflow's public REST API does.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from msgspec import Struct

from stateport.domain.models import (
    MAX_IDENTIFIER,
    AssetScope,
    DagSpec,
    RunState,
    StateEntry,
    StatePage,
    TaskScope,
)
from stateport.http import openapi
from stateport.http.errors import RequestInvalid, decode_body
from stateport.http.params import (
    NAME_PATTERN,
    AllMapIndices,
    AssetName,
    ClearIfMatch,
    ClearIfNoneMatch,
    DagId,
    IfMatch,
    IfNoneMatch,
    IfNoneMatchRead,
    Limit,
    MapIndex,
    Offset,
    RunId,
    StateKey,
    TaskId,
    header,
    query,
)
from stateport.http.paths import raw_address
from stateport.http.providers import AnyRequest, Runs, States, Waits, api_caller
from stateport.http.queries import bool_param, int_param
from stateport.http.schemas import (
    DagOut,
    RunResponse,
    RunsResponse,
    StateEntryOut,
    StatePutBody,
    TaskInstanceOut,
    TaskInstancesResponse,
    TriggerBody,
    TriggerRequest,
)
from stateport.http.state_io import (
    decode_put,
    etag,
    not_modified,
    precondition,
    stored_response,
    unconditional,
    valid_key,
)
from stateport.http.waits import (
    TRIGGER_WAIT_HEADERS,
    RunOutcomeResponse,
    prefer_wait,
    run_body,
    trigger_and_wait,
)

_dag_decoder = msgspec.json.Decoder(DagSpec)
_trigger_decoder = msgspec.json.Decoder(TriggerBody)
KEY_LOC: list[str | int] = ["path", "key"]
ETAG = ResponseHeader(name="ETag", description='The entry\'s version, `"<n>"`', documentation_only=True)


def _scoped(scope: str) -> dict[str, Provide]:
    return {"caller": api_caller(scope)}


def _common(scope: str) -> dict[str, Any]:
    """What every public route declares: who may call it, and the operation class."""
    return {"security": openapi.API_SECURITY, "operation_class": openapi.StateportOperation}


# --- DAGs and runs --------------------------------------------------------------------------------------

DAG_TAGS = ["DAGs"]
RUN_TAGS = ["DAG Runs"]


def _dag_body(dag_id: str, version: str, spec: DagSpec) -> DagOut:
    return DagOut(dag_id=dag_id, version=version, tasks=spec.tasks, result_task=spec.result_task)


def _dag_id(dag_id: str) -> str:
    if not 1 <= len(dag_id) <= 250 or "\x00" in dag_id:
        raise RequestInvalid.one(
            "value_error", ["path", "dag_id"], "dag_id must be 1..250 characters", dag_id
        )
    return dag_id


@put(
    "/dags/{dag_id:str}",
    tags=DAG_TAGS,
    summary="Register a DAG spec (scope dags:write)",
    description="Makes the spec the DAG's current version (content-hashed; a no-op when it already is).",
    status_code=200,
    dependencies={**_scoped("dags:write"), openapi.BODY: openapi.request_body(DagSpec)},
    responses=openapi.public_responses(*openapi.WITH_BODY),
    **_common("dags:write"),
)
async def put_dag(request: AnyRequest, runs: Runs, dag_id: DagId) -> DagOut:
    spec: DagSpec = decode_body(_dag_decoder, await request.body())
    dag = await runs.register_dag(_dag_id(dag_id), spec)
    return _dag_body(dag.dag_id, dag.version, dag.spec)


@get(
    "/dags/{dag_id:str}",
    tags=DAG_TAGS,
    summary="Read a DAG's current spec (scope runs:read)",
    dependencies=_scoped("runs:read"),
    responses=openapi.public_responses(404),
    **_common("runs:read"),
)
async def get_dag(runs: Runs, dag_id: DagId) -> DagOut:
    dag = await runs.get_dag(dag_id)
    return _dag_body(dag.dag_id, dag.version, dag.spec)


async def _dag(runs: Runs, dag_id: DagId) -> Any:
    """The DAG a trigger names, looked up before the body (a conf of up to the DAG body limit) is read."""
    return await runs.get_dag(dag_id)


Prefer = Annotated[
    str | None,
    header(
        "Prefer",
        "`wait=N` (RFC 7240, whole seconds, capped at 300): wait for the outcome; 200 with it, else 202. "
        "A value that is not delta-seconds is ignored.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    header(
        "Idempotency-Key",
        "Triggers with the same key and body create one run; the same key with another body is 422.",
        minLength=1,
        maxLength=MAX_IDENTIFIER,
        pattern=NAME_PATTERN,
    ),
]


# The trigger's 200: the run, or (after a Prefer: wait) the run with its outcome.
RUN_OR_OUTCOME: Any = RunResponse | RunOutcomeResponse


@post(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="Trigger a run (scope runs:write); Airflow's body, logical_date present and null",
    description=(
        "With `Prefer: wait=N` (RFC 7240, N <= 300 seconds) the call also waits for the outcome: 200 with "
        "the run, `state` and `results` from its outcome, or 202 with a `Location` to wait on."
    ),
    status_code=200,
    dependencies={
        **_scoped("runs:write"),
        "dag": Provide(_dag),
        openapi.BODY: openapi.request_body(TriggerRequest),
    },
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=RUN_OR_OUTCOME,
            description="The run; with `Prefer: wait`, the run with its outcome's `state` and `results`",
        ),
        202: ResponseSpec(
            generate_examples=False,
            data_container=RunResponse,
            description="`Prefer: wait` ended first: wait on `Location`",
        ),
        **openapi.public_responses(*openapi.WITH_BODY, 404, 409),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.with_headers(202, TRIGGER_WAIT_HEADERS),
)
async def trigger_run(
    request: AnyRequest,
    runs: Runs,
    waits: Waits,
    dag: NamedDependency[Any],
    dag_id: DagId,
    prefer: Prefer = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    body: TriggerBody = decode_body(_trigger_decoder, await request.body())
    if body.logical_date is not None:
        raise RequestInvalid.one(
            "value_error",
            ["body", "logical_date"],
            "Stateport runs have no logical date: send logical_date as null",
            body.logical_date.isoformat(),
        )
    run = await runs.trigger(
        dag.dag_id,
        dag=dag,
        run_id=body.dag_run_id,
        conf=body.conf,
        run_after=body.run_after,
        idempotency_key=idempotency_key,
    )
    wait_s = prefer_wait(request)
    if wait_s is not None:
        return await trigger_and_wait(waits, run, wait_s)
    return Response(run_body(run))


ORDERS = {"created_at": False, "-created_at": True}
RUN_STATES = {state.value: state for state in RunState}
StateFilter = Annotated[
    list[str] | None,
    query(
        "state",
        "Repeatable: only runs in these states (every state if absent).",
        type="array",
        items={"type": "string", "enum": list(RUN_STATES)},
    ),
]
OrderBy = Annotated[
    str | None,
    query(
        "order_by",
        "`-created_at` (newest first, the default) or `created_at`.",
        type="string",
        enum=list(ORDERS),
        default="-created_at",
    ),
]


@get(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="List a DAG's runs (scope runs:read)",
    description="`total_entries` counts every run in those states. Runs past their retention are gone.",
    dependencies=_scoped("runs:read"),
    responses=openapi.public_responses(404),
    **_common("runs:read"),
)
async def list_runs(
    runs: Runs,
    dag_id: DagId,
    run_states: StateFilter = None,
    order_by: OrderBy = None,
    limit: Limit = None,
    offset: Offset = None,
) -> RunsResponse:
    states = set()
    for raw in run_states or []:
        if raw not in RUN_STATES:
            raise RequestInvalid.one(
                "enum", ["query", "state"], f"state must be one of {', '.join(RUN_STATES)}", raw
            )
        states.add(RUN_STATES[raw])
    order = "-created_at" if order_by is None else order_by
    if order not in ORDERS:
        raise RequestInvalid.one(
            "enum", ["query", "order_by"], "order_by must be created_at or -created_at", order
        )
    page_size, skip = _limit_offset(limit, offset)
    found, total = await runs.list_runs(
        dag_id, states=frozenset(states), newest_first=ORDERS[order], limit=page_size, offset=skip
    )
    return RunsResponse(dag_runs=[run_body(run) for run in found], total_entries=total)


@get(
    "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}",
    tags=RUN_TAGS,
    summary="Read a run (scope runs:read)",
    description="`outcome` once it is known.",
    dependencies=_scoped("runs:read"),
    responses=openapi.public_responses(404),
    **_common("runs:read"),
)
async def get_run(runs: Runs, dag_id: DagId, dag_run_id: RunId) -> RunResponse:
    return run_body(await runs.get_run(dag_id, dag_run_id))


@get(
    "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances",
    tags=RUN_TAGS,
    summary="List a run's task instances, every try (scope runs:read)",
    dependencies=_scoped("runs:read"),
    responses=openapi.public_responses(404),
    **_common("runs:read"),
)
async def list_task_instances(runs: Runs, dag_id: DagId, dag_run_id: RunId) -> TaskInstancesResponse:
    tis = await runs.task_instances(dag_id, dag_run_id)
    out = [
        TaskInstanceOut(
            id=str(ti.id),
            task_id=ti.task_id,
            map_index=ti.map_index,
            try_number=ti.try_number,
            state=str(ti.state),
            error=ti.error,
        )
        for ti in tis
    ]
    return TaskInstancesResponse(task_instances=out, total_entries=len(out))


def _limit_offset(limit: str | None, offset: str | None) -> tuple[int, int]:
    return int_param(limit, "limit", 100, ge=1, le=1000), int_param(offset, "offset", 0, ge=0)


# --- operators' state -----------------------------------------------------------------------------------

STATE_TAGS = ["State (operators)"]
TASK_STATE = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances/{task_id:str}/state-store"
ASSET_STATE = "/assets/{name:str}/state-store"


class TaskStatePage(Struct, frozen=True, kw_only=True):
    task_state_store: list[StateEntryOut]
    total_entries: int


class AssetStatePage(Struct, frozen=True, kw_only=True):
    asset_state_store: list[StateEntryOut]
    total_entries: int


def _entry(entry: StateEntry) -> StateEntryOut:
    return StateEntryOut(
        key=entry.key,
        value=msgspec.Raw(entry.value),
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )


def _entries(page: StatePage) -> list[StateEntryOut]:
    return [_entry(e) for e in page.entries]


def _entry_body(entry: StateEntry) -> Response[StateEntryOut]:
    return Response(content=_entry(entry), headers={"ETag": etag(entry.version)})


class TaskAddress:
    """A task scope as the path names it (read as sent), and the key if the path has one."""

    __slots__ = ("key", "scope")

    def __init__(self, scope: TaskScope, key: str | None) -> None:
        self.scope = scope
        self.key = key


def _task_address(
    request: AnyRequest,
    states: States,
    dag_id: DagId,
    dag_run_id: RunId,
    task_id: TaskId,
    map_index: MapIndex = None,
) -> TaskAddress:
    segments, key = raw_address(request.scope, 6)
    raw_dag, _, raw_run, _, raw_task, _ = segments
    scope = TaskScope(
        dag_id=raw_dag,
        run_id=raw_run,
        task_id=raw_task,
        map_index=int_param(map_index, "map_index", -1, ge=-1),
    )
    return TaskAddress(scope, key)


TASK = {**_scoped("state:admin"), "task": Provide(_task_address, sync_to_thread=False)}
STATE_ERRORS = openapi.public_responses(404, 412)


@get(
    TASK_STATE,
    tags=STATE_TAGS,
    summary="List a task instance's state (scope state:admin)",
    description="No check that the task instance exists.",
    dependencies=TASK,
    responses=openapi.public_responses(304),
    **_common("state:admin"),
)
async def list_task_state(
    task: NamedDependency[TaskAddress],
    states: States,
    limit: Limit = None,
    offset: Offset = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[TaskStatePage]:
    page_size, skip = _limit_offset(limit, offset)
    page = await states.list_entries(task.scope, limit=page_size, offset=skip)
    return not_modified(if_none_match, None) or Response(
        TaskStatePage(task_state_store=_entries(page), total_entries=page.total)
    )


@get(
    TASK_STATE + "/{key:path}",
    tags=STATE_TAGS,
    summary="Read one key of a task instance's state (scope state:admin)",
    dependencies=TASK,
    response_headers=[ETAG],
    responses=openapi.public_responses(304, 404),
    **_common("state:admin"),
)
async def get_task_state(
    task: NamedDependency[TaskAddress], states: States, key: StateKey, if_none_match: IfNoneMatchRead = None
) -> Response[StateEntryOut]:
    entry = await states.get(task.scope, valid_key(task.key, states.limits, KEY_LOC))
    return not_modified(if_none_match, entry.version) or _entry_body(entry)


@put(
    TASK_STATE + "/{key:path}",
    tags=STATE_TAGS,
    summary="Write one key of a task instance's state (scope state:admin)",
    description="404 when no task instance exists at that exact map index.",
    status_code=204,
    dependencies={**TASK, openapi.BODY: openapi.request_body(StatePutBody)},
    response_headers=[ETAG],
    responses=openapi.public_responses(*openapi.WITH_BODY, 404, 412),
    **_common("state:admin"),
)
async def put_task_state(
    request: AnyRequest,
    task: NamedDependency[TaskAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[None]:
    valid = valid_key(task.key, states.limits, KEY_LOC)
    value, expires_at = decode_put(await request.body(), states.limits)
    scope = await states.admin_task_scope(task.scope)
    entry = await states.put(
        scope, valid, value, expires_at=expires_at, if_version=precondition(if_match, if_none_match)
    )
    return stored_response(entry)


@delete(
    TASK_STATE + "/{key:path}",
    tags=STATE_TAGS,
    summary="Delete one key of a task instance's state (scope state:admin)",
    description="204 for a missing key too; 404 when no task instance exists at that exact map index.",
    dependencies=TASK,
    responses=STATE_ERRORS,
    **_common("state:admin"),
)
async def delete_task_state(
    task: NamedDependency[TaskAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> None:
    valid = valid_key(task.key, states.limits, KEY_LOC)
    if_version = precondition(if_match, if_none_match)
    await states.delete(await states.admin_task_scope(task.scope), valid, if_version=if_version)


@delete(
    TASK_STATE,
    tags=STATE_TAGS,
    summary="Delete every key of a task instance's state (scope state:admin)",
    description=(
        "`all_map_indices=true` clears every map index (map_index is then ignored, and only some task "
        "instance of the task must exist)."
    ),
    dependencies=TASK,
    responses=STATE_ERRORS,
    **_common("state:admin"),
)
async def clear_task_state(
    task: NamedDependency[TaskAddress],
    states: States,
    all_map_indices: AllMapIndices = None,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> None:
    if task.key is not None:
        valid_key(task.key, states.limits, KEY_LOC)
    widen = bool_param(all_map_indices, "all_map_indices")
    scope = await states.admin_task_scope(task.scope, any_map_index=widen)
    unconditional(if_match, if_none_match)
    await states.clear(scope, all_map_indices=widen)


# --- asset state ------------------------------------------------------------------------------------------
# The asset name is one path segment, read as sent: a name holding %2F has more segments once decoded, so
# Litestar routes it to the key route or to the fallback below, and the raw path decides what it is.


class AssetAddress:
    __slots__ = ("key", "scope")

    def __init__(self, scope: AssetScope, key: str | None) -> None:
        self.scope = scope
        self.key = key


async def _asset_address(
    request: AnyRequest, caller: NamedDependency[Any], states: States, name: AssetName
) -> AssetAddress:
    (raw_name, marker), key = raw_address(request.scope, 2)
    if marker != "state-store" or not raw_name:
        raise RequestInvalid.one(
            "value_error", ["path"], "expected /api/v2/assets/<name>/state-store[/<key>]"
        )
    return AssetAddress(await states.admin_asset_scope(raw_name), key)


ASSET = {**_scoped("state:admin"), "asset": Provide(_asset_address)}
ASSET_DOC = "The asset name is one path segment (send `/` inside it as `%2F`); 404 for an unknown asset."


async def _read_asset(
    asset: NamedDependency[AssetAddress],
    states: States,
    limit: str | None,
    offset: str | None,
    if_none_match: str | None,
) -> Response[Any]:
    if asset.key is None:
        page_size, skip = _limit_offset(limit, offset)
        page = await states.list_entries(asset.scope, limit=page_size, offset=skip)
        return not_modified(if_none_match, None) or Response(
            AssetStatePage(asset_state_store=_entries(page), total_entries=page.total)
        )
    entry = await states.get(asset.scope, valid_key(asset.key, states.limits, KEY_LOC))
    return not_modified(if_none_match, entry.version) or _entry_body(entry)


async def _write_asset(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    if_match: str | None,
    if_none_match: str | None,
) -> Response[None]:
    key = valid_key(asset.key, states.limits, KEY_LOC)
    value, expires_at = decode_put(await request.body(), states.limits)
    entry = await states.put(
        asset.scope, key, value, expires_at=expires_at, if_version=precondition(if_match, if_none_match)
    )
    return stored_response(entry)


async def _delete_asset(
    asset: NamedDependency[AssetAddress], states: States, if_match: str | None, if_none_match: str | None
) -> None:
    if asset.key is None:
        unconditional(if_match, if_none_match)
        await states.clear(asset.scope)
    else:
        key = valid_key(asset.key, states.limits, KEY_LOC)
        await states.delete(asset.scope, key, if_version=precondition(if_match, if_none_match))


@get(
    ASSET_STATE,
    tags=STATE_TAGS,
    summary="List an asset's state (scope state:admin)",
    description=ASSET_DOC,
    dependencies=ASSET,
    responses=openapi.public_responses(304, 404),
    **_common("state:admin"),
)
async def list_asset_state(
    asset: NamedDependency[AssetAddress],
    states: States,
    limit: Limit = None,
    offset: Offset = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[AssetStatePage]:
    return await _read_asset(asset, states, limit, offset, if_none_match)


@get(
    ASSET_STATE + "/{key:path}",
    tags=STATE_TAGS,
    summary="Read one key of an asset's state (scope state:admin)",
    description=ASSET_DOC,
    dependencies=ASSET,
    response_headers=[ETAG],
    responses=openapi.public_responses(304, 404),
    **_common("state:admin"),
)
async def get_asset_state(
    asset: NamedDependency[AssetAddress], states: States, key: StateKey, if_none_match: IfNoneMatchRead = None
) -> Response[StateEntryOut]:
    return await _read_asset(asset, states, None, None, if_none_match)


@put(
    ASSET_STATE + "/{key:path}",
    tags=STATE_TAGS,
    summary="Write one key of an asset's state (scope state:admin)",
    description=ASSET_DOC,
    status_code=204,
    dependencies={**ASSET, openapi.BODY: openapi.request_body(StatePutBody)},
    response_headers=[ETAG],
    responses=openapi.public_responses(*openapi.WITH_BODY, 404, 412),
    **_common("state:admin"),
)
async def put_asset_state(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[None]:
    return await _write_asset(request, asset, states, if_match, if_none_match)


@delete(
    ASSET_STATE + "/{key:path}",
    tags=STATE_TAGS,
    summary="Delete one key of an asset's state (scope state:admin)",
    description=ASSET_DOC + " 204 for a missing key too.",
    dependencies=ASSET,
    responses=STATE_ERRORS,
    **_common("state:admin"),
)
async def delete_asset_state(
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> None:
    await _delete_asset(asset, states, if_match, if_none_match)


@delete(
    ASSET_STATE,
    tags=STATE_TAGS,
    summary="Delete every key of an asset's state (scope state:admin)",
    description=ASSET_DOC,
    dependencies=ASSET,
    responses=STATE_ERRORS,
    **_common("state:admin"),
)
async def clear_asset_state(
    asset: NamedDependency[AssetAddress],
    states: States,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> None:
    await _delete_asset(asset, states, if_match, if_none_match)


# Names holding %2F (more segments once decoded), and addresses that are not <name>/state-store[/<key>].
FALLBACK = ["/assets/{name:str}", "/assets/{name:str}/{rest:path}"]


@get(FALLBACK, include_in_schema=False, dependencies=ASSET)
async def get_asset_fallback(
    asset: NamedDependency[AssetAddress],
    states: States,
    limit: Limit = None,
    offset: Offset = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[Any]:
    return await _read_asset(asset, states, limit, offset, if_none_match)


@put(FALLBACK, include_in_schema=False, status_code=204, dependencies=ASSET)
async def put_asset_fallback(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[None]:
    return await _write_asset(request, asset, states, if_match, if_none_match)


@delete(FALLBACK, include_in_schema=False, dependencies=ASSET)
async def delete_asset_fallback(
    asset: NamedDependency[AssetAddress],
    states: States,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> None:
    await _delete_asset(asset, states, if_match, if_none_match)


def dag_handlers() -> list[HTTPRouteHandler]:
    """Routes whose bodies are DAG specs and run triggers (a larger body limit)."""
    return [put_dag, get_dag, trigger_run, list_runs, get_run, list_task_instances]


def state_handlers() -> list[HTTPRouteHandler]:
    """Operators' state routes (state-sized body limit)."""
    return [
        list_task_state,
        get_task_state,
        put_task_state,
        delete_task_state,
        clear_task_state,
        list_asset_state,
        get_asset_state,
        put_asset_state,
        delete_asset_state,
        clear_asset_state,
        get_asset_fallback,
        put_asset_fallback,
        delete_asset_fallback,
    ]
