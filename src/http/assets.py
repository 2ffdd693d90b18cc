"""The asset registry of the public API, Airflow 3.3.2's ``AssetApi``: ``GET /api/v2/assets`` and
``GET /api/v2/assets/<asset_id>``, scope ``runs:read``.

Assets come from the inlets and outlets of registered DAGs; each has a stable integer id, which the asset
state routes (``stateport.http.asset_state``) take too.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import QueryParameter

from stateport.domain.queries import MAX_SORT_KEYS, AssetField, AssetQuery, parse_order
from stateport.http import openapi
from stateport.http.asset_responses import AssetCollectionResponse, AssetResponse, asset_response
from stateport.http.asset_state import asset_id_of
from stateport.http.listing import AirflowLimit, AirflowOffset, airflow_page
from stateport.http.params import AssetId, query
from stateport.http.providers import Assets
from stateport.http.public import common, scoped
from stateport.http.queries import bool_param

SCOPE = "runs:read"
TAGS = ["Asset"]
# Airflow 3.3.2's meanings (stateport.domain.patterns): `|` separates terms any of which matches, `~` is all.
SUBSTRING_DOC = "Case-insensitive substring match (SQL `ILIKE` of `%term%`; `%`, `_` wildcards, `\\` escapes)"
PREFIX_DOC = "Case-sensitive prefix match (trailing characters that are not alphanumeric are dropped)"


def _pattern(name: str, how: str, of: str) -> Any:
    return query(name, f"{how} on the {of}; `|` between terms, `~` for every asset.", type="string")


NamePattern = Annotated[str | None, _pattern("name_pattern", SUBSTRING_DOC, "name")]
NamePrefixPattern = Annotated[str | None, _pattern("name_prefix_pattern", PREFIX_DOC, "name")]
UriPattern = Annotated[str | None, _pattern("uri_pattern", SUBSTRING_DOC, "uri (the name when none)")]
UriPrefixPattern = Annotated[
    str | None, _pattern("uri_prefix_pattern", PREFIX_DOC, "uri (the name when none)")
]
DagIds = Annotated[
    list[str] | None,
    QueryParameter(
        name="dag_ids",
        required=False,
        description="Assets a task of one of these DAGs' current versions reads or writes (repeat the key, "
        "or one value of comma-separated ids).",
        # An array, not Litestar's oneOf of an array and null: a query parameter is absent, never null.
        schema_extra={"oneOf": None, "type": "array", "items": {"type": "string"}},
    ),
]
OnlyActive = Annotated[
    str | None,
    query(
        "only_active",
        "true (the default): only assets some DAG's current version declares.",
        type="boolean",
        default=True,
    ),
]
OrderBy = Annotated[
    list[str] | None,
    QueryParameter(
        name="order_by",
        required=False,
        description="Repeatable: `id` (the default), `name`, `uri`, `created_at`, `updated_at`, `-` in front "
        "for descending; then by id. Another field, or more than ten, is 400.",
        schema_extra={"oneOf": None, "type": "array", "items": {"type": "string"}, "maxItems": MAX_SORT_KEYS},
    ),
]


@get(
    "/assets",
    tags=TAGS,
    summary="List assets (scope runs:read)",
    description="Airflow's `get_assets`. An asset has no schedules, aliases, watchers or events here.",
    dependencies=scoped(SCOPE),
    responses=openapi.public_responses(400),
    **common(SCOPE),
    operation_id="get_assets",
)
async def get_assets(
    assets: Assets,
    limit: AirflowLimit = None,
    offset: AirflowOffset = None,
    name_pattern: NamePattern = None,
    name_prefix_pattern: NamePrefixPattern = None,
    uri_pattern: UriPattern = None,
    uri_prefix_pattern: UriPrefixPattern = None,
    dag_ids: DagIds = None,
    only_active: OnlyActive = None,
    order_by: OrderBy = None,
) -> AssetCollectionResponse:
    size, skip = airflow_page(limit, offset)
    found = AssetQuery(
        name_pattern=name_pattern,
        name_prefix_pattern=name_prefix_pattern,
        uri_pattern=uri_pattern,
        uri_prefix_pattern=uri_prefix_pattern,
        dag_ids=frozenset(_dag_ids(dag_ids)),
        only_active=only_active is None or bool_param(only_active, "only_active"),
        order_by=parse_order(order_by or (), AssetField),
        limit=size,
        offset=skip,
    )
    # A filter the stores cannot compare (NUL, a lone surrogate, too long) is a 422 on its query parameter
    # (stateport.http.errors.QUERY_FIELDS).
    page = await assets.list_assets(found)
    references = await assets.references(page.items)
    return AssetCollectionResponse(
        assets=[asset_response(a, references[a.id]) for a in page.items], total_entries=page.total
    )


def _dag_ids(values: list[str] | None) -> list[str]:
    """As Airflow reads them: repeated keys, or a single value of comma-separated ids."""
    if values and len(values) == 1 and "," in values[0]:
        return values[0].split(",")
    return values or []


@get(
    "/assets/{asset_id:str}",
    tags=TAGS,
    summary="Read an asset (scope runs:read)",
    description="Airflow's `get_asset`: 404 for an id no asset has, 422 for an id that is not an integer.",
    dependencies=scoped(SCOPE),
    responses=openapi.public_responses(404),
    **common(SCOPE),
    operation_id="get_asset",
)
async def get_asset(assets: Assets, asset_id: AssetId) -> AssetResponse:
    asset = await assets.get_asset(asset_id_of(asset_id))
    references = await assets.references([asset])
    return asset_response(asset, references[asset.id])


def handlers() -> list[HTTPRouteHandler]:
    return [get_assets, get_asset]
