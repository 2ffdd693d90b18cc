"""The worker-side state accessor: one task instance's state, and its task's assets, from task code.

Like Airflow's ``task_state_store`` accessor: ``get(key, default=None)``, ``set(key, value, *, retention)``,
``delete(key)``, ``clear()``; ``expires_at`` is computed here, on the worker, in UTC (task state: by default
now + 30 days, Airflow's ``default_retention_days``; asset state: never, as in Airflow). By default it goes
through the server's Execution API with the task-instance token (``backend="rest"``). With
``backend="redis"`` or ``"s3"`` it reads and writes the store directly, with the same adapter and key
layout as a server configured with that backend, so the server sees the same data.

``batch`` applies gets, puts and deletes of one scope all or nothing (``stateport.worker.state_batch``).
``entry``, ``set``/``delete`` with ``if_version`` (compare-and-set), ``watch`` and ``changes`` work with
versions (``stateport.worker.state_versions``): a watch waits as the server's watchers do, over REST by
long-polls, directly through the server's own ``StateWatches`` on the backend's change notifications.

Values are encoded with ``encode_value`` (the server's limits and JSON rules hold here too) and returned
decoded. A value is returned as stored: Airflow's offload wrappers (``{"__airflow_state_ref__": ...}``)
come back as that dict, unchanged.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

import httpx
import msgspec

from stateport.adapters.clock import SystemClock
from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.rest.execution import ABSENT as ABSENT_ENTRY
from stateport.adapters.rest.execution import MAX_PAUSE_S, OUTAGE_WAIT_S, KeysPage, TaskStateClient, Versioned
from stateport.adapters.rest.transport import BearerToken, backoff
from stateport.adapters.shared.changes import BusChanges
from stateport.domain.errors import Invalid, Unavailable, VersionMismatch
from stateport.domain.jsontext import decode_json
from stateport.domain.models import AssetScope, BatchOp, BatchResult, JsonText, Scope, TaskScope
from stateport.domain.ports import StateChanges, StateStore
from stateport.domain.values import (
    LARGEST_MAX_VALUE_BYTES,
    MAX_VERSION,
    Limits,
    check_key,
    check_prefix,
    check_scope,
    encode_value,
)
from stateport.domain.watching import StateWatches
from stateport.urls import without_password
from stateport.worker.state_batch import Operation, Outcome, outcomes, to_store
from stateport.worker.state_versions import ABSENT, Change, Entry, conflict

T = TypeVar("T")
log = logging.getLogger("stateport.worker")
Backend = Literal["rest", "redis", "s3"]

NEVER_EXPIRE = timedelta.max
# Entries per page while ``list`` and ``keys`` walk a scope.
PAGE = 1000
DEFAULT_RETENTION_DAYS = 30.0
# The longest single wait of a watch: one long-poll over REST (the server caps waits at 300 s, and
# proxies often cut idle requests sooner); a longer watch is a loop of these.
POLL_S = 60.0
# How often a watch on S3 directly re-reads its key (the server's STATEPORT_STATE_WATCH_POLL_S default).
S3_WATCH_POLL_S = 2.0


class _Target(Protocol):
    """One scope as the accessor sees it: JSON text in and out, absence as None."""

    async def get(self, key: str) -> JsonText | None: ...
    async def read(self, key: str) -> Versioned: ...
    async def put(
        self, key: str, value: JsonText, expires_at: datetime | None, if_version: int | None = None
    ) -> int: ...
    async def delete(self, key: str, if_version: int | None = None) -> None: ...
    async def clear(self) -> None: ...
    async def keys(self, prefix: str, cursor: str | None, keys_only: bool) -> KeysPage: ...
    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]: ...
    async def wait_change(self, key: str, known: int, wait_s: float) -> Versioned | None: ...


class _RestTask:
    def __init__(self, client: TaskStateClient) -> None:
        self._client = client

    async def get(self, key: str) -> JsonText | None:
        return await self._client.get(key)

    async def read(self, key: str) -> Versioned:
        return await self._client.read(key)

    async def put(
        self, key: str, value: JsonText, expires_at: datetime | None, if_version: int | None = None
    ) -> int:
        return await self._client.write(key, value, expires_at=expires_at, if_version=if_version)

    async def delete(self, key: str, if_version: int | None = None) -> None:
        await self._client.remove(key, if_version=if_version)

    async def wait_change(self, key: str, known: int, wait_s: float) -> Versioned | None:
        return await self._client.wait_change(key, known, wait_s)

    async def clear(self) -> None:
        await self._client.clear()

    async def keys(self, prefix: str, cursor: str | None, keys_only: bool) -> KeysPage:
        return await self._client.keys(prefix, cursor=cursor, limit=PAGE, keys_only=keys_only)

    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]:
        return await self._client.batch(operations)


class _RestAsset:
    def __init__(self, client: TaskStateClient, name: str) -> None:
        self._client = client
        self._name = name

    async def get(self, key: str) -> JsonText | None:
        return await self._client.asset_get(self._name, key)

    async def read(self, key: str) -> Versioned:
        return await self._client.read(key, asset=self._name)

    async def put(
        self, key: str, value: JsonText, expires_at: datetime | None, if_version: int | None = None
    ) -> int:
        return await self._client.write(
            key, value, expires_at=expires_at, if_version=if_version, asset=self._name
        )

    async def delete(self, key: str, if_version: int | None = None) -> None:
        await self._client.remove(key, if_version=if_version, asset=self._name)

    async def wait_change(self, key: str, known: int, wait_s: float) -> Versioned | None:
        return await self._client.wait_change(key, known, wait_s, asset=self._name)

    async def clear(self) -> None:
        await self._client.asset_clear(self._name)

    async def keys(self, prefix: str, cursor: str | None, keys_only: bool) -> KeysPage:
        return await self._client.asset_keys(
            self._name, prefix, cursor=cursor, limit=PAGE, keys_only=keys_only
        )

    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]:
        return await self._client.asset_batch(self._name, operations)


class _DirectWatches:
    """The watches of a store the worker reaches itself, opened on the first watch (most tasks never
    watch, and on Redis a watch holds a subscribed connection): the server's own ``StateWatches`` over the
    backend's ``StateChanges``, so a worker waits as the server does (Redis: the write scripts' PUBLISH,
    whoever wrote; S3: a re-read every ``poll_s`` seconds, since nothing announces an S3 write)."""

    def __init__(self, store: StateStore, open_changes: Callable[[], Awaitable[_Changes]]) -> None:
        self._store = store
        self._open_changes = open_changes
        self._watches: StateWatches | None = None
        self._close_changes: Callable[[], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> StateWatches:
        async with self._lock:
            if self._watches is None:
                changes, self._close_changes = await self._open_changes()
                self._watches = StateWatches(self._store, changes, SystemClock())
            return self._watches

    async def close(self) -> None:
        if self._watches is not None:
            await self._watches.close()
        if self._close_changes is not None:
            await self._close_changes()


# A backend's StateChanges and how to close it.
_Changes = tuple[StateChanges, Callable[[], Awaitable[None]]]


async def _outlasting(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call()``, tried again with backoff for up to ``OUTAGE_WAIT_S`` while the store is unavailable, as a
    task's state calls over REST wait out a server that cannot answer: going direct, a task failed at the
    first refused connection of a store's restart, and one that never touched its state failed too, at its
    store's opening (an outsider's find). A write retried after a lost reply may meet its own write: a
    compare-and-set then answers a conflict (docs/adapters.md)."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + OUTAGE_WAIT_S
    attempt = 0
    earlier: str | None = None
    while True:
        try:
            return await call()
        except VersionMismatch as exc:
            exc.after(earlier)
            raise
        except Unavailable as exc:
            earlier = exc.detail
            pause = backoff(attempt, MAX_PAUSE_S)
            if loop.time() + pause > give_up_at:
                if attempt:
                    log.warning("%s: given up after %d tries in %.0f s", what, attempt + 1, OUTAGE_WAIT_S)
                raise
            if not attempt:
                log.warning("%s: %s; trying again for up to %.0f s", what, exc.detail, OUTAGE_WAIT_S)
            await asyncio.sleep(pause)
            attempt += 1


class _Direct:
    """A scope of a store the worker reaches itself; the worker's clock is the caller's ``now``. Each call
    waits out the store's outage (``_outlasting``)."""

    def __init__(self, store: StateStore, scope: Scope, watches: _DirectWatches) -> None:
        self._store = store
        self._scope = scope
        self._watches = watches

    async def get(self, key: str) -> JsonText | None:
        entry = await _outlasting(
            lambda: self._store.get(self._scope, key, now=datetime.now(UTC)), "state get"
        )
        return None if entry is None else entry.value

    async def read(self, key: str) -> Versioned:
        entry = await _outlasting(
            lambda: self._store.get(self._scope, key, now=datetime.now(UTC)), "state read"
        )
        return ABSENT_ENTRY if entry is None else (entry.value, entry.version)

    async def put(
        self, key: str, value: JsonText, expires_at: datetime | None, if_version: int | None = None
    ) -> int:
        entry = await _outlasting(
            lambda: self._store.put(
                self._scope, key, value, expires_at=expires_at, now=datetime.now(UTC), if_version=if_version
            ),
            "state put",
        )
        return entry.version

    async def delete(self, key: str, if_version: int | None = None) -> None:
        await _outlasting(
            lambda: self._store.delete(self._scope, key, now=datetime.now(UTC), if_version=if_version),
            "state delete",
        )

    async def wait_change(self, key: str, known: int, wait_s: float) -> Versioned | None:
        watches = await self._watches.get()
        # The worker's own watches, in its own process: its tasks share them, each as a caller of its own.
        state = await watches.wait_for_change(self._scope, key, known, wait_s, caller=str(self._scope))
        if state is None:
            return None
        return ABSENT_ENTRY if state.entry is None else (state.entry.value, state.entry.version)

    async def clear(self) -> None:
        await _outlasting(lambda: self._store.clear(self._scope), "state clear")

    async def keys(self, prefix: str, cursor: str | None, keys_only: bool) -> KeysPage:
        # The "cursor" here is the last key itself: the store pages after a key.
        scan = await _outlasting(
            lambda: self._store.scan(
                self._scope,
                now=datetime.now(UTC),
                prefix=prefix,
                after=cursor,
                limit=PAGE,
                keys_only=keys_only,
            ),
            "state listing",
        )
        entries = [(e.key, e.value) for e in scan.entries]
        return entries, entries[-1][0] if scan.more and entries else None

    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]:
        # The store itself refuses (Unsupported) when it cannot batch atomically: S3.
        return await _outlasting(
            lambda: self._store.batch(self._scope, operations, now=datetime.now(UTC)), "state batch"
        )


class _Policy(msgspec.Struct, frozen=True, kw_only=True):
    """How values are checked and how long they live unless a ``set`` says otherwise (None: forever)."""

    limits: Limits
    default_retention: timedelta | None

    def expires_at(self, retention: timedelta | None) -> datetime | None:
        chosen = self.default_retention if retention is None else retention
        if chosen is None or chosen == NEVER_EXPIRE:
            return None
        if chosen <= timedelta(0):
            raise Invalid("retention must be positive (NEVER_EXPIRE keeps a value forever)")
        try:
            return datetime.now(UTC) + chosen
        except OverflowError:
            return None  # past the year 9999: never, in practice

    def key(self, key: str, *, new: bool = False) -> str:
        """``key`` checked as the server checks it; ``new``: a key being written, which the server's rules
        for stored keys also hold to (an outsider's find: a worker writing Redis or S3 directly stored
        `' lead'`, `'..'` and `'/'`, which the server refuses and no URL could then address)."""
        return check_key(key, self.limits, new=new)


class AsyncStateAccessor:
    """get/set/delete/clear on one scope (the task instance's, or one asset's)."""

    def __init__(self, target: _Target, policy: _Policy) -> None:
        self._target = target
        self._policy = policy

    async def get(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` when it is missing or expired."""
        raw = await self._target.get(self._policy.key(key))
        return default if raw is None else decode_json(raw)

    async def entry(self, key: str) -> Entry | None:
        """The key's value and version (what a compare-and-set compares), or None when it is missing."""
        checked = self._policy.key(key)
        raw, version = await self._target.read(checked)
        return None if raw is None else Entry(checked, decode_json(raw), version)

    async def set(
        self, key: str, value: Any, *, retention: timedelta | None = None, if_version: int | None = None
    ) -> int:
        """Store ``value`` and return its new version; it expires after ``retention`` (None: the default;
        NEVER_EXPIRE: never). With ``if_version`` only if the key is at that version now (0: absent),
        in one step with the write; else ``VersionConflict`` and nothing is written."""
        raw = encode_value(value, self._policy.limits)
        checked = self._policy.key(key, new=True)
        expected = _if_version(if_version)
        try:
            return await self._target.put(checked, raw, self._policy.expires_at(retention), expected)
        except VersionMismatch as exc:
            raise conflict(checked, expected or ABSENT, exc.earlier_try) from exc

    async def delete(self, key: str, *, if_version: int | None = None) -> None:
        """Remove the key; a missing key is not an error. With ``if_version`` only if the key is at that
        version (0: absent, so nothing is removed); else ``VersionConflict`` and nothing is removed."""
        checked = self._policy.key(key)
        expected = _if_version(if_version)
        try:
            await self._target.delete(checked, expected)
        except VersionMismatch as exc:
            raise conflict(checked, expected or ABSENT, exc.earlier_try) from exc

    async def watch(
        self,
        key: str,
        *,
        version: int | None = None,
        timeout: float | None = 60.0,  # noqa: ASYNC109  # reaching it is an answer (None), not an error
    ) -> Change | None:
        """Wait until the key is no longer at ``version`` and return how it is then: a ``Change`` with the
        new value and version, or ``deleted`` (version 0) once it is deleted or expires. None when
        ``timeout`` seconds (None: no limit) pass first.

        ``version`` is the one the caller knows (an ``Entry``'s, ``set``'s answer, a ``Change``'s; 0: "I
        know it is missing", so the watch waits for it to exist); None means "as it is now" (read first).
        A key already at another version answers at once. Versions may be skipped when writes come
        faster than the watcher reads: a watch answers the latest state, never a stale one.
        """
        checked = self._policy.key(key)
        if version is None:
            version = (await self._target.read(checked))[1]
        elif not 0 <= version <= MAX_VERSION:
            raise Invalid("version must be 0 (absent) or a version", field="version")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while True:
            # One wait at most POLL_S long (a long-poll over REST: proxies cut idle requests), then again.
            step = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - loop.time()))
            found = await self._target.wait_change(checked, version, step)
            if found is not None:
                raw, new_version = found
                return Change(
                    key=checked, value=None if raw is None else decode_json(raw), version=new_version
                )
            if deadline is not None and loop.time() >= deadline:
                return None

    async def changes(self, key: str, *, version: int | None = None) -> AsyncIterator[Change]:
        """Each change of the key from ``version`` on (None: from now; 0: the key's state at once if it
        exists), as ``watch`` answers them, until the caller stops iterating. Over REST a loop of
        long-polls, directly the store's change notifications (Redis) or polling (S3)."""
        while True:
            change = await self.watch(key, version=version, timeout=None)
            if change is None:  # pragma: no cover - no timeout, so a watch always answers a change
                continue
            version = change.version
            yield change

    async def clear(self) -> None:
        """Remove every key of the scope (for a task: this map index only)."""
        await self._target.clear()

    async def list(self, prefix: str = "") -> dict[str, Any]:
        """Every live key starting with ``prefix`` and its value, in byte order of the keys (page after
        page: a key live throughout is listed once, whatever is written meanwhile)."""
        return {key: decode_json(raw) async for key, raw in self._walk(prefix, False) if raw is not None}

    async def keys(self, prefix: str = "") -> builtins.list[str]:
        """Every live key starting with ``prefix``, in byte order, without reading the values."""
        return [key async for key, _ in self._walk(prefix, True)]

    async def batch(self, operations: Sequence[Operation]) -> builtins.list[Outcome]:
        """Apply ``Get``, ``Put`` and ``Delete`` operations (1..100) of this scope in order, all or nothing,
        and return one ``Outcome`` each. Each sees the effects of the earlier ones. A failed
        ``if_version`` raises ``BatchMismatch`` (``index``: the operation's) and writes nothing; a backend
        that cannot batch atomically (S3) raises ``Unsupported`` and writes nothing."""
        converted = to_store(operations, self._policy.limits, self._policy.expires_at)
        return outcomes(converted, await self._target.batch(converted))

    async def _walk(self, prefix: str, keys_only: bool) -> AsyncIterator[tuple[str, JsonText | None]]:
        check_prefix(prefix, self._policy.limits)
        cursor: str | None = None
        while True:
            entries, cursor = await self._target.keys(prefix, cursor, keys_only)
            for entry in entries:
                yield entry
            if cursor is None:
                return


def _if_version(if_version: int | None) -> int | None:
    if if_version is not None and not 0 <= if_version <= MAX_VERSION:
        raise Invalid("if_version must be 0 (absent) or a version", field="if_version")
    return if_version


class AsyncTaskStateAccessor(AsyncStateAccessor):
    """The state of one task instance and of its task's assets; ``close`` it (or use ``async with``)."""

    def __init__(
        self,
        target: _Target,
        policy: _Policy,
        *,
        asset_target: Callable[[str], _Target],
        assets: frozenset[str] | None,
        close: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(target, policy)
        self._asset_target = asset_target
        self._assets = assets
        self._close = close

    @classmethod
    async def for_task_instance(
        cls,
        ti_id: uuid.UUID | str,
        token: str | BearerToken,
        base_url: str,
        scope: TaskScope | None = None,
        backend: Backend = "rest",
        *,
        assets: frozenset[str] | set[str] | list[str] | None = None,
        default_retention_days: float = DEFAULT_RETENTION_DAYS,
        max_value_bytes: int | None = None,
        max_key_length: int = Limits().max_key_length,
        timeout_s: float = 5.0,
        redis_url: str = "redis://127.0.0.1:6379/0",
        redis_prefix: str = "stateport",
        redis_min_replicas: int = 0,
        s3_bucket: str = "",
        s3_prefix: str = "stateport",
        s3_endpoint_url: str | None = None,
        s3_region: str = "us-east-1",
        s3_max_connections: int = 8,
        s3_watch_poll_s: float = S3_WATCH_POLL_S,
        http_client: httpx.AsyncClient | None = None,
    ) -> AsyncTaskStateAccessor:
        """An accessor bound to the task instance ``ti_id`` (whose token is ``token``; a ``BearerToken``
        shared with the worker's heartbeats stays renewed however long the task runs).

        ``backend="rest"`` uses the Execution API at ``base_url``. ``"redis"`` and ``"s3"`` use the store
        directly, on ``scope`` (from the worker's claim: dag_id, run_id, task_id, map_index), with the same
        options as the server's ``STATEPORT_REDIS_*`` / ``STATEPORT_S3_*`` settings (``redis_url`` may be a
        ``redis+cluster://`` URL, as the server's). ``assets``, when given,
        are the asset names the task declares; any other name is refused with KeyError, as in Airflow
        (the server checks this too, but a worker holding store credentials bypasses the server).
        ``default_retention_days`` is the retention of a task-state ``set`` without one; 0 means never
        expire. Asset state never expires unless a ``set`` says otherwise.
        ``http_client`` (REST only) is an AsyncClient on ``base_url`` to share: building one costs a
        worker's loop about 20 ms (TLS certificates), too much per task; the accessor never closes it.
        ``s3_watch_poll_s``: how often a watch on S3 directly re-reads its key (nothing announces an S3
        write; the server's ``STATEPORT_STATE_WATCH_POLL_S`` is the same default).
        """
        if default_retention_days < 0:
            raise ValueError("default_retention_days must be 0 (never expire) or more")
        if max_value_bytes is None:
            # Over REST the server's STATEPORT_MAX_VALUE_BYTES decides (413): checked here against the
            # default, a value the server was set to take was refused before it was sent (an outsider's
            # find). A store reached directly has no server to check it: the default holds there.
            rest = backend == "rest"
            max_value_bytes = LARGEST_MAX_VALUE_BYTES if rest else Limits().max_value_bytes
        policy = _Policy(
            limits=Limits(max_value_bytes=max_value_bytes, max_key_length=max_key_length),
            default_retention=timedelta(days=default_retention_days) if default_retention_days else None,
        )
        declared = frozenset(assets) if assets is not None else None
        if backend == "rest":
            client = TaskStateClient.create(
                base_url, uuid.UUID(str(ti_id)), token, timeout_s=timeout_s, client=http_client
            )
            return cls(
                _RestTask(client),
                policy,
                asset_target=lambda name: _RestAsset(client, name),
                assets=declared,
                close=client.close,
            )
        if scope is None:
            raise ValueError(f"backend={backend!r} needs the task instance's scope (dag_id, run_id, ...)")
        # Checked as the server checks a scope it may write (an outsider's find: going direct, a dag_id
        # '..' or '~', or an asset named ' a' or '..', were stored, which the server refuses to address).
        check_scope(scope, new=True)
        store: Any
        open_changes: Callable[[], Awaitable[_Changes]]
        _require_extra(backend)
        if backend == "redis":
            from stateport.adapters.redis.changes import RedisChanges
            from stateport.adapters.redis.state import RedisStateStore

            store = await _outlasting(
                lambda: RedisStateStore.connect(
                    redis_url, prefix=redis_prefix, timeout_s=timeout_s, min_replicas=redis_min_replicas
                ),
                "opening the Redis state store",
            )
            await _check_marked(
                store,
                ("redis", redis_url, redis_prefix),
                f"no Stateport server has opened Redis state under the prefix {redis_prefix!r} in the "
                f"database of {without_password(redis_url)} (the key '{redis_prefix}:layout' each server "
                "writes as it starts is missing): redis_url and redis_prefix must name the database of the "
                "server's STATEPORT_REDIS_URL and its STATEPORT_REDIS_PREFIX, else the server does not see "
                "this worker's state, nor it the server's (or this Redis lost its keys since the server "
                "started)",
            )

            async def open_changes() -> _Changes:
                # The channel the store's write scripts publish on: a write by anyone wakes the watch.
                changes = await RedisChanges.connect(redis_url, prefix=redis_prefix, timeout_s=timeout_s)
                return changes, changes.close
        elif backend == "s3":
            from stateport.adapters.s3.client import S3Location
            from stateport.adapters.s3.layout import Layout as S3Layout
            from stateport.adapters.s3.state import S3StateStore

            if not s3_bucket:
                raise ValueError("backend='s3' needs s3_bucket")
            location = S3Location(
                bucket=s3_bucket,
                prefix=s3_prefix,
                endpoint_url=s3_endpoint_url,
                region=s3_region,
                max_connections=s3_max_connections,
                timeout_s=timeout_s,
            )
            store = await _outlasting(lambda: S3StateStore.connect(location), "opening the S3 state store")
            mark = S3Layout(s3_prefix).mark
            await _check_marked(
                store,
                ("s3", s3_endpoint_url, s3_bucket, s3_prefix.strip("/")),
                f"no Stateport server has opened S3 state under the prefix {s3_prefix!r} in the bucket "
                f"{s3_bucket!r} (the object {mark!r} each server writes as it starts is missing): "
                "s3_bucket, s3_prefix and s3_endpoint_url must name the server's STATEPORT_S3_BUCKET, "
                "STATEPORT_S3_PREFIX and STATEPORT_S3_ENDPOINT_URL, else the server does not see this "
                "worker's state, nor it the server's",
            )

            async def open_changes() -> _Changes:
                # Nobody announces an S3 write: a bus of this process only, and a re-read every poll.
                changes = BusChanges(MemoryEventBus(), poll_s=s3_watch_poll_s)
                return changes, changes.close
        else:
            raise ValueError(f"backend must be 'rest', 'redis' or 's3', not {backend!r}")
        watches = _DirectWatches(store, open_changes)

        async def close() -> None:
            try:
                await watches.close()
            finally:
                await store.close()

        return cls(
            _Direct(store, scope, watches),
            policy,
            asset_target=lambda name: _Direct(store, _checked_asset(name), watches),
            assets=declared,
            close=close,
        )

    def asset(self, name: str) -> AsyncStateAccessor:
        """The state of an asset the task declares as an inlet or outlet (KeyError for any other)."""
        if self._assets is not None and name not in self._assets:
            raise KeyError(f"the task does not declare asset {name!r} as an inlet or outlet")
        # Asset state outlives runs and never expires in Airflow (its cleanup skips asset rows, and its
        # asset accessor has no retention): the task state's default retention does not apply to it.
        return AsyncStateAccessor(
            self._asset_target(name), msgspec.structs.replace(self._policy, default_retention=None)
        )

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _checked_asset(name: str) -> AssetScope:
    """An asset's scope for a direct store, its name checked as the server checks one it writes."""
    scope = AssetScope(name=name)
    check_scope(scope, new=True)
    return scope


# --- the sync accessor ----------------------------------------------------------------------------------


class _LoopThread:
    """A private event loop running in a daemon thread, for sync callers.

    Why not ``asyncio.run`` per call: it cannot run where an event loop is already running in the calling
    thread (a sync task body called from async code), and the clients (httpx pool, Redis pool, the S3
    store's threads) are bound to the loop that created them, so a loop per call would open and close
    every connection on every call. One long-lived loop of our own keeps them open and works from any
    thread; calls from several threads are serialized onto it safely.
    """

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stateport-state", daemon=True)
        self._thread.start()
        # The clients time out on their own; this only guards against a call that never completes.
        self._timeout_s = timeout_s

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def run(self, coro: Coroutine[Any, Any, T], *, timeout_s: float | Literal["call"] | None = "call") -> T:
        """Run ``coro`` on the loop; give up after ``timeout_s`` (a call's guard by default; None: a
        watch without a limit, which the loop's own deadlines end)."""
        limit = self._timeout_s if timeout_s == "call" else timeout_s
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(limit)
        except TimeoutError as exc:
            future.cancel()
            raise Unavailable(f"state call did not complete in {limit:g} s") from exc
        except BaseException:
            # A KeyboardInterrupt in a sync task waiting on a watch must not leave the watch running.
            future.cancel()
            raise

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class StateAccessor:
    """The sync form of ``AsyncStateAccessor``."""

    def __init__(self, inner: AsyncStateAccessor, runner: _LoopThread) -> None:
        self._inner = inner
        self._runner = runner

    def get(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` when it is missing or expired."""
        return self._runner.run(self._inner.get(key, default))

    def entry(self, key: str) -> Entry | None:
        """The key's value and version, or None when it is missing."""
        return self._runner.run(self._inner.entry(key))

    def set(
        self, key: str, value: Any, *, retention: timedelta | None = None, if_version: int | None = None
    ) -> int:
        """Store ``value`` and return its new version (see ``AsyncStateAccessor.set``)."""
        return self._runner.run(self._inner.set(key, value, retention=retention, if_version=if_version))

    def delete(self, key: str, *, if_version: int | None = None) -> None:
        """Remove the key; a missing key is not an error (``if_version`` as ``set``'s)."""
        self._runner.run(self._inner.delete(key, if_version=if_version))

    def watch(self, key: str, *, version: int | None = None, timeout: float | None = 60.0) -> Change | None:
        """Wait until the key is no longer at ``version`` (see ``AsyncStateAccessor.watch``)."""
        return self._runner.run(
            self._inner.watch(key, version=version, timeout=timeout),
            timeout_s=None if timeout is None else self._runner.timeout_s + timeout,
        )

    def changes(self, key: str, *, version: int | None = None) -> Iterator[Change]:
        """Each change of the key from ``version`` on (see ``AsyncStateAccessor.changes``)."""
        while True:
            change = self.watch(key, version=version, timeout=None)
            if change is not None:
                version = change.version
                yield change

    def clear(self) -> None:
        """Remove every key of the scope (for a task: this map index only)."""
        self._runner.run(self._inner.clear())

    def list(self, prefix: str = "") -> dict[str, Any]:
        """Every live key starting with ``prefix`` and its value, in byte order of the keys."""
        return self._runner.run(self._inner.list(prefix))

    def keys(self, prefix: str = "") -> builtins.list[str]:
        """Every live key starting with ``prefix``, in byte order, without reading the values."""
        return self._runner.run(self._inner.keys(prefix))

    def batch(self, operations: Sequence[Operation]) -> builtins.list[Outcome]:
        """Operations of this scope in order, all or nothing (see ``AsyncStateAccessor.batch``)."""
        return self._runner.run(self._inner.batch(operations))


class TaskStateAccessor(StateAccessor):
    """The sync accessor of one task instance's state; ``close`` it (or use ``with``)."""

    _inner: AsyncTaskStateAccessor

    @classmethod
    def for_task_instance(
        cls,
        ti_id: uuid.UUID | str,
        token: str | BearerToken,
        base_url: str,
        scope: TaskScope | None = None,
        backend: Backend = "rest",
        **options: Any,
    ) -> TaskStateAccessor:
        """As ``AsyncTaskStateAccessor.for_task_instance``, for sync task code."""
        timeout_s = float(options.get("timeout_s", 5.0))
        # S3 calls retry once, so a call may take about two timeouts; leave room before giving up on it.
        # Over REST a call waits out a server that cannot answer for up to OUTAGE_WAIT_S: the guard leaves
        # it that long too (it was 16 s: a sync task's state call failed there, an async task's rode out
        # the same outage; an outsider's find).
        guard_s = 3 * timeout_s + 1 + OUTAGE_WAIT_S + MAX_PAUSE_S  # direct calls wait out outages too
        runner = _LoopThread(timeout_s=guard_s)
        try:
            inner = runner.run(
                AsyncTaskStateAccessor.for_task_instance(ti_id, token, base_url, scope, backend, **options)
            )
        except BaseException:
            runner.stop()
            raise
        return cls(inner, runner)

    def asset(self, name: str) -> StateAccessor:
        """The state of an asset the task declares as an inlet or outlet (KeyError for any other)."""
        return StateAccessor(self._inner.asset(name), self._runner)

    def close(self) -> None:
        try:
            self._runner.run(self._inner.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# The stores this process has checked for a server's mark: a worker opens one per task it runs, and the
# check is a round trip, so each store is checked once, whatever it found.
_checked_marks: set[tuple[str | None, ...]] = set()


async def _check_marked(store: Any, where: tuple[str | None, ...], warning: str) -> None:
    """Warn, once per process and store, if no server has marked the store (``adapters.shared.marks``).

    A warning, not a refusal: a Redis without persistence that restarted has lost the mark along with the
    state, and a worker's tasks must not fail for that; the state they write is still read by the server."""
    if where in _checked_marks:
        return
    _checked_marks.add(where)
    try:
        marked = await store.layout_marked()
    except Exception as exc:  # noqa: BLE001  # the check must not fail a task: its own calls will say
        log.debug("could not check the state store for a server's mark: %s", exc)
        return
    if not marked:
        log.warning("%s", warning)


def _require_extra(backend: str) -> None:
    """A direct backend's client library is an extra of the package (the base install is the REST path)."""
    module = {"redis": "redis", "s3": "boto3"}.get(backend)
    if module is not None and importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"backend={backend!r} needs {module}: pip install 'stateport[{backend}]'", name=module
        )


__all__ = [
    "NEVER_EXPIRE",
    "AsyncStateAccessor",
    "AsyncTaskStateAccessor",
    "StateAccessor",
    "TaskStateAccessor",
]
