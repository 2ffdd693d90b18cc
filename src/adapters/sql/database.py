"""The database handle the SQL stores share: connect, run compiled statements, transactions, close.

One code path, two small executors: ``postgres.py`` runs statements on an asyncpg pool, ``sqlite.py`` on
aiosqlite connections. Both take the same ``Statement`` objects (compiled once per dialect, see
``dialect.py``), return rows readable by column name (``Row``), and raise only domain errors
(``errors.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from stateport.adapters.sql.dialect import DIALECTS, Dialect, DialectName, Statement
from stateport.domain.errors import Invalid
from stateport.urls import SQLITE_SCHEMES, sqlite_path

Params = Mapping[str, Any]


class Row(Protocol):
    """A result row, as both drivers return it (asyncpg's ``Record``, ``sqlite3.Row``).

    Read a column by its name (the column's name, or the label given in the statement): a row read by
    position breaks silently when a statement's columns change. Iterating gives the values in the
    statement's order.
    """

    def __getitem__(self, key: str | int, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


POSTGRES_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


class Session(Protocol):
    """Statements on one connection, inside a transaction when it comes from ``Database.transaction``."""

    async def fetch(self, stmt: Statement, params: Params) -> list[Row]:
        """All rows of the statement."""
        ...

    async def fetchrow(self, stmt: Statement, params: Params) -> Row | None:
        """The first row of the statement, or None."""
        ...

    async def execute(self, stmt: Statement, params: Params) -> int:
        """Run a statement that returns no rows; return how many rows it changed."""
        ...

    async def executemany(self, stmt: Statement, params: Sequence[Params]) -> None:
        """Run the statement once per parameter set."""
        ...


class Database:
    """A connected database. Build one with ``await Database.connect(url)``; the constructor does no I/O.

    Single statements run through ``fetchrow``/``fetch`` (reads) and ``write``/``write_count`` (each an
    autocommitted transaction of its own); several statements that must commit together run in
    ``transaction()``. A write has committed durably when its call returns.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    @property
    def dialect_name(self) -> DialectName:
        """The dialect's name: ``sqlite`` or ``postgresql``."""
        return self.dialect.name

    @classmethod
    async def connect(cls, url: str, *, pool_size: int = 20, timeout_s: float = 5.0) -> Database:
        """Open the database at ``url`` (sqlite:///path or postgresql://...); Unavailable if it cannot."""
        # Imported here: the executors subclass Database, so they import this module first.
        if url.startswith(POSTGRES_SCHEMES):
            from stateport.adapters.sql.postgres import PostgresDatabase

            return await PostgresDatabase.open(asyncpg_dsn(url), pool_size=pool_size, timeout_s=timeout_s)
        if url.startswith(SQLITE_SCHEMES):
            from stateport.adapters.sql.sqlite import SqliteDatabase

            return await SqliteDatabase.open(sqlite_path(url), pool_size=pool_size, timeout_s=timeout_s)
        raise Invalid(
            f"unsupported database URL {redact(url)!r}: expected sqlite:///path or postgresql://..."
        )

    async def close(self) -> None:
        """Close every connection; later calls raise Unavailable."""
        raise NotImplementedError

    async def ping(self) -> None:
        """Return if the database would take a write now, else raise Unavailable: it answers, and it is
        not read-only (a standby, or a file another process holds the write lock of)."""
        raise NotImplementedError

    async def maintenance_warnings(self) -> list[str]:
        """What the database's configuration leaves undone that Stateport relies on (for the operator's
        log at start); none by default."""
        return []

    async def fetchrow(self, stmt: Statement, params: Params) -> Row | None:
        """Read one row (or None) outside any explicit transaction."""
        raise NotImplementedError

    async def fetch(self, stmt: Statement, params: Params) -> list[Row]:
        """Read every row outside any explicit transaction."""
        raise NotImplementedError

    async def write(self, stmt: Statement, params: Params) -> list[Row]:
        """Run one writing statement as its own transaction and return its RETURNING rows."""
        raise NotImplementedError

    async def write_count(self, stmt: Statement, params: Params) -> int:
        """Run one writing statement as its own transaction and return how many rows it changed."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        raise NotImplementedError

    def snapshot(self) -> AbstractAsyncContextManager[Session]:
        """A read-only transaction: every statement in it sees the same committed data."""
        raise NotImplementedError


def asyncpg_dsn(url: str) -> str:
    """A DSN asyncpg accepts: ``postgresql://`` or ``postgres://``, without SQLAlchemy's ``+asyncpg``."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy async-driver URL for ``url`` (used by migrations only)."""
    if url.startswith(POSTGRES_SCHEMES):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith(SQLITE_SCHEMES):
        return "sqlite+aiosqlite:///" + sqlite_path(url)
    raise Invalid(f"unsupported database URL {redact(url)!r}: expected sqlite:///path or postgresql://...")


def dialect_of(url: str) -> Dialect:
    """The dialect a URL selects."""
    return DIALECTS["postgresql" if url.startswith(POSTGRES_SCHEMES) else "sqlite"]


def redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
