"""The SQL adapter: StateStore and RunStore on SQLite (aiosqlite) or PostgreSQL (asyncpg), and the
EventBus on PostgreSQL LISTEN/NOTIFY.

tables.py      the schema, SQLAlchemy Core
dialect.py     what differs between the two databases; statements compiled once per dialect
database.py    the Database handle the stores share (postgres.py and sqlite.py execute)
errors.py      driver exceptions to domain errors
state.py       SqlStateStore
runs.py        SqlRunStore
events.py      PostgresEventBus (LISTEN/NOTIFY on a connection of its own)
migrations/    Alembic environment and versions; ``upgrade(url)`` applies them
"""
