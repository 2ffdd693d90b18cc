"""The SQL TaskBindings: which scope and assets a task instance may reach, and which tasks exist, for the
checks of state access."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement, const
from stateport.adapters.sql.rows import Specs
from stateport.domain.errors import UnreadableDag
from stateport.domain.models import TaskBinding, TaskScope


@dataclass(frozen=True, slots=True)
class _Statements:
    binding: Statement
    task_exists: Statement
    task_exists_any: Statement


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    """Compiled once per dialect per process."""
    d = DIALECTS[dialect_name]
    runs, tis, versions = tables.dag_runs, tables.task_instances, tables.dag_versions
    p = sa.bindparam
    at_task = (tis.c.dag_id == p("dag_id"), tis.c.run_id == p("run_id"), tis.c.task_id == p("task_id"))
    # A later try of the same task instance (the unique key's columns: one index probe).
    later = tis.alias("later")
    superseded = (
        sa.exists()
        .where(
            later.c.dag_id == tis.c.dag_id,
            later.c.run_id == tis.c.run_id,
            later.c.task_id == tis.c.task_id,
            later.c.map_index == tis.c.map_index,
            later.c.try_number > tis.c.try_number,
        )
        .label("superseded")
    )
    # The spec of the run's own version: a binding follows the version the run was created with.
    binding = (
        sa.select(
            tis.c.dag_id,
            tis.c.run_id,
            tis.c.task_id,
            tis.c.map_index,
            runs.c.dag_version,
            versions.c.spec,
            superseded,
        )
        .select_from(
            tis.join(runs, sa.and_(runs.c.dag_id == tis.c.dag_id, runs.c.run_id == tis.c.run_id)).join(
                versions,
                sa.and_(versions.c.dag_id == runs.c.dag_id, versions.c.version == runs.c.dag_version),
            )
        )
        .where(tis.c.id == p("id"))
    )
    return _Statements(
        binding=d.compile(binding),
        task_exists=d.compile(
            sa.select(const(1)).where(*at_task, tis.c.map_index == p("map_index")).limit(const(1))
        ),
        task_exists_any=d.compile(sa.select(const(1)).where(*at_task).limit(const(1))),
    )


class SqlTaskBindings:
    """Task-instance bindings read from the run metadata in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)
        self._specs = Specs()

    async def get_binding(self, ti_id: uuid.UUID) -> TaskBinding | None:
        """The task instance's scope and its task's asset names, from one joined query."""
        row = await self._db.fetchrow(self._s.binding, {"id": str(ti_id)})
        if row is None:
            return None
        dag_id, task_id = row["dag_id"], row["task_id"]
        try:
            task = self._specs.decode(dag_id, row["dag_version"], row["spec"]).task(task_id)
        except UnreadableDag:
            # Its assets are declared in a spec that cannot be read: none is reachable, its own scope is.
            task = None
        return TaskBinding(
            ti_id=ti_id,
            scope=TaskScope(dag_id=dag_id, run_id=row["run_id"], task_id=task_id, map_index=row["map_index"]),
            assets=task.asset_names() if task is not None else frozenset(),
            superseded=bool(row["superseded"]),
        )

    async def task_exists(self, scope: TaskScope, *, any_map_index: bool = False) -> bool:
        """Whether any try of a task instance exists at the scope (at any map index when asked)."""
        params: dict[str, Any] = {"dag_id": scope.dag_id, "run_id": scope.run_id, "task_id": scope.task_id}
        if any_map_index:
            return await self._db.fetchrow(self._s.task_exists_any, params) is not None
        params["map_index"] = scope.map_index
        return await self._db.fetchrow(self._s.task_exists, params) is not None
