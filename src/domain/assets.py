"""Use cases for assets as Airflow's public API reads them: by integer id, listed with Airflow's filters,
with the tasks that declare them. (Their state is ``StateService``'s: an id only resolves to the name the
state lives under.)"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from stateport.domain.errors import NotFound, echo
from stateport.domain.models import MAX_ASSET_ID, Asset, AssetReference
from stateport.domain.ports import DagStore
from stateport.domain.queries import AssetField, AssetQuery, Page, complete_order
from stateport.domain.values import MAX_PAGE, check_page, check_pattern, check_search, check_terms


class AssetCatalog:
    """The registered assets, read by id and listed."""

    def __init__(self, dags: DagStore) -> None:
        self.dags = dags

    async def get_asset(self, asset_id: int) -> Asset:
        """Airflow's ``get_asset``: the asset with that id; NotFound in Airflow's words otherwise."""
        asset = await self.dags.get_asset_by_id(asset_id) if 1 <= asset_id <= MAX_ASSET_ID else None
        if asset is None:
            raise NotFound(f"The Asset with ID: `{echo(str(asset_id))}` was not found")
        return asset

    async def list_assets(self, query: AssetQuery) -> Page[Asset]:
        """Airflow's ``get_assets``: a page of assets, ordered as asked, then by id."""
        check_page(query.limit, query.offset, max_limit=MAX_PAGE)
        for field, text in (
            ("name_pattern", query.name_pattern),
            ("name_prefix_pattern", query.name_prefix_pattern),
            ("uri_pattern", query.uri_pattern),
            ("uri_prefix_pattern", query.uri_prefix_pattern),
        ):
            if text is not None:
                check_pattern(text, field)
        check_terms(len(query.dag_ids), "dag_ids")
        for dag_id in query.dag_ids:
            check_search(dag_id, "dag_ids")
        order = complete_order(query.order_by, AssetField.ID)
        return await self.dags.list_assets(msgspec.structs.replace(query, order_by=order))

    async def references(self, assets: Sequence[Asset]) -> dict[int, list[AssetReference]]:
        """The tasks of current DAG versions that declare each asset (Airflow's ``consuming_tasks``: the
        inlets, ``producing_tasks``: the outlets), by asset id; an asset no task declares has none."""
        found: dict[int, list[AssetReference]] = {asset.id: [] for asset in assets}
        for reference in await self.dags.asset_references([asset.id for asset in assets]):
            found[reference.asset_id].append(reference)
        return found
