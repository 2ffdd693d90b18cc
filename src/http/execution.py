"""Stateport's own Execution API state routes (``/execution/state/...``), for task-instance tokens.

The task routes are also served under Airflow's ``/execution/store/ti`` prefix (``stateport.http.airflow``):
both are built by ``task_state_handlers``; only the own prefix honours ``?all_map_indices=true``.

Keys and asset names are read from the raw path (``stateport.http.paths``): the templates declare them,
the address providers here read them as sent.
"""

from __future__ import annotations

from typing import cast

from litestar import Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.exceptions import MethodNotAllowedException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import Operation

from stateport.domain.models import AssetScope
from stateport.domain.ports import TokenClaims
from stateport.http import openapi
from stateport.http.auth import TaskCaller
from stateport.http.errors import RequestInvalid
from stateport.http.listing import only_known
from stateport.http.params import (
    AllMapIndices,
    AssetName,
    ClearIfMatch,
    ClearIfNoneMatch,
    IfMatch,
    IfMatchRead,
    IfNoneMatch,
    IfNoneMatchRead,
    ListIfMatch,
    StateKey,
    TaskInstanceId,
)
from stateport.http.paths import raw_address
from stateport.http.providers import AnyRequest, States, task_caller, token_caller
from stateport.http.queries import bool_param
from stateport.http.schemas import StatePutBody, ValueOut
from stateport.http.state_batch import BatchBody, BatchOut, batch_response, read_batch
from stateport.http.state_io import (
    checked_listing,
    checked_read,
    decode_put,
    precondition,
    stored_response,
    unconditional,
    valid_key,
    value_response,
)
from stateport.http.state_keys import (
    KEY_PARAMS,
    Cursor,
    KeysLimit,
    KeysOnly,
    KeysPage,
    Prefix,
    key_query,
    keys_page,
)
from stateport.http.state_watch import (
    LastEventId,
    Wait,
    asks_watch,
    wants_events,
    watch_key,
    watch_prefix,
)

TI_PATH = "/ti/{task_instance_id:str}"
LIST_DOC = (
    "Live keys in byte order of their UTF-8, `limit` (1..1000, default 100) at a time: "
    '`{"entries": [{"key", "value", "version", "updated_at", "expires_at"}], "next_cursor"}`, `value` left '
    "out with `keys_only=true`. Send `next_cursor` back as `cursor` for the next page (null: the last). "
    "Keys added or deleted meanwhile shift nothing: a key live throughout is listed exactly once. Any other "
    "query parameter is a 422."
)
KEY_PATH = "/ti/{task_instance_id:str}/{key:path}"
ASSET_PATH = "/asset/{name:str}"
ASSET_KEY_PATH = "/asset/{name:str}/{key:path}"
BATCH_DOC = (
    "Up to 100 operations on the scope, applied in order as one transaction: each sees the effects of the "
    "earlier ones, a get answers the entry as of that point, and either every write applies or none does. "
    "At the first operation whose `if_version` (0: the key must be absent) does not hold, the answer is 412 "
    "naming its `index` and nothing is written. A backend that cannot do this atomically (S3) answers 501. "
    "The batch is a POST on the scope's own path: a key always lies below it, so no key can be mistaken "
    "for a batch."
)
KEY_LOC: list[str | int] = ["path", "key"]
# What a key's GET takes on Stateport's own routes (a PUT or DELETE takes no query parameter): anything
# else, or ``wait`` twice, is a 422 naming it rather than a guess at what was meant.
WAIT_ONLY = ("wait",)
WATCH_DOC = (
    'Long-poll: with `?wait=S` and `If-None-Match: "<version>"` (`"0"`: the key is missing) the answer '
    "comes as soon as the key is at another version (200, or 404 once deleted or expired), else 304 after "
    "S seconds (at most 300). Stream: with `Accept: text/event-stream`, one Server-Sent Event per change "
    '(`event: put`, `id: <version>`, `data: {"key", "version", "value", "updated_at", "expires_at"}`; '
    '`event: delete`, `id: 0`, `data: {"key", "version": 0, "reason": "absent"|"deleted"|"expired"}`), '
    "resumed from `Last-Event-ID`; `: heartbeat` comments while idle."
)
ETAG = ResponseHeader(
    name="ETag",
    description='The entry\'s version, `"<n>"`: send it back in `If-Match`',
    documentation_only=True,
)


# --- addresses: providers chained after the caller and the state service -------------------------------


def _task_key(request: AnyRequest, states: States, task_instance_id: TaskInstanceId, key: StateKey) -> str:
    """The key as sent (``//``, a trailing ``/``), checked against the store's limits."""
    _, raw = raw_address(request.scope, 1)
    return valid_key(raw, states.limits, KEY_LOC)


def _no_key(request: AnyRequest, states: States, task_instance_id: TaskInstanceId) -> str | None:
    """What follows the task instance id: None, or (after a trailing slash) a key, which must be valid."""
    _, raw = raw_address(request.scope, 1)
    return None if raw is None else valid_key(raw, states.limits, KEY_LOC)


class AssetAddress:
    """An asset the caller's task may touch (an inlet or outlet of it), and the key if the path has one."""

    __slots__ = ("key", "scope")

    def __init__(self, scope: AssetScope, key: str | None) -> None:
        self.scope = scope
        self.key = key


async def _asset(
    request: AnyRequest, caller: NamedDependency[TokenClaims], states: States, name: AssetName
) -> AssetAddress:
    (raw_name,), key = raw_address(request.scope, 1)
    if not raw_name:
        raise RequestInvalid.one(
            "string_too_short", ["path", "name"], "String should have at least 1 character", ""
        )
    scope = await states.asset_scope(caller.subject, name=raw_name, writes=changes_state(request))
    return AssetAddress(scope, key)


def changes_state(request: AnyRequest) -> bool:
    """Whether the request may change the asset's state: every method but a read's (a batch counts, whatever
    its operations), refused to a superseded try (``StateService.asset_scope``)."""
    return request.method not in ("GET", "HEAD")


TASK_KEY = {"caller": task_caller, "state_key": Provide(_task_key, sync_to_thread=False)}
TASK_CLEAR = {"caller": task_caller, "trailing_key": Provide(_no_key, sync_to_thread=False)}
ASSET = {"caller": token_caller, "asset": Provide(_asset)}


# What an Airflow client may send to the /execution/store clears, which Airflow's routes pass over.
AIRFLOW_CLEAR_IGNORED = ("all_map_indices",)


def task_state_handlers(
    area: str,
    *,
    all_map_indices: bool,
    allow_expired: bool,
    tags: list[str],
    operation_class: type[Operation] = openapi.StateportOperation,
) -> list[HTTPRouteHandler]:
    """One key's GET/PUT/DELETE and the clear of the caller's task instance, under ``/execution/<area>``
    (``operation_class``: how the OpenAPI document shows them, but for the watch route).

    ``allow_expired``: a PUT may name an ``expires_at`` that has passed (stored, and absent at once), as
    Airflow's route takes it; Stateport's own route answers 422 (``StateService._checked``)."""
    # 409: the token's try was superseded by a retry (its writes are refused, StateService._writing).
    key_errors = (404, 409, 412)

    get_doc = "Read a key of the task instance's state"
    if all_map_indices:

        @get(
            KEY_PATH,
            tags=tags,
            summary=get_doc + "; or watch it (long-poll with `wait`, or `Accept: text/event-stream`)",
            description=WATCH_DOC,
            dependencies=TASK_KEY,
            response_headers=[ETAG],
            responses=openapi.execution_responses(304, 404, 412, 429),
            security=openapi.TASK_SECURITY,
            operation_class=openapi.WatchOperation,
            operation_id=f"{area}_task_get",
        )
        async def get_key(
            request: AnyRequest,
            caller: NamedDependency[TaskCaller],
            states: States,
            state_key: NamedDependency[str],
            if_match: IfMatchRead = None,
            if_none_match: IfNoneMatchRead = None,
            wait: Wait = None,
            last_event_id: LastEventId = None,
        ) -> Response[ValueOut]:
            only_known(request, WAIT_ONLY)
            if asks_watch(request, wait, last_event_id):
                scope = (await states.binding(caller.subject, caller.ti_id)).scope
                watched = await watch_key(
                    request,
                    scope,
                    state_key,
                    "Task",
                    wait=wait,
                    if_match=if_match,
                    if_none_match=if_none_match,
                    last_event=last_event_id,
                )
                if watched is not None:
                    return cast("Response[ValueOut]", watched)
            entry = await states.task_get(caller.subject, caller.ti_id, state_key)
            return checked_read(if_match, if_none_match, entry) or value_response(entry)

    else:

        @get(
            KEY_PATH,
            tags=tags,
            summary=get_doc,
            dependencies=TASK_KEY,
            response_headers=[ETAG],
            responses=openapi.execution_responses(304, 404, 412),
            security=openapi.TASK_SECURITY,
            operation_class=operation_class,
            operation_id=f"{area}_task_get",
        )
        async def get_key(
            caller: NamedDependency[TaskCaller],
            states: States,
            state_key: NamedDependency[str],
            if_match: IfMatchRead = None,
            if_none_match: IfNoneMatchRead = None,
        ) -> Response[ValueOut]:
            entry = await states.task_get(caller.subject, caller.ti_id, state_key)
            return checked_read(if_match, if_none_match, entry) or value_response(entry)

    @put(
        KEY_PATH,
        tags=tags,
        summary="Write a key of the task instance's state",
        dependencies={**TASK_KEY, openapi.BODY: openapi.request_body(StatePutBody)},
        status_code=204,
        response_headers=[ETAG],
        responses=openapi.execution_responses(*openapi.WITH_BODY, *key_errors),
        security=openapi.TASK_SECURITY,
        operation_class=operation_class,
        operation_id=f"{area}_task_put",
    )
    async def put_key(
        request: AnyRequest,
        caller: NamedDependency[TaskCaller],
        states: States,
        state_key: NamedDependency[str],
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response[None]:
        if all_map_indices:  # Stateport's own route; Airflow's passes over what it does not know, as Airflow
            only_known(request, ())
        # The task instance is looked up (and authorized) before its body is read.
        await states.binding(caller.subject, caller.ti_id)
        value, expires_at = decode_put(await request.body(), states.limits)
        entry = await states.task_put(
            caller.subject,
            caller.ti_id,
            state_key,
            value,
            expires_at=expires_at,
            if_version=precondition(if_match, if_none_match),
            allow_expired=allow_expired,
        )
        return stored_response(entry)

    @delete(
        KEY_PATH,
        tags=tags,
        summary="Delete a key of the task instance's state (204 if missing too)",
        dependencies=TASK_KEY,
        responses=openapi.execution_responses(*key_errors),
        security=openapi.TASK_SECURITY,
        operation_class=operation_class,
        operation_id=f"{area}_task_delete",
    )
    async def delete_key(
        request: AnyRequest,
        caller: NamedDependency[TaskCaller],
        states: States,
        state_key: NamedDependency[str],
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> None:
        if all_map_indices:
            only_known(request, ())
        await states.task_delete(
            caller.subject, caller.ti_id, state_key, if_version=precondition(if_match, if_none_match)
        )

    async def clear(
        caller: NamedDependency[TaskCaller],
        states: States,
        trailing_key: NamedDependency[str | None],
        widen: bool,
        if_match: ClearIfMatch,
        if_none_match: ClearIfNoneMatch,
    ) -> None:
        # A trailing slash is an empty key (422, as Airflow answers), never a clear: _no_key checked it.
        unconditional(if_match, if_none_match)
        await states.task_clear(caller.subject, caller.ti_id, all_map_indices=widen)

    clear_errors = openapi.execution_responses(404, 409, 412)
    if all_map_indices:

        @delete(
            TI_PATH,
            tags=tags,
            summary="Delete every key of the task instance's state (this map index, or every one)",
            dependencies=TASK_CLEAR,
            responses=clear_errors,
            security=openapi.TASK_SECURITY,
            operation_class=operation_class,
            operation_id=f"{area}_task_clear",
        )
        async def clear_own(
            request: AnyRequest,
            caller: NamedDependency[TaskCaller],
            states: States,
            trailing_key: NamedDependency[str | None],
            all_map_indices: AllMapIndices = None,
            if_match: ClearIfMatch = None,
            if_none_match: ClearIfNoneMatch = None,
        ) -> None:
            # A value that is no boolean (``maybe``, empty, sent twice) is a 422, as on the operators' clear:
            # read as false, it cleared only this map index of a task that asked for every one.
            only_known(request, ("all_map_indices",))
            widen = bool_param(all_map_indices, "all_map_indices")
            await clear(caller, states, trailing_key, widen, if_match, if_none_match)

        clear_handler = clear_own
    else:

        @delete(
            TI_PATH,
            tags=tags,
            summary="Delete every key of the task instance's state (this map index)",
            dependencies=TASK_CLEAR,
            responses=clear_errors,
            security=openapi.TASK_SECURITY,
            operation_class=operation_class,
            operation_id=f"{area}_task_clear",
        )
        async def clear_this(
            request: AnyRequest,
            caller: NamedDependency[TaskCaller],
            states: States,
            trailing_key: NamedDependency[str | None],
            if_match: ClearIfMatch = None,
            if_none_match: ClearIfNoneMatch = None,
        ) -> None:
            # Airflow's clear has no all_map_indices: a task never wipes its siblings, whatever it sends.
            # Any other parameter is refused, as by Stateport's own clears: passed over (as Airflow does),
            # `?prefix=x` cleared every key of the scope (an outsider's find).
            only_known(request, AIRFLOW_CLEAR_IGNORED)
            await clear(caller, states, trailing_key, False, if_match, if_none_match)

        clear_handler = clear_this

    # A GET or PUT of the id alone (or with a trailing slash) names an empty key: 422, as in Airflow.
    # Stateport's own prefix lists the task's keys there instead (a trailing slash is still a 422).
    @get(TI_PATH, include_in_schema=False, dependencies=TASK_CLEAR)
    async def get_empty_key(
        caller: NamedDependency[TaskCaller], states: States, trailing_key: NamedDependency[str | None]
    ) -> None:
        valid_key(trailing_key, states.limits, KEY_LOC)

    @get(
        TI_PATH,
        tags=tags,
        summary="List the task instance's keys by prefix (cursor paging)",
        description=LIST_DOC,
        dependencies=TASK_CLEAR,
        responses=openapi.execution_responses(304, 404, 412, 429),
        security=openapi.TASK_SECURITY,
        operation_class=openapi.WatchOperation,
        operation_id=f"{area}_task_list",
    )
    async def list_keys(
        request: AnyRequest,
        caller: NamedDependency[TaskCaller],
        states: States,
        trailing_key: NamedDependency[str | None],
        prefix: Prefix = None,
        cursor: Cursor = None,
        limit: KeysLimit = None,
        keys_only: KeysOnly = None,
        if_match: ListIfMatch = None,
        if_none_match: IfNoneMatchRead = None,
    ) -> Response[KeysPage]:
        only_known(request, KEY_PARAMS)
        if wants_events(request):
            scope = (await states.binding(caller.subject, caller.ti_id)).scope
            return cast("Response[KeysPage]", await watch_prefix(request, scope, prefix, states.limits))
        ask = key_query(prefix, cursor, limit, keys_only)
        page = await states.task_keys(
            caller.subject,
            caller.ti_id,
            prefix=ask.prefix,
            cursor=ask.cursor,
            limit=ask.limit,
            keys_only=ask.keys_only,
        )
        return checked_listing(if_match, if_none_match) or Response(keys_page(page))

    @put(TI_PATH, include_in_schema=False, dependencies=TASK_CLEAR)
    async def put_empty_key(
        caller: NamedDependency[TaskCaller], states: States, trailing_key: NamedDependency[str | None]
    ) -> None:
        valid_key(trailing_key, states.limits, KEY_LOC)

    @post(
        TI_PATH,
        tags=tags,
        summary="Apply a batch of gets, puts and deletes to the task instance's state, all or nothing",
        description=BATCH_DOC,
        dependencies={**TASK_CLEAR, openapi.BODY: openapi.request_body(BatchBody)},
        status_code=200,
        responses=openapi.batch_responses(execution=True),
        security=openapi.TASK_SECURITY,
        operation_class=operation_class,
        operation_id=f"{area}_task_batch",
    )
    async def batch(
        request: AnyRequest,
        caller: NamedDependency[TaskCaller],
        states: States,
        trailing_key: NamedDependency[str | None],
    ) -> Response[BatchOut]:
        # The task instance is looked up (and authorized) before its body is read.
        await states.binding(caller.subject, caller.ti_id)
        operations = await read_batch(request)
        results = await states.task_batch(caller.subject, caller.ti_id, operations)
        return batch_response(results, operations)

    handlers = [get_key, put_key, delete_key, clear_handler, put_empty_key]
    # Only Stateport's own prefix lists and batches: Airflow's ``/execution/store/ti/<id>`` keeps Airflow's
    # 422 on a GET and has no POST.
    return [*handlers, list_keys, batch] if all_map_indices else [*handlers, get_empty_key]


# --- asset state, addressed by name in the path ---------------------------------------------------------

ASSET_TAGS = ["Asset State"]
ASSET_DOC = (
    "The asset name is one path segment (send `/` inside it as `%2F`); the key is the rest of the path and "
    "may contain `/`. The task must declare the asset as an inlet or outlet (403 otherwise)."
)
ASSET_ERRORS = (404, 409, 412)  # 409 as key_errors


@get(
    ASSET_KEY_PATH,
    tags=ASSET_TAGS,
    summary="Read a key of an asset's state",
    description=ASSET_DOC,
    dependencies=ASSET,
    response_headers=[ETAG],
    responses=openapi.execution_responses(304, 404, 412, 429),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.WatchOperation,
    operation_id="state_asset_get",
)
async def get_asset_key(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatchRead = None,
    if_none_match: IfNoneMatchRead = None,
    wait: Wait = None,
    last_event_id: LastEventId = None,
) -> Response[ValueOut] | Response[KeysPage]:
    if asset.key is None:  # the raw path decides: a name holding %2F, and no key
        return await _asset_keys(request, asset, states, if_match, if_none_match)
    only_known(request, WAIT_ONLY)
    state_key = valid_key(asset.key, states.limits, KEY_LOC)
    if asks_watch(request, wait, last_event_id):
        watched = await watch_key(
            request,
            asset.scope,
            state_key,
            "Asset",
            wait=wait,
            if_match=if_match,
            if_none_match=if_none_match,
            last_event=last_event_id,
        )
        if watched is not None:
            return cast("Response[ValueOut]", watched)
    entry = await states.asset_get(asset.scope, state_key)
    return checked_read(if_match, if_none_match, entry) or value_response(entry)


@put(
    ASSET_KEY_PATH,
    tags=ASSET_TAGS,
    summary="Write a key of an asset's state",
    description=ASSET_DOC,
    dependencies={**ASSET, openapi.BODY: openapi.request_body(StatePutBody)},
    status_code=204,
    response_headers=[ETAG],
    responses=openapi.execution_responses(*openapi.WITH_BODY, *ASSET_ERRORS),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="state_asset_put",
)
async def put_asset_key(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[None]:
    only_known(request, ())
    key = valid_key(asset.key, states.limits, KEY_LOC)
    value, expires_at = decode_put(await request.body(), states.limits)
    entry = await states.asset_put(
        asset.scope, key, value, expires_at=expires_at, if_version=precondition(if_match, if_none_match)
    )
    return stored_response(entry)


async def _delete_asset(
    asset: NamedDependency[AssetAddress], states: States, if_match: str | None, if_none_match: str | None
) -> None:
    # The raw path decides: a name holding %2F routes here with or without a key.
    if asset.key is None:
        unconditional(if_match, if_none_match)
        await states.asset_clear(asset.scope)
        return
    key = valid_key(asset.key, states.limits, KEY_LOC)
    await states.asset_delete(asset.scope, key, if_version=precondition(if_match, if_none_match))


@delete(
    ASSET_KEY_PATH,
    tags=ASSET_TAGS,
    summary="Delete a key of an asset's state (204 if missing too)",
    description=ASSET_DOC,
    dependencies=ASSET,
    responses=openapi.execution_responses(*ASSET_ERRORS),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="state_asset_delete",
)
async def delete_asset_key(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> None:
    if asset.key is not None:
        only_known(request, ())
    await _delete_asset(asset, states, if_match, if_none_match)


@delete(
    ASSET_PATH,
    tags=ASSET_TAGS,
    summary="Delete every key of an asset's state",
    description=ASSET_DOC,
    dependencies=ASSET,
    responses=openapi.execution_responses(*ASSET_ERRORS),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="state_asset_clear",
)
async def clear_asset(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> None:
    # As every other clear: a parameter it does not take is refused, not passed over (an outsider's find:
    # `?prefix=tmp/` cleared every key of the asset).
    only_known(request, ())
    await _delete_asset(asset, states, if_match, if_none_match)


@get(
    ASSET_PATH,
    tags=ASSET_TAGS,
    summary="List an asset's keys by prefix (cursor paging)",
    description=ASSET_DOC + " " + LIST_DOC,
    dependencies=ASSET,
    responses=openapi.execution_responses(304, 404, 412, 429),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.WatchOperation,
    operation_id="state_asset_list",
)
async def list_asset_keys(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    prefix: Prefix = None,
    cursor: Cursor = None,
    limit: KeysLimit = None,
    keys_only: KeysOnly = None,
    if_match: ListIfMatch = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[KeysPage]:
    # The name alone lists; with a trailing slash it names an empty key: 422.
    if asset.key is not None:
        valid_key(asset.key, states.limits, KEY_LOC)
    return await _asset_keys(request, asset, states, if_match, if_none_match)


async def _asset_keys(
    request: AnyRequest,
    asset: AssetAddress,
    states: States,
    if_match: str | None,
    if_none_match: str | None,
) -> Response[KeysPage]:
    """The asset's keys, as the query asks (read from it here: a name holding %2F routes to the key
    route, which has no listing parameters of its own)."""
    only_known(request, KEY_PARAMS)
    query = request.query_params
    if wants_events(request):
        return cast(
            "Response[KeysPage]", await watch_prefix(request, asset.scope, query.get("prefix"), states.limits)
        )
    ask = key_query(query.get("prefix"), query.get("cursor"), query.get("limit"), query.get("keys_only"))
    page = await states.list_keys(
        asset.scope, prefix=ask.prefix, cursor=ask.cursor, limit=ask.limit, keys_only=ask.keys_only
    )
    return checked_listing(if_match, if_none_match) or Response(keys_page(page))


@post(
    ASSET_PATH,
    tags=ASSET_TAGS,
    summary="Apply a batch of gets, puts and deletes to an asset's state, all or nothing",
    description=ASSET_DOC + " " + BATCH_DOC,
    dependencies={**ASSET, openapi.BODY: openapi.request_body(BatchBody)},
    status_code=200,
    responses=openapi.batch_responses(execution=True),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="state_asset_batch",
)
async def batch_asset(
    request: AnyRequest, asset: NamedDependency[AssetAddress], states: States
) -> Response[BatchOut]:
    # The name alone; with a trailing slash it names an empty key (422), as a PUT's.
    if asset.key is not None:
        valid_key(asset.key, states.limits, KEY_LOC)
    return await _asset_batch(request, asset, states)


@post(ASSET_KEY_PATH, include_in_schema=False, dependencies=ASSET, status_code=200)
async def batch_asset_escaped(
    request: AnyRequest, asset: NamedDependency[AssetAddress], states: States, key: StateKey
) -> Response[BatchOut]:
    """A name holding ``%2F`` routes here (Litestar splits the decoded path); a key's address does too,
    and takes no POST."""
    if asset.key is not None:
        raise MethodNotAllowedException(headers={"Allow": "DELETE, GET, PUT"})
    return await _asset_batch(request, asset, states)


async def _asset_batch(request: AnyRequest, asset: AssetAddress, states: States) -> Response[BatchOut]:
    operations = await read_batch(request)
    return batch_response(await states.asset_batch(asset.scope, operations), operations)


@put(ASSET_PATH, include_in_schema=False, dependencies=ASSET)
async def put_asset_no_key(asset: NamedDependency[AssetAddress], states: States) -> None:
    valid_key(asset.key, states.limits, KEY_LOC)


def handlers() -> list[HTTPRouteHandler]:
    """Every route under ``/execution/state``."""
    own = task_state_handlers("state", all_map_indices=True, allow_expired=False, tags=["Task State"])
    return [
        *own,
        get_asset_key,
        put_asset_key,
        delete_asset_key,
        clear_asset,
        list_asset_keys,
        put_asset_no_key,
        batch_asset,
        batch_asset_escaped,
    ]
