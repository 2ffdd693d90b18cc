"""The SQL DagStore: DAG versions (content-addressed, immutable, numbered), the assets they declare, and
which tasks of each DAG's current version declare which asset."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database, Row, Session
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement, const
from stateport.adapters.sql.listing import Listing
from stateport.adapters.sql.rows import Specs, encode, in_order_of
from stateport.domain.errors import Conflict, UnreadableDag
from stateport.domain.models import (
    MAX_ASSET_ID,
    Asset,
    AssetRef,
    AssetReference,
    AssetUse,
    DagSpec,
    DagVersion,
    DagVersionInfo,
)
from stateport.domain.queries import AssetField, AssetQuery, DagField, DagKey, DagQuery, Page

# How many asset ids one read of references names (each count is a statement compiled once).
REFERENCE_BATCH = 100

_dags, _versions, _assets, _refs = tables.dags, tables.dag_versions, tables.assets, tables.asset_references
_INFO_COLUMNS = (
    _versions.c.dag_id,
    _versions.c.version,
    _versions.c.created_at_us,
    _versions.c.version_number,
)
_VERSION_COLUMNS = (*_INFO_COLUMNS, _versions.c.spec)
_ASSET_COLUMNS = (
    _assets.c.id,
    _assets.c.name,
    _assets.c.uri,
    _assets.c.created_at_us,
    _assets.c.updated_at_us,
)
_REF_COLUMNS = (
    _refs.c.asset_id,
    _refs.c.dag_id,
    _refs.c.task_id,
    _refs.c.kind,
    _refs.c.created_at_us,
    _refs.c.updated_at_us,
)
# Airflow gives every asset a uri, its name when none is declared: the uri patterns and order see that.
_AIRFLOW_URI = sa.func.coalesce(_assets.c.uri, _assets.c.name)


@dataclass(frozen=True, slots=True)
class _Statements:
    dag_current: Statement
    upsert_dag: Statement
    next_number: Statement
    insert_version: Statement
    get_version: Statement
    get_versions: Statement
    get_infos: Statement
    replace_spec: Statement
    get_current: Statement
    uri_owner: Statement
    other_referrer: Statement
    touch_asset: Statement
    upsert_asset: Statement
    asset_by_name: Statement
    asset_by_uri: Statement
    asset_by_id: Statement
    dag_references: Statement
    upsert_reference: Statement
    delete_reference: Statement


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    p = sa.bindparam

    def values(*columns: sa.Column[Any]) -> dict[str, sa.BindParameter[Any]]:
        return {c.name: p(c.name) for c in columns}

    upsert_dag = d.insert(_dags).values(values(*_dags.columns))
    upsert_dag = upsert_dag.on_conflict_do_update(
        index_elements=[_dags.c.dag_id],
        set_={
            "current_version": upsert_dag.excluded.current_version,
            "updated_at_us": upsert_dag.excluded.updated_at_us,
        },
    )
    # A reference by name alone says nothing about the uri: keep the one registered.
    keep_uri: sa.ColumnElement[Any] = sa.func.coalesce(p("uri"), _assets.c.uri)
    insert_asset = d.insert(_assets).values(
        values(_assets.c.name, _assets.c.uri, _assets.c.created_at_us, _assets.c.updated_at_us)
    )
    upsert_asset = insert_asset.on_conflict_do_update(
        index_elements=[_assets.c.name],
        set_={
            "uri": sa.func.coalesce(insert_asset.excluded.uri, _assets.c.uri),
            "updated_at_us": insert_asset.excluded.updated_at_us,
        },
    ).returning(_assets.c.id)
    upsert_reference = d.insert(_refs).values(values(*_refs.columns))
    upsert_reference = upsert_reference.on_conflict_do_update(
        index_elements=[_refs.c.dag_id, _refs.c.task_id, _refs.c.kind, _refs.c.asset_id],
        set_={"updated_at_us": upsert_reference.excluded.updated_at_us},
    )
    at_ref = (
        _refs.c.dag_id == p("dag_id"),
        _refs.c.task_id == p("task_id"),
        _refs.c.kind == p("kind"),
        _refs.c.asset_id == p("asset_id"),
    )
    return _Statements(
        dag_current=d.compile(sa.select(_dags.c.current_version).where(_dags.c.dag_id == p("dag_id"))),
        upsert_dag=d.compile(upsert_dag),
        next_number=d.compile(
            sa.select(
                (sa.func.coalesce(sa.func.max(_versions.c.version_number), const(0)) + const(1)).label("n")
            ).where(_versions.c.dag_id == p("dag_id"))
        ),
        insert_version=d.compile(
            d.insert(_versions).values(values(*_versions.columns)).on_conflict_do_nothing()
        ),
        get_version=d.compile(
            sa.select(*_VERSION_COLUMNS).where(
                _versions.c.dag_id == p("dag_id"), _versions.c.version == p("version")
            )
        ),
        get_versions=d.compile(
            sa.select(*_VERSION_COLUMNS).where(d.pairs_among(_versions.c.dag_id, _versions.c.version))
        ),
        get_infos=d.compile(
            sa.select(*_INFO_COLUMNS).where(d.pairs_among(_versions.c.dag_id, _versions.c.version))
        ),
        replace_spec=d.compile(
            sa.update(_versions)
            .where(_versions.c.dag_id == p("dag_id"), _versions.c.version == p("version"))
            .values(spec=p("spec"))
        ),
        get_current=d.compile(
            sa.select(*_VERSION_COLUMNS)
            .join(
                _dags,
                sa.and_(_dags.c.dag_id == _versions.c.dag_id, _dags.c.current_version == _versions.c.version),
            )
            .where(_dags.c.dag_id == p("dag_id"))
        ),
        # Another asset whose uri is ``uri``: declared so, or its name when it declares none (Airflow's uri).
        uri_owner=d.compile(
            sa.select(_assets.c.name)
            .where(
                # Spelled out rather than _AIRFLOW_URI, so that each side is one of the unique indexes.
                sa.or_(
                    _assets.c.uri == p("uri"), sa.and_(_assets.c.uri.is_(None), _assets.c.name == p("uri"))
                ),
                _assets.c.name != p("name"),
            )
            .order_by(_assets.c.name)
            .limit(const(1))
        ),
        # A DAG other than the registering one whose current version declares the asset (by name).
        other_referrer=d.compile(
            sa.select(_refs.c.dag_id)
            .join(_assets, _assets.c.id == _refs.c.asset_id)
            .where(_assets.c.name == p("name"), _refs.c.dag_id != p("dag_id"))
            .order_by(_refs.c.dag_id)
            .limit(const(1))
        ),
        # An asset registered before is updated in place, so that its insert does not draw (and waste) a
        # number of PostgreSQL's id sequence; the upsert is for new names (and a race with another writer).
        touch_asset=d.compile(
            sa.update(_assets)
            .where(_assets.c.name == p("name"))
            .values(uri=keep_uri, updated_at_us=p("updated_at_us"))
            .returning(_assets.c.id)
        ),
        upsert_asset=d.compile(upsert_asset),
        asset_by_name=d.compile(sa.select(*_ASSET_COLUMNS).where(_assets.c.name == p("name"))),
        # Airflow's uri of an asset declared without one is its name (``_AIRFLOW_URI``); a declared uri wins.
        asset_by_uri=d.compile(
            sa.select(*_ASSET_COLUMNS)
            .where(
                sa.or_(
                    _assets.c.uri == p("uri"),
                    sa.and_(_assets.c.uri.is_(None), _assets.c.name == p("uri")),
                )
            )
            .order_by(_assets.c.uri.is_(None))
            .limit(1)
        ),
        asset_by_id=d.compile(sa.select(*_ASSET_COLUMNS).where(_assets.c.id == p("id"))),
        dag_references=d.compile(
            sa.select(_refs.c.task_id, _refs.c.kind, _refs.c.asset_id).where(_refs.c.dag_id == p("dag_id"))
        ),
        upsert_reference=d.compile(upsert_reference),
        delete_reference=d.compile(sa.delete(_refs).where(*at_ref)),
    )


@functools.lru_cache(maxsize=2 * REFERENCE_BATCH)
def _references_of(dialect_name: DialectName, count: int) -> Statement:
    """The references of ``count`` assets (parameters ``a0`` ...), compiled once per count."""
    ids = [_refs.c.asset_id == sa.bindparam(f"a{i}") for i in range(count)]
    return DIALECTS[dialect_name].compile(
        sa.select(*_REF_COLUMNS)
        .where(sa.or_(*ids))
        .order_by(_refs.c.asset_id, _refs.c.dag_id, _refs.c.task_id, _refs.c.kind)
    )


def declared(spec: DagSpec) -> set[tuple[str, AssetUse, str]]:
    """(task_id, inlet or outlet, asset name) of every asset a task of the spec declares."""
    found: set[tuple[str, AssetUse, str]] = set()
    for task in spec.tasks:
        for use, items in ((AssetUse.INLET, task.inlets), (AssetUse.OUTLET, task.outlets)):
            for item in items:
                found.add((task.task_id, use, item if isinstance(item, str) else item.name))
    return found


class SqlDagStore:
    """DAG versions and assets in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)
        self._specs = Specs()

    async def put_dag(self, dag: DagVersion, assets: Sequence[AssetRef]) -> DagVersion:
        """Make ``dag`` current and register its assets and references in one transaction (a no-op if
        already current)."""
        s = self._s
        now_us = to_us(dag.created_at)
        async with self._db.transaction() as tx:
            current = await tx.fetchrow(s.dag_current, {"dag_id": dag.dag_id})
            if current is None or current["current_version"] != dag.version:
                # The DAG's row first: its upsert holds the row until commit, so that two registrations of
                # one DAG number their versions one after the other, on PostgreSQL too.
                await tx.execute(
                    s.upsert_dag,
                    {"dag_id": dag.dag_id, "current_version": dag.version, "updated_at_us": now_us},
                )
                number = await tx.fetchrow(s.next_number, {"dag_id": dag.dag_id})
                assert number is not None  # an aggregate always answers
                await tx.execute(
                    s.insert_version,
                    {
                        "dag_id": dag.dag_id,
                        "version": dag.version,
                        "spec": encode(dag.spec).decode(),
                        "created_at_us": now_us,
                        "version_number": int(number["n"]),
                    },
                )
                ids = {asset.name: await self._register(tx, dag.dag_id, asset, now_us) for asset in assets}
                for _, _, name in sorted(declared(dag.spec)):
                    if name not in ids:  # the spec's own assets, should the caller have left one out
                        ids[name] = await self._register(tx, dag.dag_id, AssetRef(name=name), now_us)
                await self._reference(tx, dag, ids, now_us)
            row = await tx.fetchrow(s.get_version, {"dag_id": dag.dag_id, "version": dag.version})
            assert row is not None  # written above in this transaction, or current already
            try:
                return self._dag(dag.dag_id, row)
            except UnreadableDag:
                # The version's stored text no longer decodes (an older release's, say). A version is the
                # content hash of its spec, so the spec given now is that content: it replaces the text,
                # and registering the DAG again (a redeploy) repairs it.
                params = {"dag_id": dag.dag_id, "version": dag.version, "spec": encode(dag.spec).decode()}
                await tx.execute(s.replace_spec, params)
                return DagVersion(**msgspec.structs.asdict(_info(row)), spec=dag.spec)

    async def _register(self, tx: Session, dag_id: str, asset: AssetRef, now_us: int) -> int:
        """Register the asset for ``dag_id`` and return its id. A new uri replaces the old one only when no
        other DAG declares the asset: another DAG's tasks may address it by that uri, and must not find it
        gone (or find some other DAG's data under theirs) because of someone else's registration."""
        s = self._s
        known = await tx.fetchrow(s.asset_by_name, {"name": asset.name})
        # Its uri as Airflow sees it, and so the by-uri routes: the one declared, else the one registered,
        # else its name. Two assets never share one (a name-only asset once took another's by-uri route).
        uri = asset.uri or (None if known is None else known["uri"]) or asset.name
        owner = await tx.fetchrow(s.uri_owner, {"uri": uri, "name": asset.name})
        if owner is not None:
            named = "" if asset.uri is not None or uri != asset.name else " (its name: it declares no uri)"
            raise Conflict(f"Asset uri '{uri}'{named} is already used by asset '{owner['name']}'")
        # Its uri now as the by-uri routes see it: one registered with none has its name (an outsider's
        # find: compared with the stored NULL, another DAG's registration changed such an asset's uri, and
        # the declaring DAG's tasks no longer found it by its name).
        current = None if known is None else (known["uri"] or asset.name)
        if asset.uri is not None and current is not None and current != asset.uri:
            other = await tx.fetchrow(s.other_referrer, {"name": asset.name, "dag_id": dag_id})
            if other is not None:
                raise Conflict(
                    f"Asset '{asset.name}' has uri '{current}', and DAG '{other['dag_id']}' "
                    f"declares it: another DAG cannot change it to '{asset.uri}'"
                )
        params = {"name": asset.name, "uri": asset.uri, "updated_at_us": now_us}
        row = await tx.fetchrow(s.touch_asset, params)
        if row is None:
            row = await tx.fetchrow(s.upsert_asset, {**params, "created_at_us": now_us})
        assert row is not None  # RETURNING of an insert or update that happened
        return int(row["id"])

    async def _reference(self, tx: Session, dag: DagVersion, ids: dict[str, int], now_us: int) -> None:
        """Make the DAG's asset references those of ``dag``'s spec: gone ones deleted, kept ones touched
        (their ``created_at`` stays), new ones added."""
        s = self._s
        wanted = {(task_id, use.value, ids[name]) for task_id, use, name in declared(dag.spec)}
        rows = await tx.fetch(s.dag_references, {"dag_id": dag.dag_id})
        for task_id, kind, asset_id in {(r["task_id"], r["kind"], r["asset_id"]) for r in rows} - wanted:
            params = {"dag_id": dag.dag_id, "task_id": task_id, "kind": kind, "asset_id": asset_id}
            await tx.execute(s.delete_reference, params)
        if wanted:
            await tx.executemany(
                s.upsert_reference,
                [
                    {
                        "dag_id": dag.dag_id,
                        "task_id": task_id,
                        "kind": kind,
                        "asset_id": asset_id,
                        "created_at_us": now_us,
                        "updated_at_us": now_us,
                    }
                    for task_id, kind, asset_id in sorted(wanted)
                ],
            )

    async def get_dag(self, dag_id: str, version: str | None = None) -> DagVersion | None:
        """Return the current version of the DAG (or the given version), or None."""
        if version is None:
            row = await self._db.fetchrow(self._s.get_current, {"dag_id": dag_id})
        else:
            row = await self._db.fetchrow(self._s.get_version, {"dag_id": dag_id, "version": version})
        return None if row is None else self._dag(dag_id, row)

    async def list_dag_keys(self, query: DagQuery) -> Page[DagKey]:
        """A page of DAGs' keys at their current versions with the bytes of their specs, and how many
        match, read in one snapshot."""
        # Named apart from the listing of whole DAGs it replaced: compiled statements are cached by shape.
        listing = Listing("dag keys")
        listing.like("dag_id", _dags.c.dag_id, query.dag_id_pattern)
        listing.prefix("dag_id", _dags.c.dag_id, query.dag_id_prefix_pattern)
        for sort in query.order_by:
            if sort.field in (DagField.DAG_ID, DagField.DAG_DISPLAY_NAME):
                listing.order_by("dag_id", [(_dags.c.dag_id, False)], sort.descending)
            # NEXT_DAGRUN: no DAG has a next run, so it orders nothing.
        size = DIALECTS[self._db.dialect_name].byte_length(_versions.c.spec)
        rows = sa.select(_dags.c.dag_id, _versions.c.version, size.label("size")).select_from(
            _dags.join(
                _versions,
                sa.and_(_versions.c.dag_id == _dags.c.dag_id, _versions.c.version == _dags.c.current_version),
            )
        )
        page, count = listing.compiled(self._db.dialect_name, rows, _dags)
        found, total = await self._page(listing, page, count, query.limit, query.offset)
        keys = [DagKey(dag_id=row["dag_id"], version=row["version"], size=int(row["size"])) for row in found]
        return Page(items=keys, total=total)

    async def get_dag_versions(self, keys: Sequence[tuple[str, str]]) -> list[DagVersionInfo]:
        """The DAG versions of these keys that exist, in their order (one statement, by primary key); one
        whose spec cannot be read as its DagVersionInfo alone."""
        rows = await self._by_keys(self._s.get_versions, keys)
        return [self._readable(row) for row in rows]

    async def get_dag_infos(self, keys: Sequence[tuple[str, str]]) -> list[DagVersionInfo]:
        """What is stored about these versions but their specs, in the keys' order (one statement)."""
        return [_info(row) for row in await self._by_keys(self._s.get_infos, keys)]

    async def _by_keys(self, statement: Statement, keys: Sequence[tuple[str, str]]) -> list[Row]:
        if not keys:
            return []
        rows = await self._db.fetch(statement, {"pairs": DIALECTS[self._db.dialect_name].pairs(keys)})
        return in_order_of(keys, rows, lambda row: (row["dag_id"], row["version"]))

    def _readable(self, row: Row) -> DagVersionInfo:
        try:
            return self._dag(row["dag_id"], row)
        except UnreadableDag:
            return _info(row)

    async def get_asset(self, *, name: str | None = None, uri: str | None = None) -> Asset | None:
        """Return the asset with that name (or, if no name is given, that uri), or None."""
        if name is not None:
            row = await self._db.fetchrow(self._s.asset_by_name, {"name": name})
        elif uri is not None:
            row = await self._db.fetchrow(self._s.asset_by_uri, {"uri": uri})
        else:
            return None
        return None if row is None else _asset(row)

    async def get_asset_by_id(self, asset_id: int) -> Asset | None:
        """Return the asset with that id, or None."""
        if not 1 <= asset_id <= MAX_ASSET_ID:
            return None  # outside the column's range, which a driver would refuse to send
        row = await self._db.fetchrow(self._s.asset_by_id, {"id": asset_id})
        return None if row is None else _asset(row)

    async def list_assets(self, query: AssetQuery) -> Page[Asset]:
        """A page of assets and how many match, read in one snapshot."""
        listing = Listing("assets")
        listing.like("name", _assets.c.name, query.name_pattern)
        listing.prefix("name", _assets.c.name, query.name_prefix_pattern)
        listing.like("uri", _AIRFLOW_URI, query.uri_pattern)
        listing.prefix("uri", _AIRFLOW_URI, query.uri_prefix_pattern)
        if query.dag_ids:
            dags = sorted(query.dag_ids)
            declaring = sa.or_(*(_refs.c.dag_id == listing.param(dag_id) for dag_id in dags))
            listing.add(("dags", len(dags)), sa.exists().where(_refs.c.asset_id == _assets.c.id, declaring))
        if query.only_active:
            listing.add("active", sa.exists().where(_refs.c.asset_id == _assets.c.id))
        columns = {
            AssetField.ID: _assets.c.id,
            AssetField.NAME: _assets.c.name,
            AssetField.URI: _AIRFLOW_URI,
            AssetField.CREATED_AT: _assets.c.created_at_us,
            AssetField.UPDATED_AT: _assets.c.updated_at_us,
        }
        for sort in query.order_by:
            listing.order_by(sort.field.value, [(columns[sort.field], False)], sort.descending)
        page, count = listing.compiled(self._db.dialect_name, sa.select(*_ASSET_COLUMNS), _assets)
        found, total = await self._page(listing, page, count, query.limit, query.offset)
        return Page(items=[_asset(row) for row in found], total=total)

    async def asset_references(self, asset_ids: Sequence[int]) -> list[AssetReference]:
        """The references of the assets, ordered by asset id, dag_id, task_id, kind."""
        unique = sorted(set(asset_ids))
        found: list[AssetReference] = []
        for start in range(0, len(unique), REFERENCE_BATCH):
            batch = unique[start : start + REFERENCE_BATCH]
            stmt = _references_of(self._db.dialect_name, len(batch))
            rows = await self._db.fetch(stmt, {f"a{i}": asset_id for i, asset_id in enumerate(batch)})
            found.extend(_reference(row) for row in rows)
        return found

    async def _page(
        self, listing: Listing, page: Statement, count: Statement, limit: int, offset: int
    ) -> tuple[list[Row], int]:
        async with self._db.snapshot() as session:
            total_row = await session.fetchrow(count, listing.params)
            total = 0 if total_row is None else int(total_row["total"])
            if limit == 0 or offset >= total:
                return [], total
            rows = await session.fetch(page, {**listing.params, "limit": limit, "offset": offset})
        return rows, total

    def _dag(self, dag_id: str, row: Row) -> DagVersion:
        version = row["version"]
        return DagVersion(
            dag_id=dag_id,
            version=version,
            spec=self._specs.decode(dag_id, version, row["spec"]),
            created_at=from_us(row["created_at_us"]),
            version_number=row["version_number"],
        )


def _info(row: Row) -> DagVersionInfo:
    return DagVersionInfo(
        dag_id=row["dag_id"],
        version=row["version"],
        created_at=from_us(row["created_at_us"]),
        version_number=row["version_number"],
    )


def _asset(row: Row) -> Asset:
    return Asset(
        id=row["id"],
        name=row["name"],
        uri=row["uri"],
        created_at=from_us(row["created_at_us"]),
        updated_at=from_us(row["updated_at_us"]),
    )


def _reference(row: Row) -> AssetReference:
    return AssetReference(
        asset_id=row["asset_id"],
        dag_id=row["dag_id"],
        task_id=row["task_id"],
        kind=AssetUse(row["kind"]),
        created_at=from_us(row["created_at_us"]),
        updated_at=from_us(row["updated_at_us"]),
    )
