"""Raw state admin routes (``/api/v2/state-store/...``): the ``StateStore`` port over HTTP, 1:1.

For operators (backup and restore, moving state between backends) and for ``RestStateStore``: an API token
with the ``state:admin`` scope addresses any scope directly, with no check that a task instance or an asset
exists there. Unlike the operators' routes of the public API (``/api/v2/dags/.../state-store``), these
answer with the whole entry (version included) and take ``if_version`` in the body.

Addresses are path segments: ``task/<dag_id>/<run_id>/<task_id>/<map_index>[/<key>]`` and
``asset/<name>[/<key>]``. Each segment is read from the raw path (``stateport.http.paths``), so ``%2F``
keeps a ``/`` inside its segment; the key is the rest of the path and may contain ``/``.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from litestar import Response, Router, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.exceptions import MethodNotAllowedException

from stateport.domain.ports import TokenClaims
from stateport.http import openapi
from stateport.http.errors import NoFields, RequestInvalid, refuse_body
from stateport.http.listing import only_known
from stateport.http.params import (
    AllMapIndices,
    AssetName,
    BatchSize,
    ClearIfMatch,
    ClearIfNoneMatch,
    DagId,
    IfMatch,
    IfMatchRead,
    IfNoneMatch,
    IfNoneMatchRead,
    Limit,
    ListIfMatch,
    MapIndexSegment,
    Offset,
    RunId,
    StateKey,
    TaskId,
    query,
)
from stateport.http.providers import SERVICE_PROVIDERS, AnyRequest, AppServices, States, api_caller
from stateport.http.queries import plain_int
from stateport.http.state_admin_io import (
    KEY_LOC,
    Address,
    AdminPutBody,
    CapabilitiesOut,
    Cleared,
    Deleted,
    EntriesPage,
    Purged,
    RawEntryOut,
    asset_address,
    read_or_watch,
    remove_address,
    remove_routed_key,
    task_address,
    write_key,
)
from stateport.http.state_batch import BatchBody, BatchOut, batch_response, read_batch
from stateport.http.state_io import valid_key
from stateport.http.state_keys import KeysOnly, KeysPage, Prefix
from stateport.http.state_watch import LastEventId, Wait

# The raw listings page by offset (with a total) unless ``cursor`` is sent: then as the key listings do.
AdminCursor = Annotated[
    str | None,
    query(
        "cursor",
        'Cursor paging: `{"entries", "next_cursor"}` (no total; `keys_only` allowed), from the first page '
        "when empty, else from where the page that returned this `next_cursor` ended. Not with `offset`.",
        type="string",
    ),
]

SCOPE = "state:admin"
TAGS = ["State (raw admin)"]
TASK_DOC = (
    "No check that a task instance exists. Percent-encode `/` inside the dag, run and task ids as `%2F`; "
    "the key is the rest of the path and may contain `/`."
)
ASSET_DOC = "No check that the asset exists. Percent-encode `/` inside the name as `%2F`."
WATCH_DOC = (
    'Long-poll: with `?wait=S` and `If-None-Match: "<version>"` (`"0"`: the key is missing) the answer '
    "(the entry) comes as soon as the key is at another version, 404 once deleted or expired, else 304 "
    "after S seconds (at most 300). Stream: with `Accept: text/event-stream`, one Server-Sent Event per "
    "change (`event: put` or `delete`, `id:` the version, 0 when missing), resumed from `Last-Event-ID`; "
    "as the Execution key routes. Any other query parameter, or one sent twice, is a 422."
)
PREFIX_WATCH_DOC = (
    "With `Accept: text/event-stream` (and optionally `prefix`): one Server-Sent Event per change of a key "
    "under the prefix, as the Execution listing streams them (no paging parameters)."
)
ETAG = ResponseHeader(name="ETag", description='The entry\'s version, `"<n>"`', documentation_only=True)

# Every route: the API token (state:admin), then the address read from the raw path.
CALLER = {"caller": api_caller(SCOPE)}
TASK = {**CALLER, "address": Provide(task_address, sync_to_thread=False)}
ASSET = {**CALLER, "address": Provide(asset_address, sync_to_thread=False)}
COMMON: dict[str, Any] = {
    "tags": TAGS,
    "security": openapi.API_SECURITY,
    "operation_class": openapi.StateportOperation,
}
# The reads that also watch (a key, or a scope's prefix) document their event stream.
WATCHES: dict[str, Any] = {**COMMON, "operation_class": openapi.WatchOperation}
READ = openapi.public_responses(304, 404, 412, 429)
WRITE = openapi.public_responses(*openapi.WITH_BODY, 412)
REMOVE = openapi.public_responses(412)

# --- task scopes ----------------------------------------------------------------------------------------

TASK_SCOPE = "/task/{dag_id:str}/{run_id:str}/{task_id:str}/{map_index:str}"
TASK_KEY = TASK_SCOPE + "/{key:path}"


@get(
    TASK_SCOPE,
    summary="List a task scope (limit, offset, prefix; or cursor paging); or watch a prefix",
    description=TASK_DOC + " " + PREFIX_WATCH_DOC,
    dependencies=TASK,
    responses=openapi.public_responses(304, 412, 429),
    **WATCHES,
    operation_id="list_raw_task_state",
)
async def list_task(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
    limit: Limit = None,
    offset: Offset = None,
    prefix: Prefix = None,
    cursor: AdminCursor = None,
    keys_only: KeysOnly = None,
    if_match: ListIfMatch = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[EntriesPage | KeysPage]:
    return await read_or_watch(request, states, address, if_match, if_none_match, None, None)


@get(
    TASK_KEY,
    summary="Read or watch a key of a task scope (long-poll with `wait`, or `Accept: text/event-stream`)",
    description=TASK_DOC + " " + WATCH_DOC,
    dependencies=TASK,
    response_headers=[ETAG],
    responses=READ,
    **WATCHES,
    operation_id="get_raw_task_state",
)
async def get_task(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
    key: StateKey,
    if_match: IfMatchRead = None,
    if_none_match: IfNoneMatchRead = None,
    wait: Wait = None,
    last_event_id: LastEventId = None,
) -> Response[RawEntryOut]:
    # The raw path decides: a segment holding %2F routes here without a key, and then lists.
    return await read_or_watch(request, states, address, if_match, if_none_match, wait, last_event_id)


@put(
    TASK_KEY,
    summary="Write a key of a task scope; answers the entry",
    description=TASK_DOC,
    dependencies={**TASK, openapi.BODY: openapi.request_body(AdminPutBody)},
    response_headers=[ETAG],
    responses=WRITE,
    **COMMON,
    operation_id="put_raw_task_state",
)
async def put_task(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[RawEntryOut]:
    return await write_key(request, states, address, if_match, if_none_match)


@delete(
    TASK_KEY,
    summary="Delete a key of a task scope",
    description=TASK_DOC,
    status_code=200,
    dependencies=TASK,
    responses=REMOVE,
    **COMMON,
    operation_id="delete_raw_task_state",
)
async def delete_task(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[Deleted]:
    return await remove_routed_key(request, states, address, if_match, if_none_match, takes_flag=True)


@delete(
    TASK_SCOPE,
    summary="Clear a task scope (all_map_indices=true: every map index)",
    description=TASK_DOC,
    status_code=200,
    dependencies=TASK,
    responses=REMOVE,
    **COMMON,
    operation_id="clear_raw_task_state",
)
async def clear_task(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
    all_map_indices: AllMapIndices = None,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> Response[Cleared]:
    return await remove_address(
        request, states, address, all_map_indices, if_match, if_none_match, known=("all_map_indices",)
    )


def unroutable() -> NoReturn:
    """What an address the route handlers above refused (a short one, a PUT without a key) would do had
    its checks passed: they cannot while each segment is one Litestar routed (``paths.raw_address``), but
    a PUT here answered 200 storing nothing and a GET 500 when one was not (an outsider's find)."""
    raise RequestInvalid.one("value_error", ["path"], "the path names no key of a scope")


# Addresses with fewer segments (422 naming the missing one), and a PUT without a key (422).
SHORT = [
    "/task/{dag_id:str}",
    "/task/{dag_id:str}/{run_id:str}",
    "/task/{dag_id:str}/{run_id:str}/{task_id:str}",
]


@get(SHORT, include_in_schema=False, dependencies=TASK)
async def get_task_short(states: States, address: NamedDependency[Address]) -> None:
    unroutable()


@put([*SHORT, TASK_SCOPE], include_in_schema=False, dependencies=TASK)
async def put_task_no_key(states: States, address: NamedDependency[Address]) -> None:
    valid_key(address.key, states.limits, KEY_LOC)
    unroutable()


@delete(SHORT, include_in_schema=False, status_code=200, dependencies=TASK)
async def delete_task_short(states: States, address: NamedDependency[Address]) -> None:
    unroutable()


# --- asset scopes ---------------------------------------------------------------------------------------

ASSET_SCOPE = "/asset/{name:str}"
ASSET_KEY = ASSET_SCOPE + "/{key:path}"


@get(
    ASSET_SCOPE,
    summary="List an asset scope (limit, offset, prefix; or cursor paging); or watch a prefix",
    description=ASSET_DOC + " " + PREFIX_WATCH_DOC,
    dependencies=ASSET,
    responses=openapi.public_responses(304, 412, 429),
    **WATCHES,
    operation_id="list_raw_asset_state",
)
async def list_asset(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    limit: Limit = None,
    offset: Offset = None,
    prefix: Prefix = None,
    cursor: AdminCursor = None,
    keys_only: KeysOnly = None,
    if_match: ListIfMatch = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[EntriesPage | KeysPage]:
    return await read_or_watch(request, states, address, if_match, if_none_match, None, None)


@get(
    ASSET_KEY,
    summary="Read or watch a key of an asset scope (long-poll with `wait`, or `Accept: text/event-stream`)",
    description=ASSET_DOC + " " + WATCH_DOC,
    dependencies=ASSET,
    response_headers=[ETAG],
    responses=READ,
    **WATCHES,
    operation_id="get_raw_asset_state",
)
async def get_asset(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    key: StateKey,
    if_match: IfMatchRead = None,
    if_none_match: IfNoneMatchRead = None,
    wait: Wait = None,
    last_event_id: LastEventId = None,
) -> Response[RawEntryOut]:
    # The raw path decides: a segment holding %2F routes here without a key, and then lists.
    return await read_or_watch(request, states, address, if_match, if_none_match, wait, last_event_id)


@put(
    ASSET_KEY,
    summary="Write a key of an asset scope; answers the entry",
    description=ASSET_DOC,
    dependencies={**ASSET, openapi.BODY: openapi.request_body(AdminPutBody)},
    response_headers=[ETAG],
    responses=WRITE,
    **COMMON,
    operation_id="put_raw_asset_state",
)
async def put_asset(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[RawEntryOut]:
    return await write_key(request, states, address, if_match, if_none_match)


@delete(
    ASSET_KEY,
    summary="Delete a key of an asset scope",
    description=ASSET_DOC,
    status_code=200,
    dependencies=ASSET,
    responses=REMOVE,
    **COMMON,
    operation_id="delete_raw_asset_state",
)
async def delete_asset(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[Deleted]:
    return await remove_routed_key(request, states, address, if_match, if_none_match, takes_flag=False)


@delete(
    ASSET_SCOPE,
    summary="Clear an asset scope",
    description=ASSET_DOC,
    status_code=200,
    dependencies=ASSET,
    responses=REMOVE,
    **COMMON,
    operation_id="clear_raw_asset_state",
)
async def clear_asset(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> Response[Cleared]:
    # An asset scope has no map index: all_map_indices is passed over (earlier RestStateStore versions send
    # it when asked to clear "every map index" of an asset), any other parameter is a 422.
    return await remove_address(
        request, states, address, None, if_match, if_none_match, known=("all_map_indices",)
    )


@put(ASSET_SCOPE, include_in_schema=False, dependencies=ASSET)
async def put_asset_no_key(states: States, address: NamedDependency[Address]) -> None:
    valid_key(address.key, states.limits, KEY_LOC)
    unroutable()


# --- batches: POST on the scope itself (a key always lies below it) -------------------------------------

BATCH_DOC = (
    "Up to 100 gets, puts and deletes of the scope, applied in order as one transaction, all or nothing "
    "(as `POST /execution/state/ti/{task_instance_id}`): 412 naming the `index` of the first operation "
    "whose `if_version` does not hold, 501 if the backend cannot batch atomically (S3)."
)
BATCH_RESPONSES = openapi.batch_responses(execution=False)


async def _batch(request: AnyRequest, states: States, address: Address) -> Response[BatchOut]:
    # A name or id holding %2F reaches the key template; a key's own address takes no POST.
    if address.key is not None:
        raise MethodNotAllowedException(headers={"Allow": "DELETE, GET, PUT"})
    operations = await read_batch(request)
    return batch_response(await states.batch(address.scope, operations), operations)


@post(
    TASK_SCOPE,
    summary="Apply a batch of gets, puts and deletes to a task scope, all or nothing",
    description=TASK_DOC + " " + BATCH_DOC,
    status_code=200,
    dependencies={**TASK, openapi.BODY: openapi.request_body(BatchBody)},
    responses=BATCH_RESPONSES,
    **COMMON,
    operation_id="batch_raw_task_state",
)
async def batch_task(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
) -> Response[BatchOut]:
    return await _batch(request, states, address)


@post(
    ASSET_SCOPE,
    summary="Apply a batch of gets, puts and deletes to an asset scope, all or nothing",
    description=ASSET_DOC + " " + BATCH_DOC,
    status_code=200,
    dependencies={**ASSET, openapi.BODY: openapi.request_body(BatchBody)},
    responses=BATCH_RESPONSES,
    **COMMON,
    operation_id="batch_raw_asset_state",
)
async def batch_asset(
    request: AnyRequest, states: States, address: NamedDependency[Address], name: AssetName
) -> Response[BatchOut]:
    return await _batch(request, states, address)


# Ids or names holding %2F route to the key templates (Litestar splits the decoded path): the raw path says
# whether the address is a scope (a batch) or a key (405).
@post(TASK_KEY, include_in_schema=False, status_code=200, dependencies=TASK)
async def batch_task_escaped(
    request: AnyRequest, states: States, address: NamedDependency[Address]
) -> Response[BatchOut]:
    return await _batch(request, states, address)


@post(ASSET_KEY, include_in_schema=False, status_code=200, dependencies=ASSET)
async def batch_asset_escaped(
    request: AnyRequest, states: States, address: NamedDependency[Address]
) -> Response[BatchOut]:
    return await _batch(request, states, address)


# --- the whole store ------------------------------------------------------------------------------------


@post(
    "/purge",
    summary="Delete expired entries of every scope (batch_size)",
    description="Takes no body (or `{}`): anything else is a 422.",
    status_code=200,
    dependencies={**CALLER, openapi.BODY: openapi.request_body(NoFields)},
    responses=openapi.public_responses(*openapi.WITH_BODY),
    **{**COMMON, "operation_class": openapi.OptionalBodyOperation},
    operation_id="purge_state",
)
async def purge(request: AnyRequest, states: States, batch_size: BatchSize = None) -> Purged:
    only_known(request, ("batch_size",))
    size = plain_int(batch_size, "batch_size", 1000, ge=1, le=100_000)
    refuse_body(await request.body())
    return Purged(purged=await states.purge_expired(batch_size=size))


@get(
    "/capabilities",
    summary="What the server's state store guarantees",
    dependencies=CALLER,
    responses=openapi.public_responses(),
    **COMMON,
    operation_id="get_state_capabilities",
)
async def capabilities(caller: NamedDependency[TokenClaims], services: AppServices) -> CapabilitiesOut:
    caps = services.state_store.capabilities
    return CapabilitiesOut(
        atomic_versions=caps.atomic_versions,
        atomic_clear=caps.atomic_clear,
        native_expiry=caps.native_expiry,
        conditional_delete=caps.conditional_delete,
        atomic_batch=caps.atomic_batch,
    )


state_admin_router = Router(
    "/api/v2/state-store",
    dependencies=SERVICE_PROVIDERS,
    route_handlers=[
        list_task,
        get_task,
        put_task,
        delete_task,
        clear_task,
        get_task_short,
        put_task_no_key,
        delete_task_short,
        list_asset,
        get_asset,
        put_asset,
        delete_asset,
        clear_asset,
        put_asset_no_key,
        batch_task,
        batch_asset,
        batch_task_escaped,
        batch_asset_escaped,
        purge,
        capabilities,
    ],
)
