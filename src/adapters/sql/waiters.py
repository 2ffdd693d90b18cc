"""The SQL WaiterStore: which server processes hold waiters of a run that named a disconnect policy."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from stateport.adapters.shared.timestamps import to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement


@dataclass(frozen=True, slots=True)
class _Statements:
    share_run: Statement
    hold: Statement
    drop: Statement
    renew: Statement
    expired: Statement


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    w = tables.run_waiters
    p = sa.bindparam
    at = (w.c.dag_id == p("dag_id"), w.c.run_id == p("run_id"))
    insert = d.insert(w).values(
        dag_id=p("dag_id"),
        run_id=p("run_id"),
        holder=p("holder"),
        cancels=p("cancels"),
        expires_at_us=p("until_us"),
    )
    runs = tables.dag_runs
    return _Statements(
        share_run=d.compile(
            d.for_share(
                sa.select(runs.c.run_id).where(runs.c.dag_id == p("dag_id"), runs.c.run_id == p("run_id"))
            )
        ),
        hold=d.compile(
            insert.on_conflict_do_update(
                index_elements=[w.c.dag_id, w.c.run_id, w.c.holder],
                set_={"cancels": insert.excluded.cancels, "expires_at_us": insert.excluded.expires_at_us},
            )
        ),
        drop=d.compile(sa.delete(w).where(*at, w.c.holder == p("holder"))),
        renew=d.compile(sa.update(w).where(w.c.holder == p("holder")).values(expires_at_us=p("until_us"))),
        expired=d.compile(
            sa.delete(w)
            .where(
                sa.tuple_(w.c.dag_id, w.c.run_id, w.c.holder).in_(
                    sa.select(w.c.dag_id, w.c.run_id, w.c.holder)
                    .where(w.c.expires_at_us <= p("now_us"))
                    .limit(p("limit"))
                )
            )
            .returning(w.c.dag_id, w.c.run_id, w.c.cancels)
        ),
    )


class SqlWaiterStore:
    """The registry of disconnect-policy waiters in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)

    async def hold(self, holder: str, dag_id: str, run_id: str, *, cancels: bool, until: datetime) -> None:
        params = {
            "holder": holder,
            "dag_id": dag_id,
            "run_id": run_id,
            "cancels": int(cancels),
            "until_us": to_us(until),
        }
        # The run's row is held (in share mode) while the row goes in: a cancel that waits for the last
        # waiter (``RunUnit.waited``, under the run's exclusive lock) either sees this row or is over
        # before it is written, never in between (docs/runs.md, disconnect policy).
        async with self._db.transaction() as tx:
            await tx.fetchrow(self._s.share_run, {"dag_id": dag_id, "run_id": run_id})
            await tx.execute(self._s.hold, params)

    async def drop(self, holder: str, dag_id: str, run_id: str) -> None:
        await self._db.write_count(self._s.drop, {"holder": holder, "dag_id": dag_id, "run_id": run_id})

    async def renew(self, holder: str, until: datetime) -> None:
        await self._db.write_count(self._s.renew, {"holder": holder, "until_us": to_us(until)})

    async def orphans(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        rows = await self._db.write(self._s.expired, {"now_us": to_us(now), "limit": limit})
        return sorted({(row["dag_id"], row["run_id"]) for row in rows if row["cancels"]})
