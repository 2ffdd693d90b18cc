"""STATEPORT_REDIS_MIN_REPLICAS: every write script is followed by WAIT on its connection; a write is
acknowledged only once that many replicas confirmed it, else Unavailable (503), written or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from stateport.adapters.redis.state import RedisStateStore
from stateport.domain.errors import Unavailable
from stateport.domain.models import BatchPut, TaskScope
from tests.fixtures.redis import redis_available
from tests.fixtures.redis_cluster import LocalCluster, drop_cluster_prefix
from tests.services import REDIS_URL, require, unique


def now() -> datetime:
    return datetime.now(UTC)


def scope(n: int = 0) -> TaskScope:
    return TaskScope(dag_id="d", run_id=unique("r") + str(n), task_id="t", map_index=-1)


@pytest.fixture
async def on_a_lone_server(redis_prefix: str) -> AsyncIterator[tuple[RedisStateStore, RedisStateStore]]:
    """A store asking for one replica of a Redis that has none (the shared test server), and a plain one."""
    require(redis_available(), f"Redis at {REDIS_URL}")
    # A short timeout: WAIT gives up after half of it.
    strict = await RedisStateStore.connect(REDIS_URL, prefix=redis_prefix, timeout_s=0.4, min_replicas=1)
    plain = await RedisStateStore.connect(REDIS_URL, prefix=redis_prefix, timeout_s=5.0)
    try:
        yield strict, plain
    finally:
        await strict.close()
        await plain.close()


async def test_without_the_replicas_asked_for_writes_are_unavailable_though_applied(
    on_a_lone_server: tuple[RedisStateStore, RedisStateStore],
) -> None:
    strict, plain = on_a_lone_server
    s = scope()
    with pytest.raises(Unavailable, match="STATEPORT_REDIS_MIN_REPLICAS"):
        await strict.put(s, "k", b"1", expires_at=None, now=now())
    # Applied on the primary all the same: what the 503 says ("may be lost"), not "not written".
    entry = await plain.get(s, "k", now=now())
    assert entry is not None and entry.value == b"1"
    with pytest.raises(Unavailable):
        await strict.batch(s, [BatchPut(key="b", value=b"2")], now=now())
    with pytest.raises(Unavailable):
        await strict.delete(s, "k", now=now())
    with pytest.raises(Unavailable):
        await strict.clear(s)
    # Reads wait for nobody.
    assert await strict.get(s, "b", now=now()) is None


async def test_with_a_replica_per_primary_every_write_is_acknowledged(
    redis_cluster: LocalCluster, redis_prefix: str
) -> None:
    store = await RedisStateStore.connect(
        redis_cluster.url, prefix=redis_prefix, timeout_s=5.0, min_replicas=1
    )
    try:
        scopes = [scope(n) for n in range(12)]
        # One event-loop step: a batch of puts across slots, one PUT_MANY per slot and a WAIT per node.
        written = await asyncio.gather(*(store.put(s, "k", b"1", expires_at=None, now=now()) for s in scopes))
        assert [entry.version for entry in written] == [1] * len(scopes)
        (result,) = await store.batch(scopes[0], [BatchPut(key="k", value=b"2", if_version=1)], now=now())
        assert result.entry is not None and result.entry.version == 2
        assert await store.delete(scopes[1], "k", now=now())
        assert await store.clear(scopes[2]) == 1
    finally:
        await store.close()
        await drop_cluster_prefix(redis_cluster, redis_prefix)
