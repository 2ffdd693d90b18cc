"""Alembic environment: runs on the connection that ``stateport.adapters.sql.migrations`` hands in.

There is no alembic.ini and no engine here: ``upgrade()`` opens an async connection (SQLAlchemy's async
engine on aiosqlite or asyncpg), takes the migration lock, and calls Alembic through ``run_sync`` with the
connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from stateport.adapters.sql.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `stateport migrate` (stateport.adapters.sql.migrations.upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them; batch mode lets later revisions use op.alter_column there.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
