"""Driver exceptions to domain errors, in one place for the whole SQL adapter.

asyncpg, sqlite3 (which aiosqlite re-raises), SQLAlchemy (migrations only), sockets and timeouts all end
here. Whatever means "the database cannot answer now" becomes ``Unavailable``; a violated constraint
becomes ``Conflict``; a value the database cannot store becomes ``Invalid``. Domain errors pass through.
The event bus (``events.py``) asks for ``unavailable_only``: nothing its own connection does is the caller's
fault (a full NOTIFY queue is the server's limit), so every driver error is ``Unavailable`` there.
"""

from __future__ import annotations

import sqlite3

import asyncpg
import sqlalchemy.exc
from asyncpg import exceptions as pg

from stateport.adapters.shared.errors import TranslatedErrors
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


def _translate_unavailable(exc: Exception) -> StateportError | None:
    error = translate(exc)
    if error is None or isinstance(error, Unavailable):
        return error
    return Unavailable(error.detail)


_INSTANCE = TranslatedErrors(translate, "sql")
_UNAVAILABLE_ONLY = TranslatedErrors(_translate_unavailable, "sql")


def database_errors(*, unavailable_only: bool = False) -> TranslatedErrors:
    """The context manager that maps driver exceptions to domain errors (all ``Unavailable`` if asked)."""
    return _UNAVAILABLE_ONLY if unavailable_only else _INSTANCE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
