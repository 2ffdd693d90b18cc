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

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Response, Router, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from msgspec import Meta, Raw, Struct

from stateport.domain.errors import VersionMismatch
from stateport.domain.models import AssetScope, StateEntry, TaskScope
from stateport.domain.ports import TokenClaims
from stateport.http import openapi
from stateport.http.errors import RequestInvalid, decode_body
from stateport.http.params import (
    MAX_INT32,
    AllMapIndices,
    AssetName,
    ClearIfMatch,
    ClearIfNoneMatch,
    DagId,
    IfMatch,
    IfNoneMatch,
    IfNoneMatchRead,
    Limit,
    Offset,
    RunId,
    StateKey,
    TaskId,
    path,
    query,
)
from stateport.http.paths import raw_address
from stateport.http.providers import SERVICE_PROVIDERS, AnyRequest, AppServices, States, api_caller
from stateport.http.queries import bool_param
from stateport.http.schemas import AwareDatetime, JsonValue
from stateport.http.state_io import etag, not_modified, precondition, unconditional, valid_key

SCOPE = "state:admin"
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,30})")
TAGS = ["State (raw admin)"]
TASK_DOC = (
    "No check that a task instance exists. Percent-encode `/` inside the dag, run and task ids as `%2F`; "
    "the key is the rest of the path and may contain `/`."
)
ASSET_DOC = "No check that the asset exists. Percent-encode `/` inside the name as `%2F`."


class AdminPutBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT`` of a raw entry. ``value`` stays JSON text; ``if_version`` 0 means "must be absent"."""

    value: JsonValue
    expires_at: AwareDatetime | None = None
    if_version: Annotated[int, Meta(ge=0)] | None = None


class EntryOut(Struct, frozen=True, kw_only=True):
    key: str
    value: JsonValue
    version: int
    updated_at: datetime
    expires_at: datetime | None


class CapabilitiesOut(Struct, frozen=True, kw_only=True):
    """What the server's store guarantees, so a remote client can declare the same."""

    atomic_versions: bool
    atomic_clear: bool
    native_expiry: bool
    conditional_delete: bool


class EntriesPage(Struct, frozen=True, kw_only=True):
    entries: list[EntryOut]
    total_entries: int


class Deleted(Struct, frozen=True, kw_only=True):
    deleted: bool


class Cleared(Struct, frozen=True, kw_only=True):
    cleared: int


class Purged(Struct, frozen=True, kw_only=True):
    purged: int


_put_decoder = msgspec.json.Decoder(AdminPutBody)
KEY_LOC: list[str | int] = ["path", "key"]
ETAG = ResponseHeader(name="ETag", description='The entry\'s version, `"<n>"`', documentation_only=True)


def _entry_json(entry: StateEntry) -> Response[EntryOut]:
    """An entry, with its version as the ``ETag`` the other state routes send."""
    return Response(_out(entry), headers={"ETag": etag(entry.version)})


def _if_version(if_match: str | None, if_none_match: str | None, body_version: int | None) -> int | None:
    """The precondition of a PUT: the body's ``if_version`` and/or the ``If-Match``/``If-None-Match`` header.

    Both must hold when both are sent, so two different versions can never both match (412).
    """
    header_version = precondition(if_match, if_none_match)
    if header_version is None:
        return body_version
    if body_version is not None and body_version != header_version:
        raise VersionMismatch(f"if_version {body_version} and the header's version {header_version} differ")
    return header_version


def _out(entry: StateEntry) -> EntryOut:
    # Raw embeds the stored bytes as they are: the value is never decoded on the way out.
    return EntryOut(
        key=entry.key,
        value=Raw(entry.value),
        version=entry.version,
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )


def _int(raw: str | None, name: str, loc: str, default: int, *, ge: int, le: int | None = None) -> int:
    if raw is None:
        return default
    # Written plainly: int() would also take "+1", "01", " 1" and "1_0", so one entry had many addresses.
    if _INTEGER.fullmatch(raw) is None:
        raise RequestInvalid.one("int_parsing", [loc, name], f"{name} must be an integer", raw)
    value = int(raw)
    if value < ge or (le is not None and value > le):
        bound = f"{ge}..{le}" if le is not None else f">= {ge}"
        raise RequestInvalid.one("value_error", [loc, name], f"{name} must be {bound}", raw)
    return value


def _segment(value: str, name: str) -> str:
    if not value:
        raise RequestInvalid.one(
            "string_too_short", ["path", name], "String should have at least 1 character", ""
        )
    return value


class Address:
    """A scope as the raw path names it, and the key if the path has one (None: the whole scope)."""

    __slots__ = ("key", "scope")

    def __init__(self, scope: AssetScope | TaskScope, key: str | None) -> None:
        self.scope = scope
        self.key = key


def _task(request: AnyRequest, states: States) -> Address:
    (dag_id, run_id, task_id, map_index), key = raw_address(request.scope, 4)
    scope = TaskScope(
        dag_id=_segment(dag_id, "dag_id"),
        run_id=_segment(run_id, "run_id"),
        task_id=_segment(task_id, "task_id"),
        map_index=_int(_segment(map_index, "map_index"), "map_index", "path", -1, ge=-1),
    )
    return Address(scope, key)


def _asset(request: AnyRequest, states: States) -> Address:
    (name,), key = raw_address(request.scope, 1)
    return Address(AssetScope(name=_segment(name, "name")), key)


async def _read(
    states: States,
    address: NamedDependency[Address],
    limit: str | None,
    offset: str | None,
    if_none_match: str | None,
) -> Response[Any]:
    if address.key is None:
        page_size = _int(limit, "limit", "query", 100, ge=1, le=1000)
        skip = _int(offset, "offset", "query", 0, ge=0)
        page = await states.list_entries(address.scope, limit=page_size, offset=skip)
        return not_modified(if_none_match, None) or Response(
            EntriesPage(entries=[_out(e) for e in page.entries], total_entries=page.total)
        )
    entry = await states.get(address.scope, valid_key(address.key, states.limits, KEY_LOC))
    return not_modified(if_none_match, entry.version) or _entry_json(entry)


async def _write(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    if_match: str | None,
    if_none_match: str | None,
) -> Response[EntryOut]:
    key = valid_key(address.key, states.limits, KEY_LOC)
    body: AdminPutBody = decode_body(_put_decoder, await request.body())
    if_version = _if_version(if_match, if_none_match, body.if_version)
    entry = await states.put(
        address.scope, key, bytes(body.value), expires_at=body.expires_at, if_version=if_version
    )
    return _entry_json(entry)


async def _remove(
    states: States,
    address: NamedDependency[Address],
    all_map_indices: str | None,
    if_match: str | None,
    if_none_match: str | None,
) -> Response[Any]:
    if address.key is None:
        widen = bool_param(all_map_indices, "all_map_indices")
        unconditional(if_match, if_none_match)
        return Response(Cleared(cleared=await states.clear(address.scope, all_map_indices=widen)))
    key = valid_key(address.key, states.limits, KEY_LOC)
    deleted = await states.delete(address.scope, key, if_version=precondition(if_match, if_none_match))
    return Response(Deleted(deleted=deleted))


# Every route: the API token (state:admin), then the address read from the raw path.
CALLER = {"caller": api_caller(SCOPE)}
TASK = {**CALLER, "address": Provide(_task, sync_to_thread=False)}
ASSET = {**CALLER, "address": Provide(_asset, sync_to_thread=False)}
COMMON: dict[str, Any] = {
    "tags": TAGS,
    "security": openapi.API_SECURITY,
    "operation_class": openapi.StateportOperation,
}
READ = openapi.public_responses(304, 404)
WRITE = openapi.public_responses(*openapi.WITH_BODY, 412)
REMOVE = openapi.public_responses(412)
BatchSize = Annotated[
    str | None,
    query(
        "batch_size",
        "Entries deleted per batch, 1..100000.",
        type="integer",
        minimum=1,
        maximum=100_000,
        default=1000,
    ),
]

# --- task scopes ----------------------------------------------------------------------------------------

TASK_SCOPE = "/task/{dag_id:str}/{run_id:str}/{task_id:str}/{map_index:str}"
TASK_KEY = TASK_SCOPE + "/{key:path}"
MapIndexSegment = Annotated[
    str,
    path(
        "The map index, -1 (unmapped) to 2^31-1, written plainly (no `+`, no leading zeros).",
        type="integer",
        minimum=-1,
        maximum=MAX_INT32,
    ),
]


@get(
    TASK_SCOPE,
    summary="List a task scope (limit, offset)",
    description=TASK_DOC,
    dependencies=TASK,
    responses=openapi.public_responses(304),
    **COMMON,
)
async def list_task(
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
    limit: Limit = None,
    offset: Offset = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[EntriesPage]:
    return await _read(states, address, limit, offset, if_none_match)


@get(
    TASK_KEY,
    summary="Read a key of a task scope",
    description=TASK_DOC,
    dependencies=TASK,
    response_headers=[ETAG],
    responses=READ,
    **COMMON,
)
async def get_task(
    states: States,
    address: NamedDependency[Address],
    dag_id: DagId,
    run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexSegment,
    key: StateKey,
    if_none_match: IfNoneMatchRead = None,
) -> Response[EntryOut]:
    return await _read(states, address, None, None, if_none_match)


@put(
    TASK_KEY,
    summary="Write a key of a task scope; answers the entry",
    description=TASK_DOC,
    dependencies={**TASK, openapi.BODY: openapi.request_body(AdminPutBody)},
    response_headers=[ETAG],
    responses=WRITE,
    **COMMON,
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
) -> Response[EntryOut]:
    return await _write(request, states, address, if_match, if_none_match)


@delete(
    TASK_KEY,
    summary="Delete a key of a task scope",
    description=TASK_DOC,
    status_code=200,
    dependencies=TASK,
    responses=REMOVE,
    **COMMON,
)
async def delete_task(
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
    return await _remove(states, address, None, if_match, if_none_match)


@delete(
    TASK_SCOPE,
    summary="Clear a task scope (all_map_indices=true: every map index)",
    description=TASK_DOC,
    status_code=200,
    dependencies=TASK,
    responses=REMOVE,
    **COMMON,
)
async def clear_task(
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
    return await _remove(states, address, all_map_indices, if_match, if_none_match)


# Addresses with fewer segments (422 naming the missing one), and a PUT without a key (422).
SHORT = [
    "/task/{dag_id:str}",
    "/task/{dag_id:str}/{run_id:str}",
    "/task/{dag_id:str}/{run_id:str}/{task_id:str}",
]


@get(SHORT, include_in_schema=False, dependencies=TASK)
async def get_task_short(states: States, address: NamedDependency[Address]) -> None:
    raise AssertionError("unreachable: a short address is a 422")  # pragma: no cover


@put([*SHORT, TASK_SCOPE], include_in_schema=False, dependencies=TASK)
async def put_task_no_key(states: States, address: NamedDependency[Address]) -> None:
    valid_key(address.key, states.limits, KEY_LOC)


@delete(SHORT, include_in_schema=False, status_code=200, dependencies=TASK)
async def delete_task_short(states: States, address: NamedDependency[Address]) -> None:
    raise AssertionError("unreachable: a short address is a 422")  # pragma: no cover


# --- asset scopes ---------------------------------------------------------------------------------------

ASSET_SCOPE = "/asset/{name:str}"
ASSET_KEY = ASSET_SCOPE + "/{key:path}"


@get(
    ASSET_SCOPE,
    summary="List an asset scope (limit, offset)",
    description=ASSET_DOC,
    dependencies=ASSET,
    responses=openapi.public_responses(304),
    **COMMON,
)
async def list_asset(
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    limit: Limit = None,
    offset: Offset = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[EntriesPage]:
    return await _read(states, address, limit, offset, if_none_match)


@get(
    ASSET_KEY,
    summary="Read a key of an asset scope",
    description=ASSET_DOC,
    dependencies=ASSET,
    response_headers=[ETAG],
    responses=READ,
    **COMMON,
)
async def get_asset(
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    key: StateKey,
    if_none_match: IfNoneMatchRead = None,
) -> Response[EntryOut]:
    return await _read(states, address, None, None, if_none_match)


@put(
    ASSET_KEY,
    summary="Write a key of an asset scope; answers the entry",
    description=ASSET_DOC,
    dependencies={**ASSET, openapi.BODY: openapi.request_body(AdminPutBody)},
    response_headers=[ETAG],
    responses=WRITE,
    **COMMON,
)
async def put_asset(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[EntryOut]:
    return await _write(request, states, address, if_match, if_none_match)


@delete(
    ASSET_KEY,
    summary="Delete a key of an asset scope",
    description=ASSET_DOC,
    status_code=200,
    dependencies=ASSET,
    responses=REMOVE,
    **COMMON,
)
async def delete_asset(
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[Deleted]:
    return await _remove(states, address, None, if_match, if_none_match)


@delete(
    ASSET_SCOPE,
    summary="Clear an asset scope",
    description=ASSET_DOC,
    status_code=200,
    dependencies=ASSET,
    responses=REMOVE,
    **COMMON,
)
async def clear_asset(
    states: States,
    address: NamedDependency[Address],
    name: AssetName,
    all_map_indices: AllMapIndices = None,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> Response[Cleared]:
    return await _remove(states, address, all_map_indices, if_match, if_none_match)


@put(ASSET_SCOPE, include_in_schema=False, dependencies=ASSET)
async def put_asset_no_key(states: States, address: NamedDependency[Address]) -> None:
    valid_key(address.key, states.limits, KEY_LOC)


# --- the whole store ------------------------------------------------------------------------------------


@post(
    "/purge",
    summary="Delete expired entries of every scope (batch_size)",
    status_code=200,
    dependencies=CALLER,
    responses=openapi.public_responses(),
    **COMMON,
)
async def purge(states: States, batch_size: BatchSize = None) -> Purged:
    size = _int(batch_size, "batch_size", "query", 1000, ge=1, le=100_000)
    return Purged(purged=await states.purge_expired(batch_size=size))


@get(
    "/capabilities",
    summary="What the server's state store guarantees",
    dependencies=CALLER,
    responses=openapi.public_responses(),
    **COMMON,
)
async def capabilities(caller: NamedDependency[TokenClaims], services: AppServices) -> CapabilitiesOut:
    caps = services.state_store.capabilities
    return CapabilitiesOut(
        atomic_versions=caps.atomic_versions,
        atomic_clear=caps.atomic_clear,
        native_expiry=caps.native_expiry,
        conditional_delete=caps.conditional_delete,
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
        purge,
        capabilities,
    ],
)
