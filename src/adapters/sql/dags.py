"""The SQL DagStore: DAG versions (content-addressed, immutable) and the assets they declare."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database, Row
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement
from stateport.adapters.sql.rows import Specs, encode
from stateport.domain.errors import Conflict
from stateport.domain.models import Asset, Dag


@dataclass(frozen=True, slots=True)
class _Statements:
    dag_current: Statement
    upsert_dag: Statement
    insert_version: Statement
    get_version: Statement
    get_current: Statement
    uri_owner: Statement
    upsert_asset: Statement
    asset_by_name: Statement
    asset_by_uri: Statement


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    dags, versions, assets = tables.dags, tables.dag_versions, tables.assets
    p = sa.bindparam

    def values(table: sa.Table) -> dict[str, sa.BindParameter[Any]]:
        return {c.name: p(c.name) for c in table.columns}

    upsert_dag = d.insert(dags).values(values(dags))
    upsert_dag = upsert_dag.on_conflict_do_update(
        index_elements=[dags.c.dag_id],
        set_={
            "current_version": upsert_dag.excluded.current_version,
            "updated_at_us": upsert_dag.excluded.updated_at_us,
        },
    )
    upsert_asset = d.insert(assets).values(values(assets))
    upsert_asset = upsert_asset.on_conflict_do_update(
        index_elements=[assets.c.name],
        # A reference by name alone says nothing about the uri: keep the one registered.
        set_={"uri": sa.func.coalesce(upsert_asset.excluded.uri, assets.c.uri)},
    )
    version_columns = (versions.c.version, versions.c.spec, versions.c.created_at_us)
    return _Statements(
        dag_current=d.compile(sa.select(dags.c.current_version).where(dags.c.dag_id == p("dag_id"))),
        upsert_dag=d.compile(upsert_dag),
        insert_version=d.compile(d.insert(versions).values(values(versions)).on_conflict_do_nothing()),
        get_version=d.compile(
            sa.select(*version_columns).where(
                versions.c.dag_id == p("dag_id"), versions.c.version == p("version")
            )
        ),
        get_current=d.compile(
            sa.select(*version_columns)
            .join(
                dags,
                sa.and_(dags.c.dag_id == versions.c.dag_id, dags.c.current_version == versions.c.version),
            )
            .where(dags.c.dag_id == p("dag_id"))
        ),
        uri_owner=d.compile(
            sa.select(assets.c.name).where(assets.c.uri == p("uri"), assets.c.name != p("name"))
        ),
        upsert_asset=d.compile(upsert_asset),
        asset_by_name=d.compile(sa.select(assets.c.name, assets.c.uri).where(assets.c.name == p("name"))),
        asset_by_uri=d.compile(sa.select(assets.c.name, assets.c.uri).where(assets.c.uri == p("uri"))),
    )


class SqlDagStore:
    """DAG versions and assets in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)
        self._specs = Specs()

    async def put_dag(self, dag: Dag, assets: Sequence[Asset]) -> Dag:
        """Make ``dag`` current and register its assets in one transaction (a no-op if already current)."""
        s = self._s
        now_us = to_us(dag.created_at)
        async with self._db.transaction() as tx:
            current = await tx.fetchrow(s.dag_current, {"dag_id": dag.dag_id})
            if current is None or current["current_version"] != dag.version:
                await tx.execute(
                    s.upsert_dag,
                    {"dag_id": dag.dag_id, "current_version": dag.version, "updated_at_us": now_us},
                )
                await tx.execute(
                    s.insert_version,
                    {
                        "dag_id": dag.dag_id,
                        "version": dag.version,
                        "spec": encode(dag.spec).decode(),
                        "created_at_us": now_us,
                    },
                )
                for asset in assets:
                    if asset.uri is not None:
                        owner = await tx.fetchrow(s.uri_owner, {"uri": asset.uri, "name": asset.name})
                        if owner is not None:
                            raise Conflict(
                                f"Asset uri '{asset.uri}' is already used by asset '{owner['name']}'"
                            )
                    await tx.execute(
                        s.upsert_asset, {"name": asset.name, "uri": asset.uri, "created_at_us": now_us}
                    )
            row = await tx.fetchrow(s.get_version, {"dag_id": dag.dag_id, "version": dag.version})
        assert row is not None  # written above in this transaction, or current already
        return self._dag(dag.dag_id, row)

    async def get_dag(self, dag_id: str, version: str | None = None) -> Dag | None:
        """Return the current version of the DAG (or the given version), or None."""
        if version is None:
            row = await self._db.fetchrow(self._s.get_current, {"dag_id": dag_id})
        else:
            row = await self._db.fetchrow(self._s.get_version, {"dag_id": dag_id, "version": version})
        return None if row is None else self._dag(dag_id, row)

    async def get_asset(self, *, name: str | None = None, uri: str | None = None) -> Asset | None:
        """Return the asset with that name (or, if no name is given, that uri), or None."""
        if name is not None:
            row = await self._db.fetchrow(self._s.asset_by_name, {"name": name})
        elif uri is not None:
            row = await self._db.fetchrow(self._s.asset_by_uri, {"uri": uri})
        else:
            return None
        return None if row is None else Asset(name=row["name"], uri=row["uri"])

    def _dag(self, dag_id: str, row: Row) -> Dag:
        version = row["version"]
        return Dag(
            dag_id=dag_id,
            version=version,
            spec=self._specs.decode(dag_id, version, row["spec"]),
            created_at=from_us(row["created_at_us"]),
        )
