"""Listings whose SQL depends on the request: Airflow's filters (patterns, ranges, sets) and orderings.

A listing is built per request with SQLAlchemy Core, but compiled once per *shape*: which filters it has,
how many terms each, and its ordering; the values go in parameters. The shape is recorded as the listing is
built, in the same calls that add its clauses and parameters, so the two cannot disagree. Compiled
statements are kept in a bounded LRU, since a client chooses the shape (up to ten order keys).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import sqlalchemy as sa

from stateport.adapters.shared.timestamps import to_us
from stateport.adapters.sql.dialect import DIALECTS, DialectName, Statement, const
from stateport.domain.lru import Lru
from stateport.domain.patterns import like_terms, prefix_ranges
from stateport.domain.queries import TimeRange

COMPILED_SHAPES = 512
# LIKE's escape character, as PostgreSQL's LIKE has it by default; SQLite has none unless told.
LIKE_ESCAPE = "\\"

Column = sa.ColumnElement[Any]

_compiled: Lru[tuple[Hashable, ...], tuple[Statement, Statement]] = Lru(COMPILED_SHAPES)


class Listing:
    """The WHERE clauses and ORDER BY of one listing, their parameters, and its shape."""

    def __init__(self, name: str) -> None:
        self.where: list[sa.ColumnElement[bool]] = []
        self.order: list[sa.UnaryExpression[Any] | Column] = []
        self.params: dict[str, Any] = {}
        self._shape: list[Hashable] = [name]

    def param(self, value: Any) -> sa.BindParameter[Any]:
        """A parameter holding ``value``, named by its place in the listing (the same for every listing of
        one shape)."""
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sa.bindparam(name)

    def add(self, shape: Hashable, clause: sa.ColumnElement[bool]) -> None:
        """A clause the caller built (its parameters drawn from ``param``), and what its SQL text depends
        on."""
        self._shape.append(shape)
        self.where.append(clause)

    def equals(self, label: str, column: Column, value: Any) -> None:
        self._shape.append(("eq", label))
        self.where.append(column == self.param(value))

    def one_of(self, label: str, column: Column, values: Sequence[Any]) -> None:
        """``column`` is one of ``values`` (no filter when there are none). Not ``IN (...)``: a list of
        values compiles to an expanding parameter, which a statement compiled once cannot carry."""
        if not values:
            return
        self._shape.append(("in", label, len(values)))
        self.where.append(sa.or_(*(column == self.param(v) for v in sorted(values))))

    def like(self, label: str, column: Column, pattern: str | None) -> None:
        """Airflow's ``*_pattern`` (see ``domain.patterns``): a case-insensitive LIKE of any of its terms."""
        if pattern is None:
            return
        terms = like_terms(pattern)
        self._shape.append(("like", label, len(terms)))
        self.where.append(sa.or_(*(column.ilike(self.param(t), escape=LIKE_ESCAPE) for t in terms)))

    def prefix(self, label: str, column: Column, pattern: str | None) -> None:
        """Airflow's ``*_prefix_pattern`` (see ``domain.patterns``): any of its ranges."""
        if pattern is None:
            return
        clauses: list[sa.ColumnElement[bool]] = []
        kinds: list[str] = []
        for bounds in prefix_ranges(pattern):
            if not bounds.lower:
                kinds.append("any")
                clauses.append(column.is_not(None))
            elif bounds.upper is None:
                kinds.append("from")
                clauses.append(column >= self.param(bounds.lower))
            else:
                kinds.append("between")
                clauses.append(sa.and_(column >= self.param(bounds.lower), column < self.param(bounds.upper)))
        self._shape.append(("prefix", label, tuple(kinds)))
        self.where.append(sa.or_(*clauses))

    def time_range(self, label: str, column_us: Column, bounds: TimeRange) -> None:
        """Every bound given holds for the column (microseconds); NULL never does."""
        given = tuple(
            (op, value)
            for op, value in (("gte", bounds.gte), ("gt", bounds.gt), ("lte", bounds.lte), ("lt", bounds.lt))
            if value is not None
        )
        if not given:
            return
        self._shape.append(("range", label, tuple(op for op, _ in given)))
        for op, value in given:
            p = self.param(to_us(value))
            if op == "gte":
                self.where.append(column_us >= p)
            elif op == "gt":
                self.where.append(column_us > p)
            elif op == "lte":
                self.where.append(column_us <= p)
            else:
                self.where.append(column_us < p)

    def order_by(self, label: str, columns: Sequence[tuple[Column, bool]], descending: bool) -> None:
        """Order by ``columns`` (each with whether it may be NULL) in one direction; NULL sorts as in
        PostgreSQL, after every value ascending and before every value descending, on both databases."""
        self._shape.append(("order", label, descending))
        for column, nullable in columns:
            if nullable:
                # Literals in the text: bound, PostgreSQL would not know their type.
                is_null = sa.case((column.is_(None), const(1)), else_=const(0))
                self.order.append(is_null.desc() if descending else is_null.asc())
            self.order.append(column.desc() if descending else column.asc())

    def compiled(
        self, dialect_name: DialectName, rows: sa.Select[Any], count_from: sa.FromClause
    ) -> tuple[Statement, Statement]:
        """The page (``rows`` filtered, ordered, ``LIMIT``/``OFFSET`` from the ``limit`` and ``offset``
        parameters) and the count of everything the filters let through, compiled once per shape."""
        key = (dialect_name, *self._shape)
        hit = _compiled.get(key)
        if hit is None:
            d = DIALECTS[dialect_name]
            page = (
                rows.where(*self.where)
                .order_by(*self.order)
                .limit(sa.bindparam("limit"))
                .offset(sa.bindparam("offset"))
            )
            count = sa.select(sa.func.count().label("total")).select_from(count_from).where(*self.where)
            hit = (d.compile(page), d.compile(count))
            _compiled.put(key, hit)
        return hit
