"""The SQLite executor: compiled statements on aiosqlite connections.

SQLite allows one writer at a time, so writes go through one writer connection serialised by turns
(``FairTurns`` of one; waiting for the turn is cheaper than waiting on SQLite's busy handler), each write
transaction opened with ``BEGIN IMMEDIATE`` so it holds the write lock from its first statement. Reads use
a small pool of reader connections, which WAL mode lets run alongside the writer.

Cancellation: aiosqlite runs each statement on its connection's own thread, and a call cancelled while it
waits still runs its statement there. A ``BEGIN`` cancelled on its way would leave a transaction open on
a connection that then goes back to use: on the writer, every later write would run inside it and never
be committed; on a reader, every later read would see one old snapshot. So a connection left by an
exception (a cancellation included) is rolled back, after whatever its thread still has queued, before
anyone else gets it (``_settled``).

Durability: WAL with ``synchronous=NORMAL``. A committed transaction survives the crash of the process
(the WAL is written before the commit returns); a power loss or OS crash may lose the last transactions
but never corrupts the database. ``FULL`` would add an fsync to every commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiosqlite

from stateport.adapters.shared.turns import take_turn
from stateport.adapters.sql.database import Database, Params, Row
from stateport.adapters.sql.dialect import DIALECTS, Statement
from stateport.adapters.sql.errors import database_errors
from stateport.domain.errors import Unavailable, Unwritable
from stateport.domain.turns import FairTurns

log = logging.getLogger("stateport.sql")

MAX_READERS = 4
CLOSED = "the database is closed"
# Below this much free space on its disk the database is not ready: a write (its WAL frames, a checkpoint)
# needs room, and a full disk fails every one.
MIN_FREE_BYTES = 1024 * 1024


class SqliteSession:
    """Statements on one aiosqlite connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, stmt: Statement, params: Params) -> list[Row]:
        return list(await self._conn.execute_fetchall(stmt.sql, stmt.args(params)))

    async def fetchrow(self, stmt: Statement, params: Params) -> Row | None:
        rows = await self.fetch(stmt, params)
        return rows[0] if rows else None

    async def execute(self, stmt: Statement, params: Params) -> int:
        # sqlite3 runs a statement that returns no rows to completion in execute(); nothing is left to close.
        cursor = await self._conn.execute(stmt.sql, stmt.args(params))
        count: int = cursor.rowcount
        return count

    async def executemany(self, stmt: Statement, params: Sequence[Params]) -> None:
        await self._conn.executemany(stmt.sql, [stmt.args(p) for p in params])


async def _open_connection(path: str, timeout_s: float, *, reader: bool) -> aiosqlite.Connection:
    # isolation_level=None: sqlite3 opens no implicit transactions; we issue BEGIN ourselves.
    # timeout: SQLite's busy handler waits that long for another process's write lock.
    conn = await aiosqlite.connect(path, timeout=timeout_s, isolation_level=None)
    # Rows readable by column name, as asyncpg's are (database.Row).
    conn.row_factory = sqlite3.Row
    try:
        if not reader:
            # Persistent in the file; set by the writer so the first process to open the file switches it.
            await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        if reader:
            await conn.execute("PRAGMA query_only = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


class SqliteDatabase(Database):
    """A SQLite file: one writer connection, a few readers."""

    def __init__(
        self,
        writer: aiosqlite.Connection,
        readers: list[aiosqlite.Connection],
        timeout_s: float,
        path: str | None = None,
    ) -> None:
        super().__init__(DIALECTS["sqlite"])
        self._writer = writer
        # The file the connections opened, by its device and inode: one deleted or replaced under them is
        # told by ``ping`` (the connections go on with the deleted file, whose writes a restart loses).
        self._path = path
        self._identity = None if path is None else _identity(path)
        self._gone_told = False
        # The writer's turns, as the readers' (callers in rotation: one caller's burst of writes does not
        # queue every other caller's write behind it).
        self._write_lock = FairTurns(1)
        self._all_readers = readers
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for reader in readers:
            self._readers.put_nowait(reader)
        self._turns = FairTurns(len(readers))
        self._timeout = timeout_s
        # The writer's busy timeout as last set (``_busy_within``), in ms; the connection opened with it.
        self._busy_ms = _ms(timeout_s)
        self._closed = False

    @classmethod
    async def open(cls, path: str, *, pool_size: int, timeout_s: float) -> SqliteDatabase:
        """Open the file (creating its directory), switch it to WAL, and open the connections."""
        with database_errors():
            # One mkdir at start-up; not worth a thread hop.
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            writer = await _open_connection(path, timeout_s, reader=False)
            readers: list[aiosqlite.Connection] = []
            try:
                for _ in range(max(1, min(pool_size, MAX_READERS))):
                    readers.append(await _open_connection(path, timeout_s, reader=True))
            except BaseException:
                for conn in [writer, *readers]:
                    await conn.close()
                raise
        return cls(writer, readers, timeout_s, path)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Let a write in flight finish (for at most timeout_s); aiosqlite closes after queued work anyway.
        try:
            async with asyncio.timeout(self._timeout):
                await self._write_lock.acquire()
        except TimeoutError:
            pass
        with database_errors():
            for conn in (self._writer, *self._all_readers):
                await conn.close()

    async def ping(self) -> None:
        self._check_file()
        self._check_space()
        # Through the writer: a file whose write lock another process holds (a long `sqlite3` session, a
        # copy taken with a lock) reads fine while every write waits out the busy timeout and fails.
        with database_errors():
            async with self._writing():
                await self._writer.execute("BEGIN IMMEDIATE")
                await self._writer.execute("ROLLBACK")

    def _check_space(self) -> None:
        """Unwritable when the disk that holds the database has less than ``MIN_FREE_BYTES`` free: every
        write failed "database or disk is full" while readiness said ``ok`` (an outsider's find), since
        the write probe below is rolled back before it needs the disk. One ``statvfs``, done inline."""
        if self._path is None:
            return
        try:
            found = os.statvfs(os.path.dirname(os.path.abspath(self._path)))
        except OSError:
            return  # the file check above and the probe below say what is wrong
        free = found.f_bavail * found.f_frsize
        if free < MIN_FREE_BYTES:
            raise Unwritable(
                f"the disk that holds the SQLite database {self._path} is full ({free} bytes free): "
                "writes fail until space is freed"
            )

    def _check_file(self) -> None:
        """Unavailable when the database's file was deleted or replaced since it was opened: the server
        went on answering 200 to writes that went to the deleted file, said ready, and started empty
        after a restart (an outsider's find). One ``stat`` of a local file, done inline."""
        if self._path is None or self._identity is None:
            return
        try:
            now = _identity(self._path)
        except FileNotFoundError:
            now = None
        if now == self._identity:
            return
        what = "deleted" if now is None else "replaced by another file"
        detail = (
            f"the SQLite database file {self._path} was {what} while this server ran: what it writes now "
            "goes to the file it opened, which a restart loses. Stop the server, put the database back "
            "(from a backup), then start it again"
        )
        if not self._gone_told:
            self._gone_told = True
            log.error("%s", detail)
        raise Unavailable(detail)

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._closed:
            raise Unavailable(CLOSED)
        # Turns (adapters/shared/turns.py: callers in rotation): a queue alone lets a newcomer take a
        # just-returned reader ahead of the tasks waiting for one. A turn always finds a reader free.
        await take_turn(self._turns, self._timeout)
        conn = self._readers.get_nowait()
        try:
            yield conn
        except BaseException:
            await _settled(conn)
            raise
        finally:
            self._readers.put_nowait(conn)
            self._turns.release()

    async def fetchrow(self, stmt: Statement, params: Params) -> Row | None:
        rows = await self.fetch(stmt, params)
        return rows[0] if rows else None

    async def fetch(self, stmt: Statement, params: Params) -> list[Row]:
        with database_errors():
            async with self._reader() as conn:
                return list(await conn.execute_fetchall(stmt.sql, stmt.args(params)))

    async def write(self, stmt: Statement, params: Params) -> list[Row]:
        with database_errors():
            async with self._writing():
                # Autocommit: the statement is its own transaction, committed once its rows are fetched.
                return list(await self._writer.execute_fetchall(stmt.sql, stmt.args(params)))

    async def write_count(self, stmt: Statement, params: Params) -> int:
        with database_errors():
            async with self._writing():
                return await SqliteSession(self._writer).execute(stmt, params)

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        if self._closed:
            raise Unavailable(CLOSED)
        asked = time.monotonic()
        async with asyncio.timeout(self._timeout):
            await self._write_lock.acquire()
        try:
            await self._busy_within(self._timeout - (time.monotonic() - asked))
            yield
        except BaseException:
            await _settled(self._writer)
            raise
        finally:
            self._write_lock.release()

    async def _busy_within(self, left_s: float) -> None:
        """Let SQLite's busy handler (waiting for another process's write lock) wait at most what is left
        of the write's ``timeout_s``. A write that waited long for its turn then waited out the whole busy
        timeout besides: an outsider's write answered 503 after 8.4 s with a timeout of 5 s, while another
        process held the file's lock. Set only after such a wait (``LATE_S``), and set back by the next
        write that did not wait: a statement on the writer's thread either way."""
        wanted = _ms(left_s) if left_s < self._timeout - LATE_S else _ms(self._timeout)
        if wanted != self._busy_ms:
            await self._writer.execute(f"PRAGMA busy_timeout = {wanted}")
            self._busy_ms = wanted

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteSession]:
        with database_errors():
            async with self._writing():
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield SqliteSession(self._writer)
                except BaseException:
                    await _rollback(self._writer)
                    raise
                await self._writer.execute("COMMIT")

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[SqliteSession]:
        with database_errors():
            async with self._reader() as conn:
                # A deferred read transaction pins one WAL snapshot for every statement in it.
                await conn.execute("BEGIN")
                try:
                    yield SqliteSession(conn)
                finally:
                    await _rollback(conn)


# A write that waited this long for its turn has its busy timeout cut to what is left (``_busy_within``).
LATE_S = 0.25


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


async def _settled(conn: aiosqlite.Connection) -> None:
    """Roll back whatever transaction ``conn`` has open once its thread has run what it still has queued
    (a statement of a cancelled call among it), and wait for that even if cancelled again: the connection
    is handed to the next caller only after. A second cancellation is raised once it is done."""
    settle = asyncio.ensure_future(_rollback_queued(conn))
    cancelled = False
    while not settle.done():
        try:
            await asyncio.shield(settle)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def _rollback_queued(conn: aiosqlite.Connection) -> None:
    # Unconditional: ``in_transaction`` is read now, before a queued BEGIN has run on the thread. With no
    # transaction open, SQLite refuses the ROLLBACK, which is the answer wanted.
    with suppress(sqlite3.Error, ValueError):  # ValueError: the connection is closed
        await conn.execute("ROLLBACK")


async def _rollback(conn: aiosqlite.Connection) -> None:
    # SQLite may have rolled back already (some I/O errors do): only roll back an open transaction.
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")


def _identity(path: str) -> tuple[int, int]:
    """The file's device and inode."""
    found = os.stat(path)
    return found.st_dev, found.st_ino
