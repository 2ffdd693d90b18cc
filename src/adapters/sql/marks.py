"""The SQL DeploymentMarks: one row per mark, replaced by each server that starts."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sqlalchemy as sa

from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement


@dataclass(frozen=True, slots=True)
class _Statements:
    read: Statement
    write: Statement


@functools.cache
def _statements(dialect_name: DialectName) -> _Statements:
    d = DIALECTS[dialect_name]
    m = tables.deployment_marks
    p = sa.bindparam
    insert = d.insert(m).values(name=p("name"), value=p("value"))
    write = insert.on_conflict_do_update(index_elements=[m.c.name], set_={"value": insert.excluded.value})
    return _Statements(
        read=d.compile(sa.select(m.c.value).where(m.c.name == p("name"))), write=d.compile(write)
    )


class SqlDeploymentMarks:
    """Deployment marks in SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._s = _statements(database.dialect_name)

    async def swap(self, name: str, value: str) -> str | None:
        """Set mark ``name`` to ``value`` and return the value it had (None: it had none)."""
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(self._s.read, {"name": name})
            await tx.execute(self._s.write, {"name": name, "value": value})
        return None if row is None else str(row["value"])
