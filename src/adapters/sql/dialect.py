"""Everything that differs between SQLite and PostgreSQL, keyed on the dialect name.

Statements are written once with SQLAlchemy Core and compiled once per dialect into a ``Statement``: the
SQL text in the driver's own paramstyle (``$1`` for asyncpg, ``?`` for sqlite3) and the order of its
named parameters. The drivers then run that text directly. Compiling per request is what made SQLAlchemy
Core too slow here (a raw asyncpg loop fell from about 16,000 to 3,300-4,000 ops/s); compiled once,
asyncpg's per-connection prepared-statement cache applies as well.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.dialects.sqlite.base import SQLiteDialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, UnaryExpression
from sqlalchemy.sql.operators import custom_op

DialectName = Literal["sqlite", "postgresql"]
Insert = postgresql.Insert | sqlite.Insert


class Statement:
    """One compiled statement: its SQL text and how to turn named parameters into positional ones."""

    __slots__ = ("defaults", "names", "sql")

    def __init__(self, sql: str, names: tuple[str, ...], defaults: dict[str, Any]) -> None:
        self.sql = sql
        self.names = names
        # Parameters SQLAlchemy created itself (a literal it chose to bind) carry their value here.
        self.defaults = defaults

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``params``, in the order the SQL text expects them."""
        if self.defaults:
            params = {**self.defaults, **params}
        return [params[n] for n in self.names]

    def __repr__(self) -> str:
        return f"Statement({self.sql!r})"


class Dialect:
    """How one database spells what the other spells differently."""

    def __init__(self, name: DialectName) -> None:
        self.name: DialectName = name
        # How many rows a key listing bounded by bytes first sums the sizes of in one statement, the next
        # statements twice as many each (None: its whole page at once). PostgreSQL reads a value's size from
        # its header; SQLite, whose ``length`` counts characters, copies the value to a blob to count its
        # bytes (``byte_length``), so a page of 1,000 values of 60 KB cut after 17 copied 60 MB; in growing
        # windows it copies at most about as many rows past the cut as it kept.
        self.scan_window: int | None = None if name == "postgresql" else 16
        self._sa: sa.engine.Dialect
        if name == "postgresql":
            self._sa = PGDialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
        else:
            self._sa = SQLiteDialect(paramstyle="qmark")

    def live_rows_by_key(self, table: sa.Table, key_columns: Sequence[str]) -> Statement | None:
        """PostgreSQL: one statement reading many live rows of ``table`` by primary key, for the batched
        reads of ``adapters/shared/batching.py``; None on SQLite, whose reads are local and stay one each.

        The keys come as parallel arrays (one parameter per key column, plus ``now`` per key), unnested
        with their ordinal ``i`` (1-based), so each row found says which read it answers; a key with no live
        row answers nothing. ``COLLATE "C"`` keeps the byte-wise comparison the key columns are indexed on.
        SQLAlchemy cannot express ``unnest(...) WITH ORDINALITY`` over several arrays: written here as text.
        """
        if self.name != "postgresql":
            return None
        arrays, joins = [], []
        for n, name in enumerate(key_columns, start=1):
            column = table.c[name]
            integer = isinstance(column.type, sa.Integer)
            arrays.append(f"${n}::{'int' if integer else 'text'}[]")
            joins.append(f"t.{name} = q.{name}" + ("" if integer else ' COLLATE "C"'))
        now = len(key_columns) + 1
        names = ", ".join(key_columns)
        # Names from our own table definitions only, never from a request; values are bound parameters.
        sql = (
            "SELECT t.key, t.value, t.updated_at_us, t.expires_at_us, t.version, q.i "  # noqa: S608
            f"FROM unnest({', '.join(arrays)}, ${now}::bigint[]) WITH ORDINALITY AS q({names}, now, i) "
            f"JOIN {table.name} AS t ON {' AND '.join(joins)} "
            "WHERE t.expires_at_us IS NULL OR t.expires_at_us > q.now"
        )
        return Statement(sql, (*key_columns, "now"), {})

    def upsert_rows(self, table: sa.Table, scope_columns: Sequence[str]) -> Statement | None:
        """PostgreSQL: one statement putting many keys of one scope without precondition, as the single-key
        upsert puts one (version 1 over an absent or expired row, else ``version + 1``); None on SQLite,
        whose batches are local and gain nothing from it.

        The keys, values and expiries come as parallel arrays (``keys``, ``values``, ``expires_at_us``),
        given in key order and inserted in their ordinal order: the rows are locked in key order, as a
        batch's ``SELECT ... FOR UPDATE`` locks them, so the two never wait for each other in a cycle. The
        keys must be distinct (one row cannot be updated twice by one statement). ``RETURNING`` gives each
        key's new version. Written as text for the same reason as ``live_rows_by_key``.
        """
        if self.name != "postgresql":
            return None
        scope = []
        for n, name in enumerate(scope_columns, start=1):
            integer = isinstance(table.c[name].type, sa.Integer)
            scope.append(f"${n}::{'int' if integer else 'text'}")
        k = len(scope_columns)
        columns = ", ".join([*scope_columns, "key", "value", "updated_at_us", "expires_at_us", "version"])
        expired = "t.expires_at_us IS NOT NULL AND t.expires_at_us <= excluded.updated_at_us"
        # Names from our own table definitions only, never from a request; values are bound parameters.
        sql = (
            f"INSERT INTO {table.name} AS t ({columns}) "  # noqa: S608
            f"SELECT {', '.join(scope)}, q.key, q.value, ${k + 4}::bigint, q.expires_at_us, 1 "
            f"FROM unnest(${k + 1}::text[], ${k + 2}::text[], ${k + 3}::bigint[]) WITH ORDINALITY "
            "AS q(key, value, expires_at_us, i) ORDER BY q.i "
            f"ON CONFLICT ({', '.join(scope_columns)}, key) DO UPDATE SET value = excluded.value, "
            "updated_at_us = excluded.updated_at_us, expires_at_us = excluded.expires_at_us, "
            f"version = CASE WHEN {expired} THEN 1 ELSE t.version + 1 END "
            "RETURNING t.key, t.version"
        )
        return Statement(sql, (*scope_columns, "keys", "values", "expires_at_us", "now"), {})

    def optimistic_batch(
        self, table: sa.Table, scope_columns: Sequence[str]
    ) -> tuple[Statement, Statement] | None:
        """PostgreSQL: a batch in two statements and no explicit transaction (``SqlStateStore.batch``).

        The first reads the rows of the batch's keys (live or expired, ``keys``) with their ``xmin``, the
        id of the transaction that wrote that row version: what the batch decides is decided on that one
        snapshot. The second applies the decided writes only if every key is still as read, in one
        statement: it locks the keys' current rows in key order (``FOR UPDATE``, following any newer
        committed version, as a locked batch would wait for it), compares each row's ``xmin`` with the one
        read (NULL: absent, then and now), and deletes, updates and inserts only if all are equal; it
        answers whether they were (false: the batch reads again). A key inserted meanwhile by another
        transaction makes the insert a unique violation (``Conflict``): read again too. The parallel
        arrays, one element per key in key order: ``keys``, ``seen`` (the xmin read), ``ops`` (``r``:
        only checked, ``u``, ``i``, ``d``), ``values``, ``updated_at_us``, ``expires_at_us``,
        ``versions``. None on SQLite, whose writers take turns anyway. Text, as ``upsert_rows``.
        """
        if self.name != "postgresql":
            return None
        scope = []
        for n, name in enumerate(scope_columns, start=1):
            integer = isinstance(table.c[name].type, sa.Integer)
            scope.append(f"${n}::{'int' if integer else 'text'}")
        pairs = zip(scope_columns, scope, strict=True)
        in_scope = " AND ".join(f"t.{name} = {param}" for name, param in pairs)
        k = len(scope_columns)
        # Names from our own table definitions only, never from a request; values are bound parameters.
        read = (
            "SELECT t.key, t.value, t.updated_at_us, t.expires_at_us, t.version, t.xmin::text "  # noqa: S608
            f"FROM {table.name} AS t WHERE {in_scope} AND t.key = ANY(${k + 1}::text[])"
        )
        columns = ", ".join([*scope_columns, "key", "value", "updated_at_us", "expires_at_us", "version"])
        arrays = (
            f"${k + 1}::text[], ${k + 2}::text[], ${k + 3}::text[], ${k + 4}::text[], "
            f"${k + 5}::bigint[], ${k + 6}::bigint[], ${k + 7}::bigint[]"
        )
        apply = (
            f"WITH q AS MATERIALIZED (SELECT * FROM unnest({arrays}) "  # noqa: S608
            "AS q(key, seen, op, value, updated_at_us, expires_at_us, version)), "
            f"cur AS MATERIALIZED (SELECT t.key, t.xmin::text AS xmin FROM {table.name} AS t "
            f"WHERE {in_scope} AND t.key = ANY(${k + 1}::text[]) ORDER BY t.key FOR UPDATE), "
            "ok AS MATERIALIZED (SELECT NOT EXISTS (SELECT 1 FROM q LEFT JOIN cur ON cur.key = q.key "
            "WHERE cur.xmin IS DISTINCT FROM q.seen) AS ok FROM (SELECT count(*) FROM cur) AS locked), "
            f"del AS (DELETE FROM {table.name} AS t USING q, ok "
            f"WHERE ok.ok AND q.op = 'd' AND {in_scope} AND t.key = q.key RETURNING 1), "
            f"upd AS (UPDATE {table.name} AS t SET value = q.value, updated_at_us = q.updated_at_us, "
            "expires_at_us = q.expires_at_us, version = q.version FROM q, ok "
            f"WHERE ok.ok AND q.op = 'u' AND {in_scope} AND t.key = q.key RETURNING 1), "
            f"ins AS (INSERT INTO {table.name} ({columns}) "
            f"SELECT {', '.join(scope)}, q.key, q.value, q.updated_at_us, q.expires_at_us, q.version "
            "FROM q, ok WHERE ok.ok AND q.op = 'i' ORDER BY q.key RETURNING 1) "
            "SELECT ok.ok FROM ok"
        )
        arrays_named = ("keys", "seen", "ops", "values", "updated_at_us", "expires_at_us", "versions")
        names = (*scope_columns, *arrays_named)
        return Statement(read, (*scope_columns, "keys"), {}), Statement(apply, names, {})

    def insert(self, table: sa.Table) -> Insert:
        """An INSERT that supports ``on_conflict_do_update``/``do_nothing`` and RETURNING on this dialect."""
        return postgresql.insert(table) if self.name == "postgresql" else sqlite.insert(table)

    def for_update(self, select: sa.Select[Any]) -> sa.Select[Any]:
        """Lock the selected rows until the transaction ends, waiting for a transaction that holds them.

        PostgreSQL: ``FOR UPDATE``, a row lock that serialises the changes of one run across processes.
        SQLite: a write transaction (BEGIN IMMEDIATE) already holds the only write lock, so a plain read is
        enough.
        """
        return select.with_for_update() if self.name == "postgresql" else select

    def for_share(self, select: sa.Select[Any]) -> sa.Select[Any]:
        """Lock the selected rows against ``for_update`` until the transaction ends, while other
        ``for_share`` transactions may hold them too.

        PostgreSQL: ``FOR SHARE``. SQLite: a write transaction already holds the only write lock.
        """
        return select.with_for_update(read=True) if self.name == "postgresql" else select

    def skip_locked(self, select: sa.Select[Any]) -> sa.Select[Any]:
        """Lock the selected rows, skipping rows other transactions hold (claims).

        SQLite has a single writer whose transactions are serialised already, so nothing is needed there.
        """
        return select.with_for_update(skip_locked=True) if self.name == "postgresql" else select

    def claimable(self, pick: sa.Select[Any]) -> sa.Select[Any]:
        """What a claim's ``UPDATE ... WHERE id IN (...)`` takes: the rows ``pick`` selects, locked.

        PostgreSQL picks them with ``FOR UPDATE SKIP LOCKED`` in a materialised CTE, so the pick runs once
        and its LIMIT holds, and concurrent claimers each get different rows without waiting on each
        other. SQLite runs the pick as it is, inside the single writer's transaction.
        """
        if self.name != "postgresql":
            return pick
        return _materialized(self.skip_locked(pick))

    def claimable_among(
        self, pick: sa.Select[Any], column: sa.ColumnElement[str], name: str, limit: sa.BindParameter[int]
    ) -> sa.Select[Any]:
        """As ``claimable``, of the rows whose ``column`` is one of the strings of the list parameter
        ``name`` (its value made by ``strings``). ``pick`` selects its key column, then the columns (if
        any) it ranks by before the key, is ordered by those ranks then the key, and its LIMIT is
        ``limit``; an index is meant to hold the columns the pick compares for equality, then ``column``,
        then the ordered ones. Only the key is selected in the end.

        One parameter for the whole list, so that a statement compiled once takes a list of any length.
        PostgreSQL runs ``pick`` once per listed value (``column = value``, a LATERAL join over the list),
        each reading its first rows in order from an index that starts with the pick's equalities and
        ``column`` and ends with the ordered one, locking them ``SKIP LOCKED`` under its own LIMIT, and
        takes the first ``limit`` of all these: it reads at most ``limit`` rows per value whatever else is
        there. A plain ``column = ANY(list)`` cannot read such an index in order: PostgreSQL either reads
        and sorts every row of the listed values, or (when it guesses them common) walks the ordered
        column's own index through every row ahead of them: measured, 400,000 rows of other DAGs for a
        claim of 5. The rows one value's pick locked beyond what is taken stay locked until the statement
        ends (a concurrent claim skips them meanwhile).

        SQLite, which has no arrays, LATERAL or row locks: ``IN (SELECT value FROM json_each(?))`` over
        the list as JSON text, ordered by ``+key``: the unary plus is SQLite's way to keep a term from
        using an index. Ordering by a primary key, it would otherwise walk the primary key's index in
        order through every row ahead of the listed values' (measured: 40 ms for 200,000 rows of other
        DAGs ahead); so it reads the listed values' rows from that other index and sorts them (0.3 ms).
        """
        if self.name != "postgresql":
            value: sa.ColumnElement[str] = sa.literal_column("value")
            listed = sa.select(value).select_from(sa.func.json_each(sa.bindparam(name)))
            key, *ranks = pick.selected_columns
            unindexed = UnaryExpression(key, operator=custom_op("+"), type_=key.type)
            among = pick.with_only_columns(key).where(column.in_(listed.scalar_subquery()))
            return among.order_by(None).order_by(*ranks, unindexed)
        # The cast: unnest takes any array, so PostgreSQL cannot infer the parameter's type by itself.
        listed_values = sa.func.unnest(sa.cast(sa.bindparam(name), postgresql.ARRAY(sa.String)))
        wanted = listed_values.table_valued("value").render_derived(name="wanted")
        each = self.skip_locked(pick.where(column == wanted.c.value)).lateral("each")
        first, *then = each.c
        picked = (
            sa.select(first).select_from(wanted).join(each, sa.true()).order_by(*then, first).limit(limit)
        )
        return _materialized(picked)

    def listed(self, name: str) -> sa.TableValuedAlias:
        """The strings of the list parameter ``name`` (its value made by ``strings``) as rows of one column,
        ``value``: PostgreSQL's ``unnest`` of the array, SQLite's ``json_each`` of the JSON text."""
        if self.name == "postgresql":
            array = sa.cast(sa.bindparam(name), postgresql.ARRAY(sa.String))
            return sa.func.unnest(array).table_valued("value").render_derived(name=name)
        return sa.func.json_each(sa.bindparam(name)).table_valued("value").alias(name)

    def among(self, column: sa.ColumnElement[str], name: str) -> sa.ColumnElement[bool]:
        """``column`` is one of the strings of the list parameter ``name`` (its value made by ``strings``),
        with one parameter for the whole list so that a statement compiled once takes any length.

        PostgreSQL: ``column = ANY(CAST(:name AS VARCHAR[]))``, which an index on ``column`` serves.
        SQLite, which has no arrays: ``column IN (SELECT value FROM json_each(:name))``.
        """
        if self.name == "postgresql":
            return column == sa.any_(sa.cast(sa.bindparam(name), postgresql.ARRAY(sa.String)))
        value: sa.ColumnElement[str] = sa.literal_column("value")
        listed = sa.select(value).select_from(sa.func.json_each(sa.bindparam(name)))
        return column.in_(listed.scalar_subquery())

    def pairs_among(
        self, first: sa.ColumnElement[str], second: sa.ColumnElement[str]
    ) -> sa.ColumnElement[bool]:
        """``(first, second)`` is one of the pairs of strings of the parameter ``pairs`` (its value made by
        ``pairs``): one parameter for any number of pairs, as ``among`` for single strings. Both databases
        read the pairs from a JSON array of two-string arrays; the primary key serves the comparison."""
        listed = PAIRS_POSTGRESQL if self.name == "postgresql" else PAIRS_SQLITE
        pairs = sa.text(listed).columns(sa.column("a", sa.String), sa.column("b", sa.String))
        return sa.tuple_(first, second).in_(pairs)

    def pairs(self, values: Sequence[tuple[str, str]]) -> str:
        """The value of a ``pairs_among`` parameter holding ``values``."""
        return json.dumps([list(pair) for pair in values])

    def byte_length(self, column: sa.ColumnElement[str]) -> sa.ColumnElement[int]:
        """The length of a text ``column`` in bytes of UTF-8 (SQLite's ``length`` of text counts
        characters; its ``octet_length`` is newer than the SQLite Python may ship)."""
        if self.name == "postgresql":
            return sa.func.octet_length(column)
        return sa.func.length(sa.cast(column, sa.LargeBinary))

    def greatest(self, first: sa.ColumnElement[int], second: sa.ColumnElement[int]) -> sa.ColumnElement[int]:
        """The larger of two values that are never NULL (PostgreSQL's ``greatest``; SQLite's ``max`` of two
        arguments, which is NULL if either is)."""
        if self.name == "postgresql":
            return sa.func.greatest(first, second)
        return sa.func.max(first, second)

    def strings(self, values: Sequence[str]) -> Any:
        """The value of a ``claimable_among`` list parameter holding ``values``."""
        return list(values) if self.name == "postgresql" else json.dumps(list(values))

    def compile(self, stmt: ClauseElement) -> Statement:
        """Compile ``stmt`` once into driver-ready SQL text."""
        compiled = cast(SQLCompiler, stmt.compile(dialect=self._sa))
        names = tuple(compiled.positiontup or ())
        # numeric_dollar reuses "$n" for a name bound twice, so the name is passed once.
        if self.name == "postgresql":
            names = tuple(dict.fromkeys(names))
        bound = compiled.binds
        defaults = {
            n: bound[n].value for n in set(names) if not bound[n].required and bound[n].value is not None
        }
        return Statement(compiled.string, names, defaults)


# The pairs of a ``pairs_among`` parameter as rows (a, b).
PAIRS_POSTGRESQL = "SELECT k->>0 AS a, k->>1 AS b FROM jsonb_array_elements(CAST(:pairs AS JSONB)) AS k"
PAIRS_SQLITE = (
    "SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b FROM json_each(:pairs)"
)


def _materialized(pick: sa.Select[Any]) -> sa.Select[Any]:
    """``pick`` as a materialised CTE (PostgreSQL), run once, so that its LIMIT holds."""
    picked = pick.cte("picked").prefix_with("MATERIALIZED")
    return sa.select(*picked.c)


DIALECTS: dict[DialectName, Dialect] = {"sqlite": Dialect("sqlite"), "postgresql": Dialect("postgresql")}


def const(value: int) -> sa.ColumnElement[int]:
    """An integer constant written into the SQL text rather than bound, so statements stay parameter-light."""
    return sa.literal_column(str(int(value)), sa.BigInteger)
