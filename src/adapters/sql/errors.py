"""Driver exceptions to domain errors, in one place for the whole SQL adapter.

asyncpg, sqlite3 (which aiosqlite re-raises), SQLAlchemy (migrations only), sockets and timeouts all end
here. Whatever means "the database cannot answer now" becomes ``Unavailable``; a violated constraint
becomes ``Conflict``; a value the database cannot store becomes ``Invalid``. Domain errors pass through.
"""

from __future__ import annotations

import sqlite3
from types import TracebackType

import asyncpg
import sqlalchemy.exc
from asyncpg import exceptions as pg

from stateport.domain.errors import Conflict, Invalid, StateportError, Unavailable

UNMIGRATED = "the database schema is missing or out of date: run `stateport migrate`"


def translate(exc: Exception) -> StateportError | None:
    """The domain error for a driver exception, or None for an exception that is not the driver's."""
    match exc:
        case StateportError():
            return None
        case pg.IntegrityConstraintViolationError() | sqlite3.IntegrityError():
            return Conflict(f"the change conflicts with stored data: {_first_line(exc)}")
        case (
            pg.DataError()
            | pg.ProgramLimitExceededError()
            | sqlite3.DataError()
            | OverflowError()
            | UnicodeError()
        ):
            return Invalid(f"the database cannot store this value: {_first_line(exc)}")
        case pg.UndefinedTableError() | pg.UndefinedColumnError():
            return Unavailable(UNMIGRATED)
        case sqlite3.OperationalError() if "no such table" in str(exc) or "no such column" in str(exc):
            return Unavailable(UNMIGRATED)
        case TimeoutError():
            return Unavailable("the database did not answer in time")
        case (
            pg.PostgresConnectionError()
            | pg.OperatorInterventionError()
            | pg.InsufficientResourcesError()
            | pg.TransactionRollbackError()
            | pg.InvalidCatalogNameError()
            | pg.InvalidAuthorizationSpecificationError()
            | asyncpg.InterfaceError()
            | OSError()
        ):
            return Unavailable(f"the database is unavailable: {_first_line(exc)}")
        case asyncpg.PostgresError() | pg.InternalClientError() | sqlite3.Error():
            # Anything else the driver says is still the database failing this request, not the caller.
            return Unavailable(f"database error: {type(exc).__name__}: {_first_line(exc)}")
        case sqlalchemy.exc.IntegrityError():
            return Conflict(f"the change conflicts with stored data: {_first_line(exc)}")
        case sqlalchemy.exc.DataError():
            return Invalid(f"the database cannot store this value: {_first_line(exc)}")
        case sqlalchemy.exc.SQLAlchemyError():
            return Unavailable(f"database error: {_first_line(exc)}")
    return None


class _DatabaseErrors:
    """``with database_errors(): ...`` re-raises driver exceptions as domain errors, ``from`` the original.

    A plain class rather than ``contextlib.contextmanager``: it wraps every statement on the hot path.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception):
            error = translate(exc)
            if error is not None:
                raise error from exc


_INSTANCE = _DatabaseErrors()


def database_errors() -> _DatabaseErrors:
    """The context manager that maps driver exceptions to domain errors."""
    return _INSTANCE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
