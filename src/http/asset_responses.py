"""The public API's asset answers in Airflow 3.3.2's models (``AssetResponse``, ``AssetStateStoreResponse``
and the models inside them), and how each is built from the domain's assets and state entries.

Stateport has no asset schedules, aliases, watchers or asset events: those fields are empty (or null where
Airflow allows it), never made up. Field sources: docs/dev/airflow-rest-gaps.md section 5.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from stateport.domain.models import Asset, AssetReference, AssetUse, StateEntry
from stateport.http.schemas import JsonValue

# Airflow's default asset group, which every Stateport asset is in.
ASSET_GROUP = "asset"


class DagScheduleAssetReference(Struct, frozen=True, kw_only=True):
    dag_id: str
    created_at: datetime
    updated_at: datetime


class TaskOutletAssetReference(Struct, frozen=True, kw_only=True):
    """A task of a DAG's current version that writes the asset (an outlet)."""

    dag_id: str
    task_id: str
    created_at: datetime
    updated_at: datetime


class TaskInletAssetReference(Struct, frozen=True, kw_only=True):
    """A task of a DAG's current version that reads the asset (an inlet)."""

    dag_id: str
    task_id: str
    created_at: datetime
    updated_at: datetime


class AssetAliasResponse(Struct, frozen=True, kw_only=True):
    id: int
    name: str
    group: str


class AssetWatcherResponse(Struct, frozen=True, kw_only=True):
    name: str
    trigger_id: int
    created_date: datetime


class LastAssetEventResponse(Struct, frozen=True, kw_only=True):
    id: int | None = None
    timestamp: datetime | None = None


class AssetResponse(Struct, frozen=True, kw_only=True):
    """Airflow's ``AssetResponse``. ``uri`` is the name when no uri was declared (every Airflow asset has
    one); ``updated_at`` the last registration of a DAG version declaring it."""

    id: int
    name: str
    uri: str
    group: str
    created_at: datetime
    updated_at: datetime
    scheduled_dags: list[DagScheduleAssetReference]
    producing_tasks: list[TaskOutletAssetReference]
    consuming_tasks: list[TaskInletAssetReference]
    aliases: list[AssetAliasResponse]
    watchers: list[AssetWatcherResponse]
    extra: dict[str, Any] | None = None
    last_asset_event: LastAssetEventResponse | None = None


class AssetCollectionResponse(Struct, frozen=True, kw_only=True):
    assets: list[AssetResponse]
    total_entries: int


class AssetStateStoreWriterKind(enum.StrEnum):
    TASK = "task"
    WATCHER = "watcher"
    API = "api"


class AssetStateStoreLastUpdatedBy(Struct, frozen=True, kw_only=True):
    kind: AssetStateStoreWriterKind
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None


class AssetStateStoreResponse(Struct, frozen=True, kw_only=True):
    """Airflow's ``AssetStateStoreResponse``. Who wrote last is not recorded (``last_updated_by`` null);
    ``expires_at`` is Stateport's (asset state written with an expiry through the raw admin or Execution
    API routes has one)."""

    key: str
    value: JsonValue
    updated_at: datetime
    expires_at: datetime | None
    last_updated_by: AssetStateStoreLastUpdatedBy | None = None


class AssetStateStoreCollectionResponse(Struct, frozen=True, kw_only=True):
    asset_state_store: list[AssetStateStoreResponse]
    total_entries: int


# Airflow answers ``{"id": null, "timestamp": null}`` for an asset without events, which every asset is here.
NO_EVENT = LastAssetEventResponse()


def asset_response(asset: Asset, references: Sequence[AssetReference]) -> AssetResponse:
    return AssetResponse(
        id=asset.id,
        name=asset.name,
        uri=asset.airflow_uri,
        group=ASSET_GROUP,
        extra={},
        created_at=asset.created_at,
        updated_at=asset.updated_at,
        scheduled_dags=[],
        producing_tasks=[
            TaskOutletAssetReference(
                dag_id=r.dag_id, task_id=r.task_id, created_at=r.created_at, updated_at=r.updated_at
            )
            for r in references
            if r.kind is AssetUse.OUTLET
        ],
        consuming_tasks=[
            TaskInletAssetReference(
                dag_id=r.dag_id, task_id=r.task_id, created_at=r.created_at, updated_at=r.updated_at
            )
            for r in references
            if r.kind is AssetUse.INLET
        ],
        aliases=[],
        watchers=[],
        last_asset_event=NO_EVENT,
    )


def asset_entry(entry: StateEntry) -> AssetStateStoreResponse:
    return AssetStateStoreResponse(
        key=entry.key,
        value=msgspec.Raw(entry.value),
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )
