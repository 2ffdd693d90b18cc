"""The SQL WorkerStore: the worker registry, and the queues' loads read off the task instances."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement
from stateport.domain.models import TIState
from stateport.domain.ports import QueueLoad, WorkerRecord, WorkerSighting


@dataclass(frozen=True, slots=True)
class _Statements:
    upsert: Statement
    owners: Statement
    seen: Statement
    loads: Statement
    prune: Statement


def _later(old: sa.ColumnElement[int], new: sa.ColumnElement[int]) -> sa.ColumnElement[int]:
    """The later of two times, either maybe NULL (one spelling for both dialects: SQLite has no GREATEST)."""
    return sa.case(
        (new.is_(None), old),
        (old.is_(None), new),
        (new > old, new),
        else_=old,
    )


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    w = tables.workers
    tis = tables.task_instances
    p = sa.bindparam
    insert = d.insert(w).values(
        worker_id=p("worker_id"),
        hostname=p("hostname"),
        pid=p("pid"),
        queues=p("queues"),
        first_seen_us=p("at_us"),
        last_seen_us=p("at_us"),
        last_claim_us=p("claim_us"),
        last_heartbeat_us=p("heartbeat_us"),
    )
    new = insert.excluded
    # A claim's queues replace those of an older claim only (two processes may flush out of order).
    newer_claim = sa.and_(
        new.last_claim_us.is_not(None),
        sa.or_(w.c.last_claim_us.is_(None), new.last_claim_us >= w.c.last_claim_us),
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[w.c.worker_id],
        set_={
            "hostname": sa.func.coalesce(new.hostname, w.c.hostname),
            "pid": sa.case((new.hostname.is_(None), w.c.pid), else_=new.pid),
            "queues": sa.case((newer_claim, new.queues), else_=w.c.queues),
            "last_seen_us": _later(w.c.last_seen_us, new.last_seen_us),
            "last_claim_us": _later(w.c.last_claim_us, new.last_claim_us),
            "last_heartbeat_us": _later(w.c.last_heartbeat_us, new.last_heartbeat_us),
        },
    )
    running = (
        sa.select(tis.c.lease_owner, sa.func.count().label("n"))
        .where(tis.c.state == TIState.RUNNING.value, tis.c.lease_owner.is_not(None))
        .group_by(tis.c.lease_owner)
        .subquery("running")
    )
    seen = (
        sa.select(w, sa.func.coalesce(running.c.n, 0).label("running"))
        .select_from(w.outerjoin(running, running.c.lease_owner == w.c.worker_id))
        .where(w.c.last_seen_us >= p("since_us"))
        .order_by(w.c.last_seen_us.desc(), w.c.worker_id)
        .limit(p("limit"))
    )
    loads = (
        sa.select(
            tis.c.queue,
            tis.c.state,
            sa.func.count().label("n"),
            sa.func.min(tis.c.created_at_us).label("oldest_us"),
        )
        # The claim index's prefix (state, queue) serves this.
        .where(sa.or_(tis.c.state == TIState.QUEUED.value, tis.c.state == TIState.RUNNING.value))
        .group_by(tis.c.queue, tis.c.state)
    )
    prune = sa.delete(w).where(
        w.c.worker_id.in_(
            sa.select(w.c.worker_id)
            .where(w.c.last_seen_us < p("before_us"))
            .limit(p("limit"))
            .scalar_subquery()
        )
    )
    return _Statements(
        upsert=d.compile(upsert),
        owners=d.compile(
            sa.select(tis.c.id, tis.c.lease_owner).where(
                d.among(tis.c.id, "ids"), tis.c.lease_owner.is_not(None)
            )
        ),
        seen=d.compile(seen),
        loads=d.compile(loads),
        prune=d.compile(prune),
    )


class SqlWorkerStore:
    """The worker registry in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)

    async def record(self, sightings: Sequence[WorkerSighting]) -> None:
        if not sightings:
            return
        params = []
        # One order for every process: two flushes of the same workers lock their rows in the same order.
        for s in sorted(sightings, key=lambda s: s.worker_id):
            params.append(
                {
                    "worker_id": s.worker_id,
                    "hostname": s.hostname,
                    "pid": s.pid if s.hostname is not None else None,
                    "queues": json.dumps(list(s.queues)),
                    "at_us": to_us(s.at),
                    "claim_us": None if s.claimed_at is None else to_us(s.claimed_at),
                    "heartbeat_us": None if s.heartbeat_at is None else to_us(s.heartbeat_at),
                }
            )
        async with self._db.transaction() as tx:
            await tx.executemany(self._s.upsert, params)

    async def lease_owners(self, ti_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        if not ti_ids:
            return {}
        ids = self._db.dialect.strings([str(i) for i in ti_ids])
        rows = await self._db.fetch(self._s.owners, {"ids": ids})
        return {uuid.UUID(row["id"]): row["lease_owner"] for row in rows}

    async def seen_since(self, since: datetime, *, limit: int) -> list[WorkerRecord]:
        rows = await self._db.fetch(self._s.seen, {"since_us": to_us(since), "limit": limit})
        return [
            WorkerRecord(
                worker_id=row["worker_id"],
                hostname=row["hostname"],
                pid=row["pid"],
                queues=tuple(json.loads(row["queues"])),
                first_seen_at=from_us(row["first_seen_us"]),
                last_seen_at=from_us(row["last_seen_us"]),
                last_claim_at=None if row["last_claim_us"] is None else from_us(row["last_claim_us"]),
                last_heartbeat_at=(
                    None if row["last_heartbeat_us"] is None else from_us(row["last_heartbeat_us"])
                ),
                running=int(row["running"]),
            )
            for row in rows
        ]

    async def queue_loads(self) -> list[QueueLoad]:
        loads: dict[str, QueueLoad] = {}
        for row in await self._db.fetch(self._s.loads, {}):
            queue = row["queue"]
            was = loads.get(queue) or QueueLoad(queue=queue, ready=0, running=0, oldest_ready_at=None)
            if row["state"] == TIState.QUEUED.value:
                oldest = None if row["oldest_us"] is None else from_us(row["oldest_us"])
                loads[queue] = QueueLoad(queue, int(row["n"]), was.running, oldest)
            else:
                loads[queue] = QueueLoad(queue, was.ready, int(row["n"]), was.oldest_ready_at)
        return [loads[q] for q in sorted(loads)]

    async def prune(self, before: datetime, *, limit: int) -> int:
        return await self._db.write_count(self._s.prune, {"before_us": to_us(before), "limit": limit})
