"""The operators' routes for an asset's state, Airflow 3.3.2's ``AssetStateStoreApi``:
``/api/v2/assets/<asset_id>/state-store[/<key>]``, scope ``state:admin``.

The asset is addressed by its integer id, as ``GET /api/v2/assets`` lists it and as Airflow addresses it;
the id only resolves to the name the state lives under. Nothing here reads a name: an asset named ``42`` is
never asset id 42. Operators address asset state by name through the raw admin routes
(``/api/v2/state-store/asset/<name>``) and the CLI (``stateport state ... --asset <name>``).
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Response, delete, get, put
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler

from stateport.domain.models import AssetScope
from stateport.http import openapi
from stateport.http.asset_responses import (
    AssetStateStoreCollectionResponse,
    AssetStateStoreResponse,
    asset_entry,
)
from stateport.http.errors import RequestInvalid
from stateport.http.listing import AirflowLimit, AirflowOffset, airflow_page, only_known
from stateport.http.params import (
    AssetId,
    ClearIfMatch,
    ClearIfNoneMatch,
    IfMatch,
    IfMatchRead,
    IfNoneMatch,
    IfNoneMatchRead,
    ListIfMatch,
    StateKey,
)
from stateport.http.paths import raw_address
from stateport.http.providers import AnyRequest, States
from stateport.http.public import (
    ASSET_STATE_TAGS,
    ETAG,
    KEY_LOC,
    STATE_ERRORS,
    common,
    scoped,
)
from stateport.http.schemas import AssetStateStoreBody
from stateport.http.state_io import (
    checked_listing,
    checked_read,
    decode_asset_put,
    etag,
    precondition,
    stored_response,
    unconditional,
    valid_key,
)
from stateport.http.state_keys import Prefix
from stateport.http.streamed_pages import each, streamed_page

ASSET_STATE = "/assets/{asset_id:str}/state-store"
ASSET_ID_LOC: list[str | int] = ["path", "asset_id"]
# An integer as Airflow's path parameter takes it: an optional sign, then digits (any number of them, up to
# what Python parses: an id past 2^31-1 names no asset, 404).
_INTEGER = re.compile(r"[+-]?[0-9]{1,4000}")
NOT_AN_ID = (
    "Input should be a valid integer, unable to parse string as an integer: assets are addressed by the "
    "integer id GET /api/v2/assets lists (by name: /api/v2/state-store/asset/<name>)"
)


def asset_id_of(raw: str) -> int:
    """The integer ``asset_id`` of a path, or a 422 naming it (FastAPI's ``int_parsing``)."""
    if _INTEGER.fullmatch(raw) is None:
        raise RequestInvalid.one("int_parsing", ASSET_ID_LOC, NOT_AN_ID, raw)
    return int(raw)


class AssetAddress:
    __slots__ = ("key", "scope")

    def __init__(self, scope: AssetScope, key: str | None) -> None:
        self.scope = scope
        self.key = key


async def _asset_address(
    request: AnyRequest, caller: NamedDependency[Any], states: States, asset_id: AssetId
) -> AssetAddress:
    # The key is read from the raw path (it may hold %2F); the id is read there too, as one segment.
    (raw_id, _), key = raw_address(request.scope, 2)
    return AssetAddress(await states.admin_asset_scope_by_id(asset_id_of(raw_id)), key)


ASSET = {**scoped("state:admin"), "asset": Provide(_asset_address)}
ASSET_DOC = "404 for an id no asset has (`Asset with id 7 not found`); 422 for an id that is not an integer."


@get(
    ASSET_STATE,
    tags=ASSET_STATE_TAGS,
    summary="List an asset's state (scope state:admin)",
    description=ASSET_DOC
    + " `prefix` (Stateport's): only keys starting with it, `total_entries` counting those. Any other query "
    "parameter is a 422.",
    dependencies=ASSET,
    responses=openapi.public_responses(304, 404, 412, 429),
    **common("state:admin"),
    operation_id="list_asset_state_store",
)
async def list_asset_state(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    limit: AirflowLimit = None,
    offset: AirflowOffset = None,
    prefix: Prefix = None,
    if_match: ListIfMatch = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[AssetStateStoreCollectionResponse]:
    only_known(request, ("limit", "offset", "prefix"))
    page_size, skip = airflow_page(limit, offset)  # Airflow's: default 50, more than 100 gives 100
    parts = await states.list_entries(asset.scope, limit=page_size, offset=skip, prefix=prefix or "")
    return checked_listing(if_match, if_none_match) or await streamed_page(
        request, "asset_state_store", parts, each(asset_entry)
    )


@get(
    ASSET_STATE + "/{key:path}",
    tags=ASSET_STATE_TAGS,
    summary="Read one key of an asset's state (scope state:admin)",
    description=ASSET_DOC,
    dependencies=ASSET,
    response_headers=[ETAG],
    responses=openapi.public_responses(304, 404, 412),
    **common("state:admin"),
    operation_id="get_asset_state_store",
)
async def get_asset_state(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatchRead = None,
    if_none_match: IfNoneMatchRead = None,
) -> Response[AssetStateStoreResponse]:
    only_known(request, ())
    entry = await states.get(asset.scope, valid_key(asset.key, states.limits, KEY_LOC))
    return checked_read(if_match, if_none_match, entry) or Response(
        asset_entry(entry), headers={"ETag": etag(entry.version)}
    )


@put(
    ASSET_STATE + "/{key:path}",
    tags=ASSET_STATE_TAGS,
    summary="Write one key of an asset's state (scope state:admin)",
    description=ASSET_DOC
    + " `expires_at` is Stateport's (Airflow's body has only `value`): left out or null, never.",
    status_code=204,
    dependencies={**ASSET, openapi.BODY: openapi.request_body(AssetStateStoreBody)},
    response_headers=[ETAG],
    responses=openapi.public_responses(*openapi.WITH_BODY, 404, 412),
    **common("state:admin"),
    operation_id="set_asset_state_store",
)
async def put_asset_state(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response[None]:
    only_known(request, ())  # as its listing and the task state routes: a misspelt parameter is refused
    valid = valid_key(asset.key, states.limits, KEY_LOC)
    value, expires_at = decode_asset_put(await request.body(), states.limits)
    entry = await states.put(
        asset.scope, valid, value, expires_at=expires_at, if_version=precondition(if_match, if_none_match)
    )
    return stored_response(entry)


@delete(
    ASSET_STATE + "/{key:path}",
    tags=ASSET_STATE_TAGS,
    summary="Delete one key of an asset's state (scope state:admin)",
    description=ASSET_DOC + " 204 for a missing key too.",
    dependencies=ASSET,
    responses=STATE_ERRORS,
    **common("state:admin"),
    operation_id="delete_asset_state_store",
)
async def delete_asset_state(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    key: StateKey,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> None:
    only_known(request, ())
    valid = valid_key(asset.key, states.limits, KEY_LOC)
    await states.delete(asset.scope, valid, if_version=precondition(if_match, if_none_match))


@delete(
    ASSET_STATE,
    tags=ASSET_STATE_TAGS,
    summary="Delete every key of an asset's state (scope state:admin)",
    description=ASSET_DOC,
    dependencies=ASSET,
    responses=STATE_ERRORS,
    **common("state:admin"),
    operation_id="clear_asset_state_store",
)
async def clear_asset_state(
    request: AnyRequest,
    asset: NamedDependency[AssetAddress],
    states: States,
    if_match: ClearIfMatch = None,
    if_none_match: ClearIfNoneMatch = None,
) -> None:
    # An outsider's find: ?foo=1 (or a misspelt flag) was passed over and the asset cleared.
    only_known(request, ())
    if asset.key is not None:
        valid_key(asset.key, states.limits, KEY_LOC)
    unconditional(if_match, if_none_match)
    await states.clear(asset.scope)


def handlers() -> list[HTTPRouteHandler]:
    """In the order the OpenAPI document lists them."""
    return [list_asset_state, get_asset_state, put_asset_state, delete_asset_state, clear_asset_state]
