"""Worker-direct state throughput: what task code gets from its state accessor, next to raw redis-py.

All in this one process, N coroutines on one event loop, sharing one accessor (one task instance's scope,
its seeded keys in turn) or one raw client:

- ``accessor-redis``: ``AsyncTaskStateAccessor`` with ``backend="redis"`` (the adapter, key checks, value
  encoding, JSON decoding) against Redis directly;
- ``accessor-rest``: the same accessor with the default ``backend="rest"``: through the running server's
  Execution API (with the server on Redis too, so the two differ by the HTTP hop and the server);
- ``redis-py``: ``redis.asyncio`` with the same client options as the adapter, plain ``GET``/``SET`` of a
  string key, and ``HMGET`` of the very hash and fields the adapter reads for a state GET: the ceiling.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.ceiling import CeilingResult, ops_loop
from bench.procstat import CpuWindow
from bench.server import Target
from stateport.domain.errors import StateportError
from stateport.domain.models import TaskScope

VALUE = {"counter": 1, "owner": "bench", "tags": ["a", "b"]}
RAW_VALUE = b'{"counter": 1, "owner": "bench", "tags": ["a", "b"]}'


def _scope(t: Target) -> TaskScope:
    return TaskScope(dag_id=t.dag_id, run_id=t.run_id, task_id=t.task_id, map_index=t.map_index)


async def _loop(
    name: str,
    op: str,
    run_one: Callable[[int], Awaitable[Any]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_window: CpuWindow | None,
    errors: tuple[type[Exception], ...],
) -> CeilingResult:
    return await ops_loop(
        run_one,
        name=name,
        backend="redis",
        op_name=op,
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=warmup_s,
        errors_caught=errors,
        cpu_window=cpu_window,
    )


async def accessor(
    kind: str,
    op: str,
    targets: list[Target],
    *,
    base_url: str,
    redis_url: str,
    redis_prefix: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_window: CpuWindow | None = None,
) -> CeilingResult:
    """One accessor (``kind`` rest or redis) on the first target's task instance, ``op`` get or set."""
    from stateport.worker.state import AsyncTaskStateAccessor

    first = targets[0]
    keys = [t.key for t in targets if t.ti_id == first.ti_id]
    options: dict[str, Any] = {}
    if kind == "redis":
        options = {"scope": _scope(first), "backend": "redis", "redis_url": redis_url}
        options["redis_prefix"] = redis_prefix
    state = await AsyncTaskStateAccessor.for_task_instance(first.ti_id, first.token, base_url, **options)

    async def run_one(i: int) -> None:
        key = keys[i % len(keys)]
        if op == "get":
            if await state.get(key) is None:
                raise StateportError(f"{key} is missing")
        else:
            await state.set(key, VALUE)

    try:
        return await _loop(
            f"accessor-{kind}",
            op,
            run_one,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            cpu_window=cpu_window,
            errors=(StateportError,),
        )
    finally:
        await state.close()


async def raw_redis(
    op: str,
    targets: list[Target],
    *,
    redis_url: str,
    redis_prefix: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_window: CpuWindow | None = None,
) -> CeilingResult:
    """redis-py alone: ``op`` get / set (a string key under the prefix) or hmget (the adapter's read)."""
    from redis.asyncio import Redis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry

    from stateport.adapters.redis.layout import Layout

    client = Redis.from_url(redis_url, decode_responses=False, retry=Retry(NoBackoff(), 0))
    first = targets[0]
    keys = [t.key for t in targets if t.ti_id == first.ti_id]
    string_keys = [f"{redis_prefix}:bench-raw:{uuid.uuid4().hex[:6]}:{k}" for k in keys]
    layout = Layout(redis_prefix)
    entries = [layout.scope(_scope(first)).entry(k) for k in keys]
    for k in string_keys:
        await client.set(k, RAW_VALUE)

    async def run_one(i: int) -> None:
        j = i % len(keys)
        if op == "get":
            if await client.get(string_keys[j]) is None:
                raise StateportError("raw key missing")
        elif op == "set":
            await client.set(string_keys[j], RAW_VALUE)
        else:
            fields = await client.hmget(entries[j], ["v", "u", "e", "n"])
            if fields[0] is None:
                raise StateportError(f"{entries[j]} is missing")

    try:
        return await _loop(
            "redis-py",
            op,
            run_one,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            cpu_window=cpu_window,
            errors=(StateportError, RedisError, OSError),
        )
    finally:
        await client.delete(*string_keys)
        await client.aclose()
