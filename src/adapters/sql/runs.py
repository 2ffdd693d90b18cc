"""The SQL RunStore: runs and their task instances, and the run lock (``SqlRunUnit``) they change under.

Every multi-statement change is one transaction. Run creation leans on the unique constraints rather than
on a read-then-write: ``INSERT ... ON CONFLICT DO NOTHING`` either creates the run or tells us a run with
that run_id or idempotency key exists (PostgreSQL waits for a concurrent insert of the same key to commit
first), and only then do we read which one it was.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.sql.elements import ClauseElement

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database, Row, Session
from stateport.adapters.sql.dialect import DIALECTS, Dialect, DialectName, Statement
from stateport.adapters.sql.listing import Listing
from stateport.adapters.sql.rows import (
    RUN_COLUMNS,
    TI_COLUMNS,
    encode,
    in_order_of,
    leased,
    list_order,
    run_from,
    ti_from,
    ti_params,
)
from stateport.domain.errors import Conflict, NotFound, Refused
from stateport.domain.lru import Lru
from stateport.domain.models import TRY_ENDED_STATES, JsonText, Outcome, Run, RunState, TaskInstance, TIState
from stateport.domain.queries import Page, RunField, RunKey, RunQuery


@dataclass(frozen=True, slots=True)
class _Statements:
    insert_run: Statement
    insert_held_run: Statement
    insert_held_run_of_no_caller: Statement
    run_by_key: Statement
    get_run: Statement
    get_runs: Statement
    insert_ti: Statement
    list_tis: Statement
    hold_tis: Statement
    list_task_tries: Statement
    get_ti: Statement
    lock_run: Statement
    transition: Statement
    assign: Statement
    settle: Statement
    lock_dag: Statement
    count_queued: Statement
    count_active: Statement
    held_runs: Statement
    held_dags: Statement
    unhold: Statement
    past_deadline: Statement
    oldest_queued: Statement
    waited: Statement
    ti_states: Statement
    set_note: Statement
    push_result: Statement
    pushed_result: Statement
    push_xcom: Statement
    xcom: Statement
    task_xcoms: Statement
    delete_xcom: Statement


def fair_tag(
    d: Dialect, queue: sa.ColumnElement[str], rank: sa.ColumnElement[int], caller: sa.ColumnElement[str]
) -> sa.ColumnElement[int]:
    """A try's place when it becomes queued (``fair_tag``; claims hand out the lowest tag first within a
    priority, the oldest first among equal tags): one past the highest tag its caller has queued in the
    same queue and priority, but never below where that queue now is; a caller with nothing queued there
    gets where the queue is.

    Where the queue is: one past the highest tag of its tries running (the last handed out, about), else
    the lowest tag queued, else 0. So each caller's queued tries follow one another, and a caller with
    nothing queued is level with the next try to be handed out and goes right after it, whatever the others
    have queued: callers take turns (a flood of runs from one delays another's by a turn,
    stateport.domain.fairness). The lowest tag queued alone was held back by a try no claim takes (of a DAG
    no worker serves, or a retry waiting out its delay): a caller coming later then went ahead of every
    other caller's backlog (an outsider's find). Each is one read of a partial index of queued (or running)
    tries only.
    """
    q = tables.task_instances.alias("fair")

    def at(state: str) -> tuple[sa.ColumnElement[bool], ...]:
        # The partial indexes' predicate as they write it (tables.FAIR_QUEUED): SQLite uses such an index
        # only for those terms, and no other statement says "fair_tag >= 0".
        return (
            q.c.state == sa.literal_column(f"'{state}'"),
            q.c.fair_tag >= sa.literal_column("0"),
            q.c.queue == queue,
            q.c.priority_rank == rank,
        )

    callers = sa.select(sa.func.max(q.c.fair_tag)).where(*at("queued"), q.c.caller == caller)
    running = sa.select(sa.func.max(q.c.fair_tag)).where(*at("running"))
    lowest = sa.select(sa.func.min(q.c.fair_tag)).where(*at("queued"))
    now = sa.func.coalesce(running.scalar_subquery() + 1, lowest.scalar_subquery(), 0)
    return d.greatest(sa.func.coalesce(callers.scalar_subquery() + 1, 0), now)


# The other runs of the DAG, as ``hold_tag`` reads them.
held = tables.dag_runs.alias("held")


def hold_tag(
    d: Dialect, dag_id: sa.ColumnElement[str], of_caller: sa.ColumnElement[bool]
) -> sa.ColumnElement[int]:
    """A held run's place among its DAG's held runs (``hold_tag``; admissions take the lowest first, the
    oldest first among equal places), as ``fair_tag`` places a queued try: one past the highest place its
    caller holds in the DAG, but never below where the DAG's line is; a caller holding none there gets
    where the line is. ``of_caller`` says which held runs are the caller's (over ``held``).

    Where the line is: one past the highest place admitted and unfinished, else the lowest place held, else
    0. So each caller's held runs follow one another, and a caller holding none goes right after the next
    to be admitted: 100 runs one caller triggered of a DAG with max_active_runs 2 held another caller's run
    back for 5.3 s, behind every one of them, when runs were admitted oldest first. Each is one read of a
    partial index of the DAG's held (or admitted) runs (``ix_dag_runs_held``, ``ix_dag_runs_held_caller``,
    ``ix_dag_runs_admitted``).
    """

    def first(
        order: sa.UnaryExpression[int], predicate: sa.TextClause, *more: sa.ColumnElement[bool]
    ) -> sa.ScalarSelect[int]:
        # The indexes' predicate as they write it: SQLite uses a partial index only for those terms. The
        # first in order rather than max() or min(): on a table never analysed, PostgreSQL read the max()
        # of a caller's places through ix_dag_runs_unfinished, every held run of the DAG (3,000: 0.37 ms),
        # where an order and a limit lead it to the index that has them in order (one row).
        places = sa.select(held.c.hold_tag).where(held.c.dag_id == dag_id, predicate, *more)
        return places.order_by(order).limit(1).scalar_subquery()

    callers = first(held.c.hold_tag.desc(), tables.HELD, of_caller)
    admitted = first(held.c.hold_tag.desc(), tables.ADMITTED)
    lowest = first(held.c.hold_tag.asc(), tables.HELD)
    line = sa.func.coalesce(admitted + 1, lowest, 0)
    return d.greatest(sa.func.coalesce(callers + 1, 0), line)


def _when_queued(state: sa.ColumnElement[str], tag: sa.ColumnElement[int], other: Any) -> sa.Case[Any]:
    """``tag`` for a try that is (or becomes) queued, else ``other``: a tag is read only where it counts."""
    # The cast: the parameter also sets a varchar column, and PostgreSQL deduces one type for both uses (a
    # comparison alone would deduce text, the type of varchar's "=").
    return sa.case((sa.cast(state, sa.String) == sa.literal_column("'queued'"), tag), else_=other)


def _push_xcom(d: Dialect) -> sa.Insert:
    """Keep an XCom of a running try, in one statement: nothing if the try is not running, or if the key is
    new and the try holds ``max_keys`` already."""
    tis, xcoms, p = tables.task_instances, tables.task_xcoms, sa.bindparam
    running = sa.exists().where(tis.c.id == p("id"), tis.c.state == TIState.RUNNING.value)
    held = sa.select(sa.func.count()).select_from(xcoms).where(xcoms.c.ti_id == p("id")).scalar_subquery()
    known = sa.exists().where(xcoms.c.ti_id == p("id"), xcoms.c.key == p("key"))
    # Cast as the columns are: PostgreSQL deduces one type per parameter, from every place it is used.
    row = sa.select(
        sa.cast(p("id"), xcoms.c.ti_id.type),
        sa.cast(p("key"), xcoms.c.key.type),
        sa.cast(p("value"), sa.Text),
    ).where(running, sa.or_(known, held < p("max_keys", type_=sa.Integer)))
    insert = d.insert(xcoms).from_select(["ti_id", "key", "value"], row)
    return insert.on_conflict_do_update(
        index_elements=[xcoms.c.ti_id, xcoms.c.key], set_={"value": insert.excluded.value}
    )


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    runs, tis = tables.dag_runs, tables.task_instances
    p = sa.bindparam

    def values(table: sa.Table) -> dict[str, sa.BindParameter[Any]]:
        return {c.name: p(c.name) for c in table.columns}

    at_run = (runs.c.dag_id == p("dag_id"), runs.c.run_id == p("run_id"))
    xcoms = tables.task_xcoms
    at_xcom = (xcoms.c.ti_id == p("id"), xcoms.c.key == p("key"))
    # Written as the partial indexes' own predicate, which SQLite needs to see verbatim to use them.
    unfinished = sa.and_(runs.c.dag_id == p("dag_id"), tables.UNFINISHED)
    count = sa.select(sa.func.count().label("n")).select_from(runs)
    # Cast as the column it also sets: PostgreSQL deduces one type per parameter.
    run_dag = sa.cast(p("dag_id"), runs.c.dag_id.type)
    run_caller = sa.cast(p("caller"), runs.c.caller.type)

    def insert_run(tag: Any) -> ClauseElement:
        return (
            d.insert(runs)
            .values({**values(runs), "hold_tag": tag})
            .on_conflict_do_nothing()
            .returning(runs.c.run_id)
        )

    return _Statements(
        lock_dag=d.compile(
            d.for_update(sa.select(tables.dags.c.dag_id).where(tables.dags.c.dag_id == p("dag_id")))
        ),
        count_queued=d.compile(count.where(unfinished, runs.c.state == RunState.QUEUED.value)),
        count_active=d.compile(count.where(unfinished, runs.c.held_by.is_(None))),
        held_runs=d.compile(
            sa.select(runs.c.run_id)
            .where(runs.c.dag_id == p("dag_id"), tables.HELD)
            .order_by(runs.c.hold_tag, runs.c.created_at_us, runs.c.run_id)
            .limit(p("limit"))
        ),
        held_dags=d.compile(sa.select(runs.c.dag_id).where(tables.HELD).distinct()),
        unhold=d.compile(sa.update(runs).where(*at_run).values(held_by=sa.null(), updated_at_us=p("now_us"))),
        oldest_queued=d.compile(
            sa.select(*TI_COLUMNS, tis.c.updated_at_us.label("queued_at_us"))
            .where(
                tis.c.dag_id == p("dag_id"), tis.c.run_id == p("run_id"), tis.c.state == TIState.QUEUED.value
            )
            .order_by(tis.c.updated_at_us)
            .limit(1)
        ),
        past_deadline=d.compile(
            sa.select(runs.c.dag_id, runs.c.run_id)
            .where(tables.UNFINISHED_WITH_DEADLINE, runs.c.deadline_at_us <= p("now_us"))
            .order_by(runs.c.deadline_at_us)
            .limit(p("limit"))
        ),
        insert_run=d.compile(insert_run(0)),
        insert_held_run=d.compile(insert_run(hold_tag(d, run_dag, held.c.caller == run_caller))),
        insert_held_run_of_no_caller=d.compile(insert_run(hold_tag(d, run_dag, held.c.caller.is_(None)))),
        run_by_key=d.compile(
            sa.select(*RUN_COLUMNS).where(
                runs.c.dag_id == p("dag_id"), runs.c.idempotency_key == p("idempotency_key")
            )
        ),
        get_run=d.compile(sa.select(*RUN_COLUMNS).where(*at_run)),
        push_result=d.compile(
            sa.update(tis)
            .where(tis.c.id == p("id"), tis.c.state == TIState.RUNNING.value)
            .values(pushed_result=p("result"))
        ),
        pushed_result=d.compile(sa.select(tis.c.pushed_result).where(tis.c.id == p("id"))),
        push_xcom=d.compile(_push_xcom(d)),
        xcom=d.compile(sa.select(xcoms.c.value).where(*at_xcom)),
        delete_xcom=d.compile(sa.delete(xcoms).where(*at_xcom)),
        task_xcoms=d.compile(
            sa.select(xcoms.c.ti_id, xcoms.c.value)
            .join(tis, tis.c.id == xcoms.c.ti_id)
            .where(
                tis.c.dag_id == p("dag_id"),
                tis.c.run_id == p("run_id"),
                tis.c.task_id == p("task_id"),
                xcoms.c.key == p("key"),
            )
        ),
        set_note=d.compile(sa.update(runs).where(*at_run).values(note=p("note")).returning(*RUN_COLUMNS)),
        get_runs=d.compile(sa.select(*RUN_COLUMNS).where(d.pairs_among(runs.c.dag_id, runs.c.run_id))),
        insert_ti=d.compile(
            sa.insert(tis).values(
                {
                    **values(tis),
                    "fair_tag": _when_queued(
                        p("state"),
                        # Cast as the columns they also set: PostgreSQL deduces one type per parameter.
                        fair_tag(
                            d,
                            sa.cast(p("queue"), tis.c.queue.type),
                            p("priority_rank"),
                            sa.cast(p("caller"), tis.c.caller.type),
                        ),
                        0,
                    ),
                }
            )
        ),
        list_tis=d.compile(
            sa.select(*TI_COLUMNS)
            .where(tis.c.dag_id == p("dag_id"), tis.c.run_id == p("run_id"))
            .order_by(tis.c.task_id, tis.c.map_index, tis.c.try_number)
        ),
        hold_tis=d.compile(
            d.for_update(
                sa.select(*TI_COLUMNS)
                .where(tis.c.dag_id == p("dag_id"), tis.c.run_id == p("run_id"))
                .order_by(tis.c.task_id, tis.c.map_index, tis.c.try_number)
            )
        ),
        # Served by uq_task_instances_try (dag_id, run_id, task_id, map_index, try_number).
        list_task_tries=d.compile(
            sa.select(*TI_COLUMNS)
            .where(tis.c.dag_id == p("dag_id"), tis.c.run_id == p("run_id"), tis.c.task_id == p("task_id"))
            .order_by(tis.c.map_index, tis.c.try_number)
        ),
        get_ti=d.compile(sa.select(*TI_COLUMNS).where(tis.c.id == p("id"))),
        ti_states=d.compile(sa.select(tis.c.id, tis.c.state).where(d.among(tis.c.id, "ids"))),
        lock_run=d.compile(d.for_update(sa.select(*RUN_COLUMNS).where(*at_run))),
        waited=d.compile(
            sa.select(tables.run_waiters.c.holder)
            .where(
                tables.run_waiters.c.dag_id == p("dag_id"),
                tables.run_waiters.c.run_id == p("run_id"),
                tables.run_waiters.c.expires_at_us > p("now_us"),
            )
            .limit(1)
        ),
        transition=d.compile(
            sa.update(tis)
            .where(tis.c.id == p("id"), tis.c.state == p("from_state"))
            .values(
                state=p("to_state"),
                fair_tag=_when_queued(
                    p("to_state"), fair_tag(d, tis.c.queue, tis.c.priority_rank, tis.c.caller), tis.c.fair_tag
                ),
                result=p("result"),
                result_ref=p("result_ref"),
                error=p("error"),
                ended_at_us=p("ended_at_us"),
                updated_at_us=p("now_us"),
                pushed_result=sa.null(),  # what the Task SDK pushed is the result now, or nothing
            )
            .returning(*TI_COLUMNS)
        ),
        assign=d.compile(
            sa.update(tis)
            .where(tis.c.id == p("id"), tis.c.state == p("from_state"))
            .values(leased())
            .returning(*TI_COLUMNS)
        ),
        # Under the run's lock ``RunUnit.run`` is the row as stored: the unit computes the new values.
        settle=d.compile(
            sa.update(runs)
            .where(*at_run)
            .values(
                outcome=sa.func.coalesce(runs.c.outcome, p("outcome")),
                state=p("state"),
                updated_at_us=p("now_us"),
                started_at_us=sa.func.coalesce(runs.c.started_at_us, p("started_us")),
                ended_at_us=p("ended_us"),
            )
        ),
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
        sa.select(*RUN_COLUMNS)
        .where(*where)
        .order_by(*(column.desc() for column in order) if newest_first else order)
        .limit(sa.bindparam("limit"))
        .offset(sa.bindparam("offset"))
    )
    count = sa.select(sa.func.count().label("total")).select_from(runs).where(*where)
    return d.compile(page), d.compile(count)


@functools.cache
def _deletion(dialect_name: DialectName, states: tuple[str, ...]) -> Statement:
    """Delete a run in one of ``states`` (any when empty): at most 16 variants per dialect. The task
    instances go with it (ON DELETE CASCADE, indexed by uq_task_instances_try)."""
    runs = tables.dag_runs
    where = [runs.c.dag_id == sa.bindparam("dag_id"), runs.c.run_id == sa.bindparam("run_id")]
    if states:
        # Literals: the states are the domain's own, never a caller's text.
        where.append(sa.or_(*(runs.c.state == state for state in states)))
    return DIALECTS[dialect_name].compile(sa.delete(runs).where(*where))


_runs = tables.dag_runs
# How each field orders runs: its columns, each with whether it may be NULL. Airflow's id is its
# autoincrement key, the order runs were created in; creation time, dag_id and run_id make that total here.
# logical_date and partition_date are null on every run: they order nothing.
_RUN_ORDER: dict[RunField, list[tuple[sa.ColumnElement[Any], bool]]] = {
    RunField.ID: [(_runs.c.created_at_us, False), (_runs.c.dag_id, False), (_runs.c.run_id, False)],
    RunField.STATE: [(_runs.c.state, False)],
    RunField.DAG_ID: [(_runs.c.dag_id, False)],
    RunField.RUN_ID: [(_runs.c.run_id, False)],
    RunField.LOGICAL_DATE: [],
    RunField.PARTITION_DATE: [],
    RunField.RUN_AFTER: [(_runs.c.run_after_us, False)],
    RunField.START_DATE: [(_runs.c.started_at_us, True)],
    RunField.END_DATE: [(_runs.c.ended_at_us, True)],
    RunField.UPDATED_AT: [(_runs.c.updated_at_us, False)],
    RunField.CONF: [(_runs.c.conf, False)],
    RunField.DURATION: [(_runs.c.ended_at_us - _runs.c.started_at_us, True)],
}


@functools.cache
def _run_keys(dialect_name: DialectName) -> sa.Select[Any]:
    """What a listing's page reads of each run: its key, and the bytes of its conf and outcome."""
    d = DIALECTS[dialect_name]
    size = d.byte_length(_runs.c.conf) + sa.func.coalesce(d.byte_length(_runs.c.outcome), 0)
    return sa.select(_runs.c.dag_id, _runs.c.run_id, size.label("size"))


def _run_listing(query: RunQuery) -> Listing:
    # Named apart from the listing of whole runs it replaced: compiled statements are cached by shape.
    listing = Listing("run keys")
    if query.dag_id is not None:
        listing.equals("dag_id", _runs.c.dag_id, query.dag_id)
    listing.one_of("state", _runs.c.state, [state.value for state in query.states])
    listing.time_range("run_after", _runs.c.run_after_us, query.run_after)
    listing.time_range("start_date", _runs.c.started_at_us, query.start_date)
    listing.time_range("end_date", _runs.c.ended_at_us, query.end_date)
    listing.time_range("updated_at", _runs.c.updated_at_us, query.updated_at)
    listing.like("run_id", _runs.c.run_id, query.run_id_pattern)
    listing.prefix("run_id", _runs.c.run_id, query.run_id_prefix_pattern)
    for sort in query.order_by:
        listing.order_by(sort.field.value, _RUN_ORDER[sort.field], sort.descending)
    return listing


# Triggers of one DAG with max_queued_runs in their transaction at once, per process (see create_run).
ADMISSIONS = 4


def _queue_full(dag_id: str, max_queued: int) -> Refused:
    return Refused(
        f"DAG '{dag_id}' has {max_queued} queued runs, its max_queued_runs: nothing was created; try again"
        " later"
    )


class SqlRunStore:
    """Runs and task instances in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)
        # Per DAG with max_queued_runs, while triggers of it are under way (see create_run).
        self._admissions: weakref.WeakValueDictionary[str, asyncio.Semaphore] = weakref.WeakValueDictionary()
        # Per DAG: this process's triggers that found room and wait for an admission turn.
        self._pending: dict[str, int] = {}
        self._decoded = DecodedRows()

    async def create_run(
        self, run: Run, task_instances: Sequence[TaskInstance], *, max_queued: int | None = None
    ) -> Run:
        """Create the run and its task instances in one transaction, or return the run holding the key.

        With ``max_queued``: a DAG already full is refused on one read, without a transaction (a burst
        of triggers past the limit costs no lock and no write). Otherwise the run goes in, then the DAG's
        row is locked and its queued runs counted (this one included) right before the commit, so that
        concurrent triggers count one after the other, in any process. In this process at most
        ``ADMISSIONS`` of one DAG's triggers are in their transaction at once: triggers waiting for the
        DAG's row lock would each hold a pooled connection meanwhile, and a burst of them would leave none
        for anything else (measured: 1,500 at once on a pool of 20, most ended 503 waiting for one).
        """
        if max_queued is None:
            return await self._create(run, task_instances, None)
        dag_id = run.dag_id
        # This process's triggers waiting for a turn count as queued: they take the room first
        # (the turns are first come, first served), so under a burst the rest are refused on this read
        # rather than after queuing behind every admission (docs/benchmarks.md, a burst: a 429 took 5.5 s
        # at the median before). A run that leaves ``queued`` meanwhile may free room such a refused
        # trigger could have taken: it is told to retry (429, Retry-After), never admitted past the limit.
        if (
            self._pending.get(dag_id, 0) >= max_queued
            or await self._queued(dag_id) + self._pending.get(dag_id, 0) >= max_queued
        ):
            return await self._existing_or_refused(run, max_queued)
        turns = self._admissions.get(dag_id)
        if turns is None:
            turns = self._admissions[dag_id] = asyncio.Semaphore(ADMISSIONS)
        self._wait_turn(dag_id, +1)
        waiting = True
        try:
            async with turns:
                # Counted only while waiting: a trigger in its turn is either not written yet or committed
                # (then the database counts it), and must never be counted twice.
                self._wait_turn(dag_id, -1)
                waiting = False
                if await self._full(dag_id, max_queued):  # it may have filled up while this one waited
                    return await self._existing_or_refused(run, max_queued)
                return await self._create(run, task_instances, max_queued)
        finally:
            if waiting:  # cancelled while it waited
                self._wait_turn(dag_id, -1)

    def _wait_turn(self, dag_id: str, change: int) -> None:
        left = self._pending.get(dag_id, 0) + change
        if left:
            self._pending[dag_id] = left
        else:
            del self._pending[dag_id]

    async def _full(self, dag_id: str, max_queued: int) -> bool:
        return await self._queued(dag_id) >= max_queued

    async def _queued(self, dag_id: str) -> int:
        """The DAG's queued runs (held ones included), as the database has them committed."""
        queued = await self._db.fetchrow(self._s.count_queued, {"dag_id": dag_id})
        return 0 if queued is None else int(queued["n"])

    async def _create(self, run: Run, task_instances: Sequence[TaskInstance], max_queued: int | None) -> Run:
        s = self._s
        created_us = to_us(run.created_at)
        insert = s.insert_run
        if run.held_by is not None:
            insert = s.insert_held_run if run.caller is not None else s.insert_held_run_of_no_caller
        async with self._db.transaction() as tx:
            inserted = await tx.fetchrow(
                insert,
                {
                    "dag_id": run.dag_id,
                    "run_id": run.run_id,
                    "dag_version": run.dag_version,
                    "conf": encode(run.conf).decode(),
                    "state": run.state.value,
                    "run_after_us": to_us(run.run_after),
                    "created_at_us": created_us,
                    "updated_at_us": created_us,
                    "outcome": None if run.outcome is None else encode(run.outcome).decode(),
                    "idempotency_key": run.idempotency_key,
                    "request_hash": run.request_hash,
                    "started_at_us": None if run.started_at is None else to_us(run.started_at),
                    "ended_at_us": None if run.ended_at is None else to_us(run.ended_at),
                    "traceparent": run.traceparent,
                    "deadline_at_us": None if run.deadline_at is None else to_us(run.deadline_at),
                    "held_by": run.held_by,
                    "priority": run.priority,
                    "caller": run.caller,
                    "note": run.note,
                },
            )
            if inserted is None:
                if run.idempotency_key is not None:
                    existing = await tx.fetchrow(
                        s.run_by_key, {"dag_id": run.dag_id, "idempotency_key": run.idempotency_key}
                    )
                    if existing is not None:
                        return run_from(existing)
                # What to do said: an application restarted after a crash repeats its `run` (an outsider's
                # find: the bare 409 left it stuck while the run went on).
                raise Conflict(
                    f"DAG run '{run.run_id}' already exists for DAG '{run.dag_id}': wait for it by its id "
                    "(GET .../outcome, or the client's wait), or trigger with an Idempotency-Key, which "
                    "returns the run it made before"
                )
            if task_instances:
                await tx.executemany(
                    s.insert_ti, [ti_params(ti, created_us, run.caller) for ti in task_instances]
                )
            if max_queued is not None and run.state is RunState.QUEUED:
                await tx.fetchrow(s.lock_dag, {"dag_id": run.dag_id})
                queued = await tx.fetchrow(s.count_queued, {"dag_id": run.dag_id})
                if queued is not None and int(queued["n"]) > max_queued:
                    raise _queue_full(run.dag_id, max_queued)  # rolls the run back
        return run

    async def _existing_or_refused(self, run: Run, max_queued: int) -> Run:
        """A trigger of a full DAG: the run holding its idempotency key if there is one (a retry is
        answered however full the queue), else Refused."""
        if run.idempotency_key is not None:
            existing = await self._db.fetchrow(
                self._s.run_by_key, {"dag_id": run.dag_id, "idempotency_key": run.idempotency_key}
            )
            if existing is not None:
                return run_from(existing)
        raise _queue_full(run.dag_id, max_queued)

    async def get_run(self, dag_id: str, run_id: str) -> Run | None:
        """Return the run, or None."""
        row = await self._db.fetchrow(self._s.get_run, {"dag_id": dag_id, "run_id": run_id})
        return None if row is None else run_from(row)

    async def list_runs(
        self, dag_id: str, *, states: frozenset[RunState], newest_first: bool, limit: int, offset: int
    ) -> tuple[list[Run], int]:
        """A page of the DAG's runs and how many there are (two reads, not one snapshot)."""
        page, count = _listing(self._db.dialect_name, tuple(sorted(s.value for s in states)), newest_first)
        rows = await self._db.fetch(page, {"dag_id": dag_id, "limit": limit, "offset": offset})
        total = await self._db.fetchrow(count, {"dag_id": dag_id})
        return [run_from(row) for row in rows], 0 if total is None else int(total["total"])

    async def query_run_keys(self, query: RunQuery) -> Page[RunKey]:
        """A page of runs' keys and sizes and how many runs match, read in one snapshot."""
        listing = _run_listing(query)
        page, count = listing.compiled(self._db.dialect_name, _run_keys(self._db.dialect_name), _runs)
        async with self._db.snapshot() as session:
            total_row = await session.fetchrow(count, listing.params)
            total = 0 if total_row is None else int(total_row["total"])
            if query.limit == 0 or query.offset >= total:
                return Page(items=[], total=total)
            params = {**listing.params, "limit": query.limit, "offset": query.offset}
            rows = await session.fetch(page, params)
        keys = [RunKey(dag_id=row["dag_id"], run_id=row["run_id"], size=int(row["size"])) for row in rows]
        return Page(items=keys, total=total)

    async def get_runs(self, keys: Sequence[tuple[str, str]]) -> list[Run]:
        """The runs of these keys that exist, in their order (one statement, by primary key)."""
        if not keys:
            return []
        rows = await self._db.fetch(self._s.get_runs, {"pairs": DIALECTS[self._db.dialect_name].pairs(keys)})
        return [run_from(row) for row in in_order_of(keys, rows, lambda row: (row["dag_id"], row["run_id"]))]

    async def push_result(self, ti_id: uuid.UUID, result: JsonText) -> bool:
        """Keep ``result`` as what the running try ``ti_id`` returned; False if it is not running."""
        params = {"id": str(ti_id), "result": result.decode()}
        return await self._db.write_count(self._s.push_result, params) == 1

    async def pushed_result(self, ti_id: uuid.UUID) -> JsonText | None:
        """What was pushed for ``ti_id`` and not yet made its result; None if nothing was."""
        row = await self._db.fetchrow(self._s.pushed_result, {"id": str(ti_id)})
        text: str | None = None if row is None else row["pushed_result"]
        return None if text is None else text.encode()

    async def push_xcom(self, ti_id: uuid.UUID, key: str, value: JsonText, *, max_keys: int) -> bool:
        """Keep the running try's XCom ``key``; False if it is not running or holds ``max_keys`` others."""
        params = {"id": str(ti_id), "key": key, "value": value.decode(), "max_keys": max_keys}
        return await self._db.write_count(self._s.push_xcom, params) == 1

    async def xcom(self, ti_id: uuid.UUID, key: str) -> JsonText | None:
        """The try's XCom ``key``; None if it pushed none."""
        row = await self._db.fetchrow(self._s.xcom, {"id": str(ti_id), "key": key})
        return None if row is None else str(row["value"]).encode()

    async def task_xcoms(self, dag_id: str, run_id: str, task_id: str, key: str) -> dict[uuid.UUID, JsonText]:
        """Each try's XCom ``key`` of the task's instances in the run, by the try's id."""
        params = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "key": key}
        rows = await self._db.fetch(self._s.task_xcoms, params)
        return {uuid.UUID(str(row["ti_id"])): str(row["value"]).encode() for row in rows}

    async def delete_xcom(self, ti_id: uuid.UUID, key: str) -> bool:
        """Forget the try's XCom ``key``; False if it had none."""
        return await self._db.write_count(self._s.delete_xcom, {"id": str(ti_id), "key": key}) == 1

    async def set_note(self, dag_id: str, run_id: str, note: str | None) -> Run | None:
        """Set the run's note (None: none); the run as it is now, or None if it does not exist."""
        rows = await self._db.write(self._s.set_note, {"dag_id": dag_id, "run_id": run_id, "note": note})
        return run_from(rows[0]) if rows else None

    async def delete_run(self, dag_id: str, run_id: str, *, states: frozenset[RunState]) -> bool:
        """Delete the run if it is in ``states`` (any when empty); its task instances cascade."""
        stmt = _deletion(self._db.dialect_name, tuple(sorted(state.value for state in states)))
        params = {"dag_id": dag_id, "run_id": run_id}
        return await self._db.write_count(stmt, params) == 1

    async def list_task_instances(self, dag_id: str, run_id: str) -> list[TaskInstance]:
        """Every try of every task instance of the run, ordered by task_id, map_index, try_number."""
        rows = await self._db.fetch(self._s.list_tis, {"dag_id": dag_id, "run_id": run_id})
        # Decoded as a locked run's are: a claim of a task reads its whole run too, for its inputs.
        return [self._decoded.ti(row) for row in rows]

    async def list_task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[TaskInstance]:
        """Every try of the task's instances in the run, ordered by map_index, try_number."""
        params = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id}
        return [ti_from(row) for row in await self._db.fetch(self._s.list_task_tries, params)]

    async def get_task_instance(self, ti_id: uuid.UUID) -> TaskInstance | None:
        """Return the task instance, or None."""
        row = await self._db.fetchrow(self._s.get_ti, {"id": str(ti_id)})
        return None if row is None else ti_from(row)

    async def task_instance_states(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, TIState]:
        """The state of each of these task instances that exists (one statement, by primary key)."""
        d = DIALECTS[self._db.dialect_name]
        rows = await self._db.fetch(self._s.ti_states, {"ids": d.strings([str(i) for i in ids])})
        return {uuid.UUID(row["id"]): TIState(row["state"]) for row in rows}

    async def held_runs(self, dag_id: str, *, limit: int) -> list[str]:
        """The run ids of the DAG's held runs, oldest first."""
        rows = await self._db.fetch(self._s.held_runs, {"dag_id": dag_id, "limit": limit})
        return [row["run_id"] for row in rows]

    async def dags_with_held_runs(self) -> list[str]:
        """The DAGs that have held runs."""
        return sorted(row["dag_id"] for row in await self._db.fetch(self._s.held_dags, {}))

    async def oldest_queued(self, dag_id: str, run_id: str) -> tuple[TaskInstance, datetime] | None:
        """The run's task instance queued longest, and since when; None if none is queued."""
        row = await self._db.fetchrow(self._s.oldest_queued, {"dag_id": dag_id, "run_id": run_id})
        return None if row is None else (ti_from(row), from_us(row["queued_at_us"]))

    async def past_deadline(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        """(dag_id, run_id) of unfinished runs whose deadline is ``now`` or earlier, earliest first."""
        rows = await self._db.fetch(self._s.past_deadline, {"now_us": to_us(now), "limit": limit})
        return [(row["dag_id"], row["run_id"]) for row in rows]

    @asynccontextmanager
    async def lock_run(self, dag_id: str, run_id: str) -> AsyncIterator[SqlRunUnit]:
        """A write transaction holding the run (``Dialect.for_update``)."""
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(self._s.lock_run, {"dag_id": dag_id, "run_id": run_id})
            if row is None:
                raise NotFound(f"The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found")
            yield SqlRunUnit(tx, self._s, run_from(row), self._decoded)


# How much of the rows of task instances a process keeps decoded (see ``DecodedRows``): a row weighs its
# inline result's length and this much besides, so some 32,000 rows without results, and fewer with them.
DECODED_BYTES = 32 * 1024 * 1024
ROW_WEIGHT = 1024


class DecodedRows:
    """Task instances decoded from rows of ``TI_COLUMNS``, with the row each came from, by id.

    Every change of a run reads all of its task instances under the run's lock, and decoding them was a
    third of a report on a run of 10,000 (uuid.UUID, datetimes, the TaskInstance: ~3.5 us a row, and as
    many objects for the garbage collector), though a report changes a few of them. ``ti_from`` reads the
    row only, so a row equal to the one a task instance was decoded from (every column alike) gives that
    task instance again: nothing can go stale, whichever process wrote the row. Shared by the units of one
    store, which run one at a time on the event loop.
    """

    def __init__(self, limit: int = DECODED_BYTES) -> None:
        self._by_id: Lru[str, tuple[Row, TaskInstance]] = Lru(limit, weigh=_row_weight)

    def ti(self, row: Row) -> TaskInstance:
        """The task instance ``row`` holds."""
        key: str = row["id"]
        known = self._by_id.get(key)
        if known is not None and known[0] == row:
            return known[1]
        ti = ti_from(row)
        self._by_id.put(key, (row, ti))
        return ti


def _row_weight(entry: tuple[Row, TaskInstance]) -> int:
    result: str | None = entry[0]["result"]
    return ROW_WEIGHT + (0 if result is None else len(result))


def _by_id_in_order(tis: Iterable[TaskInstance]) -> dict[uuid.UUID, TaskInstance]:
    """The task instances by id, in list order (``list_order``)."""
    return {ti.id: ti for ti in sorted(tis, key=list_order)}


class SqlRunUnit:
    """The statements of one locked run, on the transaction ``SqlRunStore.lock_run`` opened."""

    def __init__(self, tx: Session, statements: _Statements, run: Run, decoded: DecodedRows) -> None:
        self._tx = tx
        self._s = statements
        self._decoded = decoded
        self.run = run
        self._at = {"dag_id": run.dag_id, "run_id": run.run_id}
        # Read once under the lock, then kept up to date by this unit's own writes: nothing else can
        # change the run's task instances while it holds the lock, and every re-read is a round trip on
        # the path of every report. By id, so that a write is remembered in constant time: a cancel of a
        # run of n task instances makes n of them, and re-sorting the list on each one cost O(n^2 log n).
        # Kept in list order: a write to a task instance it holds keeps its place (no write changes task_id,
        # map_index or try_number), so only new ones make it sort again. A report reads the list twice,
        # and on a run of 10,000 task instances each sort was ~10 % of the report.
        self._tis: dict[uuid.UUID, TaskInstance] | None = None
        self._in_order = True

    async def task_instances(self) -> list[TaskInstance]:
        if self._tis is None:
            rows = await self._tx.fetch(self._s.list_tis, self._at)
            self._tis = _by_id_in_order(map(self._decoded.ti, rows))
        elif not self._in_order:
            self._tis = _by_id_in_order(self._tis.values())
        self._in_order = True
        return list(self._tis.values())

    async def held_task_instances(self) -> list[TaskInstance]:
        rows = await self._tx.fetch(self._s.hold_tis, self._at)
        self._tis = _by_id_in_order(map(self._decoded.ti, rows))
        self._in_order = True
        return list(self._tis.values())

    def _remember(self, changed: Sequence[TaskInstance]) -> None:
        if self._tis is not None:
            for ti in changed:
                self._in_order = self._in_order and ti.id in self._tis
                self._tis[ti.id] = ti

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
        self._remember([self._decoded.ti(row)])
        return True

    async def assign(
        self,
        ti_id: uuid.UUID,
        from_state: TIState,
        worker_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        claimant: str | None = None,
    ) -> TaskInstance | None:
        params = {
            "id": str(ti_id),
            "from_state": from_state.value,
            "worker_id": worker_id,
            "claimant": claimant,
            "until_us": to_us(lease_until),
            "now_us": to_us(now),
        }
        row = await self._tx.fetchrow(self._s.assign, params)
        if row is None:
            return None
        ti = self._decoded.ti(row)
        self._remember([ti])
        return ti

    async def add_task_instances(self, task_instances: Sequence[TaskInstance], *, now: datetime) -> None:
        if task_instances:
            now_us = to_us(now)
            caller = self.run.caller
            await self._tx.executemany(
                self._s.insert_ti, [ti_params(ti, now_us, caller) for ti in task_instances]
            )
            self._remember(task_instances)

    async def settle(
        self, outcome: Outcome | None, state: RunState | None, *, now: datetime
    ) -> tuple[bool, bool]:
        # The run row is locked: what it read is what is stored, so what changes is known before writing.
        run = self.run
        sets_outcome = outcome is not None and run.outcome is None
        moves = state is not None and run.state is not state
        if not (sets_outcome or moves):
            return False, False
        new_state = state if moves and state is not None else run.state
        started = now if moves and new_state is RunState.RUNNING else None
        ended = run.ended_at  # kept unless the state moves: then set for success and failed, else cleared
        if moves:
            ended = now if new_state in (RunState.SUCCESS, RunState.FAILED) else None
        params = {
            **self._at,
            "outcome": encode(outcome).decode() if sets_outcome else None,
            "state": new_state.value,
            "now_us": to_us(now),
            "started_us": None if started is None else to_us(started),
            "ended_us": None if ended is None else to_us(ended),
        }
        if await self._tx.execute(self._s.settle, params) != 1:
            return False, False
        self.run = msgspec.structs.replace(
            run,
            outcome=outcome if sets_outcome else run.outcome,
            state=new_state,
            started_at=run.started_at or started,
            ended_at=ended,
        )
        return sets_outcome, moves

    async def waited(self, *, now: datetime) -> bool:
        """A ``run_waiters`` row of the run with a lease after ``now``, read under the run's lock: every
        row is written (``SqlWaiterStore.hold``) holding the run's row in share mode, so a row committed
        before this lock was taken is seen, and one written after it waits for this transaction."""
        return await self._tx.fetchrow(self._s.waited, {**self._at, "now_us": to_us(now)}) is not None

    async def admit(self, max_active: int, *, now: datetime) -> bool:
        """Admit the held run if its DAG has fewer than ``max_active`` admitted unfinished runs; the DAG's
        row is locked (after the run's: every admission takes them in this order) so that two admissions
        count one after the other."""
        if self.run.held_by is None:
            return False
        await self._tx.fetchrow(self._s.lock_dag, {"dag_id": self.run.dag_id})
        active = await self._tx.fetchrow(self._s.count_active, {"dag_id": self.run.dag_id})
        if active is not None and int(active["n"]) >= max_active:
            return False
        await self._tx.execute(self._s.unhold, {**self._at, "now_us": to_us(now)})
        self.run = msgspec.structs.replace(self.run, held_by=None)
        return True
