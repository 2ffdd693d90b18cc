"""The operators' routes for an asset's state (``/api/v2/assets/<name>/state-store``), scope ``state:admin``.

The asset name is one path segment, read as sent: a name holding %2F has more segments once decoded, so
Litestar routes it to the key route or to the fallback routes, and the raw path decides what it is.
"""

from __future__ import annotations

from typing import Any

from litestar import Response, delete, get, put
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler
from msgspec import Struct

from stateport.domain.models import AssetScope
from stateport.http import openapi
from stateport.http.errors import RequestInvalid
from stateport.http.params import (
    AssetName,
    ClearIfMatch,
    ClearIfNoneMatch,
    IfMatch,
    IfNoneMatch,
    IfNoneMatchRead,
    Limit,
    Offset,
    StateKey,
)
from stateport.http.paths import raw_address
from stateport.http.providers import AnyRequest, States
from stateport.http.public import (
    ETAG,
    KEY_LOC,
    STATE_ERRORS,
    STATE_TAGS,
    common,
    entries,
    entry_response,
    limit_offset,
    scoped,
)
from stateport.http.schemas import StateEntryOut, StatePutBody
from stateport.http.state_io import (
    decode_put,
    not_modified,
    precondition,
    stored_response,
    unconditional,
    valid_key,
)

ASSET_STATE = "/assets/{name:str}/state-store"


class AssetStatePage(Struct, frozen=True, kw_only=True):
    asset_state_store: list[StateEntryOut]
    total_entries: int


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


ASSET = {**scoped("state:admin"), "asset": Provide(_asset_address)}
ASSET_DOC = "The asset name is one path segment (send `/` inside it as `%2F`); 404 for an unknown asset."


async def _read_asset(
    asset: NamedDependency[AssetAddress],
    states: States,
    limit: str | None,
    offset: str | None,
    if_none_match: str | None,
) -> Response[Any]:
    if asset.key is None:
        page_size, skip = limit_offset(limit, offset)
        page = await states.list_entries(asset.scope, limit=page_size, offset=skip)
        return not_modified(if_none_match, None) or Response(
            AssetStatePage(asset_state_store=entries(page), total_entries=page.total)
        )
    entry = await states.get(asset.scope, valid_key(asset.key, states.limits, KEY_LOC))
    return not_modified(if_none_match, entry.version) or entry_response(entry)


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
    **common("state:admin"),
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
    **common("state:admin"),
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
    **common("state:admin"),
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
    **common("state:admin"),
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
    **common("state:admin"),
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


def handlers() -> list[HTTPRouteHandler]:
    """In the order the OpenAPI document lists them; the fallbacks, out of it, come last."""
    return [
        list_asset_state,
        get_asset_state,
        put_asset_state,
        delete_asset_state,
        clear_asset_state,
        get_asset_fallback,
        put_asset_fallback,
        delete_asset_fallback,
    ]
