"""The SQL StateStore: task state and asset state in two tables, one statement per operation.

A put is one statement. Without ``if_version`` it is an upsert that inserts version 1 or, on conflict,
replaces the value and sets ``version`` to 1 if the stored row had expired and to ``version + 1``
otherwise. ``if_version=0`` adds a WHERE to the conflict update (only an expired row may be replaced), and
``if_version=n`` is a plain UPDATE of a live row at version n, so an absent key is never inserted. No row
returned means the precondition failed. A delete with ``if_version=n`` is one DELETE of a live row at
version n; with ``if_version=0`` ("must be absent") it deletes nothing and only reads. Expired rows stay
until ``purge_expired`` removes them; every read filters them out.

A batch is one transaction: it reads the rows of its keys (live or expired) with ``FOR UPDATE`` in key
order, decides in Python what the operations do (``stateport.domain.batches``), and writes each changed
key once: an UPDATE or DELETE of a row it holds locked, or a plain INSERT of a key it found absent. A key
inserted by someone else meanwhile makes that INSERT a unique violation: the batch rolls back and runs
again, seeing the new row (see docs/adapters.md, "Batches"). On PostgreSQL a batch of puts only, without
preconditions and each key once, reads nothing it needs: it is one multi-row upsert instead, in key order.
Any other batch on PostgreSQL is optimistic first: one read, then one statement that writes only if no key
changed since (``Dialect.optimistic_batch``), one batch of a scope at a time per process (so that only
writers in other processes make it read again); after three such collisions it takes the locked path.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa

from stateport.adapters.shared.batching import StepBatcher
from stateport.adapters.shared.scanning import UNBOUNDED_BYTES
from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Database, Params, Row
from stateport.adapters.sql.dialect import DIALECTS, Dialect, DialectName, Statement, const
from stateport.domain.batches import apply, batch_keys
from stateport.domain.errors import Conflict, Invalid, version_mismatch
from stateport.domain.models import (
    AssetScope,
    BatchOp,
    BatchPut,
    BatchResult,
    JsonText,
    ListedEntry,
    Scope,
    StateEntry,
    StatePage,
    StateScan,
    TaskScope,
)
from stateport.domain.ports import StoreCapabilities
from stateport.domain.values import prefix_end

# How many times a batch runs when keys it found absent keep being inserted under it.
BATCH_ATTEMPTS = 5
# How many times an optimistic batch (PostgreSQL) reads and tries to write before it takes the locks.
OPTIMISTIC_ATTEMPTS = 3
# A scope no user can create (asset names come from DAG specs), read to prove the state tables answer.
PROBE_SCOPE = AssetScope(name="__stateport_readiness__")
# One read's parameters: the scope's columns, ``key`` and ``now``.
_Read = dict[str, Any]


class _Turn:
    """The queue of a scope's optimistic batches in this process (``SqlStateStore._turn``)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclass(frozen=True, slots=True)
class ScopeStatements:
    """The compiled statements of one state table (task_state or asset_state)."""

    get: Statement
    # PostgreSQL: the live rows of many keys at once (``Dialect.live_rows_by_key``); None on SQLite.
    get_many: Statement | None
    upsert: Statement
    insert_if_absent: Statement
    update_if_version: Statement
    delete: Statement
    delete_if_version: Statement
    clear: Statement
    clear_task: Statement | None
    count: Statement
    page: Statement
    # Prefix-bounded forms of count and page (``key >= :lo AND key < :hi``).
    count_prefix: Statement
    page_prefix: Statement
    # Key listings, by (strictly after a cursor, bounded above by a prefix's end, keys only).
    scans: dict[tuple[bool, bool, bool], Statement]
    purge: Statement
    # A batch's: its keys' rows (expired ones too) locked in key order, then one write per changed key.
    lock_keys: Statement
    insert_row: Statement
    update_row: Statement
    delete_row: Statement
    # PostgreSQL: a batch of unconditional puts of distinct keys as one upsert (``Dialect.upsert_rows``).
    upsert_rows: Statement | None
    # PostgreSQL: any other batch as a read, then one write if nothing changed (``Dialect.optimistic_batch``).
    optimistic: tuple[Statement, Statement] | None


def _build(dialect: Dialect, table: sa.Table, scope_columns: list[str]) -> ScopeStatements:
    c = table.c
    now = sa.bindparam("now", type_=sa.BigInteger)
    in_scope = sa.and_(*(c[name] == sa.bindparam(name) for name in scope_columns))
    at_key = sa.and_(in_scope, c.key == sa.bindparam("key"))
    live = sa.or_(c.expires_at_us.is_(None), c.expires_at_us > now)
    expired = sa.and_(c.expires_at_us.is_not(None), c.expires_at_us <= now)
    entry = (c.key, c.value, c.updated_at_us, c.expires_at_us, c.version)

    def upsert(*, only_over_expired: bool) -> sa.ClauseElement:
        stmt = dialect.insert(table).values(
            {name: sa.bindparam(name) for name in scope_columns}
            | {
                "key": sa.bindparam("key"),
                "value": sa.bindparam("value"),
                "updated_at_us": now,
                "expires_at_us": sa.bindparam("expires_at_us", type_=sa.BigInteger),
                "version": const(1),
            }
        )
        return stmt.on_conflict_do_update(
            index_elements=[*(c[name] for name in scope_columns), c.key],
            set_={
                "value": stmt.excluded.value,
                "updated_at_us": stmt.excluded.updated_at_us,
                "expires_at_us": stmt.excluded.expires_at_us,
                "version": sa.case((expired, const(1)), else_=c.version + const(1)),
            },
            where=expired if only_over_expired else None,
        ).returning(c.version)

    update_if_version = (
        sa.update(table)
        .where(at_key, live, c.version == sa.bindparam("if_version", type_=sa.BigInteger))
        .values(
            value=sa.bindparam("value"),
            updated_at_us=now,
            expires_at_us=sa.bindparam("expires_at_us", type_=sa.BigInteger),
            version=c.version + const(1),
        )
        .returning(c.version)
    )
    pk = sa.tuple_(*table.primary_key.columns)
    purge = sa.delete(table).where(
        pk.in_(
            sa.select(*table.primary_key.columns)
            .where(c.expires_at_us <= now)
            .limit(sa.bindparam("batch_size", type_=sa.Integer))
        )
    )
    lo = sa.bindparam("lo", type_=sa.String)
    below_hi = c.key < sa.bindparam("hi", type_=sa.String)
    page = (
        sa.select(*entry)
        .order_by(c.key)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .offset(sa.bindparam("offset", type_=sa.Integer))
    )
    count = sa.select(sa.func.count()).select_from(table)

    def scan(strict: bool, bounded: bool, keys_only: bool) -> sa.Select[Any]:
        # A key range on the primary key's last column, so one index range scan; the bounds are in the
        # key column's byte-wise collation (tables.name), the order the port promises.
        columns = entry if not keys_only else (c.key, sa.null(), c.updated_at_us, c.expires_at_us, c.version)
        conditions = [in_scope, c.key > lo if strict else c.key >= lo, live]
        if bounded:
            conditions.append(below_hi)
        page = (
            sa.select(*columns)
            .where(*conditions)
            .order_by(c.key)
            .limit(sa.bindparam("limit", type_=sa.Integer))
        )
        return page if keys_only else cut_at_bytes(page.subquery("page"))

    def cut_at_bytes(page: sa.Subquery) -> sa.Select[Any]:
        # The page's values while those before each total under ``max_bytes``, NULL past that (the key
        # kept, so the caller knows more follow): what the driver reads stays near the budget. The sum
        # runs over the page's rows only, after its LIMIT, never over the scope.
        size = dialect.byte_length(page.c.value)
        # Up to the current row (a frame with no bound parameter), less the row's own.
        before = sa.func.sum(size).over(order_by=page.c.key, rows=(None, 0)) - size
        kept = sa.case((before < sa.bindparam("max_bytes", type_=sa.BigInteger), page.c.value))
        return sa.select(
            page.c.key, kept, page.c.updated_at_us, page.c.expires_at_us, page.c.version
        ).order_by(page.c.key)

    clear_task = None
    if "map_index" in scope_columns:
        # Every map index of the task: the scope without map_index.
        clear_task = sa.delete(table).where(
            *(c[name] == sa.bindparam(name) for name in scope_columns if name != "map_index")
        )
    row_values = {
        "value": sa.bindparam("value"),
        "updated_at_us": sa.bindparam("updated_at_us", type_=sa.BigInteger),
        "expires_at_us": sa.bindparam("expires_at_us", type_=sa.BigInteger),
        "version": sa.bindparam("version", type_=sa.BigInteger),
    }
    lock_keys = dialect.for_update(
        sa.select(*entry).where(in_scope, dialect.among(c.key, "keys")).order_by(c.key)
    )
    insert_row = sa.insert(table).values(
        {name: sa.bindparam(name) for name in [*scope_columns, "key"]} | row_values
    )
    return ScopeStatements(
        lock_keys=dialect.compile(lock_keys),
        insert_row=dialect.compile(insert_row),
        update_row=dialect.compile(sa.update(table).where(at_key).values(row_values)),
        delete_row=dialect.compile(sa.delete(table).where(at_key)),
        upsert_rows=dialect.upsert_rows(table, scope_columns),
        optimistic=dialect.optimistic_batch(table, scope_columns),
        get=dialect.compile(sa.select(*entry).where(at_key, live)),
        get_many=dialect.live_rows_by_key(table, [*scope_columns, "key"]),
        upsert=dialect.compile(upsert(only_over_expired=False)),
        insert_if_absent=dialect.compile(upsert(only_over_expired=True)),
        update_if_version=dialect.compile(update_if_version),
        delete=dialect.compile(sa.delete(table).where(at_key).returning(c.expires_at_us)),
        delete_if_version=dialect.compile(
            sa.delete(table)
            .where(at_key, live, c.version == sa.bindparam("if_version", type_=sa.BigInteger))
            .returning(c.version)
        ),
        clear=dialect.compile(sa.delete(table).where(in_scope)),
        clear_task=dialect.compile(clear_task) if clear_task is not None else None,
        count=dialect.compile(count.where(in_scope, live)),
        page=dialect.compile(page.where(in_scope, live)),
        count_prefix=dialect.compile(count.where(in_scope, c.key >= lo, below_hi, live)),
        page_prefix=dialect.compile(page.where(in_scope, c.key >= lo, below_hi, live)),
        scans={
            (strict, bounded, keys_only): dialect.compile(scan(strict, bounded, keys_only))
            for strict in (False, True)
            for bounded in (False, True)
            for keys_only in (False, True)
        },
        purge=dialect.compile(purge),
    )


@functools.cache
def statements(dialect_name: DialectName) -> tuple[ScopeStatements, ScopeStatements]:
    """The task-state and asset-state statements, compiled once per dialect per process."""
    dialect = DIALECTS[dialect_name]
    return (
        _build(dialect, tables.task_state, ["dag_id", "run_id", "task_id", "map_index"]),
        _build(dialect, tables.asset_state, ["asset_name"]),
    )


class SqlStateStore:
    """Task and asset state in SQLite or PostgreSQL."""

    capabilities = StoreCapabilities(atomic_versions=True, atomic_clear=True, native_expiry=False)

    def __init__(self, database: Database) -> None:
        self._db = database
        self._task, self._asset = statements(database.dialect_name)
        # Reads of one event-loop step in one query, per table (``adapters/shared/batching.py``).
        self._task_reads: StepBatcher[_Read, StateEntry | None] = StepBatcher(self._task_reader)
        self._asset_reads: StepBatcher[_Read, StateEntry | None] = StepBatcher(self._asset_reader)
        self._batch_turns: dict[Scope, _Turn] = {}

    def _for(self, scope: Scope) -> tuple[ScopeStatements, dict[str, Any]]:
        if isinstance(scope, TaskScope):
            return self._task, {
                "dag_id": scope.dag_id,
                "run_id": scope.run_id,
                "task_id": scope.task_id,
                "map_index": scope.map_index,
            }
        return self._asset, {"asset_name": scope.name}

    async def ping(self) -> None:
        """A read of the state tables answers. Whether the database takes writes is its own check
        (``Database.ping``), which readiness runs beside this one: running it twice would name one cause
        twice, and take SQLite's write lock twice a probe."""
        await self.get(PROBE_SCOPE, "probe", now=datetime.now(UTC))

    async def get(self, scope: Scope, key: str, *, now: datetime) -> StateEntry | None:
        """Return the live entry, or None if the key is missing or expired."""
        stmts, params = self._for(scope)
        params["key"] = key
        params["now"] = to_us(now)
        if stmts.get_many is None:
            row = await self._db.fetchrow(stmts.get, params)
            return None if row is None else _entry(row)
        reads = self._task_reads if stmts is self._task else self._asset_reads
        return await reads(params)

    async def _task_reader(self, batch: Sequence[_Read]) -> list[StateEntry | None]:
        return await self._read_many(self._task, batch)

    async def _asset_reader(self, batch: Sequence[_Read]) -> list[StateEntry | None]:
        return await self._read_many(self._asset, batch)

    async def _read_many(self, stmts: ScopeStatements, batch: Sequence[_Read]) -> list[StateEntry | None]:
        """The reads of one step: a lone one as ``get``, more as one ``get_many`` query."""
        if len(batch) == 1:
            row = await self._db.fetchrow(stmts.get, batch[0])
            return [None if row is None else _entry(row)]
        assert stmts.get_many is not None  # only PostgreSQL batches
        columns = {name: [read[name] for read in batch] for name in stmts.get_many.names}
        found: list[StateEntry | None] = [None] * len(batch)
        for row in await self._db.fetch(stmts.get_many, columns):
            values = tuple(row)
            found[values[5] - 1] = _entry(values[:5])
        return found

    async def put(
        self,
        scope: Scope,
        key: str,
        value: JsonText,
        *,
        expires_at: datetime | None,
        now: datetime,
        if_version: int | None = None,
    ) -> StateEntry:
        """Create or replace the entry and return it (see the module docstring for the statements)."""
        stmts, params = self._for(scope)
        now_us = to_us(now)
        expires_us = None if expires_at is None else to_us(expires_at)
        params |= {"key": key, "value": _text(value), "now": now_us, "expires_at_us": expires_us}
        if if_version is None:
            stmt = stmts.upsert
        elif if_version == 0:
            stmt = stmts.insert_if_absent
        else:
            stmt = stmts.update_if_version
            params["if_version"] = if_version
        rows = await self._db.write(stmt, params)
        if not rows:
            assert if_version is not None  # an upsert always writes its row
            raise version_mismatch(key, if_version)
        return StateEntry(
            key=key,
            value=value,
            updated_at=from_us(now_us),
            expires_at=None if expires_us is None else from_us(expires_us),
            version=rows[0][0],
        )

    async def delete(self, scope: Scope, key: str, *, now: datetime, if_version: int | None = None) -> bool:
        """Remove the key; return whether a live entry was removed (an expired one goes too, unreported)."""
        if if_version is not None:
            return await self._delete_if_version(scope, key, now, if_version)
        stmts, params = self._for(scope)
        params["key"] = key
        rows = await self._db.write(stmts.delete, params)
        if not rows:
            return False
        expires_us = rows[0][0]
        return expires_us is None or expires_us > to_us(now)

    async def _delete_if_version(self, scope: Scope, key: str, now: datetime, if_version: int) -> bool:
        if if_version == 0:
            # "Must be absent": nothing to remove, so a read decides (an expired row counts as absent).
            if await self.get(scope, key, now=now) is not None:
                raise version_mismatch(key, if_version)
            return False
        stmts, params = self._for(scope)
        params |= {"key": key, "now": to_us(now), "if_version": if_version}
        if not await self._db.write(stmts.delete_if_version, params):
            raise version_mismatch(key, if_version)
        return True

    async def batch(self, scope: Scope, operations: Sequence[BatchOp], *, now: datetime) -> list[BatchResult]:
        """One transaction: lock the keys' rows in key order, decide, write each changed key once (see the
        module docstring); again from the start when a key found absent was inserted meanwhile."""
        stmts, _ = self._for(scope)
        if stmts.upsert_rows is not None and _unconditional_puts(operations):
            return await self._upsert_rows(scope, stmts.upsert_rows, operations, now)
        if stmts.optimistic is not None:
            async with self._turn(scope):
                for _ in range(OPTIMISTIC_ATTEMPTS):
                    done = await self._batch_optimistic(scope, stmts.optimistic, operations, now)
                    if done is not None:
                        return done
            # Keys written under it again and again (by other processes): the locked path waits its turn.
        for attempt in range(BATCH_ATTEMPTS):
            try:
                return await self._batch_once(scope, operations, now)
            except Conflict:
                # Only PostgreSQL gets here (SQLite's writers take turns): a concurrent insert committed
                # a key this batch saw absent. Its row is visible, and lockable, on the next attempt.
                if attempt == BATCH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _upsert_rows(
        self, scope: Scope, stmt: Statement, operations: Sequence[BatchOp], now: datetime
    ) -> list[BatchResult]:
        """Unconditional puts of distinct keys: one upsert statement, its own transaction, that decides
        nothing ``apply`` would decide otherwise (each key's new version is its live version plus one, 1
        over an absent or expired row) and locks the rows in key order as the locked path does. One round
        trip instead of four (BEGIN, SELECT ... FOR UPDATE, the writes, COMMIT)."""
        _, params = self._for(scope)
        puts = sorted(cast(Sequence[BatchPut], operations), key=lambda op: op.key)
        params |= {
            "keys": [op.key for op in puts],
            "values": [_text(op.value) for op in puts],
            "expires_at_us": [None if op.expires_at is None else to_us(op.expires_at) for op in puts],
            "now": to_us(now),
        }
        versions = {row["key"]: row["version"] for row in await self._db.write(stmt, params)}
        return [
            BatchResult(
                entry=StateEntry(
                    key=op.key,
                    value=op.value,
                    updated_at=now,
                    expires_at=op.expires_at,
                    version=versions[op.key],
                )
            )
            for op in cast(Sequence[BatchPut], operations)
        ]

    @asynccontextmanager
    async def _turn(self, scope: Scope) -> AsyncIterator[None]:
        """One optimistic batch of a scope at a time in this process: two of them on the same keys would
        make each other read again (a lost round trip each), where queued they both pass at once. The
        entry lives while a batch of the scope is in flight."""
        turn = self._batch_turns.get(scope)
        if turn is None:
            turn = self._batch_turns[scope] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0 and self._batch_turns.get(scope) is turn:
                del self._batch_turns[scope]

    async def _batch_optimistic(
        self,
        scope: Scope,
        optimistic: tuple[Statement, Statement],
        operations: Sequence[BatchOp],
        now: datetime,
    ) -> list[BatchResult] | None:
        """Read the keys' rows, decide, and write only if none changed meanwhile (``optimistic_batch``):
        two statements, no transaction of ours (BEGIN, SELECT ... FOR UPDATE, the writes, COMMIT are four
        round trips and more). None when a key changed between the two: the caller tries again. A batch
        that writes nothing, or whose precondition fails, is answered from the read alone (one snapshot)."""
        read, write = optimistic
        _, params = self._for(scope)
        keys = batch_keys(operations)
        stored: dict[str, StateEntry] = {}
        seen: dict[str, str] = {}
        for row in await self._db.fetch(read, params | {"keys": keys}):
            values = tuple(row)
            entry = _entry(values[:5])
            stored[entry.key] = entry
            seen[entry.key] = values[5]
        applied = apply(operations, stored, now=now)
        if not applied.writes:
            return applied.results
        ops: list[str] = []
        texts: list[str | None] = []
        updated: list[int | None] = []
        expires: list[int | None] = []
        versions: list[int | None] = []
        for key in keys:
            written = key in applied.writes
            entry_or_none = applied.writes.get(key)
            if entry_or_none is None:
                ops.append("d" if written and key in stored else "r")
                texts.append(None)
                updated.append(None)
                expires.append(None)
                versions.append(None)
                continue
            ops.append("u" if key in stored else "i")
            texts.append(_text(entry_or_none.value))
            updated.append(to_us(entry_or_none.updated_at))
            expires.append(None if entry_or_none.expires_at is None else to_us(entry_or_none.expires_at))
            versions.append(entry_or_none.version)
        arrays = {
            "keys": keys,
            "seen": [seen.get(key) for key in keys],
            "ops": ops,
            "values": texts,
            "updated_at_us": updated,
            "expires_at_us": expires,
            "versions": versions,
        }
        try:
            rows = await self._db.write(write, params | arrays)
        except Conflict:
            return None  # a key found absent was inserted meanwhile
        return applied.results if rows and rows[0][0] else None

    async def _batch_once(
        self, scope: Scope, operations: Sequence[BatchOp], now: datetime
    ) -> list[BatchResult]:
        stmts, params = self._for(scope)
        keys = batch_keys(operations)
        async with self._db.transaction() as session:
            rows = await session.fetch(stmts.lock_keys, params | {"keys": self._db.dialect.strings(keys)})
            stored = {entry.key: entry for entry in map(_entry, rows)}
            applied = apply(operations, stored, now=now)
            inserts: list[Params] = []
            updates: list[Params] = []
            deletes: list[Params] = []
            for key in sorted(applied.writes):
                entry = applied.writes[key]
                at = params | {"key": key}
                if entry is None:
                    if key in stored:
                        deletes.append(at)
                    continue
                row = at | {
                    "value": _text(entry.value),
                    "updated_at_us": to_us(entry.updated_at),
                    "expires_at_us": None if entry.expires_at is None else to_us(entry.expires_at),
                    "version": entry.version,
                }
                (updates if key in stored else inserts).append(row)
            # Rows held locked first; inserts, which may wait on another transaction's, last, in key order.
            for stmt, batch in ((stmts.delete_row, deletes), (stmts.update_row, updates)):
                if batch:
                    await session.executemany(stmt, batch)
            if inserts:
                await session.executemany(stmts.insert_row, inserts)
        return applied.results

    async def clear(self, scope: Scope, *, all_map_indices: bool = False) -> int:
        """Remove every key of the scope in one statement (expired ones are counted)."""
        stmts, params = self._for(scope)
        if all_map_indices and stmts.clear_task is not None:
            del params["map_index"]
            return await self._db.write_count(stmts.clear_task, params)
        return await self._db.write_count(stmts.clear, params)

    async def list(
        self, scope: Scope, *, now: datetime, limit: int = 100, offset: int = 0, prefix: str = ""
    ) -> StatePage:
        """Return the scope's live entries ordered by key, and their total, from one snapshot."""
        stmts, params = self._for(scope)
        params["now"] = to_us(now)
        count_stmt, page_stmt = stmts.count, stmts.page
        hi = prefix_end(prefix)
        if hi is not None:
            count_stmt, page_stmt = stmts.count_prefix, stmts.page_prefix
            params |= {"lo": prefix, "hi": hi}
        async with self._db.snapshot() as session:
            count = await session.fetchrow(count_stmt, params)
            rows = await session.fetch(page_stmt, params | {"limit": limit, "offset": offset})
        return StatePage(entries=[_entry(row) for row in rows], total=count[0] if count else 0)

    async def scan(
        self,
        scope: Scope,
        *,
        now: datetime,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        keys_only: bool = False,
        max_bytes: int | None = None,
    ) -> StateScan:
        """Indexed range queries: ``key > after`` (or ``>= prefix``) and ``< prefix_end(prefix)``, one row
        past what is asked to learn whether more follow; values past ``max_bytes`` come back NULL. One
        query, unless the dialect sums values' sizes in growing windows (``Dialect.scan_window``)."""
        stmts, params = self._for(scope)
        hi = prefix_end(prefix)
        if hi is not None:
            params["hi"] = hi
        window = self._db.dialect.scan_window
        if keys_only or max_bytes is None or window is None:
            window = limit  # one statement: nothing to sum, or sizes read cheaply
        budget = UNBOUNDED_BYTES if max_bytes is None else max_bytes
        entries: list[ListedEntry] = []
        while True:
            # A window of rows after the last key listed, their values kept while the bytes before each
            # (in this window) stay under what is left of the budget: the rule of the whole page.
            strict = after is not None and after >= prefix
            want = min(limit - len(entries), window)
            params |= {"now": to_us(now), "lo": after if strict else prefix, "limit": want + 1}
            if not keys_only:
                params["max_bytes"] = budget
            rows = await self._db.fetch(stmts.scans[(strict, hi is not None, keys_only)], params)
            for row in rows[:want]:
                if not keys_only and row[1] is None:
                    return StateScan(entries=entries, more=True)  # past the page's bytes
                listed = _listed(row)
                entries.append(listed)
                budget -= len(listed.value or b"")
            if len(rows) <= want:
                return StateScan(entries=entries, more=False)
            if len(entries) == limit or budget <= 0:
                return StateScan(entries=entries, more=True)
            after = entries[-1].key
            window *= 2

    async def purge_expired(self, *, now: datetime, batch_size: int = 1000) -> int:
        """Delete expired entries in batches of ``batch_size``, each its own short transaction."""
        params: Params = {"now": to_us(now), "batch_size": batch_size}
        purged = 0
        for stmts in (self._task, self._asset):
            while True:
                deleted = await self._db.write_count(stmts.purge, params)
                purged += deleted
                if deleted < batch_size:
                    break
        return purged


def _unconditional_puts(operations: Sequence[BatchOp]) -> bool:
    """Whether the batch only puts, each key once, with no precondition: its outcome then depends on
    nothing it would read (``upsert_rows``)."""
    keys = set()
    for op in operations:
        if not isinstance(op, BatchPut) or op.if_version is not None or op.key in keys:
            return False
        keys.add(op.key)
    return True


def _text(value: JsonText) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise Invalid("value is not UTF-8 JSON text") from exc


def _listed(row: Row | tuple[Any, ...]) -> ListedEntry:
    key, value, updated_at_us, expires_at_us, version = row
    return ListedEntry(
        key=key,
        value=None if value is None else value.encode(),
        updated_at=from_us(updated_at_us),
        expires_at=None if expires_at_us is None else from_us(expires_at_us),
        version=version,
    )


def _entry(row: Row | tuple[Any, ...]) -> StateEntry:
    key, value, updated_at_us, expires_at_us, version = row
    return StateEntry(
        key=key,
        value=value.encode(),
        updated_at=from_us(updated_at_us),
        expires_at=None if expires_at_us is None else from_us(expires_at_us),
        version=version,
    )
