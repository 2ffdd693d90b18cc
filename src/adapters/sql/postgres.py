"""The PostgreSQL executor: compiled statements on asyncpg's own pool.

asyncpg's pool keeps a prepared-statement cache per connection, so a statement compiled once (see
``dialect.py``) is parsed and planned once per connection. Every wait is bounded by ``timeout_s``: connect,
the turn for a connection, pool acquire (which also bounds the release), and each command
(``command_timeout``).

Connections are handed out by turns (``FairTurns``: callers in rotation, each caller's requests in arrival
order). asyncpg's pool queue is not fair under contention: a connection released while tasks wait is taken
by whichever task asks next, and a woken waiter that finds the queue empty again goes to the back of the
line. With 100-400 requests sharing 20 connections some requests waited 100-280 ms while the median waited
nothing (the p99 of a state GET). Turns of the pool's size in front of ``acquire`` (no newcomer passes a
waiter) mean a task that holds a turn always finds a free connection in the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg

from stateport.adapters.shared.turns import take_turn
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database, Params, Row
from stateport.adapters.sql.dialect import DIALECTS, Statement
from stateport.adapters.sql.errors import database_errors
from stateport.domain.errors import Unavailable, Unwritable
from stateport.domain.turns import FairTurns

# Whether autovacuum runs: it needs the statistics collector's counts too (either setting off stops it).
# "on" on a hot standby and in a database whose default_transaction_read_only is on: every write fails.
_READ_ONLY = "SELECT current_setting('transaction_read_only')"
_AUTOVACUUM_RUNS = "SELECT current_setting('autovacuum') = 'on' AND current_setting('track_counts') = 'on'"
# The least time a command gets after a long wait for its turn: enough for a healthy database to answer.
MIN_COMMAND_S = 0.05


async def _keep_session(connection: Any) -> None:
    """Pool release hook that skips asyncpg's default reset query.

    The default sends ``RESET ALL; UNLISTEN *; ...`` on every release: a second round trip per request.
    Pooled connections here never change session settings, LISTEN or take session advisory locks, so
    there is nothing to reset; asyncpg still rolls back a transaction left open.
    """


class PgSession:
    """Statements on one asyncpg connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, stmt: Statement, params: Params) -> list[Row]:
        rows: list[Row] = await self._conn.fetch(stmt.sql, *stmt.args(params))
        return rows

    async def fetchrow(self, stmt: Statement, params: Params) -> Row | None:
        row: Row | None = await self._conn.fetchrow(stmt.sql, *stmt.args(params))
        return row

    async def execute(self, stmt: Statement, params: Params) -> int:
        status: str = await self._conn.execute(stmt.sql, *stmt.args(params))
        return _rowcount(status)

    async def executemany(self, stmt: Statement, params: Sequence[Params]) -> None:
        await self._conn.executemany(stmt.sql, [stmt.args(p) for p in params])


# What leaves a connection in no known state: a command that timed out (the server may still be running
# it), a socket error, a connection asyncpg has closed.
_BROKEN = (TimeoutError, OSError, asyncpg.InterfaceError)


class _Checkout:
    """``async with``: wait for a turn (``FairTurns``), then take a connection from the pool.

    ``timeout`` is what is left of the caller's ``timeout_s`` once it has its connection, for the command
    that follows: with the store hanging, a request queued behind the pool would otherwise wait
    ``timeout_s`` for its turn and then ``timeout_s`` again for its command (twice the documented 503).
    """

    __slots__ = ("_db", "_held", "timeout")

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._held: Any = None
        self.timeout = db._timeout

    async def __aenter__(self) -> Any:
        db = self._db
        if db._turns.locked():
            started = time.monotonic()
            await take_turn(db._turns, db._timeout)
            self.timeout = max(db._timeout - (time.monotonic() - started), MIN_COMMAND_S)
        else:
            await take_turn(db._turns, None)  # returns at once
        try:
            self._held = db._pool.acquire(timeout=self.timeout)
            return await self._held.__aenter__()
        except BaseException:
            db._turns.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._held.__aexit__(*exc)
        finally:
            self._db._turns.release()


class PostgresDatabase(Database):
    """A PostgreSQL database reached through an asyncpg pool."""

    def __init__(self, pool: Any, timeout_s: float, pool_size: int) -> None:
        super().__init__(DIALECTS["postgresql"])
        self._pool = pool
        self._timeout = timeout_s
        self._turns = FairTurns(pool_size)

    def _connection(self) -> _Checkout:
        return _Checkout(self)

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int, timeout_s: float) -> PostgresDatabase:
        """Create the pool (one connection up front, so a database that is down fails here)."""
        with database_errors():
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                timeout=timeout_s,
                command_timeout=timeout_s,
                statement_cache_size=512,
                reset=_keep_session,
                server_settings={"application_name": "stateport"},
            )
        return cls(pool, timeout_s, pool_size)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout)
        except TimeoutError:
            # Connections still busy (or a server that stopped answering): drop them.
            self._pool.terminate()

    async def ping(self) -> None:
        with database_errors():
            checkout = self._connection()
            async with checkout as conn:
                call = conn.fetchval(_READ_ONLY, timeout=checkout.timeout)
                read_only = await _guarded(conn, call)
                if read_only != "on":
                    await _writable(conn, checkout.timeout)
        if read_only == "on":
            raise Unwritable("the database is read-only (a standby, or default_transaction_read_only on)")

    async def maintenance_warnings(self) -> list[str]:
        # Without autovacuum nothing ANALYZEs the tables, and with no statistics PostgreSQL's plans read a run
        # by any index that starts with its DAG id, not by its primary key: every run of the DAG per read
        # (0.75 ms per read of a run with 1,580 runs of one DAG on the benchmark machine, growing with them).
        with database_errors():
            checkout = self._connection()
            async with checkout as conn:
                call = conn.fetchval(_AUTOVACUUM_RUNS, timeout=checkout.timeout)
                running = await _guarded(conn, call)
        if running:
            return []
        return [
            "PostgreSQL's autovacuum (or its track_counts) is off: nothing gathers the statistics its "
            "planner needs, and reads of a run then scan every run of its DAG (slower as runs accumulate). "
            "Turn autovacuum on, or run ANALYZE regularly (docs/configuration.md, PostgreSQL's statistics)."
        ]

    async def fetchrow(self, stmt: Statement, params: Params) -> Row | None:
        with database_errors():
            checkout = self._connection()
            async with checkout as conn:
                call = conn.fetchrow(stmt.sql, *stmt.args(params), timeout=checkout.timeout)
                row: Row | None = await _guarded(conn, call)
                return row

    async def fetch(self, stmt: Statement, params: Params) -> list[Row]:
        with database_errors():
            checkout = self._connection()
            async with checkout as conn:
                call = conn.fetch(stmt.sql, *stmt.args(params), timeout=checkout.timeout)
                rows: list[Row] = await _guarded(conn, call)
                return rows

    async def write(self, stmt: Statement, params: Params) -> list[Row]:
        # A single statement outside a transaction block commits on its own.
        return await self.fetch(stmt, params)

    async def write_count(self, stmt: Statement, params: Params) -> int:
        with database_errors():
            checkout = self._connection()
            async with checkout as conn:
                call = conn.execute(stmt.sql, *stmt.args(params), timeout=checkout.timeout)
                status: str = await _guarded(conn, call)
                return _rowcount(status)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgSession]:
        async with self._transaction() as session:
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PgSession]:
        async with self._transaction(isolation="repeatable_read", readonly=True) as session:
            yield session

    @asynccontextmanager
    async def _transaction(self, **options: Any) -> AsyncIterator[PgSession]:
        """A transaction on a pooled connection; a connection that timed out or broke is dropped, with no
        ROLLBACK: asyncpg's own ``async with conn.transaction()`` sent one first, which on a server that had
        stopped answering waited a whole timeout more, so a write's 503 came at twice
        ``STATEPORT_DB_TIMEOUT_S`` (an outsider's find). So is one whose task was cancelled (the server
        shutting down): its ROLLBACK, sent to a server that had stopped answering, waited for ever, and the
        server's shutdown with it (another). The server rolls back what a dropped connection left open."""
        with database_errors():
            async with self._connection() as conn:
                transaction = conn.transaction(**options)
                try:
                    await transaction.start()
                    try:
                        yield PgSession(conn)
                    except BaseException as exc:
                        if not isinstance(exc, (*_BROKEN, asyncio.CancelledError)):
                            await _rolled_back(conn, transaction, self._timeout)
                        raise
                    await transaction.commit()
                except (*_BROKEN, asyncio.CancelledError):
                    _drop(conn)
                    raise


async def _rolled_back(conn: Any, transaction: Any, timeout_s: float) -> None:
    """Roll back; a connection the ROLLBACK cannot be sent on (closed under it, or still busy with a
    statement a cancellation cut short: asyncpg's "another operation is in progress"), or that does not
    answer it within ``timeout_s`` (asyncpg gives it none), is dropped instead, and the error that ended
    the transaction is the one raised, not the ROLLBACK's (an outsider saw "cannot call
    Transaction.rollback(): the underlying connection is closed" as a 503's reason)."""
    try:
        async with asyncio.timeout(timeout_s):
            await transaction.rollback()
    except (*_BROKEN, asyncpg.PostgresError, asyncpg.InternalClientError):
        _drop(conn)


def _drop(conn: Any) -> None:
    """Close a pooled connection at once; one the pool took back already (closed, released) is left."""
    with suppress(asyncpg.InterfaceError):
        if not conn.is_closed():
            conn.terminate()


# Every table a write may take: the lock a write takes on each (ROW EXCLUSIVE), asked for and let go.
_LOCK_PROBE = (
    "LOCK TABLE " + ", ".join(t.name for t in tables.metadata.sorted_tables) + " IN ROW EXCLUSIVE MODE NOWAIT"
)


async def _writable(conn: Any, command_s: float | None) -> None:
    """Unavailable if a table is locked against writes (``LOCK TABLE ... IN SHARE MODE`` or stronger, a
    migration's ``ALTER TABLE``): every write waits for it, and readiness said ``ok`` while each request
    answered 503 at its timeout (an outsider's find)."""
    try:
        async with conn.transaction():
            await _guarded(conn, conn.execute(_LOCK_PROBE, timeout=command_s))
    except asyncpg.LockNotAvailableError as exc:
        raise Unavailable(f"a table is locked against writes ({exc})") from exc


async def _guarded(conn: Any, call: Any) -> Any:
    """Await ``call``; on a timeout or a broken socket, drop the connection instead of returning it.

    Returning a timed-out connection to the pool waits for the server to confirm the cancellation, which
    a server that stopped answering never does: the caller would wait ``timeout_s`` a second time.
    """
    try:
        return await call
    except (TimeoutError, OSError):
        _drop(conn)
        raise


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3" or "INSERT 0 1".
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
