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
from stateport.domain.errors import Conflict, Invalid, StateportError, Unavailable, Unwritable

UNMIGRATED = "the database schema is missing or out of date: run `stateport migrate`"
# PostgreSQL's disk_full and read_only_sql_transaction (a standby); SQLite's words for the same.
_UNWRITABLE_STATES = frozenset({"53100", "25006"})
_UNWRITABLE_SQLITE = ("database or disk is full", "attempt to write a readonly database", "disk I/O error")


def translate(exc: Exception) -> StateportError | None:
    """The domain error for a driver exception, or None for an exception that is not the driver's."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and (driver := _driver_error(exc)) is not None:
        # The migrations' SQLAlchemy wraps the driver's exception: said as the servers' pool says it, not
        # "database error: (sqlalchemy.dialects.postgresql.asyncpg.Error) ..." (an outsider's find).
        return translate(driver)
    if _unwritable(exc):
        # Said apart from "unavailable": on a full disk `migrate` said "is it running and reachable?".
        return Unwritable(f"the database will not write: {_first_line(exc)}")
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
        case pg.InvalidCatalogNameError():
            return Unavailable(f"{_first_line(exc)}: create it first (createdb, or CREATE DATABASE)")
        case pg.UndefinedObjectError() if "unrecognized configuration parameter" in str(exc):
            # A query option of the URL that asyncpg sends on as a server setting: the URL's to mend, not
            # the database's reach ("is it running and reachable?" followed it: an outsider's find).
            return Invalid(
                f"{_first_line(exc)}: STATEPORT_DATABASE_URL's query names it (an option the driver does not "
                "take is sent to PostgreSQL as a setting)"
            )
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


def _unwritable(exc: Exception) -> bool:
    """Whether the driver's exception says the database refused a write for want of space or write access
    (under SQLAlchemy's, ``translate`` has already taken the driver's own)."""
    if getattr(exc, "sqlstate", None) in _UNWRITABLE_STATES:
        return True
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(_UNWRITABLE_SQLITE)


def _driver_error(exc: sqlalchemy.exc.DBAPIError) -> Exception | None:
    """The driver's own exception under SQLAlchemy's (aiosqlite's directly, asyncpg's under the dialect's
    adaptation), or None."""
    for found in (exc.orig, exc.orig.__cause__ if exc.orig is not None else None):
        if isinstance(found, (asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error, OSError)):
            return found
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
