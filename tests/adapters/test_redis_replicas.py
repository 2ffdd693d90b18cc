"""STATEPORT_REDIS_MIN_REPLICAS: every write script is followed by WAIT on its connection; a write is
acknowledged only once that many replicas confirmed it, else Unavailable (503), written or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from stateport.adapters.redis.state import RedisStateStore
from stateport.domain.errors import BatchMismatch, Unavailable, VersionMismatch
from stateport.domain.models import BatchDelete, BatchGet, BatchPut, TaskScope
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
    # WAIT gives up after half the timeout: 1 s, long enough for the other calls on a loaded machine (at
    # 0.4 s a read timed out under the suite's parallel load).
    strict = await RedisStateStore.connect(REDIS_URL, prefix=redis_prefix, timeout_s=2.0, min_replicas=1)
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


async def test_a_write_that_changed_nothing_is_answered_as_it_is_without_the_replicas(
    on_a_lone_server: tuple[RedisStateStore, RedisStateStore],
) -> None:
    # An outsider's find: with too few replicas a compare-and-set that lost (nothing written) waited out
    # WAIT and answered 503 "Redis applied the write", the opposite of what happened; so did a delete or a
    # clear of nothing, and a batch whose precondition failed.
    strict, plain = on_a_lone_server
    s = scope()
    await plain.put(s, "k", b"1", expires_at=None, now=now())
    with pytest.raises(VersionMismatch, match="already exists"):
        await strict.put(s, "k", b"2", expires_at=None, now=now(), if_version=0)
    with pytest.raises(VersionMismatch, match="is not at version 7"):
        await strict.delete(s, "k", now=now(), if_version=7)
    assert await strict.delete(s, "missing", now=now()) is False
    with pytest.raises(BatchMismatch):
        await strict.batch(s, [BatchPut(key="k", value=b"3", if_version=5)], now=now())
    assert await strict.clear(scope()) == 0
    entry = await plain.get(s, "k", now=now())
    assert entry is not None and (entry.value, entry.version) == (b"1", 1)
    # A batch that writes nothing (reads, a delete of an absent key) waited out WAIT too, and said 503.
    got, gone = await strict.batch(s, [BatchGet(key="k"), BatchDelete(key="missing")], now=now())
    assert got.entry is not None and got.entry.value == b"1" and gone.deleted is False


async def test_a_lost_compare_and_set_batched_with_writes_that_won_is_told_it_lost(
    on_a_lone_server: tuple[RedisStateStore, RedisStateStore],
) -> None:
    # An outsider's find: puts of one event-loop step go to Redis in one script call, and its replicas'
    # verdict was every put's: of 30 compare-and-sets that lost, sent beside 30 plain puts, up to 20 were
    # told 503 "Redis applied the write" rather than that they lost.
    strict, plain = on_a_lone_server
    s = scope()
    await plain.put(s, "cas", b"1", expires_at=None, now=now())
    losers = [strict.put(s, "cas", b"2", expires_at=None, now=now(), if_version=77) for _ in range(10)]
    winners = [strict.put(scope(n), "k", b"1", expires_at=None, now=now()) for n in range(10)]
    answers = await asyncio.gather(*losers, *winners, return_exceptions=True)
    assert all(isinstance(a, VersionMismatch) for a in answers[:10]), answers[:10]
    assert all(isinstance(a, Unavailable) and "STATEPORT_REDIS_MIN_REPLICAS" in str(a) for a in answers[10:])


async def test_a_write_redis_did_not_know_the_script_of_is_applied_before_the_replicas_are_judged(
    on_a_lone_server: tuple[RedisStateStore, RedisStateStore],
) -> None:
    # After a SCRIPT FLUSH (a restarted Redis, a failover), the missing replicas were judged before the
    # NOSCRIPT reply: the 503 said "applied" of a write that never ran, and it was never sent again. (The
    # suite's other flush, in test_redis.py, made the test above fail now and then.)
    strict, plain = on_a_lone_server
    s = scope()
    admin = Redis.from_url(REDIS_URL)
    try:
        await admin.script_flush()
    finally:
        await admin.aclose()
    with pytest.raises(Unavailable, match="applied the write"):
        await strict.put(s, "k", b"1", expires_at=None, now=now())
    entry = await plain.get(s, "k", now=now())
    assert entry is not None and entry.value == b"1"


async def test_the_readiness_check_fails_without_the_replicas_asked_for(
    on_a_lone_server: tuple[RedisStateStore, RedisStateStore],
) -> None:
    strict, plain = on_a_lone_server
    with pytest.raises(Unavailable, match=r"Redis has 0 replicas online .*, fewer than the 1 .*MIN_REPLICAS"):
        await strict.ping()
    await plain.ping()


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
        await store.ping()  # every primary has its replica online
    finally:
        await store.close()
        await drop_cluster_prefix(redis_cluster, redis_prefix)


async def test_a_replica_is_not_ready_for_writes(redis_cluster: LocalCluster, redis_prefix: str) -> None:
    # A URL naming a replica by mistake: it answers reads' PING, and refuses every write (READONLY).
    replica = next(node for node in redis_cluster.alive() if redis_cluster.role(node) == "slave")
    store = await RedisStateStore.connect(f"redis://127.0.0.1:{replica.port}/0", prefix=redis_prefix)
    try:
        with pytest.raises(Unavailable, match="Redis is a replica: it refuses writes"):
            await store.ping()
    finally:
        await store.close()


async def test_a_redis_that_refuses_info_is_ready_when_no_replicas_are_asked_for(redis_prefix: str) -> None:
    # An ACL without INFO (or a managed Redis that renames it): a PING is what readiness can ask then.
    require(redis_available(), f"Redis at {REDIS_URL}")
    user = unique("noinfo")
    admin = Redis.from_url(REDIS_URL)
    await admin.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-info"]
    )
    url = REDIS_URL.replace("redis://", f"redis://{user}:x@", 1)
    plain = await RedisStateStore.connect(url, prefix=redis_prefix)
    strict = await RedisStateStore.connect(url, prefix=redis_prefix, min_replicas=1)
    try:
        await plain.ping()
        with pytest.raises(Unavailable):
            await strict.ping()
    finally:
        await plain.close()
        await strict.close()
        await admin.acl_deluser(user)
        await admin.aclose()
