"""The Redis adapter beyond the contract: its documented key layout, native expiry and failure modes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from stateport.adapters.redis.client import open_client
from stateport.adapters.redis.layout import Layout
from stateport.adapters.redis.state import RedisStateStore
from stateport.domain.errors import Unavailable, UnreadableValue, VersionMismatch
from stateport.domain.models import AssetScope, BatchGet, BatchPut, StateEntry, TaskScope
from tests.adapters.private_redis import PrivateRedis
from tests.services import REDIS_URL, free_port, port_open, redis_key_prefix, require, unique

pytestmark = pytest.mark.redis


def now() -> datetime:
    return datetime.now(UTC)


def q(text: str) -> str:
    # Written out here, not imported from the layout, so the test checks the documented rule itself.
    return quote(text, safe="")


def us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def command_calls(client: Redis, command: str) -> int:
    stats = await client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


# --- the key layout ---------------------------------------------------------------------------------


async def test_task_layout_names_fields_and_ttl(
    redis_state_store: RedisStateStore, raw_redis: Redis, redis_prefix: str
) -> None:
    p = redis_prefix
    dag, run = unique("dag"), unique("run")
    scope = TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=2)
    t = now()
    expires = t + timedelta(seconds=120)
    await redis_state_store.put(scope, "k", b'{"a": 1}', expires_at=expires, now=t)
    await redis_state_store.put(scope, "forever", b"1", expires_at=None, now=t)

    tag = f"{{{dag}:{run}:t}}"
    entry = f"{p}:t:{tag}:2:k"
    assert await raw_redis.hgetall(entry) == {
        b"v": b'{"a": 1}',
        b"u": str(us(t)).encode(),
        b"e": str(us(expires)).encode(),
        b"n": b"1",
    }
    # Redis keeps milliseconds: the native expiry is expires_at rounded up, never before the contract's.
    assert await raw_redis.pexpiretime(entry) == -(-us(expires) // 1000)
    forever = f"{p}:t:{tag}:2:forever"
    assert await raw_redis.hget(forever, "e") == b""
    assert await raw_redis.ttl(forever) == -1

    index, expiry, maps = f"{p}:ti:{tag}:2", f"{p}:tx:{tag}:2", f"{p}:tm:{tag}"
    assert await raw_redis.zrange(index, 0, -1, withscores=True) == [(b"forever", 0.0), (b"k", 0.0)]
    assert await raw_redis.zrange(expiry, 0, -1, withscores=True) == [(b"k", float(us(expires)))]
    assert await raw_redis.smembers(maps) == {b"2"}
    assert await raw_redis.smembers(f"{p}:scopes") == {expiry.encode()}
    # Nothing else exists under the prefix (SCAN is fine here: this is a test, not the adapter).
    found = {k.decode() async for k in raw_redis.scan_iter(match=f"{p}:*")}
    assert found == {entry, forever, index, expiry, maps, f"{p}:scopes"}


async def test_an_entry_another_tool_wrote_that_is_not_json_is_unreadable_named_not_served(
    redis_state_store: RedisStateStore, raw_redis: Redis
) -> None:
    # An outsider's find: bytes that are not JSON, written into the documented layout by hand, were served
    # inside the JSON answer (a 200 whose body was not JSON); so were they in every listing of the scope.
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await redis_state_store.put(scope, "good", b"1", expires_at=None, now=now())
    keys = redis_state_store.layout.scope(scope)
    await raw_redis.hset(keys.entry("bad"), mapping={"v": "not json", "u": us(now()), "e": "", "n": 1})
    await raw_redis.zadd(keys.index, {"bad": 0})
    with pytest.raises(UnreadableValue, match="state key 'bad' holds bytes that are not a JSON value"):
        await redis_state_store.get(scope, "bad", now=now())
    # Bytes that are not UTF-8 inside a string were served in a 200 no client could decode; a value nested
    # past the decoder's recursion limit was a 500 on every read and listing of its scope.
    for key, value in (("latin", b'"\xff\xfe"'), ("deep", b"[" * 3000 + b"]" * 3000)):
        await raw_redis.hset(keys.entry(key), mapping={"v": value, "u": us(now()), "e": "", "n": 1})
        with pytest.raises(UnreadableValue, match=f"state key '{key}' holds bytes that are not a JSON value"):
            await redis_state_store.get(scope, key, now=now())
        await raw_redis.delete(keys.entry(key))
    with pytest.raises(UnreadableValue, match="state key 'bad'"):
        await redis_state_store.list(scope, now=now())
    with pytest.raises(UnreadableValue, match="state key 'bad'"):
        await redis_state_store.scan(scope, now=now(), limit=10)
    listed = await redis_state_store.scan(scope, now=now(), limit=10, keys_only=True)
    assert [e.key for e in listed.entries] == ["bad", "good"]
    assert await redis_state_store.delete(scope, "bad", now=now())  # and it can be deleted


@pytest.mark.parametrize(
    ("fields", "version", "expiring"),
    [
        ({"v": "1", "u": "yesterday", "e": "", "n": "3"}, 3, False),
        ({"v": "1", "u": "5", "e": "soon", "n": "3"}, 3, False),
        ({"v": "1", "u": "5", "e": "", "n": "abc"}, 1, False),
        ({"v": "1", "u": "5", "e": "", "n": "0"}, 1, False),
        ({"v": "1", "u": "5", "e": "", "n": "2.5"}, 1, False),
        ({"v": "1", "u": "99999999999999999999", "e": "99999999999999999", "n": "4"}, 4, True),
        # Past what Lua's doubles hold exactly: read as 1 by both sides (it came back as "1e+18", then 1).
        ({"v": "1", "u": "5", "e": "", "n": "999999999999999999"}, 1, False),
        ({"v": "1", "u": "5", "e": "999999999999999999", "n": "2"}, 2, True),  # year 33658: live
    ],
)
async def test_an_entry_whose_fields_another_tool_wrote_reads_as_version_1_never_a_500(
    redis_state_store: RedisStateStore,
    raw_redis: Redis,
    fields: dict[Any, Any],
    version: int,
    expiring: bool,
) -> None:
    # The layout is documented and may be written by hand: a time or version Stateport could not have written
    # was a ValueError (500) in the reads, a Lua error (a 503, "Redis refused") in the writes, and version 0
    # let a create-only write overwrite a live entry. Read as S3 reads an object without metadata.
    store = redis_state_store
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    keys = store.layout.scope(scope)
    await raw_redis.hset(keys.entry("k"), mapping=fields)
    await raw_redis.zadd(keys.index, {"k": 0})
    got = await store.get(scope, "k", now=now())
    assert got is not None and got.value == b"1" and got.version == version
    assert (got.expires_at is not None) is expiring  # 17 digits of microseconds: the year 5138
    listed = (await store.list(scope, now=now())).entries
    assert [(e.key, e.version) for e in listed] == [("k", version)]
    scanned = (await store.scan(scope, now=now(), limit=10)).entries
    assert [(e.key, e.version) for e in scanned] == [("k", version)]
    (answer,) = await store.batch(scope, [BatchGet(key="k", if_version=version)], now=now())
    assert answer.entry is not None and answer.entry.version == version
    with pytest.raises(VersionMismatch):
        await store.put(scope, "k", b"2", expires_at=None, now=now(), if_version=0)
    put = await store.put(scope, "k", b"2", expires_at=None, now=now(), if_version=version)
    assert put.version == version + 1
    assert await store.delete(scope, "k", now=now(), if_version=version + 1)


async def test_an_expiry_far_before_the_epoch_is_expired_to_every_reader(
    redis_state_store: RedisStateStore, raw_redis: Redis
) -> None:
    # An outsider's find: past what a datetime holds, the readers took it for no expiry (live) and the
    # scripts for a time past (absent), so a create-only write overwrote what a GET showed.
    store = redis_state_store
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    keys = store.layout.scope(scope)
    await raw_redis.hset(keys.entry("k"), mapping={"v": "42", "u": "5", "e": "-999999999999999999", "n": "3"})
    await raw_redis.zadd(keys.index, {"k": 0})
    assert await store.get(scope, "k", now=now()) is None
    assert (await store.list(scope, now=now())).entries == []
    assert (await store.put(scope, "k", b"1", expires_at=None, now=now(), if_version=0)).version == 1


async def test_an_entry_without_a_value_is_absent_to_every_reader(
    redis_state_store: RedisStateStore, raw_redis: Redis
) -> None:
    # A hash with a version and no value was absent to a GET and an entry to the scripts (a scan broke on it).
    store = redis_state_store
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    keys = store.layout.scope(scope)
    await raw_redis.hset(keys.entry("k"), mapping={"u": "5", "e": "", "n": "7"})
    await raw_redis.zadd(keys.index, {"k": 0})
    assert await store.get(scope, "k", now=now()) is None
    assert (await store.scan(scope, now=now(), limit=10)).entries == []
    assert (await store.scan(scope, now=now(), limit=10, keys_only=True)).entries == []  # it was listed here
    assert (await store.list(scope, now=now())).entries == []
    assert (await store.put(scope, "k", b"2", expires_at=None, now=now(), if_version=0)).version == 1


async def test_asset_layout(redis_state_store: RedisStateStore, raw_redis: Redis, redis_prefix: str) -> None:
    p = redis_prefix
    name = unique("asset")
    await redis_state_store.put(AssetScope(name=name), "k", b"1", expires_at=None, now=now())
    found = {k.decode() async for k in raw_redis.scan_iter(match=f"{p}:*")}
    assert found == {f"{p}:a:{{{name}}}:k", f"{p}:ai:{{{name}}}"}


TRICKY = "a:b/c%2F d{e}f?g&h=#~_.-" + "ключ é€😀" + "".join(chr(c) for c in range(1, 128))


async def test_quoting_relevant_characters_round_trip_where_the_layout_says(
    redis_state_store: RedisStateStore, raw_redis: Redis, redis_prefix: str
) -> None:
    p = redis_prefix
    dag, run, task = f"d:{{x}}/{unique('dag')}", "r/ 1%", "t}{ü"
    scope = TaskScope(dag_id=dag, run_id=run, task_id=task, map_index=0)
    asset = AssetScope(name=f"{{team}}/orders:{unique('a')} ä")
    for s in (scope, asset):
        await redis_state_store.put(s, TRICKY, b'"v"', expires_at=now() + timedelta(hours=1), now=now())
        got = await redis_state_store.get(s, TRICKY, now=now())
        assert got is not None and got.key == TRICKY and got.value == b'"v"'
        # Listing and clearing find the entry through the Lua side of the quoting, so they agree with it.
        page = await redis_state_store.list(s, now=now())
        assert [e.key for e in page.entries] == [TRICKY] and page.total == 1

    task_entry = f"{p}:t:{{{q(dag)}:{q(run)}:{q(task)}}}:0:{q(TRICKY)}"
    asset_entry = f"{p}:a:{{{q(asset.name)}}}:{q(TRICKY)}"
    assert await raw_redis.exists(task_entry, asset_entry) == 2
    assert await raw_redis.zrange(f"{p}:ti:{{{q(dag)}:{q(run)}:{q(task)}}}:0", 0, -1) == [TRICKY.encode()]
    assert await redis_state_store.clear(scope) == 1
    assert await redis_state_store.clear(asset) == 1
    assert await raw_redis.exists(task_entry, asset_entry) == 0


async def test_every_key_of_a_task_shares_one_cluster_slot(
    redis_state_store: RedisStateStore, raw_redis: Redis, redis_prefix: str
) -> None:
    dag, run = unique("dag"), unique("run")
    for map_index in (-1, 0, 7):
        scope = TaskScope(dag_id=dag, run_id=run, task_id="t{}", map_index=map_index)
        await redis_state_store.put(scope, "k{x}", b"1", expires_at=now() + timedelta(hours=1), now=now())
    keys = [k async for k in raw_redis.scan_iter(match=f"{redis_prefix}:t*")]
    assert len(keys) == 3 * 3 + 1  # entry, index, expiry per map index; one map-index set
    assert len({key_slot(k) for k in keys}) == 1


def test_layout_rejects_a_prefix_that_would_change_the_hash_tag() -> None:
    for prefix in ("", "a{b", "a}b"):
        with pytest.raises(ValueError, match="prefix"):
            Layout(prefix)


async def test_ordering_is_by_key_not_by_its_quoted_form(redis_state_store: RedisStateStore) -> None:
    # "_" (0x5F) sorts before "`" (0x60), but quoted "`" ("%60") would sort before "_".
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    for key in ("a`", "a_", "a "):
        await redis_state_store.put(scope, key, b"1", expires_at=None, now=now())
    page = await redis_state_store.list(scope, now=now())
    assert [e.key for e in page.entries] == ["a ", "a_", "a`"]


# --- expiry -------------------------------------------------------------------------------------------


async def test_native_expiry_removes_the_entry(
    redis_state_store: RedisStateStore, raw_redis: Redis, redis_prefix: str
) -> None:
    name = unique("asset")
    scope = AssetScope(name=name)
    await redis_state_store.put(scope, "k", b"1", expires_at=now() + timedelta(milliseconds=200), now=now())
    await redis_state_store.put(scope, "kept", b"1", expires_at=None, now=now())
    entry = f"{redis_prefix}:a:{{{name}}}:k"
    assert await raw_redis.exists(entry) == 1
    await asyncio.sleep(0.5)
    assert await raw_redis.exists(entry) == 0
    # A caller whose clock lags still sees an exact total: the dead index member is dropped on listing.
    page = await redis_state_store.list(scope, now=now() - timedelta(seconds=10))
    assert page.total == 1 and [e.key for e in page.entries] == ["kept"]
    assert await raw_redis.zrange(f"{redis_prefix}:ai:{{{name}}}", 0, -1) == [b"kept"]


async def test_list_pages_over_live_entries_when_some_are_expired_at_now(
    redis_state_store: RedisStateStore,
) -> None:
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    t0 = now()
    for i in range(10):
        expires = t0 + timedelta(seconds=30) if i % 2 else None
        await redis_state_store.put(scope, f"k{i}", b"1", expires_at=expires, now=t0)
    later = t0 + timedelta(seconds=60)
    page = await redis_state_store.list(scope, now=later, offset=1, limit=3)
    assert page.total == 5
    assert [e.key for e in page.entries] == ["k2", "k4", "k6"]


async def test_purge_deletes_expired_entries_and_forgets_empty_scopes(
    redis_state_store: RedisStateStore, raw_redis: Redis, redis_prefix: str
) -> None:
    t0 = now()
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t", map_index=3)
    for i in range(5):
        await redis_state_store.put(scope, f"k{i}", b"1", expires_at=t0 + timedelta(hours=1), now=t0)
    registry = f"{redis_prefix}:scopes"
    assert await raw_redis.scard(registry) == 1
    await raw_redis.sadd(registry, "not-ours", f"{redis_prefix}:zz:{{x}}")  # names purge must leave alone
    # Seen from two hours on, every entry has expired; small batches make purge loop.
    assert await redis_state_store.purge_expired(now=t0 + timedelta(hours=2), batch_size=2) == 5
    assert [k async for k in raw_redis.scan_iter(match=f"{redis_prefix}:*")] == [registry.encode()]
    assert await raw_redis.smembers(registry) == {b"not-ours", f"{redis_prefix}:zz:{{x}}".encode()}
    await raw_redis.delete(registry)
    assert await redis_state_store.purge_expired(now=t0 + timedelta(hours=2)) == 0


async def test_an_applied_write_is_acknowledged_when_its_scope_cannot_be_registered_until_the_purge(
    redis_state_store: RedisStateStore, raw_redis: Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An outsider's find: in a Redis Cluster with the shard holding P:scopes down, every first expiring put
    # of a scope was applied on its own shard and answered 503. Here Redis refuses the SADD (WRONGTYPE):
    # the puts are acknowledged, and the next purge registers their scopes, then purges them.
    registry = f"{redis_prefix}:scopes"
    await raw_redis.set(registry, "not a set")
    t0 = now()
    later = t0 + timedelta(hours=1)
    put_scope, batch_scope = (TaskScope(dag_id=unique("dag"), run_id="r", task_id=t) for t in ("p", "b"))
    assert (await redis_state_store.put(put_scope, "k", b"1", expires_at=later, now=t0)).version == 1
    (done,) = await redis_state_store.batch(
        batch_scope, [BatchPut(key="k", value=b"1", expires_at=later)], now=t0
    )
    assert done.entry is not None and done.entry.version == 1
    assert caplog.text.count("could not be registered for the expiry purge") == 1, caplog.text
    assert await raw_redis.get(registry) == b"not a set"
    # The purge needs the registry: it fails, naming it as a key of another type, and keeps what it holds.
    with pytest.raises(UnreadableValue, match="another type of value"):
        await redis_state_store.purge_expired(now=t0 + timedelta(hours=2))
    await raw_redis.delete(registry)
    assert await redis_state_store.purge_expired(now=t0 + timedelta(hours=2)) == 2
    assert await raw_redis.exists(registry) == 0  # both scopes purged empty, and forgotten


# --- failure modes ------------------------------------------------------------------------------------


async def test_unavailable_on_a_closed_port_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await RedisStateStore.connect(f"redis://127.0.0.1:{free_port()}/0", prefix="sp", timeout_s=1.0)
    # A hang guard, generous for a busy machine: answers, not speed, are what these tests check.
    assert time.monotonic() - started < 1.0 * 3 + 2


async def test_unavailable_when_the_server_never_answers() -> None:
    # The connections it accepted, closed at the end: one whose client had not closed it yet when the test
    # ended was left to the garbage collector, whose ResourceWarning then failed another test.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # accept and read, answer nothing, until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await RedisStateStore.connect(f"redis://127.0.0.1:{port}/0", prefix="sp", timeout_s=0.5)
        assert time.monotonic() - started < 0.5 * 3 + 2  # a hang guard: it would wait forever otherwise
    finally:
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()


async def test_a_killed_server_is_unavailable_then_recovers(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await private_store.put(scope, "k", b"1", expires_at=None, now=now())
    private_redis.kill()
    for operation in (
        private_store.get(scope, "k", now=now()),
        private_store.put(scope, "k", b"2", expires_at=None, now=now()),
        private_store.list(scope, now=now()),
        private_store.clear(scope, all_map_indices=True),
        private_store.purge_expired(now=now()),
    ):
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await operation
        assert time.monotonic() - started < 2.0 * 3 + 2  # a hang guard around the store's 2 s timeout
    # Same port, empty server (no persistence): the pool replaces its dead connections by itself.
    private_redis.start()
    assert await private_store.get(scope, "k", now=now()) is None
    assert (await private_store.put(scope, "k", b"3", expires_at=None, now=now())).version == 1


async def test_after_a_restart_no_caller_fails_on_a_connection_kept_from_before(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """Found by an outsider: after Redis restarted, each pooled connection from before failed one request
    with 503 when next used (30 s later: a quarter of 100 GETs). Reads are tried once more on a fresh
    connection; a write whose connection was stale fails (its effect unknown, as any lost reply), and the
    pool's other idle connections are closed then, so no later caller meets one."""
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")

    async def warm() -> None:
        # Unbatched commands at once: each takes its own turn, so the pool keeps that many connections.
        await asyncio.gather(*(private_store.list(scope, now=now()) for _ in range(8)))

    async def get_after(steps: int) -> StateEntry | None:
        for _ in range(steps):
            await asyncio.sleep(0)  # each read in a step of its own, while the earlier ones are in flight
        return await private_store.get(scope, "k", now=now())

    await warm()
    private_redis.kill()
    private_redis.start()
    assert await asyncio.gather(*(get_after(i) for i in range(8))) == [None] * 8

    await warm()
    private_redis.kill()
    private_redis.start()
    await asyncio.sleep(0.1)  # the closes reach the connections' streams (the event loop's reads)
    # A write meets no stale connection either: the pool replaces a connection its server closed at checkout.
    assert (await private_store.put(scope, "k", b"1", expires_at=None, now=now())).value == b"1"
    await warm()
    assert (await private_store.put(scope, "k", b"2", expires_at=None, now=now())).value == b"2"


async def test_writes_after_redis_dropped_idle_connections_succeed(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    # An outsider's find: with Redis closing idle clients (``timeout``, as managed Redis, proxies and NATs
    # do), a client writing every 3 s got 204, 503, 204, 503...
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.config_set("timeout", 1)
        for i in range(3):
            puts = [
                private_store.put(scope, f"k{n}", b"%d" % i, expires_at=None, now=now()) for n in range(4)
            ]
            assert [e.value for e in await asyncio.gather(*puts)] == [b"%d" % i] * 4
            await asyncio.sleep(2.5)  # past the idle timeout: Redis closes every pooled connection
    finally:
        await admin.aclose()


async def test_scripts_are_reloaded_after_script_flush(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    scope = AssetScope(name=unique("asset"))
    await private_store.put(scope, "k", b"1", expires_at=None, now=now())
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.script_flush()
        assert (await private_store.put(scope, "k", b"2", expires_at=None, now=now())).version == 2
    finally:
        await admin.aclose()


async def test_clear_all_map_indices_is_one_script_without_keys_or_scan(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    dag = unique("dag")
    for map_index in range(-1, 20):
        scope = TaskScope(dag_id=dag, run_id="r", task_id="t", map_index=map_index)
        for key in ("a", "b"):
            await private_store.put(scope, key, b"1", expires_at=None, now=now())
    # Load the script first, so the counted call is not the one that meets NOSCRIPT and retries.
    await private_store.clear(TaskScope(dag_id=unique("dag"), run_id="r", task_id="t"), all_map_indices=True)
    admin = Redis.from_url(private_redis.url)
    try:
        # A private server: nobody else's commands move its counters.
        before = {c: await command_calls(admin, c) for c in ("keys", "scan", "evalsha", "eval")}
        cleared = await private_store.clear(
            TaskScope(dag_id=dag, run_id="r", task_id="t", map_index=5), all_map_indices=True
        )
        after = {c: await command_calls(admin, c) for c in ("keys", "scan", "evalsha", "eval")}
        assert cleared == 42
        assert after["keys"] == before["keys"] and after["scan"] == before["scan"]
        assert after["evalsha"] - before["evalsha"] == 1 and after["eval"] == before["eval"]
        assert await admin.dbsize() == 0
    finally:
        await admin.aclose()


# --- construction -------------------------------------------------------------------------------------


async def test_reuses_a_callers_client_and_leaves_it_open(raw_redis: Redis) -> None:
    store = RedisStateStore(raw_redis, prefix=redis_key_prefix())
    scope = AssetScope(name=unique("asset"))
    await store.put(scope, "k", b"1", expires_at=None, now=now())
    await store.close()
    assert await raw_redis.ping()
    assert (await store.get(scope, "k", now=now())) is not None
    await store.clear(scope)


async def test_refuses_a_client_that_decodes_responses() -> None:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisStateStore(client)
    finally:
        await client.aclose()


async def test_more_requests_in_flight_than_connections_wait_their_turn() -> None:
    """Past the pool's bound a request waits for a connection; it never fails for want of one."""
    require(port_open("127.0.0.1", 6379), "Redis at 127.0.0.1:6379")
    store = await RedisStateStore.connect(REDIS_URL, prefix=redis_key_prefix(), max_connections=8)
    try:
        scope = TaskScope(dag_id=unique("d"), run_id="r", task_id="t")
        await store.put(scope, "k", b'"v"', expires_at=None, now=datetime.now(UTC))
        got = await asyncio.gather(*(store.get(scope, "k", now=datetime.now(UTC)) for _ in range(400)))
        assert all(entry is not None and entry.value == b'"v"' for entry in got)
        await store.clear(scope)
    finally:
        await store.close()


async def test_many_unbatched_commands_at_once_never_run_the_pool_out() -> None:
    """Deletes, scans, clears and first puts of expiring keys (a script and an SADD each) are not batched:
    300 at once on a pool of 2 connections. Each command waits its turn (``adapters/shared/turns.py``):
    none fails for want of a connection (with more turns than connections, 298 of them failed on a plain
    redis-py pool, which refuses a checkout past its bound)."""
    require(port_open("127.0.0.1", 6379), "Redis at 127.0.0.1:6379")
    store = await RedisStateStore.connect(REDIS_URL, prefix=redis_key_prefix(), max_connections=2)
    scopes = [TaskScope(dag_id=unique("d"), run_id="r", task_id=f"t{n}") for n in range(10)]
    later = datetime.now(UTC) + timedelta(hours=1)

    async def one(n: int) -> object:
        scope, at = scopes[n % len(scopes)], datetime.now(UTC)
        if n % 3 == 0:
            return await store.put(scope, f"k{n}", b"1", expires_at=later, now=at)
        if n % 3 == 1:
            return await store.delete(scope, f"k{n - 1}", now=at)
        return await store.scan(scope, now=at)

    try:
        outcomes = await asyncio.gather(*(one(n) for n in range(300)), return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        assert sum([await store.clear(scope) for scope in scopes]) >= 0
    finally:
        await store.close()


async def test_sustained_load_past_the_pool_starves_no_request() -> None:
    """More callers than connections, for longer than the timeout: every request is served in its turn.

    redis-py's blocking pool lets a newcomer take a connection released while others wait, so a waiter
    could lose every race until its timeout and fail (503) although Redis was healthy.
    """
    require(port_open("127.0.0.1", 6379), "Redis at 127.0.0.1:6379")
    store = await RedisStateStore.connect(
        REDIS_URL, prefix=redis_key_prefix(), max_connections=4, timeout_s=1.0
    )
    scope = TaskScope(dag_id=unique("d"), run_id="r", task_id="t")
    failures: list[Unavailable] = []
    served = 0

    async def caller(until: float) -> None:
        nonlocal served
        while time.monotonic() < until:
            try:
                await store.get(scope, "k", now=datetime.now(UTC))
                served += 1
            except Unavailable as exc:
                failures.append(exc)

    try:
        await store.put(scope, "k", b'"v"', expires_at=None, now=datetime.now(UTC))
        until = time.monotonic() + 4.0
        await asyncio.gather(*(caller(until) for _ in range(64)))
        assert failures == [] and served > 0
        await store.clear(scope)
    finally:
        await store.close()


async def test_concurrent_reads_share_round_trips_and_each_gets_its_own_entry(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """Reads issued in one event-loop step go out as one script call (``batching.py``): Redis runs one
    EVALSHA, one HMGET per read inside it, and each caller gets the entry of its own key, missing ones as
    None."""
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    for i in range(50):
        await private_store.put(scope, f"k{i}", b"%d" % i, expires_at=None, now=now())
    # A first batch loads the script (its first EVALSHA is refused with NOSCRIPT, then sent again).
    await asyncio.gather(*(private_store.get(scope, key, now=now()) for key in ("k0", "k1")))
    admin = Redis.from_url(private_redis.url)
    try:
        before = await command_calls(admin, "hmget")
        scripts_before = await command_calls(admin, "evalsha")
        clients_before = (await admin.info("stats"))["total_connections_received"]
        keys = [f"k{i}" for i in range(60)]  # ten of them missing
        got = await asyncio.gather(*(private_store.get(scope, key, now=now()) for key in keys))
        assert [None if e is None else e.value for e in got] == [b"%d" % i for i in range(50)] + [None] * 10
        assert [e.key for e in got if e is not None] == keys[:50]
        assert await command_calls(admin, "hmget") - before == 60
        assert await command_calls(admin, "evalsha") - scripts_before == 1
        # One step's reads were one batch on one connection: no new connection was needed for them.
        assert (await admin.info("stats"))["total_connections_received"] - clients_before <= 1
    finally:
        await admin.aclose()


async def test_puts_of_one_step_are_one_script_call_applied_in_order(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """Puts issued in one event-loop step go out as one PUT_MANY (``batching.py``); each is still its own
    versioned put, in arrival order: the same key written five times gets versions 1..5 and the last value,
    and a compare-and-set in the batch sees the puts before it."""
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t", map_index=2)
    other = AssetScope(name=unique("asset"))
    # Load both scripts first (a first EVALSHA is refused with NOSCRIPT, then sent again).
    await asyncio.gather(
        *(private_store.put(scope, "warm", b"0", expires_at=None, now=now()) for _ in range(2))
    )
    await private_store.put(scope, "warm", b"0", expires_at=None, now=now())
    admin = Redis.from_url(private_redis.url)
    try:
        scripts_before = await command_calls(admin, "evalsha")
        later = now() + timedelta(hours=1)
        results = await asyncio.gather(
            *(private_store.put(scope, "same", b"%d" % i, expires_at=None, now=now()) for i in range(5)),
            private_store.put(other, "asset-key", b'"a"', expires_at=later, now=now()),
            private_store.put(scope, "same", b'"cas"', expires_at=None, now=now(), if_version=5),
            private_store.put(scope, "same", b'"stale"', expires_at=None, now=now(), if_version=1),
            return_exceptions=True,
        )
        assert await command_calls(admin, "evalsha") - scripts_before == 1
    finally:
        await admin.aclose()
    assert [r.version for r in results[:5] if isinstance(r, StateEntry)] == [1, 2, 3, 4, 5]
    assert isinstance(results[5], StateEntry) and results[5].version == 1
    assert isinstance(results[6], StateEntry) and results[6].version == 6
    assert isinstance(results[7], VersionMismatch)
    entry = await private_store.get(scope, "same", now=now())
    assert entry is not None and (entry.value, entry.version) == (b'"cas"', 6)
    asset_entry = await private_store.get(other, "asset-key", now=now())
    assert asset_entry is not None and asset_entry.expires_at is not None
    # The asset's first expiring key put its scope in the registry (outside the script: another slot).
    assert (await private_store.list(other, now=now())).total == 1


async def test_large_puts_of_one_step_are_split_into_batches_of_at_most_4_mib(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await asyncio.gather(
        *(private_store.put(scope, "warm", b"0", expires_at=None, now=now()) for _ in range(2))
    )
    await private_store.put(scope, "warm", b"0", expires_at=None, now=now())
    big = b'"' + b"x" * (1536 * 1024) + b'"'  # 1.5 MiB: three of them pass 4 MiB
    admin = Redis.from_url(private_redis.url)
    try:
        before = await command_calls(admin, "evalsha")
        written = await asyncio.gather(
            *(private_store.put(scope, f"big{i}", big, expires_at=None, now=now()) for i in range(5))
        )
        assert await command_calls(admin, "evalsha") - before == 2
    finally:
        await admin.aclose()
    assert [e.version for e in written] == [1] * 5
    entry = await private_store.get(scope, "big4", now=now())
    assert entry is not None and entry.value == big


async def test_a_put_redis_refuses_fails_alone_in_its_batch(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """A put whose keys Redis refuses (WRONGTYPE: the scope's index is not a sorted set) fails, as a key of
    another type (a 502 naming its keys, not a 503 to retry for ever); the other puts of its event-loop step
    are applied and acknowledged."""
    good = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    broken = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.set(private_store.layout.scope(broken).index, "not a sorted set")
        results = await asyncio.gather(
            private_store.put(good, "a", b"1", expires_at=None, now=now()),
            private_store.put(broken, "a", b"1", expires_at=None, now=now()),
            private_store.put(good, "b", b"2", expires_at=None, now=now()),
            return_exceptions=True,
        )
    finally:
        await admin.aclose()
    assert isinstance(results[0], StateEntry) and isinstance(results[2], StateEntry), results
    assert isinstance(results[1], UnreadableValue) and "WRONGTYPE" in str(results[1]), results
    assert f"'{private_store.layout.scope(broken).index}'" in str(results[1])
    assert [e.key for e in (await private_store.list(good, now=now())).entries] == ["a", "b"]


async def test_a_batch_that_fails_fails_each_of_its_reads_and_the_next_one_works(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await private_store.put(scope, "k", b"1", expires_at=None, now=now())
    private_redis.kill()
    results = await asyncio.gather(
        *(private_store.get(scope, "k", now=now()) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(result, Unavailable) for result in results), results
    private_redis.start()
    assert await asyncio.gather(*(private_store.get(scope, "k", now=now()) for _ in range(5))) == [None] * 5


async def test_requests_queued_behind_a_hung_redis_are_unavailable_within_one_timeout(
    private_redis: PrivateRedis,
) -> None:
    """The wait for a turn and the command share one ``timeout_s``, for reads (batched) and writes."""
    timeout_s = 1.0
    store = await RedisStateStore.connect(
        private_redis.url, prefix=redis_key_prefix(), timeout_s=timeout_s, max_connections=2
    )
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")

    async def timed(operation: Any) -> float:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await operation
        return time.monotonic() - started

    assert private_redis.process is not None
    try:
        await store.put(scope, "k", b"1", expires_at=None, now=now())
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:

            def put(i: int) -> Any:
                return timed(store.put(scope, f"k{i}", b"1", expires_at=None, now=now()))

            first = [asyncio.ensure_future(put(i)) for i in range(2)]  # they take both connections
            await asyncio.sleep(0.05)
            # Queued a moment later (see the PostgreSQL test): a write, and reads of three event-loop steps.
            later = [asyncio.ensure_future(put(2))]
            for _ in range(3):
                later.append(asyncio.ensure_future(timed(store.get(scope, "k", now=now()))))
                await asyncio.sleep(0)
            elapsed = await asyncio.gather(*first, *later)
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)
        assert max(elapsed) < timeout_s * 1.7, elapsed
    finally:
        await store.close()


async def test_a_redis_that_never_answers_is_unavailable_within_the_timeout_and_its_connections_let_go() -> (
    None
):
    """A server that takes connections and reads commands but never answers (a hung or black-holed Redis):
    every read and write is Unavailable within about ``timeout_s``, and the client closes each connection
    it gave up on, so no turn at the pool stays held (more calls than the pool has connections, one after
    another, each reach the server)."""
    # One future per connection taken, done when the client closes it.
    connections: list[asyncio.Future[None]] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed = asyncio.get_running_loop().create_future()
        connections.append(closed)
        while await reader.read(65536):
            pass  # read every command, answer none
        closed.set_result(None)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeout_s = 0.5
    # Built on a client, not by ``connect``, whose PING would fail here.
    store = RedisStateStore(
        open_client(f"redis://127.0.0.1:{port}/0", timeout_s=timeout_s, max_connections=2),
        prefix=redis_key_prefix(),
        owns_client=True,
        timeout_s=timeout_s,
    )
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    try:
        for i in range(4):  # twice the pool: a turn held by a call given up on would block the later ones
            started = time.monotonic()
            with pytest.raises(Unavailable):
                if i % 2:
                    await store.put(scope, f"k{i}", b"1", expires_at=None, now=now())
                else:
                    await store.get(scope, "k", now=now())
            assert time.monotonic() - started < timeout_s * 3
        # Each call given up on closed its connection (redis-py disconnects a command it was cancelled in).
        assert len(connections) >= 2
        await asyncio.wait_for(asyncio.gather(*connections), 5)
    finally:
        await store.close()
        server.close()
        await server.wait_closed()
