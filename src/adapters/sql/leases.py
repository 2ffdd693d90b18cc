"""The SQL LeaseStore: claims of queued task instances, lease extensions, and the overdue tries the
sweeper ends."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.dialect import DIALECTS, Dialect, DialectName, Statement
from stateport.adapters.sql.rows import TI_COLUMNS, leased, ti_from
from stateport.domain.models import QueueBacklog, RunState, TaskInstance, TIState


@dataclass(frozen=True, slots=True)
class _Statements:
    claim: Statement
    claim_of_dags: Statement
    claim_skipping: Statement
    claim_of_dags_skipping: Statement
    start_run: Statement
    unclaim: Statement
    reclaim: Statement
    extend_lease: Statement
    ti_state: Statement
    overdue: Statement
    timed_out: Statement
    queue_backlogs: Statement
    ready_queues: Statement


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    runs, tis = tables.dag_runs, tables.task_instances
    p = sa.bindparam
    return _Statements(
        claim=d.compile(_claim(d, of_dags=False, skipping=False)),
        claim_of_dags=d.compile(_claim(d, of_dags=True, skipping=False)),
        claim_skipping=d.compile(_claim(d, of_dags=False, skipping=True)),
        claim_of_dags_skipping=d.compile(_claim(d, of_dags=True, skipping=True)),
        start_run=d.compile(
            sa.update(runs)
            .where(
                runs.c.dag_id == p("dag_id"),
                runs.c.run_id == p("run_id"),
                runs.c.state == RunState.QUEUED.value,
            )
            .values(
                state=RunState.RUNNING.value,
                updated_at_us=p("now_us"),
                started_at_us=sa.func.coalesce(runs.c.started_at_us, p("now_us")),
            )
        ),
        # A try claimed by ``worker_id`` and never handed out goes back to its queue as it was. Its row is
        # passed over while another transaction holds it (a stop of its run, which holds every try's row:
        # RunUnit.held_task_instances): the put-back never waits on it, so the two cannot deadlock.
        unclaim=d.compile(
            sa.update(tis)
            .where(
                tis.c.id.in_(
                    d.claimable(
                        sa.select(tis.c.id).where(
                            d.among(tis.c.id, "ids"),
                            tis.c.state == TIState.RUNNING.value,
                            tis.c.lease_owner == p("worker_id"),
                        )
                    )
                ),
                tis.c.state == TIState.RUNNING.value,
            )
            .values(
                state=TIState.QUEUED.value,
                lease_owner=sa.null(),
                lease_claimant=sa.null(),
                lease_expires_at_us=sa.null(),
                started_at_us=sa.null(),
                updated_at_us=p("now_us"),
            )
            .returning(tis.c.id)
        ),
        # The running tries leased to ``worker_id`` that the list ``known`` lacks, handed out to a claim of
        # ``claimant`` and not changed since (no heartbeat: nobody runs them), handed out again as a claim
        # hands out; rows another transaction holds are passed over (a stop of their run), as above.
        reclaim=d.compile(
            sa.update(tis)
            .where(
                tis.c.id.in_(
                    d.claimable(
                        sa.select(tis.c.id)
                        .where(
                            tis.c.state == TIState.RUNNING.value,
                            tis.c.lease_owner == p("worker_id"),
                            tis.c.lease_claimant == p("claimant"),
                            # Last changed when it was handed out (a trigger that hands out a run's
                            # first task writes its row a moment before the hand-out's time).
                            tis.c.updated_at_us <= tis.c.started_at_us,
                            sa.not_(d.among(tis.c.id, "known")),
                        )
                        .order_by(tis.c.id)
                        .limit(p("limit"))
                    )
                ),
                tis.c.state == TIState.RUNNING.value,
                tis.c.lease_owner == p("worker_id"),
            )
            .values(leased())
            .returning(*TI_COLUMNS)
        ),
        extend_lease=d.compile(
            sa.update(tis)
            .where(tis.c.id == p("id"), tis.c.state == TIState.RUNNING.value)
            .values(lease_expires_at_us=p("until_us"), updated_at_us=p("now_us"))
        ),
        ti_state=d.compile(sa.select(tis.c.state).where(tis.c.id == p("id"))),
        overdue=d.compile(_overdue(leases=True)),
        timed_out=d.compile(_overdue(leases=False)),
        # ix_task_instances_claim (state, queue, ...) finds the queued rows; their times are read from
        # the table (a scrape's statement, every 15 s or so: not on a request's path).
        ready_queues=d.compile(_ready_queues(d)),
        queue_backlogs=d.compile(
            sa.select(
                tis.c.queue,
                sa.func.count().label("n"),
                sa.func.min(
                    sa.case(
                        (
                            sa.or_(tis.c.not_before_us.is_(None), tis.c.not_before_us <= p("now_us")),
                            sa.case(
                                (tis.c.not_before_us > tis.c.updated_at_us, tis.c.not_before_us),
                                else_=tis.c.updated_at_us,
                            ),
                        ),
                        else_=sa.null(),
                    )
                ).label("ready_us"),
            )
            .where(tis.c.state == TIState.QUEUED.value)
            .group_by(tis.c.queue)
        ),
    )


def _overdue(*, leases: bool) -> sa.Select[Any]:
    """Running tries past their timeout, and with ``leases`` those whose lease expired, by id."""
    tis = tables.task_instances
    now: sa.BindParameter[int] = sa.bindparam("now_us")
    timed_out = tis.c.started_at_us + tis.c.timeout_us < now
    late = sa.or_(tis.c.lease_expires_at_us < now, timed_out) if leases else timed_out
    return (
        sa.select(*TI_COLUMNS)
        .where(tis.c.state == TIState.RUNNING.value, late)
        .order_by(tis.c.id)
        .limit(sa.bindparam("limit"))
    )


def _claim(d: Dialect, *, of_dags: bool, skipping: bool) -> sa.Update:
    """Queued -> running for the first ``limit`` task instances of a queue, highest priority, then callers
    in turn (``fair_tag``), then oldest (``of_dags``: of the DAGs the parameter ``dag_ids`` lists;
    ``skipping``: but those of the tasks the parameter ``skipped`` lists, as ``dag_id/task_id``), returning
    them and the state of their runs.

    The rows are picked as ``Dialect.claimable`` (``claimable_among``) locks them; the UPDATE checks the
    state again. The index ix_task_instances_claim (state, queue, dag_id, priority_rank, fair_tag, id)
    finds a queue's queued rows, and with ``of_dags`` each listed DAG's first in order: queued task
    instances of other DAGs ahead of them are not read.
    """
    tis, runs = tables.task_instances, tables.dag_runs
    limit: sa.BindParameter[int] = sa.bindparam("limit")
    queued: tuple[sa.ColumnElement[bool], ...] = (
        tis.c.state == TIState.QUEUED.value,
        tis.c.queue == sa.bindparam("queue"),
        # A filter on the rows the index finds: a try waiting to be handed out again is passed over.
        sa.or_(tis.c.not_before_us.is_(None), tis.c.not_before_us <= sa.bindparam("now_us")),
    )
    if skipping:
        # A filter on the rows the pick reads (no identifier holds a "/"): a worker skips the few tasks
        # its code lacks, and their queued rows are read and passed over.
        queued = (*queued, sa.not_(d.among(tis.c.dag_id + "/" + tis.c.task_id, "skipped")))
    # Highest priority first (its rank is minus the priority), then callers in turn (the fair tag, see
    # runs.fair_tag), then oldest.
    order = (tis.c.priority_rank, tis.c.fair_tag, tis.c.id)
    if of_dags:
        ranked = (
            sa.select(tis.c.id, tis.c.priority_rank, tis.c.fair_tag)
            .where(*queued)
            .order_by(*order)
            .limit(limit)
        )
        claimable = d.claimable_among(ranked, tis.c.dag_id, "dag_ids", limit)
    else:
        claimable = d.claimable(sa.select(tis.c.id).where(*queued).order_by(*order).limit(limit))
    # Written out because SQLite renders RETURNING columns unqualified, and a correlated subquery built by
    # SQLAlchemy would then read "WHERE dag_id = dag_id" (every run): it named the first run's state for
    # every claim, and a claimed run stayed queued on SQLite.
    run_state = sa.literal_column(
        "(SELECT dag_runs.state FROM dag_runs WHERE dag_runs.dag_id = task_instances.dag_id"
        " AND dag_runs.run_id = task_instances.run_id)",
        sa.String,
    ).label("run_state")
    assert (runs.name, tis.name) == ("dag_runs", "task_instances")
    return (
        sa.update(tis)
        .where(tis.c.id.in_(claimable), tis.c.state == TIState.QUEUED.value)
        .values(leased())
        # The run's state too, so that only a claim whose run is still queued spends a statement on
        # starting it (all but a run's first claims find it running).
        .returning(*TI_COLUMNS, tis.c.fair_tag, run_state)
    )


def _ready_queues(d: Dialect) -> sa.Select[Any]:
    """Which of the queues the list parameter ``queues`` names hold a task instance a claim may take now:
    one index seek per queue (ix_task_instances_claim), stopping at its first such row, where a
    ``DISTINCT`` over the queued rows would read every one of them."""
    tis = tables.task_instances
    wanted = d.listed("queues")
    ready = sa.exists().where(
        tis.c.state == TIState.QUEUED.value,
        tis.c.queue == wanted.c.value,
        sa.or_(tis.c.not_before_us.is_(None), tis.c.not_before_us <= sa.bindparam("now_us")),
    )
    return sa.select(wanted.c.value.label("queue")).select_from(wanted).where(ready)


class SqlLeaseStore:
    """Claims and leases of task instances in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)
        self._dialect = DIALECTS[database.dialect_name]

    async def claim(
        self,
        queue: str,
        worker_id: str,
        *,
        limit: int,
        now: datetime,
        lease_until: datetime,
        dag_ids: Sequence[str] | None = None,
        skip_tasks: Collection[tuple[str, str]] = (),
        claimant: str | None = None,
    ) -> list[TaskInstance]:
        """Claim up to ``limit`` queued task instances of ``queue`` (of ``dag_ids`` when given, but none of
        the (dag_id, task_id) of ``skip_tasks``; one statement), then start their runs.

        The claim is one statement on its own, not a transaction: it is atomic by itself, and a transaction
        around it would cost two more round trips on the hot path of every hop of a chain. Starting a run
        (queued -> running, each its own statement) only follows for the runs the claim found queued; if
        the process dies in between, the run reads ``queued`` until its next advance sets its state, which
        every report does (a run never goes back to queued).
        """
        if dag_ids is not None and not dag_ids:
            return []
        now_us = to_us(now)
        params: dict[str, Any] = {
            "queue": queue,
            "limit": limit,
            "worker_id": worker_id,
            "claimant": claimant,
            "until_us": to_us(lease_until),
            "now_us": now_us,
        }
        s = self._s
        if skip_tasks:
            statement = s.claim_skipping if dag_ids is None else s.claim_of_dags_skipping
            params["skipped"] = self._dialect.strings(sorted({f"{d}/{t}" for d, t in skip_tasks}))
        else:
            statement = s.claim if dag_ids is None else s.claim_of_dags
        if dag_ids is not None:
            params["dag_ids"] = self._dialect.strings(sorted(set(dag_ids)))
        rows = await self._db.write(statement, params)
        # In the order they were picked (RETURNING has none): a claim whose answer has no room for all
        # hands out the first and puts the rest back (ClaimBroker._hand_out).
        rows = sorted(rows, key=lambda row: (row["priority_rank"], row["fair_tag"], row["id"]))
        claimed = [ti_from(row) for row in rows]
        queued = {(row["dag_id"], row["run_id"]) for row in rows if row["run_state"] == RunState.QUEUED.value}
        for dag_id, run_id in sorted(queued):
            await self._db.write_count(
                self._s.start_run, {"dag_id": dag_id, "run_id": run_id, "now_us": now_us}
            )
        return claimed

    async def unclaim(self, tis: Sequence[TaskInstance], *, now: datetime) -> list[uuid.UUID]:
        """Put claimed task instances back in their queues (one statement per worker that claimed them)."""
        by_owner: dict[str | None, list[str]] = {}
        for ti in tis:
            by_owner.setdefault(ti.lease_owner, []).append(str(ti.id))
        put_back: list[uuid.UUID] = []
        for owner, ids in by_owner.items():
            if owner is None:
                continue
            params = {"ids": self._dialect.strings(ids), "worker_id": owner, "now_us": to_us(now)}
            rows = await self._db.write(self._s.unclaim, params)
            put_back += (uuid.UUID(str(row["id"])) for row in rows)
        return put_back

    async def reclaim(
        self,
        worker_id: str,
        known: Collection[uuid.UUID],
        *,
        limit: int,
        now: datetime,
        lease_until: datetime,
        claimant: str,
    ) -> list[TaskInstance]:
        """The running tries leased to ``worker_id``, handed out to ``claimant`` and unchanged since, but
        those of ``known``, handed out again (one statement)."""
        params = {
            "worker_id": worker_id,
            "claimant": claimant,
            "known": self._dialect.strings(sorted(str(ti_id) for ti_id in known)),
            "limit": limit,
            "until_us": to_us(lease_until),
            "now_us": to_us(now),
        }
        rows = await self._db.write(self._s.reclaim, params)
        return sorted((ti_from(row) for row in rows), key=lambda ti: ti.id)

    async def extend_lease(self, ti_id: uuid.UUID, until: datetime, *, now: datetime) -> TIState | None:
        """Extend a running task instance's lease; otherwise return its state (None if missing)."""
        params = {"id": str(ti_id), "until_us": to_us(until), "now_us": to_us(now)}
        if await self._db.write_count(self._s.extend_lease, params) == 1:
            return TIState.RUNNING
        row = await self._db.fetchrow(self._s.ti_state, {"id": str(ti_id)})
        return None if row is None else TIState(row["state"])

    async def overdue(self, now: datetime, *, limit: int = 100, leases: bool = True) -> list[TaskInstance]:
        """Running task instances past their lease (with ``leases``) or their timeout."""
        statement = self._s.overdue if leases else self._s.timed_out
        rows = await self._db.fetch(statement, {"now_us": to_us(now), "limit": limit})
        return [ti_from(row) for row in rows]

    async def ready_queues(self, queues: Sequence[str], now: datetime) -> set[str]:
        """Those of ``queues`` that hold a task instance a claim may take at ``now`` (one statement)."""
        params = {"queues": self._dialect.strings(list(queues)), "now_us": to_us(now)}
        return {row["queue"] for row in await self._db.fetch(self._s.ready_queues, params)}

    async def queue_backlogs(self, now: datetime) -> dict[str, QueueBacklog]:
        """Queued task instances by queue, and since when the longest-waiting claimable one is ready."""
        rows = await self._db.fetch(self._s.queue_backlogs, {"now_us": to_us(now)})
        return {
            row["queue"]: QueueBacklog(
                queued=int(row["n"]),
                ready_since=None if row["ready_us"] is None else from_us(int(row["ready_us"])),
            )
            for row in rows
        }
