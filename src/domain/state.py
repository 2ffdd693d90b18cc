"""Use cases for task and asset state: every state operation is authorized here, whatever the route.

Two callers exist. A *task* holds a task-instance token: it may touch only its own task instance's scope
and only the assets its task declares as inlets or outlets (Airflow 3.3 has no asset check; we do). An
*operator* holds a public API token with the ``state:admin`` scope and addresses scopes directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

from stateport.domain.engine.events import read_deleted
from stateport.domain.errors import (
    BatchMismatch,
    Forbidden,
    Invalid,
    NotFound,
    StateportError,
    SupersededTry,
    TooLarge,
    Unsupported,
    VersionMismatch,
    echo,
    version_mismatch,
)
from stateport.domain.lru import Lru
from stateport.domain.models import (
    MAX_ASSET_ID,
    MAX_ASSET_NAME,
    MAX_BATCH_OPERATIONS,
    Asset,
    AssetScope,
    BatchGet,
    BatchOp,
    BatchPut,
    BatchResult,
    ExpiresAt,
    Expiry,
    JsonText,
    KeyPage,
    StateEntry,
    TaskBinding,
    TaskScope,
)
from stateport.domain.parts import Following, Parts
from stateport.domain.ports import Clock, DagStore, StateChanges, StateStore, TaskBindings
from stateport.domain.values import (
    DEFAULT_KEYS_LIMIT,
    MAX_KEYS_LIMIT,
    MAX_OFFSET,
    MAX_VERSION,
    Limits,
    check_expiry,
    check_key,
    check_name,
    check_prefix,
    check_scope,
    check_value,
    decode_cursor,
    encode_cursor,
)

SUBJECT_MISMATCH = "Token subject does not match task instance ID"
BINDING_CACHE_SIZE = 100_000
# How long a binding read from the store is used without reading it again. A task instance never changes
# its scope, but its run may be deleted (with its tries): a process holding the binding let the deleted
# try's token write its state for as long as the token lived, and a run created again with that run_id
# read it (an outsider's find). The process that deletes a run forgets its bindings at once
# (``forget_run``); another one reads them again within this long. One read per task instance per 5 s.
BINDING_TRUST_S = 5.0
# How often ``update_value`` reads and writes again when the key changed in between.
UPDATE_ATTEMPTS = 3


class StateService:
    """Task and asset state, authorized.

    ``default_retention``: how long task state written with ``expires_at=Expiry.DEFAULT`` lives after the
    write (None: for ever), Airflow's ``[state_store] default_retention_days``. A write that gives no
    ``expires_at`` never expires, as Stateport's own routes have it; the Airflow-compatible routes pass
    ``Expiry.DEFAULT`` when a body leaves it out, as Airflow does.

    ``changes``: where every committed write is announced to watchers (``StateChanges.notify``, which never
    blocks); None announces nothing (a CLI or test that no watcher shares a process with).
    """

    def __init__(
        self,
        store: StateStore,
        bindings: TaskBindings,
        dags: DagStore,
        limits: Limits,
        clock: Clock,
        *,
        default_retention: timedelta | None = None,
        changes: StateChanges | None = None,
    ) -> None:
        if default_retention is not None and default_retention <= timedelta(0):
            raise Invalid("the default retention must be positive (None: never expire)")
        self.store = store
        self.bindings = bindings
        # For the assets: the DAGs register them.
        self.dags = dags
        self.limits = limits
        self.clock = clock
        self.default_retention = default_retention
        self.changes = changes
        # Task-instance bindings by id, with when each was read (``BINDING_TRUST_S``), and the runs this
        # process deleted, with when (``forget_run``); none is looked up unless one was.
        self._bindings: Lru[uuid.UUID, tuple[TaskBinding, datetime]] = Lru(BINDING_CACHE_SIZE)
        self._deleted: Lru[tuple[str, str], datetime] = Lru(BINDING_CACHE_SIZE)
        self._trust = timedelta(seconds=BINDING_TRUST_S)

    # --- what a task may do, holding a task-instance token --------------------------------------------

    async def binding(self, subject: str, ti_id: uuid.UUID) -> TaskBinding:
        """The caller's own task instance; Forbidden for another one, NotFound if it does not exist."""
        if subject != str(ti_id):
            raise Forbidden(SUBJECT_MISMATCH)
        return await self._binding(ti_id)

    async def _binding(self, ti_id: uuid.UUID) -> TaskBinding:
        now = self.clock.now()
        cached = self._bindings.get(ti_id)
        if cached is not None and self._trusted(*cached, now):
            return cached[0]
        binding = await self.bindings.get_binding(ti_id)
        if binding is None:
            self._bindings.pop(ti_id)
            raise NotFound(f"Task instance {ti_id} not found")
        self._bindings.put(binding.ti_id, (binding, now))
        return binding

    def _trusted(self, binding: TaskBinding, read_at: datetime, now: datetime) -> bool:
        if now - read_at >= self._trust:
            return False
        if not self._deleted:
            return True
        deleted = self._deleted.peek((binding.scope.dag_id, binding.scope.run_id))
        return deleted is None or deleted < read_at

    def forget_bindings(self) -> None:
        """Every binding is read again when next needed: the event bus lost messages (``DeletedRuns``)."""
        self._bindings.clear()

    def forget_binding(self, ti_id: uuid.UUID) -> None:
        """The try ended here (a report): its binding is read again when next needed, so that a try
        superseded by a retry writes nothing more."""
        self._bindings.pop(ti_id)

    def forget_run(self, dag_id: str, run_id: str) -> None:
        """The run was deleted here: no binding of its task instances read before now is used again."""
        self._deleted.put((dag_id, run_id), self.clock.now())

    async def clear_run(self, dag_id: str, run_id: str, task_ids: Collection[str]) -> int:
        """The task state of a run deleted here (``RunService.delete_run``), each task's at every map
        index, after its tries' bindings (``forget_run``); returns the entries deleted.

        Airflow deletes a run's task state with the run (``task_state_store``'s foreign key cascades), and
        kept state was read by a run created again with the same run_id: a task that keeps an external
        job's id in its state would have resumed the deleted run's job (an outsider's find).
        """
        self.forget_run(dag_id, run_id)
        cleared = 0
        for task_id in sorted(task_ids):
            scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id)
            cleared += await self._clear(scope, all_map_indices=True)
        return cleared

    async def task_get(self, subject: str, ti_id: uuid.UUID, key: str) -> StateEntry:
        binding = await self.binding(subject, ti_id)
        return await self._get(binding.scope, key, "Task")

    async def task_put(
        self,
        subject: str,
        ti_id: uuid.UUID,
        key: str,
        value: JsonText,
        *,
        expires_at: ExpiresAt = None,
        if_version: int | None = None,
        allow_expired: bool = False,
    ) -> StateEntry:
        if subject != str(ti_id):
            raise Forbidden(SUBJECT_MISMATCH)
        value = self._checked(key, value, expires_at, if_version, allow_expired=allow_expired)
        binding = _writing(await self._binding(ti_id))
        return await self._store_put(binding.scope, key, value, expires_at, if_version)

    async def task_delete(
        self, subject: str, ti_id: uuid.UUID, key: str, *, if_version: int | None = None
    ) -> None:
        binding = _writing(await self.binding(subject, ti_id))
        await self._delete(binding.scope, key, if_version)

    async def task_clear(self, subject: str, ti_id: uuid.UUID, *, all_map_indices: bool = False) -> int:
        binding = _writing(await self.binding(subject, ti_id))
        if all_map_indices and binding.scope.map_index >= 0:
            # The other map indices are other task instances, whose state this token neither reads nor
            # writes: map index 0's token cleared its siblings' (an outsider's find).
            raise Forbidden(
                "a mapped task instance's token clears its own map index only (the others are other task "
                "instances); an operator's token (state:admin) clears every map index of the task"
            )
        return await self._clear(binding.scope, all_map_indices)

    async def task_keys(
        self,
        subject: str,
        ti_id: uuid.UUID,
        *,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = DEFAULT_KEYS_LIMIT,
        keys_only: bool = False,
    ) -> KeyPage:
        """The task's own keys starting with ``prefix``, a page at a time (see ``list_keys``)."""
        binding = await self.binding(subject, ti_id)
        return await self.list_keys(
            binding.scope, prefix=prefix, cursor=cursor, limit=limit, keys_only=keys_only
        )

    async def task_batch(
        self, subject: str, ti_id: uuid.UUID, operations: Sequence[BatchOp]
    ) -> list[BatchResult]:
        """A batch on the task's own scope (see ``batch``)."""
        binding = await self.binding(subject, ti_id)
        if not all(isinstance(op, BatchGet) for op in operations):
            _writing(binding)
        return await self._batch(binding.scope, operations)

    async def asset_scope(
        self, subject: str, *, name: str | None = None, uri: str | None = None, writes: bool = False
    ) -> AssetScope:
        """The asset addressed by name (or uri), if the caller's task declares it; with ``writes``, only
        while the caller's try is its task instance's latest (``_writing``)."""
        asset, binding = await self._declared(subject, name, uri)
        if writes:
            _writing(binding)
        return AssetScope(name=asset.name)

    async def declared_asset(self, subject: str, *, name: str | None = None, uri: str | None = None) -> Asset:
        """The registered asset addressed by name (or uri), if the caller's task declares it (the Task SDK
        resolves an ``Asset.ref`` among a task's inlets and outlets this way)."""
        asset, _ = await self._declared(subject, name, uri)
        return asset

    async def _declared(self, subject: str, name: str | None, uri: str | None) -> tuple[Asset, TaskBinding]:
        ti_id = _subject_ti(subject)
        if name is not None:
            check_name(name, "name", max_length=MAX_ASSET_NAME)
        if uri is not None:
            check_name(uri, "uri", max_length=MAX_ASSET_NAME)
        asset = await self.dags.get_asset(name=name, uri=uri)
        if asset is None:
            raise NotFound(_asset_missing(name, uri))
        binding = await self._binding(ti_id)
        if asset.name not in binding.assets:
            raise Forbidden(
                f"Task '{binding.scope.task_id}' does not declare asset '{asset.name}' as an inlet or outlet"
            )
        return asset, binding

    async def asset_get(self, scope: AssetScope, key: str) -> StateEntry:
        return await self._get(scope, key, "Asset")

    async def asset_put(
        self,
        scope: AssetScope,
        key: str,
        value: JsonText,
        *,
        expires_at: ExpiresAt = None,
        if_version: int | None = None,
    ) -> StateEntry:
        return await self._put(scope, key, value, expires_at, if_version)

    async def asset_delete(self, scope: AssetScope, key: str, *, if_version: int | None = None) -> None:
        await self._delete(scope, key, if_version)

    async def asset_clear(self, scope: AssetScope) -> int:
        return await self._clear(scope, False)

    async def asset_batch(self, scope: AssetScope, operations: Sequence[BatchOp]) -> list[BatchResult]:
        """A batch on a declared asset's scope (``asset_scope`` authorized it; see ``batch``)."""
        return await self._batch(scope, operations)

    # --- what an operator may do, holding an API token with state:admin -------------------------------

    async def admin_task_scope(self, scope: TaskScope, *, any_map_index: bool = False) -> TaskScope:
        """The scope, if a task instance exists there (at any map index when asked); NotFound otherwise."""
        check_scope(scope)
        if not await self.bindings.task_exists(scope, any_map_index=any_map_index):
            raise NotFound(
                f"Task instance not found for dag_id='{scope.dag_id}', run_id='{scope.run_id}', "
                f"task_id='{scope.task_id}'" + ("" if any_map_index else f", map_index={scope.map_index}")
            )
        return scope

    async def admin_asset_scope(self, name: str) -> AssetScope:
        check_name(name, "name", max_length=MAX_ASSET_NAME)
        if await self.dags.get_asset(name=name) is None:
            raise NotFound(_asset_missing(name, None))
        return AssetScope(name=name)

    async def admin_asset_scope_by_id(self, asset_id: int) -> AssetScope:
        """The state scope of the asset with that id, as Airflow's asset state routes address it: the id
        only resolves to the name, under which the state lives. NotFound in Airflow's words otherwise."""
        asset = await self.dags.get_asset_by_id(asset_id) if 1 <= asset_id <= MAX_ASSET_ID else None
        if asset is None:
            raise NotFound(f"Asset with id {echo(repr(asset_id))} not found")
        return AssetScope(name=asset.name)

    async def list_entries(
        self, scope: TaskScope | AssetScope, *, limit: int, offset: int, prefix: str = ""
    ) -> Parts[StateEntry]:
        """The live entries starting with ``prefix``, ``limit`` from ``offset`` in key order, and how many
        there are, read in parts of about ``Limits.max_page_bytes`` of values (``Parts``).

        An offset page answers ``limit`` entries whatever their size (its callers count on it), so a page of
        1,000 large values is read a part at a time rather than held whole: the first part by offset, with
        the count, as many entries as fit the page's bytes at the largest value allowed; each further part
        is a key listing after the last key read (``StateStore.scan``), the second read at once. A page
        that ends within its second part has no ``rest``. Between parts, keys added or deleted after the
        last key read show or not as they would in a page read later; none is listed twice.
        """
        if not 0 <= limit <= 1000 or not 0 <= offset <= MAX_OFFSET:
            raise Invalid(f"limit must be 0..1000 and offset 0..{MAX_OFFSET}")
        check_scope(scope)
        prefix = check_prefix(prefix, self.limits)
        head = min(max(limit, 1), max(1, self.limits.max_page_bytes // self.limits.max_value_bytes))
        first = await self.store.list(scope, now=self.clock.now(), limit=head, offset=offset, prefix=prefix)
        if limit == 0:  # the count alone (Airflow's limit=0): read as a page of one, whose entry is dropped
            return Parts(total=first.total, first=[])
        got = len(first.entries)
        # Go on by the count, not by a short first part: a store whose count and page are two reads (Redis
        # with a prefix) answers a part short of a key deleted between them, and the page goes on after it.
        if not got or head == limit or offset + got >= first.total:
            return Parts(total=first.total, first=first.entries)
        after = _EntriesAfter(self, scope, prefix, first.entries[-1].key, limit - got)
        # The second part is read now: a page that ends within it (small values, the common case) is
        # answered whole, at most two parts' bytes, rather than streamed and holding a page seat.
        second = await after.read()
        if second is None or after.done:
            return Parts(total=first.total, first=first.entries + (second or []))
        ahead: list[list[StateEntry]] = [second]

        async def rest() -> list[StateEntry] | None:
            return ahead.pop() if ahead else await after.read()

        return Parts(total=first.total, first=first.entries, rest=Following(rest))

    async def list_keys(
        self,
        scope: TaskScope | AssetScope,
        *,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = DEFAULT_KEYS_LIMIT,
        keys_only: bool = False,
    ) -> KeyPage:
        """Live keys starting with ``prefix`` in byte order, ``limit`` at a time after ``cursor`` (fewer once
        the page's values reach ``Limits.max_page_bytes``: its cursor goes on from there).

        The cursor names the last key of the previous page, never an offset: keys added or deleted
        between pages shift nothing, so a key live throughout is listed exactly once. It stays good
        whatever happens to that key meanwhile.
        """
        if not 1 <= limit <= MAX_KEYS_LIMIT:
            raise Invalid(f"limit must be 1..{MAX_KEYS_LIMIT}", field="limit")
        check_scope(scope)
        prefix = check_prefix(prefix, self.limits)
        after = None if cursor is None else decode_cursor(cursor)
        scan = await self.store.scan(
            scope,
            now=self.clock.now(),
            prefix=prefix,
            after=after,
            limit=limit,
            keys_only=keys_only,
            max_bytes=self.limits.max_page_bytes,
        )
        last = scan.entries[-1].key if scan.more and scan.entries else None
        return KeyPage(entries=scan.entries, next_cursor=None if last is None else encode_cursor(last))

    async def get(self, scope: TaskScope | AssetScope, key: str) -> StateEntry:
        check_scope(scope)
        return await self._get(scope, key, "Task" if isinstance(scope, TaskScope) else "Asset")

    async def put(
        self,
        scope: TaskScope | AssetScope,
        key: str,
        value: JsonText,
        *,
        expires_at: ExpiresAt = None,
        if_version: int | None = None,
        allow_expired: bool = False,
    ) -> StateEntry:
        """Write the key. ``expires_at=Expiry.DEFAULT``: the default retention for task state; asset
        state never expires by default (Airflow's setting does not apply to it either). An
        ``expires_at`` at or before now is Invalid unless ``allow_expired`` (see ``_checked``)."""
        check_scope(scope, new=True)
        return await self._put(scope, key, value, expires_at, if_version, allow_expired=allow_expired)

    async def update_value(
        self, scope: TaskScope | AssetScope, key: str, value: JsonText, *, if_version: int | None = None
    ) -> StateEntry:
        """Airflow's ``PATCH .../state-store/{key}``: a new value for a key that exists, its expiry kept;
        NotFound (Airflow's words) if the key is missing or expired.

        The read and the write are one compare-and-set on the version read: a write by someone else in
        between makes it read again (a few times, then VersionMismatch), so an expiry is never carried
        over from a value that was already replaced. ``if_version``: only at that version (VersionMismatch
        otherwise, and no retry); 0 (the key must be absent) can never hold for a key that must exist.
        """
        check_scope(scope)
        value = self._checked(key, value, None, if_version)
        kind = "Task" if isinstance(scope, TaskScope) else "Asset"
        if if_version is not None:
            entry = await self._get(scope, key, kind)
            if entry.version != if_version:
                # In the words of every other write's 412 (it said "the key is at version 2, not 9").
                raise version_mismatch(key, if_version)
            return await self._store_put(scope, key, value, entry.expires_at, if_version)
        for _ in range(UPDATE_ATTEMPTS - 1):
            entry = await self._get(scope, key, kind)
            try:
                return await self._store_put(scope, key, value, entry.expires_at, entry.version)
            except VersionMismatch:
                continue
        entry = await self._get(scope, key, kind)
        return await self._store_put(scope, key, value, entry.expires_at, entry.version)

    async def delete(self, scope: TaskScope | AssetScope, key: str, *, if_version: int | None = None) -> bool:
        check_scope(scope)
        return await self._delete(scope, key, if_version)

    async def batch(self, scope: TaskScope | AssetScope, operations: Sequence[BatchOp]) -> list[BatchResult]:
        """Up to 100 gets, puts and deletes of one scope, all or nothing (``StateStore.batch``).

        Every operation is checked as its single-key route checks it (key, value, expiry, ``if_version``)
        before anything is read, an error naming ``operations[i]``. A store that cannot apply a batch
        atomically (S3) raises Unsupported and nothing is done: a batch is never applied in part.
        """
        # A batch that puts may make its scope, as a put does.
        check_scope(scope, new=any(isinstance(op, BatchPut) for op in operations))
        return await self._batch(scope, operations)

    async def clear(self, scope: TaskScope | AssetScope, *, all_map_indices: bool = False) -> int:
        check_scope(scope)
        return await self._clear(scope, all_map_indices)

    async def purge_expired(self, *, batch_size: int = 1000) -> int:
        return await self.store.purge_expired(now=self.clock.now(), batch_size=batch_size)

    # --- shared ---------------------------------------------------------------------------------------

    async def _batch(self, scope: TaskScope | AssetScope, operations: Sequence[BatchOp]) -> list[BatchResult]:
        if not 1 <= len(operations) <= MAX_BATCH_OPERATIONS:
            raise Invalid(
                f"a batch holds 1..{MAX_BATCH_OPERATIONS} operations, not {len(operations)}",
                field="operations",
            )
        checked = [self._checked_op(index, op) for index, op in enumerate(operations)]
        if not self.store.capabilities.atomic_batch:
            raise Unsupported(
                "this state backend cannot apply a batch atomically (no transaction across keys): send "
                "the operations one at a time"
            )
        results = await self.store.batch(scope, checked, now=self.clock.now())
        # Announced as the single-key writes are: every put, and a delete that removed a live entry.
        for op, result in zip(checked, results, strict=True):
            if isinstance(op, BatchPut) or result.deleted:
                self._announce(scope, op.key)
        return results

    def _checked_op(self, index: int, op: BatchOp) -> BatchOp:
        """The operation once valid, as its single-key route checks it; errors name ``operations[index]``."""
        try:
            if op.if_version is not None and op.if_version < 0:
                raise Invalid("if_version must be 0 (absent) or a version", field="if_version")
            if op.if_version is not None and op.if_version > MAX_VERSION:
                # No entry is ever at a version past a 64-bit counter: it cannot hold.
                raise BatchMismatch(f"operation {index}: no entry is at version {op.if_version}", index=index)
            if isinstance(op, BatchPut):
                value = self._checked(op.key, op.value, op.expires_at, op.if_version)
                expires_at = _utc(op.expires_at)
                return (
                    op
                    if value is op.value and expires_at is op.expires_at
                    else BatchPut(key=op.key, value=value, expires_at=expires_at, if_version=op.if_version)
                )
            check_key(op.key, self.limits)
            _check_if_version(op.if_version)
            return op
        except (Invalid, TooLarge) as exc:
            _within(exc, f"operations[{index}]")
            raise

    async def _get(self, scope: TaskScope | AssetScope, key: str, kind: str) -> StateEntry:
        entry = await self.store.get(scope, check_key(key, self.limits), now=self.clock.now())
        if entry is None:
            raise NotFound(f"{kind} state store key '{key}' not found")
        return entry

    async def _delete(self, scope: TaskScope | AssetScope, key: str, if_version: int | None) -> bool:
        """Remove the key, with ``if_version`` only at that version (0: if absent); else VersionMismatch."""
        key = check_key(key, self.limits)
        _check_if_version(if_version)
        if if_version is not None and not self.store.capabilities.conditional_delete:
            raise Invalid(
                "this state backend cannot delete conditionally: send the delete without a precondition"
            )
        removed = await self.store.delete(scope, key, now=self.clock.now(), if_version=if_version)
        if removed:
            self._announce(scope, key)
        return removed

    async def _clear(self, scope: TaskScope | AssetScope, all_map_indices: bool) -> int:
        """Clear the scope and announce it (with ``all_map_indices``, only the named map index's watchers
        hear of it: the others' scopes are not known here, and their watchers' re-read finds the clear)."""
        removed = await self.store.clear(scope, all_map_indices=all_map_indices)
        if removed:
            self._announce(scope, "")
        return removed

    def _announce(self, scope: TaskScope | AssetScope, key: str) -> None:
        if self.changes is not None:
            self.changes.notify(scope, key)

    async def _put(
        self,
        scope: TaskScope | AssetScope,
        key: str,
        value: JsonText,
        expires_at: ExpiresAt,
        if_version: int | None,
        *,
        allow_expired: bool = False,
    ) -> StateEntry:
        value = self._checked(key, value, expires_at, if_version, allow_expired=allow_expired)
        return await self._store_put(scope, key, value, expires_at, if_version)

    def _checked(
        self,
        key: str,
        value: JsonText,
        expires_at: ExpiresAt,
        if_version: int | None,
        *,
        allow_expired: bool = False,
    ) -> JsonText:
        """The value to store, once every part of a put is valid (Invalid or TooLarge otherwise).

        An ``expires_at`` at or before now is Invalid: the write could never be read back, which is
        almost always a clock or unit mistake the writer wants to hear of. ``allow_expired`` keeps the
        StateStore port's meaning (stored, and absent at once) for the callers that must: the routes
        where Airflow defines ``expires_at`` (Airflow accepts any time there) and the raw admin routes,
        which copy entries between stores one to one.
        """
        check_key(key, self.limits, new=True)
        value = check_value(value, self.limits)
        check_expiry(expires_at)
        if isinstance(expires_at, datetime) and not allow_expired and expires_at <= self.clock.now():
            raise Invalid(
                f"expires_at {expires_at.isoformat()} is not in the future: the entry could never be read",
                field="expires_at",
            )
        _check_if_version(if_version)
        return value

    async def _store_put(
        self,
        scope: TaskScope | AssetScope,
        key: str,
        value: JsonText,
        expires_at: ExpiresAt,
        if_version: int | None,
    ) -> StateEntry:
        now = self.clock.now()
        entry = await self.store.put(
            scope, key, value, expires_at=self.expiry(scope, expires_at, now), now=now, if_version=if_version
        )
        self._announce(scope, key)
        return entry

    def expiry(self, scope: TaskScope | AssetScope, expires_at: ExpiresAt, now: datetime) -> datetime | None:
        """When a write at ``now`` asking for ``expires_at`` expires: the default retention is resolved
        for task state (never, when none is configured) and is "never" for asset state."""
        if expires_at is not Expiry.DEFAULT:
            return _utc(expires_at)
        if isinstance(scope, AssetScope) or self.default_retention is None:
            return None
        return now + self.default_retention


def _utc(moment: datetime | None) -> datetime | None:
    """A caller's expiry in UTC, as every store reads it back: written in the caller's offset, a write's
    answer said ``+05:00`` on Redis and S3 and ``Z`` on SQL, and a batch's answers mixed both (an
    outsider's find)."""
    if moment is None or moment.utcoffset() == timedelta(0):
        return moment
    return moment.astimezone(UTC)


class _EntriesAfter:
    """Up to ``count`` live entries of a scope after the key ``after``, read a part of about a page's bytes
    at a time (``read``: None once there are no more)."""

    def __init__(
        self, service: StateService, scope: TaskScope | AssetScope, prefix: str, after: str, count: int
    ) -> None:
        self._service = service
        self._scope = scope
        self._prefix = prefix
        self._last: str | None = after
        self._count = count

    @property
    def done(self) -> bool:
        """Whether no entry can follow what was read."""
        return self._last is None or self._count <= 0

    async def read(self) -> list[StateEntry] | None:
        if self.done:
            return None
        service = self._service
        scan = await service.store.scan(
            self._scope,
            now=service.clock.now(),
            prefix=self._prefix,
            after=self._last,
            limit=self._count,
            max_bytes=service.limits.max_page_bytes,
        )
        if not scan.entries:
            self._last = None
            return None
        self._count -= len(scan.entries)
        self._last = scan.entries[-1].key if scan.more else None
        return [e.entry() for e in scan.entries]


def _check_if_version(if_version: int | None) -> None:
    if if_version is not None and if_version < 0:
        raise Invalid("if_version must be 0 (absent) or a version")
    if if_version is not None and if_version > MAX_VERSION:
        # No entry is ever at a version past a 64-bit counter: as a stale If-Match, it cannot hold.
        raise VersionMismatch(f"no entry is at version {if_version}")


def _within(exc: StateportError, where: str) -> None:
    """Make the error name its field inside ``where`` (``key`` becomes ``operations[3].key``)."""
    exc.field = f"{where}.{exc.field or 'value'}"
    exc.detail = f"{where}: {exc.detail}"
    exc.args = (exc.detail,)


def _subject_ti(subject: str) -> uuid.UUID:
    try:
        return uuid.UUID(subject)
    except ValueError as exc:
        raise Forbidden("Invalid auth token: subject is not a task instance id") from exc


def _writing(binding: TaskBinding) -> TaskBinding:
    """The binding of a try that may change state: SupersededTry once its task instance has a newer try.

    A try's token outlives the try: its worker may still run it, cut off, after its lease expired and a
    retry took over. Reads stay open (Airflow answers a finished try's); a write would change what the
    newer try reads (an outsider's find). A binding read within ``BINDING_TRUST_S`` is trusted, so a try
    superseded on another process is refused from at most that long after."""
    if binding.superseded:
        raise SupersededTry(
            f"Task instance {binding.ti_id} has a newer try: its token reads the task's state but no longer "
            "changes it or its assets' state"
        )
    return binding


def _asset_missing(name: str | None, uri: str | None) -> str:
    return f"Asset with name='{name}' not found" if name is not None else f"Asset with uri='{uri}' not found"


class DeletedRuns:
    """Hears, on the event bus, of the runs another process deleted (``DELETED_TOPIC``), and forgets their
    task instances' bindings here as the deleting process does (``StateService.forget_run``): a deleted
    run's token wrote its state through another process for up to ``BINDING_TRUST_S``, and a run made again
    under the id inherited it (an outsider's find)."""

    def __init__(self, state: StateService) -> None:
        self.state = state

    def deliver(self, message: bytes) -> None:
        deleted = read_deleted(message)
        if deleted is None:
            # A RECHECK: the bus reconnected and may have lost messages; no binding is trusted until read
            # again.
            self.state.forget_bindings()
        else:
            self.state.forget_run(*deleted)
