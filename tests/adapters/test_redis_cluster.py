"""The Redis adapter on a real Redis Cluster, beyond the contract suites (which run on it too): where events
travel, batches spanning slots, and a primary killed under load with nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from stateport.adapters.redis.changes import RedisChanges
from stateport.adapters.redis.events import RedisEventBus
from stateport.adapters.redis.sharded import channel_of
from stateport.adapters.redis.state import RedisStateStore
from stateport.domain.errors import Unavailable
from stateport.domain.models import TaskScope
from stateport.domain.ports import RECHECK, Subscription
from tests.e2e.test_worker_direct import create_task_instance
from tests.fixtures.redis_cluster import LocalCluster, drop_cluster_prefix, restart, start_cluster
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = pytest.mark.slow


def now() -> datetime:
    return datetime.now(UTC)


def scope(n: int) -> TaskScope:
    return TaskScope(dag_id="d", run_id=f"r{n}", task_id="t", map_index=-1)


async def test_the_event_bus_uses_sharded_pub_sub_on_the_channels_shard_only(
    redis_cluster: LocalCluster,
) -> None:
    channel = unique("events")
    bus = await RedisEventBus.connect(redis_cluster.url, timeout_s=5.0, channel=channel)
    try:
        owner = redis_cluster.primary_of(channel)
        # One sharded subscriber, on the node serving the channel's slot; no classic subscriber anywhere,
        # so a publish is not carried over the cluster bus to every node.
        shard = redis_cluster.cli(owner.port, "PUBSUB", "SHARDNUMSUB", channel).split()
        assert shard == [channel, "1"]
        for node in redis_cluster.alive():
            assert redis_cluster.cli(node.port, "PUBSUB", "NUMSUB", channel).split() == [channel, "0"]
        async with bus.subscribe("topic") as sub:
            other = await RedisEventBus.connect(redis_cluster.url, timeout_s=5.0, channel=channel)
            try:
                await other.publish("topic", b"across processes")
                await other.publish_many([("topic", b"1"), ("topic", b"2")])
            finally:
                await other.close()
            assert [await sub.next(10.0) for _ in range(3)] == [b"across processes", b"1", b"2"]
    finally:
        await bus.close()


async def test_state_changes_use_the_sharded_channel_of_each_scope_on_its_shard_only(
    redis_cluster: LocalCluster,
) -> None:
    """A scope's hints go to a sharded channel in the scope's slot, subscribed on the primary serving it:
    a subscriber on another shard, or a classic subscriber on any node, hears none of them."""
    prefix = unique("sp")
    store = await RedisStateStore.connect(redis_cluster.url, prefix=prefix, timeout_s=5.0)
    changes = await RedisChanges.connect(redis_cluster.url, prefix=prefix, timeout_s=5.0)
    strangers: list[Redis] = []
    try:
        by_node: dict[int, TaskScope] = {}
        for n in range(200):
            by_node.setdefault(redis_cluster.primary_of(store.layout.scope(scope(n)).index).port, scope(n))
        assert len(by_node) >= 2, "the scopes tried all landed on one shard"
        (mine_port, mine), (far_port, far) = list(by_node.items())[:2]
        channel = channel_of(prefix, store.layout.scope(mine).index)
        far_channel = channel_of(prefix, store.layout.scope(far).index)
        # The channel's slot is the scope's: its keys and its hints live on one shard.
        assert redis_cluster.primary_of(channel).port == mine_port
        # Listeners elsewhere: a classic subscriber of every changes channel on every node, and a sharded
        # subscriber of the far scope's channel on its own shard.
        pubsubs = []
        for node in redis_cluster.alive():
            client = Redis(port=node.port)
            strangers.append(client)
            pubsub = client.pubsub()
            await pubsub.psubscribe(f"{prefix}:changes*")
            if node.port == far_port:
                await pubsub.ssubscribe(far_channel)
            pubsubs.append(pubsub)
        async with changes.subscribe(mine) as sub:
            for node in redis_cluster.alive():
                counted = redis_cluster.cli(node.port, "PUBSUB", "SHARDNUMSUB", channel).split()
                assert counted == [channel, "1" if node.port == mine_port else "0"]
            await store.put(mine, "k", b"1", expires_at=None, now=now())
            assert await sub.next(10.0) == b"k"
            await store.put(far, "elsewhere", b"1", expires_at=None, now=now())
            assert await sub.next(0.3) is None
        heard = []
        for pubsub in pubsubs:
            while (message := await pubsub.get_message(timeout=0.3)) is not None:
                if message["type"] in ("message", "pmessage", "smessage"):
                    heard.append((message["channel"], message["data"]))
        # Only the far shard's own subscriber heard its own scope's write; no classic message anywhere.
        index = store.layout.scope(far).index.encode()
        assert heard == [(far_channel.encode(), index + b"\nelsewhere")]
        # The last watcher gone, the channel is unsubscribed.
        await _until(
            lambda: redis_cluster.cli(mine_port, "PUBSUB", "SHARDNUMSUB", channel).split() == [channel, "0"],
            "the channel to be unsubscribed",
        )
    finally:
        for client in strangers:
            await client.aclose()
        await changes.close()
        await store.close()
        await drop_cluster_prefix(redis_cluster, prefix)


async def test_batched_reads_and_puts_across_slots(redis_cluster: LocalCluster) -> None:
    """Concurrent calls of one event-loop step are batched; on a cluster each batch is split by slot."""
    prefix = unique("sp")
    store = await RedisStateStore.connect(redis_cluster.url, prefix=prefix, timeout_s=5.0)
    try:
        scopes = [scope(n) for n in range(60)]
        written = await asyncio.gather(
            *(store.put(s, f"k{i}", b"%d" % i, expires_at=None, now=now()) for i, s in enumerate(scopes))
        )
        assert [entry.version for entry in written] == [1] * len(scopes)
        read = await asyncio.gather(*(store.get(s, f"k{i}", now=now()) for i, s in enumerate(scopes)))
        assert [entry.value if entry else None for entry in read] == [b"%d" % i for i in range(len(scopes))]
    finally:
        await store.close()
        await drop_cluster_prefix(redis_cluster, prefix)


async def test_a_primary_killed_under_writes_fails_over_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """SIGKILL the primary of a scope's slot while writes go on, through the adapter and through a
    ``stateport serve`` (both with STATEPORT_REDIS_MIN_REPLICAS=1): writes in flight fail Unavailable / 503
    until the replica has taken over and the killed node is back as its replica; then they succeed again,
    and every write that was acknowledged is there."""
    with start_cluster() as cluster:
        prefix = unique("sp")
        with run_server(
            tmp_path,
            state_backend="redis",
            redis_url=cluster.url,
            redis_prefix=prefix,
            redis_min_replicas="1",
            db_timeout_s="2",
        ) as server:
            await _kill_a_primary_under_writes(cluster, server, prefix)


async def _kill_a_primary_under_writes(cluster: LocalCluster, server: Server, prefix: str) -> None:
    # Everything opened here is closed however the test ends: connections left to the garbage collector
    # would fail a later test on the same xdist worker with unraisable-exception warnings.
    async with AsyncExitStack() as stack:
        await _kill_a_primary_under_writes_in(stack, cluster, server, prefix)


async def _kill_a_primary_under_writes_in(
    stack: AsyncExitStack, cluster: LocalCluster, server: Server, prefix: str
) -> None:
    store = await RedisStateStore.connect(cluster.url, prefix=prefix, timeout_s=2.0, min_replicas=1)
    stack.push_async_callback(store.close)
    ti = create_task_instance(server)
    target = ti.scope
    index = store.layout.scope(target).index
    victim = cluster.primary_of(index)
    # An event channel on the same shard, so the bus's sharded link dies with the victim.
    channel = next(c for c in (unique("events") for _ in range(1000)) if cluster.primary_of(c) is victim)
    bus = await RedisEventBus.connect(cluster.url, timeout_s=2.0, channel=channel)
    stack.push_async_callback(bus.close)
    # A watched scope on the same shard, written by nobody else (the batches write scope(0..3)): its
    # sharded subscription dies with the victim.
    layout = store.layout
    quiet = next(s for s in map(scope, range(99, 999)) if cluster.primary_of(layout.scope(s).index) is victim)
    changes = await RedisChanges.connect(cluster.url, prefix=prefix, timeout_s=2.0)
    stack.push_async_callback(changes.close)
    watch = await stack.enter_async_context(changes.subscribe(quiet))
    acknowledged: list[str] = []
    answered: list[int] = []  # the server's statuses, in order
    refused = 0
    stop = asyncio.Event()

    async def write() -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            key = f"k{n}"
            n += 1
            try:
                await store.put(target, key, b"1", expires_at=None, now=now())
            except Unavailable:
                refused += 1
                await asyncio.sleep(0.05)
            else:
                acknowledged.append(key)

    async def write_through_the_server(http: httpx.AsyncClient) -> None:
        n = 0
        while not stop.is_set():
            key = f"h{n}"
            n += 1
            response = await http.put(f"/execution/state/ti/{ti.id}/{key}", json={"value": n})
            answered.append(response.status_code)
            if response.status_code == 204:
                acknowledged.append(key)
            else:
                assert response.status_code == 503, response.text
                await asyncio.sleep(0.05)

    # Without min_replicas, puts of one event-loop step across slots go out as one pipeline: they must
    # find the promoted replica without waiting for the killed node to come back.
    batching = await RedisStateStore.connect(cluster.url, prefix=prefix, timeout_s=2.0)
    stack.push_async_callback(batching.close)
    others = [scope(n) for n in range(4)]
    batched: list[bool] = []  # whether each batch's put to ``target`` was acknowledged

    async def write_batches() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            done = await asyncio.gather(
                *(batching.put(s, f"b{n}", b"1", expires_at=None, now=now()) for s in [target, *others]),
                return_exceptions=True,
            )
            for outcome in done:
                if isinstance(outcome, BaseException) and not isinstance(outcome, Unavailable):
                    raise outcome
            batched.append(not isinstance(done[0], BaseException))
            if not batched[-1]:
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=server.base_url, headers=ti.auth(), timeout=30) as http:
        writers = [
            asyncio.create_task(write()),
            asyncio.create_task(write_through_the_server(http)),
            asyncio.create_task(write_batches()),
        ]
        try:
            await _until(lambda: len(acknowledged) >= 20 and 204 in answered, "the first writes")
            before = len(acknowledged)
            victim.kill()
            await _until(lambda: refused > 0 and 503 in answered, "writes to fail while the primary is down")
            await _until(lambda: _served(cluster, index), "the replica to take over", timeout_s=60)
            assert cluster.primary_of(index) is not victim
            mark = len(batched)
            await _until(lambda: any(batched[mark:]), "batched puts to reach the promoted replica")
            # The promoted replica has no replica of its own: WAIT 1 cannot be met, so writes stay refused
            # (durability over availability) until the killed node is back, now as its replica.
            restart(victim)
            await asyncio.to_thread(cluster.wait_ok)
            resumed, statuses = len(acknowledged), len(answered)
            await _until(
                lambda: len(acknowledged) > resumed + 20 and 204 in answered[statuses:],
                "writes to succeed again",
                timeout_s=60,
            )
        finally:
            stop.set()
            await asyncio.gather(*writers)
        assert len(acknowledged) > before
        assert cluster.role(victim) == "slave"
        # Every acknowledged write survived the failover, read back from the new primary.
        entries = await asyncio.gather(*(store.get(target, key, now=now()) for key in acknowledged))
        assert [key for key, entry in zip(acknowledged, entries, strict=True) if entry is None] == []
        last = next(key for key in reversed(acknowledged) if key.startswith("h"))
        assert (await http.get(f"/execution/state/ti/{ti.id}/{last}")).status_code == 200
    # The event bus lost its link with the victim, found the channel's new node and subscribed there.
    await _until(lambda: bus.reconnects >= 1, "the event bus to reconnect")
    async with bus.subscribe("topic") as sub:
        await _until_heard(cluster.url, channel, sub)
    await bus.close()
    # So did the state changes listener: its watcher was told to re-check, then hears the new primary.
    message = await watch.next(30.0)
    while message not in (RECHECK, None):
        message = await watch.next(30.0)
    assert message == RECHECK
    await store.put(quiet, "after", b"1", expires_at=None, now=now())
    message = await watch.next(10.0)
    while message == RECHECK:
        message = await watch.next(10.0)
    assert message == b"after"


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.05)


def _served(cluster: LocalCluster, key: str) -> bool:
    """Whether a live primary serves ``key``'s slot (after a kill: once a replica was promoted)."""
    try:
        cluster.primary_of(key)
    except AssertionError:
        return False
    return True


async def _until_heard(url: str, channel: str, sub: Subscription) -> None:
    """Publish from another bus until ``sub`` hears it (a bus's reconnect backs off up to 5 s)."""
    deadline = time.monotonic() + 30
    other = await _connected_bus(url, channel, deadline)
    try:
        while time.monotonic() < deadline:
            try:
                await other.publish("topic", b"after")
            except Unavailable:
                await asyncio.sleep(0.2)
                continue
            message = await sub.next(1.0)
            while message is not None and message != b"after":
                message = await sub.next(1.0)
            if message == b"after":
                return
        raise AssertionError("the event bus did not hear a publish after the failover")
    finally:
        await other.close()


async def _connected_bus(url: str, channel: str, deadline: float) -> RedisEventBus:
    """A new bus on ``channel``, tried again until ``deadline``: just after a failover, reading the slots
    may outlast the 2 s timeout on a busy machine (Unavailable, as it should be)."""
    while True:
        try:
            return await RedisEventBus.connect(url, timeout_s=2.0, channel=channel)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_primary_that_hangs_is_replaced_by_its_promoted_replica_while_it_still_hangs() -> None:
    """An outsider's find: with a primary stopped (SIGSTOP) rather than killed, every command to its slots
    timed out for as long as it hung, though its replica had taken over within seconds: the store's own
    deadline cut each command before redis-py's timeout, on which redis-py reads the slot map again."""
    with start_cluster() as cluster:
        prefix = unique("sp")
        store = await RedisStateStore.connect(cluster.url, prefix=prefix, timeout_s=2.0)
        try:
            target = scope(1)
            await store.put(target, "before", b"1", expires_at=None, now=now())
            victim = cluster.primary_of(store.layout.scope(target).index)
            victim.process.send_signal(signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        await store.put(target, "during", b"2", expires_at=None, now=now())
                        break
                    except Unavailable:
                        assert time.monotonic() < deadline, "the promoted replica was never used"
                        await asyncio.sleep(0.2)
                assert victim.process.poll() is None  # it still hangs: the write went to its replica
                # Read back from the promoted replica ("before" may not have reached it: replication is
                # asynchronous, and this store asks for no replica's acknowledgement).
                read = await store.get(target, "during", now=now())
                assert read is not None and read.value == b"2"
            finally:
                victim.process.send_signal(signal.SIGCONT)
            # Back, it rejoins as its replica's replica. Readiness is ready (another outsider's find: it
            # said "is a replica: point STATEPORT_REDIS_URL at the primary" while writes went through).
            deadline = time.monotonic() + 60
            while cluster.role(victim) != "slave":
                assert time.monotonic() < deadline, "the stopped primary never came back as a replica"
                await asyncio.sleep(0.2)
            await store.ping()
        finally:
            await store.close()


async def test_a_hung_primary_fails_only_its_own_keys_in_a_shared_step() -> None:
    """An outsider's find: a step's puts (and reads) went to Redis in one pipeline, which fails as a whole,
    so with a primary hung every write to a healthy shard sent in the same event-loop step as one to the
    hung shard was a 503 too. Each node's keys are batched apart now."""
    with start_cluster() as cluster:
        prefix = unique("sp")
        store = await RedisStateStore.connect(cluster.url, prefix=prefix, timeout_s=2.0)
        try:
            index = store.layout.scope
            hung = scope(0)
            victim = cluster.primary_of(index(hung).index)
            healthy = next(
                scope(n) for n in range(1, 1000) if cluster.primary_of(index(scope(n)).index) is not victim
            )
            for target in (hung, healthy):
                await store.put(target, "k", b"0", expires_at=None, now=now())
            victim.process.send_signal(signal.SIGSTOP)
            try:
                # All in one step, at once: before the hung node's timeout makes the client read the slot
                # map again (which waits on every node), and the healthy nodes take the cluster for down.
                answers = await asyncio.gather(
                    store.put(hung, "k", b"1", expires_at=None, now=now()),
                    store.put(healthy, "k", b"1", expires_at=None, now=now()),
                    store.get(hung, "k", now=now()),
                    store.get(healthy, "k", now=now()),
                    return_exceptions=True,
                )
                wrote, read = answers[1], answers[3]
                assert not isinstance(wrote, BaseException), wrote
                assert not isinstance(read, BaseException) and read is not None, read
                assert read.value in (b"0", b"1")  # before or after the put of its step
            finally:
                victim.process.send_signal(signal.SIGCONT)
            # The hung node's writes are answered once it is back (on it, or on its promoted replica).
            deadline = time.monotonic() + 60
            while True:
                try:
                    await store.put(hung, "k", b"after", expires_at=None, now=now())
                    break
                except Unavailable:
                    assert time.monotonic() < deadline, "the hung node's slots never came back"
                    await asyncio.sleep(0.2)
        finally:
            await store.close()
