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
    hold: Statement
    drop: Statement
    renew: Statement
    elsewhere: Statement
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
    return _Statements(
        hold=d.compile(
            insert.on_conflict_do_update(
                index_elements=[w.c.dag_id, w.c.run_id, w.c.holder],
                set_={"cancels": insert.excluded.cancels, "expires_at_us": insert.excluded.expires_at_us},
            )
        ),
        drop=d.compile(sa.delete(w).where(*at, w.c.holder == p("holder"))),
        renew=d.compile(sa.update(w).where(w.c.holder == p("holder")).values(expires_at_us=p("until_us"))),
        elsewhere=d.compile(
            sa.select(w.c.holder)
            .where(*at, w.c.holder != p("holder"), w.c.expires_at_us > p("now_us"))
            .limit(1)
        ),
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
        await self._db.write_count(self._s.hold, params)

    async def drop(self, holder: str, dag_id: str, run_id: str) -> None:
        await self._db.write_count(self._s.drop, {"holder": holder, "dag_id": dag_id, "run_id": run_id})

    async def renew(self, holder: str, until: datetime) -> None:
        await self._db.write_count(self._s.renew, {"holder": holder, "until_us": to_us(until)})

    async def held_elsewhere(self, holder: str, dag_id: str, run_id: str, *, now: datetime) -> bool:
        params = {"holder": holder, "dag_id": dag_id, "run_id": run_id, "now_us": to_us(now)}
        return await self._db.fetchrow(self._s.elsewhere, params) is not None

    async def orphans(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        rows = await self._db.write(self._s.expired, {"now_us": to_us(now), "limit": limit})
        return sorted({(row["dag_id"], row["run_id"]) for row in rows if row["cancels"]})
