"""The operators' routes for a task instance's state (``/api/v2/dags/.../taskInstances/<id>/state-store``):
Airflow 3.3.2's ``TaskStateStoreApi`` (get, set, patch, list, delete, clear), with Stateport's preconditions.

Scope ``state:admin``. Reads need no task instance; writes and deletes need one (each route says which).
"""

from __future__ import annotations

from typing import Any

from litestar import Response, delete, get, patch, put
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler

from stateport.domain.models import MAP_INDEX_MAX, TaskScope
from stateport.http import openapi
from stateport.http.listing import AirflowLimit, AirflowOffset, airflow_page, only_known
from stateport.http.params import (
    AllMapIndices,
    ClearIfMatch,
    ClearIfNoneMatch,
    DagId,
    IfMatch,
    IfMatchRead,
    IfNoneMatch,
    IfNoneMatchRead,
    ListIfMatch,
    MapIndex,
    RunId,
    StateKey,
    TaskId,
)
from stateport.http.paths import raw_address
from stateport.http.providers import AnyRequest, States
from stateport.http.public import (
    ETAG,
    KEY_LOC,
    STATE_ERRORS,
    TASK_STATE_TAGS,
    common,
    entry_out,
    entry_response,
    scoped,
)
from stateport.http.queries import bool_param, plain_int
from stateport.http.schemas import (
    TaskStateStoreBody,
    TaskStateStoreCollectionResponse,
    TaskStateStorePatchBody,
    TaskStateStoreResponse,
)
from stateport.http.state_io import (
    checked_listing,
    checked_read,
    decode_patch,
    decode_task_put,
    patched_response,
    precondition,
    stored_response,
    unconditional,
    valid_key,
)
from stateport.http.state_keys import Prefix
from stateport.http.streamed_pages import each, streamed_page

TASK_STATE = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances/{task_id:str}/state-store"


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
    if key is not None:
        # A key's routes take only map_index, once: of two, picking one would write where not asked.
        only_known(request, ("map_index",))
    raw_dag, _, raw_run, _, raw_task, _ = segments
    scope = TaskScope(
        dag_id=raw_dag,
        run_id=raw_run,
        task_id=raw_task,
        map_index=plain_int(map_index, "map_index", -1, ge=-1, le=MAP_INDEX_MAX),
    )
    return TaskAddress(scope, key)


TASK = {**scoped("state:admin"), "task": Provide(_task_address, sync_to_thread=False)}


@get(
    TASK_STATE,
    tags=TASK_STATE_TAGS,
    summary="List a task instance's state (scope state:admin)",
    description=(
        "No check that the task instance exists. `prefix` (Stateport's): only keys starting with it, "
        "`total_entries` counting those. Any other query parameter is a 422."
    ),
    dependencies=TASK,
    responses=openapi.public_responses(304, 412, 429),
    **common("state:admin"),
    operation_id="list_task_state_store",
)
async def list_task_state(
    request: AnyRequest,
    task: NamedDependency[TaskAddress],
    states: States,
    limit: AirflowLimit = None,
    offset: AirflowOffset = None,
    prefix: Prefix = None,
    if_match: ListIfMatch = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[TaskStateStoreCollectionResponse]:
    only_known(request, ("limit", "offset", "map_index", "prefix"))
    page_size, skip = airflow_page(limit, offset)  # Airflow's: default 50, more than 100 gives 100
    parts = await states.list_entries(task.scope, limit=page_size, offset=skip, prefix=prefix or "")
    return checked_listing(if_match, if_none_match) or await streamed_page(
        request, "task_state_store", parts, each(entry_out)
    )


@get(
    TASK_STATE + "/{key:path}",
    tags=TASK_STATE_TAGS,
    summary="Read one key of a task instance's state (scope state:admin)",
    dependencies=TASK,
    response_headers=[ETAG],
    responses=openapi.public_responses(304, 404, 412),
    **common("state:admin"),
    operation_id="get_task_state_store",
)
async def get_task_state(
    task: NamedDependency[TaskAddress],
    states: States,
    key: StateKey,
    if_match: IfMatchRead = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[TaskStateStoreResponse]:
    entry = await states.get(task.scope, valid_key(task.key, states.limits, KEY_LOC))
    return checked_read(if_match, if_none_match, entry) or entry_response(entry)


@put(
    TASK_STATE + "/{key:path}",
    tags=TASK_STATE_TAGS,
    summary="Write one key of a task instance's state (scope state:admin)",
    description=(
        '404 when no task instance exists at that exact map index. `expires_at`: `"default"` (also when '
        "left out, as in Airflow) is `STATEPORT_STATE_DEFAULT_RETENTION_DAYS` from now (never when 0); null "
        "never expires."
    ),
    status_code=204,
    dependencies={**TASK, openapi.BODY: openapi.request_body(TaskStateStoreBody)},
    response_headers=[ETAG],
    responses=openapi.public_responses(*openapi.WITH_BODY, 404, 412),
    **common("state:admin"),
    operation_id="set_task_state_store",
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
    value, expires_at = decode_task_put(await request.body(), states.limits)
    scope = await states.admin_task_scope(task.scope)
    # Airflow's TaskStateStoreBody takes any aware time, one already passed included (204, absent at once).
    entry = await states.put(
        scope,
        valid,
        value,
        expires_at=expires_at,
        if_version=precondition(if_match, if_none_match),
        allow_expired=True,
    )
    return stored_response(entry)


@patch(
    TASK_STATE + "/{key:path}",
    tags=TASK_STATE_TAGS,
    summary="Replace the value of a key that exists, keeping its expiry (scope state:admin)",
    description=(
        "Airflow's answer: 200 with a JSON `null` (and the new `ETag`). 404 when no task instance exists at "
        "that exact map index, or the key does not. A `null` value is 422: Stateport stores none."
    ),
    dependencies={**TASK, openapi.BODY: openapi.request_body(TaskStateStorePatchBody)},
    response_headers=[ETAG],
    responses=openapi.public_responses(*openapi.WITH_BODY, 404, 412),
    **common("state:admin"),
    operation_id="patch_task_state_store",
)
async def patch_task_state(
    request: AnyRequest,
    task: NamedDependency[TaskAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[Any]:
    valid = valid_key(task.key, states.limits, KEY_LOC)
    value = decode_patch(await request.body(), states.limits)
    scope = await states.admin_task_scope(task.scope)
    entry = await states.update_value(scope, valid, value, if_version=precondition(if_match, if_none_match))
    return patched_response(entry)


@delete(
    TASK_STATE + "/{key:path}",
    tags=TASK_STATE_TAGS,
    summary="Delete one key of a task instance's state (scope state:admin)",
    description="204 for a missing key too; 404 when no task instance exists at that exact map index.",
    dependencies=TASK,
    responses=STATE_ERRORS,
    **common("state:admin"),
    operation_id="delete_task_state_store",
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
    tags=TASK_STATE_TAGS,
    summary="Delete every key of a task instance's state (scope state:admin)",
    description=(
        "`all_map_indices=true` clears every map index (map_index is then ignored, and only some task "
        "instance of the task must exist)."
    ),
    dependencies=TASK,
    responses=STATE_ERRORS,
    **common("state:admin"),
    operation_id="clear_task_state_store",
)
async def clear_task_state(
    request: AnyRequest,
    task: NamedDependency[TaskAddress],
    states: States,
    all_map_indices: AllMapIndices = None,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> None:
    if task.key is not None:
        valid_key(task.key, states.limits, KEY_LOC)
    # A misspelt flag (``all_map_index``) or one sent twice cleared one map index silently (an outsider's
    # find): 422, as on the Execution API's clear.
    only_known(request, ("map_index", "all_map_indices"))
    widen = bool_param(all_map_indices, "all_map_indices")
    scope = await states.admin_task_scope(task.scope, any_map_index=widen)
    unconditional(if_match, if_none_match)
    await states.clear(scope, all_map_indices=widen)


def handlers() -> list[HTTPRouteHandler]:
    """In the order the OpenAPI document lists them (``app`` registers these before ``asset_state``'s)."""
    return [
        list_task_state,
        get_task_state,
        put_task_state,
        patch_task_state,
        delete_task_state,
        clear_task_state,
    ]
