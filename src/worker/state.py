"""The worker-side state accessor: one task instance's state, and its task's assets, from task code.

Like Airflow's ``task_state_store`` accessor: ``get(key, default=None)``, ``set(key, value, *, retention)``,
``delete(key)``, ``clear()``; ``expires_at`` is computed here, on the worker, in UTC (task state: by default
now + 30 days, Airflow's ``default_retention_days``; asset state: never, as in Airflow). By default it goes
through the server's Execution API with the task-instance token (``backend="rest"``). With
``backend="redis"`` or ``"s3"`` it reads and writes the store directly, with the same adapter and key
layout as a server configured with that backend, so the server sees the same data.

``batch`` applies gets, puts and deletes of one scope all or nothing (``stateport.worker.state_batch``).

Values are encoded with ``encode_value`` (the server's limits and JSON rules hold here too) and returned
decoded. A value is returned as stored: Airflow's offload wrappers (``{"__airflow_state_ref__": ...}``)
come back as that dict, unchanged.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

import httpx
import msgspec

from stateport.adapters.rest.execution import KeysPage, TaskStateClient
from stateport.adapters.rest.transport import BearerToken
from stateport.domain.errors import Invalid, Unavailable
from stateport.domain.models import AssetScope, BatchOp, BatchResult, JsonText, Scope, TaskScope
from stateport.domain.ports import StateStore
from stateport.domain.values import Limits, check_key, check_prefix, encode_value
from stateport.worker.state_batch import Operation, Outcome, outcomes, to_store

T = TypeVar("T")
Backend = Literal["rest", "redis", "s3"]

NEVER_EXPIRE = timedelta.max
# Entries per page while ``list`` and ``keys`` walk a scope.
PAGE = 1000
DEFAULT_RETENTION_DAYS = 30.0


class _Target(Protocol):
    """One scope as the accessor sees it: JSON text in and out, absence as None."""

    async def get(self, key: str) -> JsonText | None: ...
    async def put(self, key: str, value: JsonText, expires_at: datetime | None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def clear(self) -> None: ...
    async def keys(self, prefix: str, cursor: str | None, keys_only: bool) -> KeysPage: ...
    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]: ...


class _RestTask:
    def __init__(self, client: TaskStateClient) -> None:
        self._client = client

    async def get(self, key: str) -> JsonText | None:
        return await self._client.get(key)

    async def put(self, key: str, value: JsonText, expires_at: datetime | None) -> None:
        await self._client.put(key, value, expires_at=expires_at)

    async def delete(self, key: str) -> None:
        await self._client.delete(key)

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

    async def put(self, key: str, value: JsonText, expires_at: datetime | None) -> None:
        await self._client.asset_put(self._name, key, value, expires_at=expires_at)

    async def delete(self, key: str) -> None:
        await self._client.asset_delete(self._name, key)

    async def clear(self) -> None:
        await self._client.asset_clear(self._name)

    async def keys(self, prefix: str, cursor: str | None, keys_only: bool) -> KeysPage:
        return await self._client.asset_keys(
            self._name, prefix, cursor=cursor, limit=PAGE, keys_only=keys_only
        )

    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]:
        return await self._client.asset_batch(self._name, operations)


class _Direct:
    """A scope of a store the worker reaches itself; the worker's clock is the caller's ``now``."""

    def __init__(self, store: StateStore, scope: Scope) -> None:
        self._store = store
        self._scope = scope

    async def get(self, key: str) -> JsonText | None:
        entry = await self._store.get(self._scope, key, now=datetime.now(UTC))
        return None if entry is None else entry.value

    async def put(self, key: str, value: JsonText, expires_at: datetime | None) -> None:
        await self._store.put(self._scope, key, value, expires_at=expires_at, now=datetime.now(UTC))

    async def delete(self, key: str) -> None:
        await self._store.delete(self._scope, key, now=datetime.now(UTC))

    async def clear(self) -> None:
        await self._store.clear(self._scope)

    async def keys(self, prefix: str, cursor: str | None, keys_only: bool) -> KeysPage:
        # The "cursor" here is the last key itself: the store pages after a key.
        scan = await self._store.scan(
            self._scope, now=datetime.now(UTC), prefix=prefix, after=cursor, limit=PAGE, keys_only=keys_only
        )
        entries = [(e.key, e.value) for e in scan.entries]
        return entries, entries[-1][0] if scan.more and entries else None

    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]:
        # The store itself refuses (Unsupported) when it cannot batch atomically: S3.
        return await self._store.batch(self._scope, operations, now=datetime.now(UTC))


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

    def key(self, key: str) -> str:
        return check_key(key, self.limits)


class AsyncStateAccessor:
    """get/set/delete/clear on one scope (the task instance's, or one asset's)."""

    def __init__(self, target: _Target, policy: _Policy) -> None:
        self._target = target
        self._policy = policy

    async def get(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` when it is missing or expired."""
        raw = await self._target.get(self._policy.key(key))
        return default if raw is None else msgspec.json.decode(raw)

    async def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
        """Store ``value``; it expires after ``retention`` (None: the default; NEVER_EXPIRE: never)."""
        raw = encode_value(value, self._policy.limits)
        await self._target.put(self._policy.key(key), raw, self._policy.expires_at(retention))

    async def delete(self, key: str) -> None:
        """Remove the key; a missing key is not an error."""
        await self._target.delete(self._policy.key(key))

    async def clear(self) -> None:
        """Remove every key of the scope (for a task: this map index only)."""
        await self._target.clear()

    async def list(self, prefix: str = "") -> dict[str, Any]:
        """Every live key starting with ``prefix`` and its value, in byte order of the keys (page after
        page: a key live throughout is listed once, whatever is written meanwhile)."""
        return {
            key: msgspec.json.decode(raw) async for key, raw in self._walk(prefix, False) if raw is not None
        }

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
        max_value_bytes: int = Limits().max_value_bytes,
        max_key_length: int = Limits().max_key_length,
        timeout_s: float = 5.0,
        redis_url: str = "redis://127.0.0.1:6379/0",
        redis_prefix: str = "stateport",
        s3_bucket: str = "",
        s3_prefix: str = "stateport",
        s3_endpoint_url: str | None = None,
        s3_region: str = "us-east-1",
        s3_max_connections: int = 8,
        http_client: httpx.AsyncClient | None = None,
    ) -> AsyncTaskStateAccessor:
        """An accessor bound to the task instance ``ti_id`` (whose token is ``token``; a ``BearerToken``
        shared with the worker's heartbeats stays renewed however long the task runs).

        ``backend="rest"`` uses the Execution API at ``base_url``. ``"redis"`` and ``"s3"`` use the store
        directly, on ``scope`` (from the worker's claim: dag_id, run_id, task_id, map_index), with the same
        options as the server's ``STATEPORT_REDIS_*`` / ``STATEPORT_S3_*`` settings. ``assets``, when given,
        are the asset names the task declares; any other name is refused with KeyError, as in Airflow
        (the server checks this too, but a worker holding store credentials bypasses the server).
        ``default_retention_days`` is the retention of a task-state ``set`` without one; 0 means never
        expire. Asset state never expires unless a ``set`` says otherwise.
        ``http_client`` (REST only) is an AsyncClient on ``base_url`` to share: building one costs a
        worker's loop about 20 ms (TLS certificates), too much per task; the accessor never closes it.
        """
        if default_retention_days < 0:
            raise ValueError("default_retention_days must be 0 (never expire) or more")
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
        store: Any
        _require_extra(backend)
        if backend == "redis":
            from stateport.adapters.redis.state import RedisStateStore

            store = await RedisStateStore.connect(redis_url, prefix=redis_prefix, timeout_s=timeout_s)
        elif backend == "s3":
            from stateport.adapters.s3.client import S3Location
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
            store = await S3StateStore.connect(location)
        else:
            raise ValueError(f"backend must be 'rest', 'redis' or 's3', not {backend!r}")
        return cls(
            _Direct(store, scope),
            policy,
            asset_target=lambda name: _Direct(store, AssetScope(name=name)),
            assets=declared,
            close=store.close,
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

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError as exc:
            future.cancel()
            raise Unavailable(f"state call did not complete in {self._timeout_s:g} s") from exc

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

    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None:
        """Store ``value``; it expires after ``retention`` (None: the default; NEVER_EXPIRE: never)."""
        self._runner.run(self._inner.set(key, value, retention=retention))

    def delete(self, key: str) -> None:
        """Remove the key; a missing key is not an error."""
        self._runner.run(self._inner.delete(key))

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
        runner = _LoopThread(timeout_s=3 * timeout_s + 1)
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
