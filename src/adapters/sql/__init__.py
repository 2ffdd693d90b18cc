"""The SQL adapter: the StateStore and the run-metadata stores (``RunStores``) on SQLite (aiosqlite) or
PostgreSQL (asyncpg), and the EventBus on PostgreSQL LISTEN/NOTIFY.

tables.py      the schema, SQLAlchemy Core
dialect.py     what differs between the two databases; statements compiled once per dialect
database.py    the Database handle the stores share (postgres.py and sqlite.py execute); rows by column name
errors.py      driver exceptions to domain errors
state.py       SqlStateStore
rows.py        rows to runs and task instances and back; the decoded DAG specs
dags.py        SqlDagStore: DAG versions and assets
runs.py        SqlRunStore and SqlRunUnit: runs, task instances, the run lock
bindings.py    SqlTaskBindings: what state access is checked against
leases.py      SqlLeaseStore: claims, lease extensions, overdue tries
retention.py   SqlRetentionStore: finished runs, found and deleted
stores.py      open_run_stores(database): the five run-metadata stores together
events.py      PostgresEventBus (LISTEN/NOTIFY on a connection of its own)
migrations/    Alembic environment and versions; ``upgrade(url)`` applies them
"""
