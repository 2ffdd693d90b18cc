"""The SQL RetentionStore: finding finished runs past a cutoff, and deleting them."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from stateport.adapters.shared.timestamps import to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement
from stateport.domain.models import RunState


@dataclass(frozen=True, slots=True)
class _Statements:
    finished_runs: Statement
    delete_run: Statement


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    runs = tables.dag_runs
    p = sa.bindparam
    # Not IN (...): a literal list compiles to an expanding parameter, which a statement compiled once
    # cannot carry.
    finished = sa.or_(runs.c.state == RunState.SUCCESS.value, runs.c.state == RunState.FAILED.value)
    return _Statements(
        # A run is changed after it is created, never before: both times before the cutoff is the
        # contract's "last changed before", and the created_at index finds the candidates.
        finished_runs=d.compile(
            sa.select(runs.c.dag_id, runs.c.run_id)
            .where(runs.c.created_at_us < p("before_us"), runs.c.updated_at_us < p("before_us"), finished)
            .order_by(runs.c.created_at_us, runs.c.dag_id, runs.c.run_id)
            .limit(p("limit"))
        ),
        # The task instances go with it (ON DELETE CASCADE, indexed by uq_task_instances_try).
        delete_run=d.compile(
            sa.delete(runs).where(
                runs.c.dag_id == p("dag_id"),
                runs.c.run_id == p("run_id"),
                finished,
                runs.c.updated_at_us < p("before_us"),
            )
        ),
    )


class SqlRetentionStore:
    """Retention of finished runs in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)

    async def finished_runs(self, *, ended_before: datetime, limit: int) -> list[tuple[str, str]]:
        """Finished runs last changed before ``ended_before``, oldest (by creation) first."""
        rows = await self._db.fetch(self._s.finished_runs, {"before_us": to_us(ended_before), "limit": limit})
        return [(row["dag_id"], row["run_id"]) for row in rows]

    async def delete_run(self, dag_id: str, run_id: str, *, ended_before: datetime) -> bool:
        """Delete the run (its task instances cascade) if it is still finished and old enough."""
        params = {"dag_id": dag_id, "run_id": run_id, "before_us": to_us(ended_before)}
        return await self._db.write_count(self._s.delete_run, params) == 1
