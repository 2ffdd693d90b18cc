"""Schema migrations (Alembic), applied with ``await upgrade(url)`` at start-up or by ``stateport migrate``.

Safe to run from several processes at once: on PostgreSQL the upgrade holds a session advisory lock; on
SQLite it runs in one ``BEGIN IMMEDIATE`` transaction, which holds the file's write lock. Either way the
second process waits, then finds the schema at head and does nothing. Both databases have transactional
DDL, so an upgrade that fails leaves the previous revision intact.

A database already at ``HEAD_REVISION`` is recognised by one query, without loading Alembic and its
scripts: every ``stateport`` command and every server start calls ``upgrade``, and Alembic's import and
script scan were about a quarter of a CLI command's start-up CPU (0.66 s against 0.47 s in all, measured
on a SQLite database at head).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from stateport.adapters.sql.database import asyncpg_dsn, sqlalchemy_url
from stateport.adapters.sql.errors import database_errors
from stateport.domain.errors import Held, Unavailable, Unsupported
from stateport.urls import sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("stateport.migrations")

# The newest revision in versions/ (tests/adapters/test_sql.py checks that it is Alembic's head): change it
# with every new migration.
HEAD_REVISION = "0020"
SCRIPT_LOCATION = Path(__file__).parent
# pg_advisory_lock key: "Statepor" in ASCII, so operators can recognise it in pg_locks.
LOCK_KEY = 0x5374617465706F72
LOCK_WAIT_S = 60.0
# On PostgreSQL, how long one of a migration's statements waits for a table's lock before the migration
# rolls back, lets the servers' queries through, and tries again (within LOCK_WAIT_S in all). A DDL
# statement waiting for its lock makes every later query on that table wait behind it: with the whole
# LOCK_WAIT_S as its wait, one session left idle in a transaction held every server's claims, heartbeats
# and triggers for 60 s, all 503 (an outsider's find).
DDL_LOCK_WAIT_S = 2.0
# How long a connection may take to open, for a caller that names no bound (the server and the CLI pass
# ``STATEPORT_DB_TIMEOUT_S``: an outsider saw 10 s whatever it was set to, with PostgreSQL frozen).
CONNECT_S = 10.0


def alembic_config() -> Config:
    """Alembic's configuration, built in code: no alembic.ini is needed at run time."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return config


class Upgraded(NamedTuple):
    """The schema's revision before an upgrade (None: a new database) and after it."""

    before: str | None
    after: str | None

    def __str__(self) -> str:
        if self.before == self.after:
            return f"schema already at revision {self.after}"
        return f"schema migrated from {self.before or 'nothing (a new database)'} to revision {self.after}"


async def upgrade(url: str, revision: str = "head", *, timeout_s: float = CONNECT_S) -> Upgraded:
    """Apply every pending migration to the database at ``url`` (a no-op at head), or those up to
    ``revision`` (tests migrate from an older schema that way); answer the revisions before and after.
    ``timeout_s`` bounds each connection's opening and the read of the stored revision (not a migration's
    statements, which take what they take)."""
    stored = await _stored_revision(url, timeout_s)
    if revision == "head" and stored == HEAD_REVISION:
        return Upgraded(stored, stored)
    _check_known(stored)
    # Alembic keeps the running migration in module globals (``alembic.context``, ``alembic.op``), so two
    # upgrades in one process must not interleave, whatever the database's own lock allows.
    async with _process_lock():
        before, after = await _with_lock(url, functools.partial(_upgrade, revision=revision), timeout_s)
    return Upgraded(before, after)


def _check_known(stored: str | None) -> None:
    """Unsupported for a schema this Stateport does not know: one a newer Stateport migrated (a deploy
    rolled back), or another application's Alembic history in the same database. Alembic said so in a
    100-line traceback from every command (an outsider's find)."""
    if stored is None:
        return
    numbered = stored.isdigit() and len(stored) == len(HEAD_REVISION)  # Stateport's: 0001, 0002, ...
    if numbered and stored <= HEAD_REVISION:
        return
    if numbered:
        raise Unsupported(
            f"the database's schema is at revision {stored}, newer than this Stateport knows (up to "
            f"{HEAD_REVISION}): a newer Stateport migrated it. Run that version (or a newer one); migrations "
            "are not undone"
        )
    raise Unsupported(
        f"the database records Alembic revision {stored!r}, which is not one of Stateport's: it belongs to "
        "another application. Give Stateport a database (or PostgreSQL schema) of its own"
    )


_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _process_lock() -> asyncio.Lock:
    # One lock per event loop: an asyncio.Lock belongs to the loop it first waited on.
    loop = asyncio.get_running_loop()
    lock = _LOCKS.get(loop)
    if lock is None:
        lock = _LOCKS[loop] = asyncio.Lock()
    return lock


async def current(url: str) -> str | None:
    """The database's current revision, or None for a database never migrated."""
    engine = _engine(url)
    try:
        with database_errors():
            async with engine.connect() as conn:
                return await conn.run_sync(_current)
    finally:
        await engine.dispose()


_STORED = sa.text("SELECT version_num FROM alembic_version")


async def _stored_revision(url: str, timeout_s: float) -> str | None:
    """The revision the database records, read without Alembic or any lock; None if it records none
    (a new database). A database that cannot be reached is Unavailable here, not tried twice."""
    if _new_sqlite_file(url):
        return None  # the upgrade creates it, under its lock
    engine = _engine(url, writes=False, timeout_s=timeout_s)
    try:
        with database_errors():
            async with engine.connect() as conn:
                try:
                    return (await conn.execute(_STORED)).scalar()
                except sa.exc.DBAPIError:  # no alembic_version table: never migrated
                    return None
    finally:
        await engine.dispose()


def _new_sqlite_file(url: str) -> bool:
    # One stat, not worth a thread hop.
    return sqlalchemy_url(url).startswith("sqlite") and not Path(sqlite_path(url)).exists()


def _upgrade(connection: sa.Connection, *, revision: str) -> tuple[str | None, str | None]:
    """The revisions before and after, read in the upgrade's own transaction (under its lock: another
    process may have upgraded meanwhile)."""
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    before = _current(connection)
    command.upgrade(config, revision)
    return before, _current(connection)


def _current(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def _with_lock(url: str, work: Any, timeout_s: float) -> Any:
    if sqlalchemy_url(url).startswith("sqlite"):
        # BEGIN IMMEDIATE (see _engine) makes Alembic's transaction the file's only writer, but under load a
        # second process was still seen applying a revision the first had just applied: a lock file beside
        # the database serialises whole upgrades across processes, taken before connecting at all.
        async with _file_lock(Path(sqlite_path(url)).with_suffix(".migrate.lock")):
            return await _run(url, work, timeout_s)
    return await _run(url, work, timeout_s)


async def _run(url: str, work: Any, timeout_s: float) -> Any:
    engine = _engine(url, timeout_s=timeout_s)
    try:
        with database_errors():
            async with engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    return await _pg_locked(conn, work)
                result = await conn.run_sync(work)
                await conn.commit()
                return result
    finally:
        await engine.dispose()


@asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on ``path``, polled without blocking the event loop, for at most LOCK_WAIT_S."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = asyncio.get_running_loop().time() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(f"another process holds the migration lock {path}") from None
                await asyncio.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


async def _pg_locked(conn: AsyncConnection, work: Any) -> Any:
    # A session lock, so it spans Alembic's own transaction; released explicitly and by disconnecting.
    await conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
    await conn.commit()
    try:
        return await _short_lock_waits(conn, work)
    finally:
        await conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        await conn.commit()


_SHORT_WAITS = sa.text(f"SET lock_timeout = '{int(DDL_LOCK_WAIT_S * 1000)}ms'")
_LONG_WAITS = sa.text(f"SET lock_timeout = '{int(LOCK_WAIT_S * 1000)}ms'")
# Other sessions holding a lock on a table of this database, in a transaction for over a second: what a
# migration waits for. Not those whose query started within a statement's wait (plus a second): the
# servers' queries queued behind the migration's own statement, let through by its rollback, which were
# named as holders (an outsider's find); a query running longer, or a session idle in its transaction, is.
_HOLDERS = sa.text(
    "SELECT a.pid, a.state, a.xact_start, left(a.query, 120) AS query"
    " FROM pg_stat_activity a"
    " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
    " AND a.xact_start < now() - interval '1 second'"
    " AND (a.state <> 'active' OR a.query_start < now() - make_interval(secs => :queued_s))"
    " AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'relation' AND l.granted)"
    " ORDER BY a.xact_start LIMIT 5"
)


async def _short_lock_waits(conn: AsyncConnection, work: Any) -> Any:
    """``work`` in a transaction whose statements wait at most DDL_LOCK_WAIT_S for a lock: when one
    waits longer, the transaction rolls back (so the queries queued behind it go on), the sessions that
    hold the locks are named in the log, and it is tried again, for LOCK_WAIT_S in all."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + LOCK_WAIT_S
    await conn.execute(_SHORT_WAITS)
    await conn.commit()
    attempt = 0
    try:
        while True:
            try:
                result = await conn.run_sync(work)
                await conn.commit()
                return result
            except sa.exc.DBAPIError as exc:
                if _sqlstate(exc) != LOCK_NOT_AVAILABLE:
                    raise
                await conn.rollback()
                holders = await _lock_holders(conn)
                if loop.time() >= give_up_at:
                    raise Held(
                        f"the migration could not lock its tables within {LOCK_WAIT_S:g} s; {holders}: "
                        "end or finish those sessions, then migrate again (nothing was changed)"
                    ) from exc
                log.warning(
                    "the migration waits for a table's lock (%s); rolled back so the servers go on, "
                    "trying again (%d)",
                    holders,
                    attempt + 1,
                )
                await asyncio.sleep(min(5.0, 0.5 * 2**attempt))
                attempt += 1
    finally:
        # After a failed statement the transaction is aborted: without the rollback this SET failed too,
        # and its "current transaction is aborted" replaced the error that said why (an outsider's find).
        await conn.rollback()
        await conn.execute(_LONG_WAITS)
        await conn.commit()


async def _lock_holders(conn: AsyncConnection) -> str:
    rows = (await conn.execute(_HOLDERS, {"queued_s": DDL_LOCK_WAIT_S + 1})).all()
    await conn.commit()
    if not rows:
        return "held by sessions that have since let go"
    return "held by " + ", ".join(
        f"pid {row.pid} ({row.state}, in a transaction since {row.xact_start:%H:%M:%S}, {row.query!r})"
        for row in rows
    )


# PostgreSQL's lock_not_available: a statement's lock_timeout ran out.
LOCK_NOT_AVAILABLE = "55P03"


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    """The SQLSTATE of a driver error (SQLAlchemy's asyncpg adaptation carries it as ``sqlstate``)."""
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def _engine(url: str, *, writes: bool = True, timeout_s: float = CONNECT_S) -> AsyncEngine:
    """An engine of one connection at a time for the upgrade (``writes``: on SQLite each transaction takes
    the file's write lock at BEGIN), or for reading the stored revision. On PostgreSQL a connection opens
    within ``timeout_s``, and the reader's statements answer within it too (a migration's take what they
    take)."""
    sa_url = sqlalchemy_url(url)
    if not sa_url.startswith("sqlite"):
        dsn = asyncpg_dsn(url)

        async def connect() -> asyncpg.Connection:
            # asyncpg reads the whole URL, as the servers' pool does (``sslmode``, ``sslrootcert``, ...):
            # SQLAlchemy passed its query to connect() as arguments, and ?sslmode=require ended `migrate`
            # and `serve` with a traceback (an outsider's find). lock_timeout bounds the wait for the
            # advisory lock (and for DDL locks) instead of waiting forever.
            return await asyncpg.connect(
                dsn,
                timeout=timeout_s,
                command_timeout=None if writes else timeout_s,
                server_settings={"lock_timeout": str(int(LOCK_WAIT_S * 1000))},
            )

        return create_async_engine("postgresql+asyncpg://", poolclass=NullPool, async_creator=connect)
    engine = create_async_engine(sa_url, poolclass=NullPool, connect_args={"timeout": LOCK_WAIT_S})
    if not writes:
        # A reader only takes shared locks. It must not switch the file to WAL: that upgrades its shared
        # lock to an exclusive one, and two connections doing so at once (or one beside the upgrade's
        # BEGIN IMMEDIATE) is a deadlock SQLite answers with "database is locked" at once, its busy
        # timeout not waited (seen when four upgrades of a new file started together).
        return engine
    # One mkdir before the first connection creates the file; not worth a thread hop.
    Path(sqlite_path(url)).parent.mkdir(parents=True, exist_ok=True)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver (SQLAlchemy's documented aiosqlite recipe), so
        # that BEGIN below is the only BEGIN, and make the file WAL from its creation.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
