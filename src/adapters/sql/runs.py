"""The SQL RunStore: DAG versions, assets, runs and task instances.

Every multi-statement change is one transaction. Run creation leans on the unique constraints rather than
on a read-then-write: ``INSERT ... ON CONFLICT DO NOTHING`` either creates the run or tells us a run with
that run_id or idempotency key exists (PostgreSQL waits for a concurrent insert of the same key to commit
first), and only then do we read which one it was.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database, Params, Row, Session
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement, const
from stateport.domain.errors import Conflict, Invalid, NotFound
from stateport.domain.lru import Lru
from stateport.domain.models import (
    TRY_ENDED_STATES,
    Asset,
    Dag,
    DagSpec,
    JsonText,
    Outcome,
    Run,
    RunState,
    TaskBinding,
    TaskInstance,
    TaskScope,
    TIState,
)

SPEC_CACHE_SIZE = 1024

_encode = msgspec.json.Encoder().encode
_decode_spec = msgspec.json.Decoder(DagSpec).decode
_decode_outcome = msgspec.json.Decoder(Outcome).decode
_decode_conf = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class RunStatements:
    dag_current: Statement
    upsert_dag: Statement
    insert_version: Statement
    get_version: Statement
    get_current: Statement
    uri_owner: Statement
    upsert_asset: Statement
    asset_by_name: Statement
    asset_by_uri: Statement
    insert_run: Statement
    run_by_key: Statement
    get_run: Statement
    insert_ti: Statement
    list_tis: Statement
    get_ti: Statement
    binding: Statement
    task_exists: Statement
    task_exists_any: Statement
    lock_run: Statement
    transition: Statement
    set_outcome: Statement
    set_run_state: Statement
    claim: Statement
    assign: Statement
    start_run: Statement
    extend_lease: Statement
    ti_state: Statement
    overdue: Statement
    finished_runs: Statement
    delete_run: Statement


@functools.cache
def statements(dialect_name: DialectName) -> RunStatements:
    """The run-store statements, compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    dags, versions, assets = tables.dags, tables.dag_versions, tables.assets
    runs, tis = tables.dag_runs, tables.task_instances

    def p(name: str) -> sa.BindParameter[Any]:
        return sa.bindparam(name)

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
    run_columns = _run_columns()
    ti_columns = (
        tis.c.id,
        tis.c.dag_id,
        tis.c.run_id,
        tis.c.task_id,
        tis.c.map_index,
        tis.c.try_number,
        tis.c.state,
        tis.c.queue,
        tis.c.lease_owner,
        tis.c.lease_expires_at_us,
        tis.c.result,
        tis.c.error,
        tis.c.result_ref,
        tis.c.timeout_us,
        tis.c.retries_used,
        tis.c.started_at_us,
        tis.c.ended_at_us,
    )
    at_task = (tis.c.dag_id == p("dag_id"), tis.c.run_id == p("run_id"), tis.c.task_id == p("task_id"))
    at_run = (runs.c.dag_id == p("dag_id"), runs.c.run_id == p("run_id"))
    # Not IN (...): a literal list compiles to an expanding parameter, which a statement compiled once
    # cannot carry.
    finished = sa.or_(runs.c.state == RunState.SUCCESS.value, runs.c.state == RunState.FAILED.value)
    return RunStatements(
        dag_current=d.compile(sa.select(dags.c.current_version).where(dags.c.dag_id == p("dag_id"))),
        upsert_dag=d.compile(upsert_dag),
        insert_version=d.compile(d.insert(versions).values(values(versions)).on_conflict_do_nothing()),
        get_version=d.compile(
            sa.select(versions.c.version, versions.c.spec, versions.c.created_at_us).where(
                versions.c.dag_id == p("dag_id"), versions.c.version == p("version")
            )
        ),
        get_current=d.compile(
            sa.select(versions.c.version, versions.c.spec, versions.c.created_at_us)
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
        insert_run=d.compile(
            d.insert(runs).values(values(runs)).on_conflict_do_nothing().returning(runs.c.run_id)
        ),
        run_by_key=d.compile(
            sa.select(*run_columns).where(
                runs.c.dag_id == p("dag_id"), runs.c.idempotency_key == p("idempotency_key")
            )
        ),
        get_run=d.compile(sa.select(*run_columns).where(*at_run)),
        insert_ti=d.compile(sa.insert(tis).values(values(tis))),
        list_tis=d.compile(
            sa.select(*ti_columns)
            .where(tis.c.dag_id == p("dag_id"), tis.c.run_id == p("run_id"))
            .order_by(tis.c.task_id, tis.c.map_index, tis.c.try_number)
        ),
        get_ti=d.compile(sa.select(*ti_columns).where(tis.c.id == p("id"))),
        binding=d.compile(
            sa.select(
                tis.c.dag_id,
                tis.c.run_id,
                tis.c.task_id,
                tis.c.map_index,
                runs.c.dag_version,
                versions.c.spec,
            )
            .select_from(
                tis.join(runs, sa.and_(runs.c.dag_id == tis.c.dag_id, runs.c.run_id == tis.c.run_id)).join(
                    versions,
                    sa.and_(versions.c.dag_id == runs.c.dag_id, versions.c.version == runs.c.dag_version),
                )
            )
            .where(tis.c.id == p("id"))
        ),
        task_exists=d.compile(
            sa.select(const(1)).where(*at_task, tis.c.map_index == p("map_index")).limit(const(1))
        ),
        task_exists_any=d.compile(sa.select(const(1)).where(*at_task).limit(const(1))),
        # PostgreSQL: the row lock serialises advances of one run across processes. SQLite: the write
        # transaction (BEGIN IMMEDIATE) already holds the only write lock, so a plain read is enough.
        lock_run=d.compile(
            sa.select(*run_columns).where(*at_run).with_for_update()
            if d.name == "postgresql"
            else sa.select(*run_columns).where(*at_run)
        ),
        transition=d.compile(
            sa.update(tis)
            .where(tis.c.id == p("id"), tis.c.state == p("from_state"))
            .values(
                state=p("to_state"),
                result=p("result"),
                result_ref=p("result_ref"),
                error=p("error"),
                ended_at_us=p("ended_at_us"),
                updated_at_us=p("now_us"),
            )
            .returning(*ti_columns)
        ),
        set_outcome=d.compile(
            sa.update(runs)
            .where(*at_run, runs.c.outcome.is_(None))
            .values(outcome=p("outcome"), updated_at_us=p("now_us"))
        ),
        set_run_state=d.compile(
            sa.update(runs)
            .where(*at_run, runs.c.state != p("state"))
            .values(state=p("state"), updated_at_us=p("now_us"))
        ),
        claim=d.compile(_claim(d.name, ti_columns, p)),
        assign=d.compile(
            sa.update(tis)
            .where(tis.c.id == p("id"), tis.c.state == p("from_state"))
            .values(_leased(p))
            .returning(*ti_columns)
        ),
        start_run=d.compile(
            sa.update(runs)
            .where(*at_run, runs.c.state == RunState.QUEUED.value)
            .values(state=RunState.RUNNING.value, updated_at_us=p("now_us"))
        ),
        extend_lease=d.compile(
            sa.update(tis)
            .where(tis.c.id == p("id"), tis.c.state == TIState.RUNNING.value)
            .values(lease_expires_at_us=p("until_us"), updated_at_us=p("now_us"))
        ),
        ti_state=d.compile(sa.select(tis.c.state).where(tis.c.id == p("id"))),
        overdue=d.compile(
            sa.select(*ti_columns)
            .where(
                tis.c.state == TIState.RUNNING.value,
                sa.or_(
                    tis.c.lease_expires_at_us < p("now_us"),
                    tis.c.started_at_us + tis.c.timeout_us < p("now_us"),
                ),
            )
            .order_by(tis.c.id)
            .limit(p("limit"))
        ),
        # A run is changed after it is created, never before: both times before the cutoff is the
        # contract's "last changed before", and the created_at index finds the candidates.
        finished_runs=d.compile(
            sa.select(runs.c.dag_id, runs.c.run_id)
            .where(runs.c.created_at_us < p("before_us"), runs.c.updated_at_us < p("before_us"), finished)
            .order_by(runs.c.created_at_us, runs.c.dag_id, runs.c.run_id)
            .limit(p("limit"))
        ),
        # The task instances go with it (ON DELETE CASCADE, indexed by uq_task_instances_try).
        delete_run=d.compile(sa.delete(runs).where(*at_run, finished, runs.c.updated_at_us < p("before_us"))),
    )


def _run_columns() -> tuple[sa.Column[Any], ...]:
    """The columns ``_run`` reads, in its order."""
    runs = tables.dag_runs
    return (
        runs.c.dag_id,
        runs.c.run_id,
        runs.c.dag_version,
        runs.c.conf,
        runs.c.state,
        runs.c.run_after_us,
        runs.c.created_at_us,
        runs.c.outcome,
        runs.c.idempotency_key,
        runs.c.request_hash,
    )


@functools.cache
def _listing(
    dialect_name: DialectName, states: tuple[str, ...], newest_first: bool
) -> tuple[Statement, Statement]:
    """A page of a DAG's runs and their count, for one set of states and one order (at most 32 variants
    per dialect, each compiled once), served by the (dag_id, created_at_us) index."""
    d = DIALECTS[dialect_name]
    runs = tables.dag_runs
    where = [runs.c.dag_id == sa.bindparam("dag_id")]
    if states:
        where.append(sa.or_(*(runs.c.state == state for state in states)))
    order = (runs.c.created_at_us, runs.c.run_id)
    page = (
        sa.select(*_run_columns())
        .where(*where)
        .order_by(*(column.desc() for column in order) if newest_first else order)
        .limit(sa.bindparam("limit"))
        .offset(sa.bindparam("offset"))
    )
    count = sa.select(sa.func.count()).select_from(runs).where(*where)
    return d.compile(page), d.compile(count)


def _leased(p: Any) -> dict[str, Any]:
    """What a claim (or a hand-off to a waiting claim) sets: running, leased to the worker, started now."""
    return {
        "state": TIState.RUNNING.value,
        "lease_owner": p("worker_id"),
        "lease_expires_at_us": p("until_us"),
        "started_at_us": p("now_us"),
        "updated_at_us": p("now_us"),
    }


def _claim(dialect: DialectName, columns: tuple[Any, ...], p: Any) -> sa.Update:
    """Queued -> running for the oldest ``limit`` task instances of a queue, returning them.

    PostgreSQL picks the rows with ``FOR UPDATE SKIP LOCKED`` in a materialised CTE (so the pick runs once
    and its LIMIT holds), and concurrent claimers each get different rows without waiting on each other;
    the UPDATE checks the state again. SQLite runs the same pick inside the single writer's transaction.
    """
    tis, runs = tables.task_instances, tables.dag_runs
    pick = (
        sa.select(tis.c.id)
        .where(tis.c.state == TIState.QUEUED.value, tis.c.queue == p("queue"))
        .order_by(tis.c.id)
        .limit(p("limit"))
    )
    # Written out because SQLite renders RETURNING columns unqualified, and a correlated subquery built by
    # SQLAlchemy would then read "WHERE dag_id = dag_id" (every run): it named the first run's state for
    # every claim, and a claimed run stayed queued on SQLite.
    run_state = sa.literal_column(
        "(SELECT dag_runs.state FROM dag_runs WHERE dag_runs.dag_id = task_instances.dag_id"
        " AND dag_runs.run_id = task_instances.run_id)",
        sa.String,
    ).label("run_state")
    assert (runs.name, tis.name) == ("dag_runs", "task_instances")
    if dialect == "postgresql":
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        chosen: Any = sa.select(picked.c.id)
    else:
        chosen = pick
    return (
        sa.update(tis)
        .where(tis.c.id.in_(chosen), tis.c.state == TIState.QUEUED.value)
        .values(_leased(p))
        # The run's state too, so that only a claim whose run is still queued spends a statement on
        # starting it (all but a run's first claims find it running).
        .returning(*columns, run_state)
    )


class SqlRunStore:
    """DAGs, assets, runs and task instances in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = statements(database.dialect_name)
        # Versions are content hashes and never change, so a decoded spec stays valid for the process.
        self._specs: Lru[tuple[str, str], DagSpec] = Lru(SPEC_CACHE_SIZE)

    def _spec(self, dag_id: str, version: str, text: str) -> DagSpec:
        cache_key = (dag_id, version)
        spec = self._specs.get(cache_key)
        if spec is None:
            try:
                spec = _decode_spec(text)
            except (msgspec.MsgspecError, RecursionError) as exc:
                raise Invalid(f"DAG '{dag_id}' version '{version}' cannot be read: {exc}") from exc
            self._specs.put(cache_key, spec)
        return spec

    async def put_dag(self, dag: Dag, assets: Sequence[Asset]) -> Dag:
        """Make ``dag`` current and register its assets in one transaction (a no-op if already current)."""
        s = self._s
        now_us = to_us(dag.created_at)
        async with self._db.transaction() as tx:
            current = await tx.fetchrow(s.dag_current, {"dag_id": dag.dag_id})
            if current is None or current[0] != dag.version:
                await tx.execute(
                    s.upsert_dag,
                    {"dag_id": dag.dag_id, "current_version": dag.version, "updated_at_us": now_us},
                )
                await tx.execute(
                    s.insert_version,
                    {
                        "dag_id": dag.dag_id,
                        "version": dag.version,
                        "spec": _encode(dag.spec).decode(),
                        "created_at_us": now_us,
                    },
                )
                for asset in assets:
                    if asset.uri is not None:
                        owner = await tx.fetchrow(s.uri_owner, {"uri": asset.uri, "name": asset.name})
                        if owner is not None:
                            raise Conflict(f"Asset uri '{asset.uri}' is already used by asset '{owner[0]}'")
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

    def _dag(self, dag_id: str, row: Row) -> Dag:
        version, spec, created_at_us = row
        return Dag(
            dag_id=dag_id,
            version=version,
            spec=self._spec(dag_id, version, spec),
            created_at=from_us(created_at_us),
        )

    async def create_run(self, run: Run, task_instances: Sequence[TaskInstance]) -> Run:
        """Create the run and its task instances in one transaction, or return the run holding the key."""
        s = self._s
        created_us = to_us(run.created_at)
        async with self._db.transaction() as tx:
            inserted = await tx.fetchrow(
                s.insert_run,
                {
                    "dag_id": run.dag_id,
                    "run_id": run.run_id,
                    "dag_version": run.dag_version,
                    "conf": _encode(run.conf).decode(),
                    "state": run.state.value,
                    "run_after_us": to_us(run.run_after),
                    "created_at_us": created_us,
                    "updated_at_us": created_us,
                    "outcome": None if run.outcome is None else _encode(run.outcome).decode(),
                    "idempotency_key": run.idempotency_key,
                    "request_hash": run.request_hash,
                },
            )
            if inserted is None:
                if run.idempotency_key is not None:
                    existing = await tx.fetchrow(
                        s.run_by_key, {"dag_id": run.dag_id, "idempotency_key": run.idempotency_key}
                    )
                    if existing is not None:
                        return _run(existing)
                raise Conflict(f"DAG run '{run.run_id}' already exists for DAG '{run.dag_id}'")
            if task_instances:
                await tx.executemany(s.insert_ti, [_ti_params(ti, created_us) for ti in task_instances])
        return run

    async def get_run(self, dag_id: str, run_id: str) -> Run | None:
        """Return the run, or None."""
        row = await self._db.fetchrow(self._s.get_run, {"dag_id": dag_id, "run_id": run_id})
        return None if row is None else _run(row)

    async def list_runs(
        self, dag_id: str, *, states: frozenset[RunState], newest_first: bool, limit: int, offset: int
    ) -> tuple[list[Run], int]:
        """A page of the DAG's runs and how many there are (two reads, not one snapshot)."""
        page, count = _listing(self._db.dialect_name, tuple(sorted(s.value for s in states)), newest_first)
        rows = await self._db.fetch(page, {"dag_id": dag_id, "limit": limit, "offset": offset})
        total = await self._db.fetchrow(count, {"dag_id": dag_id})
        return [_run(row) for row in rows], 0 if total is None else int(total[0])

    async def add_task_instances(self, task_instances: Sequence[TaskInstance]) -> None:
        """Add task instances to existing runs in one transaction; Conflict if one exists."""
        if not task_instances:
            return
        now_us = time.time_ns() // 1000
        async with self._db.transaction() as tx:
            await tx.executemany(self._s.insert_ti, [_ti_params(ti, now_us) for ti in task_instances])

    async def list_task_instances(self, dag_id: str, run_id: str) -> list[TaskInstance]:
        """Every try of every task instance of the run, ordered by task_id, map_index, try_number."""
        rows = await self._db.fetch(self._s.list_tis, {"dag_id": dag_id, "run_id": run_id})
        return [_ti(row) for row in rows]

    async def get_task_instance(self, ti_id: uuid.UUID) -> TaskInstance | None:
        """Return the task instance, or None."""
        row = await self._db.fetchrow(self._s.get_ti, {"id": str(ti_id)})
        return None if row is None else _ti(row)

    async def get_binding(self, ti_id: uuid.UUID) -> TaskBinding | None:
        """The task instance's scope and its task's asset names, from one joined query."""
        row = await self._db.fetchrow(self._s.binding, {"id": str(ti_id)})
        if row is None:
            return None
        dag_id, run_id, task_id, map_index, version, spec_text = row
        task = self._spec(dag_id, version, spec_text).task(task_id)
        return TaskBinding(
            ti_id=ti_id,
            scope=TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index),
            assets=task.asset_names() if task is not None else frozenset(),
        )

    async def task_exists(self, scope: TaskScope, *, any_map_index: bool = False) -> bool:
        """Whether any try of a task instance exists at the scope (at any map index when asked)."""
        params: dict[str, Any] = {"dag_id": scope.dag_id, "run_id": scope.run_id, "task_id": scope.task_id}
        if any_map_index:
            return await self._db.fetchrow(self._s.task_exists_any, params) is not None
        params["map_index"] = scope.map_index
        return await self._db.fetchrow(self._s.task_exists, params) is not None

    async def get_asset(self, *, name: str | None = None, uri: str | None = None) -> Asset | None:
        """Return the asset with that name (or, if no name is given, that uri), or None."""
        if name is not None:
            row = await self._db.fetchrow(self._s.asset_by_name, {"name": name})
        elif uri is not None:
            row = await self._db.fetchrow(self._s.asset_by_uri, {"uri": uri})
        else:
            return None
        return None if row is None else Asset(name=row[0], uri=row[1])

    # --- the run engine --------------------------------------------------------------------------------

    @asynccontextmanager
    async def lock_run(self, dag_id: str, run_id: str) -> AsyncIterator[SqlRunUnit]:
        """A write transaction holding the run (row lock on PostgreSQL, the write lock on SQLite)."""
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(self._s.lock_run, {"dag_id": dag_id, "run_id": run_id})
            if row is None:
                raise NotFound(f"The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found")
            yield SqlRunUnit(tx, self._s, _run(row))

    async def claim(
        self, queue: str, worker_id: str, *, limit: int, now: datetime, lease_until: datetime
    ) -> list[TaskInstance]:
        """Claim up to ``limit`` queued task instances of ``queue`` (one statement), then start their runs.

        The claim is one statement on its own, not a transaction: it is atomic by itself, and a transaction
        around it would cost two more round trips on the hot path of every hop of a chain. Starting a run
        (queued -> running, each its own statement) only follows for the runs the claim found queued; if
        the process dies in between, the run reads ``queued`` until its next advance sets its state, which
        every report does (a run never goes back to queued).
        """
        now_us = to_us(now)
        params = {
            "queue": queue,
            "limit": limit,
            "worker_id": worker_id,
            "until_us": to_us(lease_until),
            "now_us": now_us,
        }
        rows = await self._db.write(self._s.claim, params)
        claimed = sorted((_ti(row) for row in rows), key=lambda ti: ti.id)
        queued = {(row[1], row[2]) for row in rows if row[-1] == RunState.QUEUED.value}
        for dag_id, run_id in sorted(queued):
            await self._db.write_count(
                self._s.start_run, {"dag_id": dag_id, "run_id": run_id, "now_us": now_us}
            )
        return claimed

    async def extend_lease(self, ti_id: uuid.UUID, until: datetime) -> TIState | None:
        """Extend a running task instance's lease; otherwise return its state (None if missing)."""
        params = {"id": str(ti_id), "until_us": to_us(until), "now_us": time.time_ns() // 1000}
        if await self._db.write_count(self._s.extend_lease, params) == 1:
            return TIState.RUNNING
        row = await self._db.fetchrow(self._s.ti_state, {"id": str(ti_id)})
        return None if row is None else TIState(row[0])

    async def overdue(self, now: datetime, *, limit: int = 100) -> list[TaskInstance]:
        """Running task instances past their lease or their timeout."""
        rows = await self._db.fetch(self._s.overdue, {"now_us": to_us(now), "limit": limit})
        return [_ti(row) for row in rows]

    async def finished_runs(self, *, ended_before: datetime, limit: int) -> list[tuple[str, str]]:
        """Finished runs last changed before ``ended_before``, oldest (by creation) first."""
        rows = await self._db.fetch(self._s.finished_runs, {"before_us": to_us(ended_before), "limit": limit})
        return [(row[0], row[1]) for row in rows]

    async def delete_run(self, dag_id: str, run_id: str, *, ended_before: datetime) -> bool:
        """Delete the run (its task instances cascade) if it is still finished and old enough."""
        params = {"dag_id": dag_id, "run_id": run_id, "before_us": to_us(ended_before)}
        return await self._db.write_count(self._s.delete_run, params) == 1


class SqlRunUnit:
    """The statements of one locked run, on the transaction ``SqlRunStore.lock_run`` opened."""

    def __init__(self, tx: Session, statements: RunStatements, run: Run) -> None:
        self._tx = tx
        self._s = statements
        self.run = run
        self._at = {"dag_id": run.dag_id, "run_id": run.run_id}
        # Read once under the lock, then kept up to date by this unit's own writes: nothing else can
        # change the run's task instances while it holds the lock, and every re-read is a round trip on
        # the path of every report.
        self._tis: list[TaskInstance] | None = None

    async def task_instances(self) -> list[TaskInstance]:
        if self._tis is None:
            self._tis = [_ti(row) for row in await self._tx.fetch(self._s.list_tis, self._at)]
        return list(self._tis)

    def _remember(self, changed: Sequence[TaskInstance]) -> None:
        if self._tis is None:
            return
        by_id = {ti.id: ti for ti in changed}
        kept = [by_id.pop(ti.id, ti) for ti in self._tis]
        self._tis = sorted([*kept, *by_id.values()], key=_list_order)

    async def transition(
        self,
        ti_id: uuid.UUID,
        from_state: TIState,
        to_state: TIState,
        *,
        now: datetime,
        result: JsonText | None = None,
        result_ref: str | None = None,
        error: str | None = None,
    ) -> bool:
        now_us = to_us(now)
        params = {
            "id": str(ti_id),
            "from_state": from_state.value,
            "to_state": to_state.value,
            "result": None if result is None else result.decode(),
            "result_ref": result_ref,
            "error": error,
            "ended_at_us": now_us if to_state in TRY_ENDED_STATES else None,
            "now_us": now_us,
        }
        row = await self._tx.fetchrow(self._s.transition, params)
        if row is None:
            return False
        self._remember([_ti(row)])
        return True

    async def assign(
        self, ti_id: uuid.UUID, from_state: TIState, worker_id: str, *, now: datetime, lease_until: datetime
    ) -> TaskInstance | None:
        now_us = to_us(now)
        params = {
            "id": str(ti_id),
            "from_state": from_state.value,
            "worker_id": worker_id,
            "until_us": to_us(lease_until),
            "now_us": now_us,
        }
        row = await self._tx.fetchrow(self._s.assign, params)
        if row is None:
            return None
        ti = _ti(row)
        self._remember([ti])
        return ti

    async def add_task_instances(self, task_instances: Sequence[TaskInstance]) -> None:
        if task_instances:
            now_us = time.time_ns() // 1000
            await self._tx.executemany(self._s.insert_ti, [_ti_params(ti, now_us) for ti in task_instances])
            self._remember(task_instances)

    async def set_outcome(self, outcome: Outcome) -> bool:
        params = {**self._at, "outcome": _encode(outcome).decode(), "now_us": time.time_ns() // 1000}
        changed = await self._tx.execute(self._s.set_outcome, params) == 1
        if changed:
            self.run = msgspec.structs.replace(self.run, outcome=outcome)
        return changed

    async def set_state(self, state: RunState) -> bool:
        if self.run.state is state:
            return False  # the run row is locked: what it read is what is stored
        params = {**self._at, "state": state.value, "now_us": time.time_ns() // 1000}
        changed = await self._tx.execute(self._s.set_run_state, params) == 1
        if changed:
            self.run = msgspec.structs.replace(self.run, state=state)
        return changed


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_us(value)


def _run(row: Row) -> Run:
    dag_id, run_id, dag_version, conf, state, run_after_us, created_at_us, outcome, key, request_hash = row
    return Run(
        dag_id=dag_id,
        run_id=run_id,
        dag_version=dag_version,
        conf=_decode_conf(conf),
        state=RunState(state),
        run_after=from_us(run_after_us),
        created_at=from_us(created_at_us),
        outcome=None if outcome is None else _decode_outcome(outcome),
        idempotency_key=key,
        request_hash=request_hash,
    )


def _ti_params(ti: TaskInstance, now_us: int) -> Params:
    return {
        "id": str(ti.id),
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
        "state": ti.state.value,
        "queue": ti.queue,
        "lease_owner": ti.lease_owner,
        "lease_expires_at_us": None if ti.lease_expires_at is None else to_us(ti.lease_expires_at),
        "result": None if ti.result is None else ti.result.decode(),
        "error": ti.error,
        "created_at_us": now_us,
        "updated_at_us": now_us,
        "result_ref": ti.result_ref,
        "timeout_us": None if ti.timeout_s is None else round(ti.timeout_s * 1_000_000),
        "retries_used": ti.retries_used,
        "started_at_us": _us(ti.started_at),
        "ended_at_us": _us(ti.ended_at),
    }


def _list_order(ti: TaskInstance) -> tuple[str, int, int]:
    """The order of ``list_tis``: by task, map index, try."""
    return (ti.task_id, ti.map_index, ti.try_number)


def _ti(row: Row) -> TaskInstance:
    (ti_id, dag_id, run_id, task_id, map_index, try_number, state, queue, owner, lease_us, result, err) = row[
        :12
    ]
    result_ref, timeout_us, retries_used, started_us, ended_us = row[12:17]
    return TaskInstance(
        id=uuid.UUID(ti_id),
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        map_index=map_index,
        try_number=try_number,
        state=TIState(state),
        queue=queue,
        lease_owner=owner,
        lease_expires_at=None if lease_us is None else from_us(lease_us),
        result=None if result is None else result.encode(),
        result_ref=result_ref,
        error=err,
        timeout_s=None if timeout_us is None else timeout_us / 1_000_000,
        retries_used=retries_used,
        started_at=None if started_us is None else from_us(started_us),
        ended_at=None if ended_us is None else from_us(ended_us),
    )
