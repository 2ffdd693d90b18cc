"""The StateStore contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from stateport.domain.errors import BatchMismatch, Unsupported, VersionMismatch, version_mismatch
from stateport.domain.models import (
    AssetScope,
    BatchDelete,
    BatchGet,
    BatchOp,
    BatchPut,
    BatchResult,
    TaskScope,
)
from stateport.domain.ports import StateStore
from tests.services import unique


def now() -> datetime:
    return datetime.now(UTC)


def task_scope(
    map_index: int = -1, *, dag: str | None = None, run: str | None = None, task: str = "t"
) -> TaskScope:
    return TaskScope(
        dag_id=dag or unique("dag"), run_id=run or unique("run"), task_id=task, map_index=map_index
    )


def asset_scope(name: str | None = None) -> AssetScope:
    return AssetScope(name=name or unique("asset"))


VALUES = [
    b'"text"',
    b"0",
    b"-12.5e3",
    b"true",
    b"false",
    b"[]",
    b'{"a": [1, 2, {"b": null}], "u": "\\u00e9\xc3\xa9\xf0\x9f\x98\x80"}',
    b'{"__airflow_state_ref__": "s3://bucket/prefix/dag/run/task/-1/k"}',
    b'{"spaced" :  1 ,"b":[ ]}',
]
# Not "." nor "..": the state service refuses a key with such a segment (no URL could reach it), so no
# adapter is asked to store one, and the REST adapter, which writes through a server, could not.
KEYS = ["k", "job/id", "a b?c&d=e%2F", "ключ", "x" * 512, ".a", "...", "a//b", "trailing/"]


async def test_ping_returns_while_the_store_takes_writes(state_store: StateStore) -> None:
    await state_store.ping()
    await state_store.put(task_scope(), "after-ping", b"1", expires_at=None, now=now())


async def test_get_missing_is_none(state_store: StateStore) -> None:
    assert await state_store.get(task_scope(), "missing", now=now()) is None
    assert await state_store.get(asset_scope(), "missing", now=now()) is None


@pytest.mark.parametrize("value", VALUES, ids=[f"v{i}" for i in range(len(VALUES))])
async def test_put_then_get_returns_the_bytes_verbatim(state_store: StateStore, value: bytes) -> None:
    scope = task_scope()
    t = now()
    entry = await state_store.put(scope, "k", value, expires_at=None, now=t)
    assert entry.value == value
    got = await state_store.get(scope, "k", now=now())
    assert got is not None
    assert got.value == value
    assert got.key == "k"
    assert got.expires_at is None
    assert got.version == 1
    if state_store.capabilities.caller_clock:
        assert abs((got.updated_at - t).total_seconds()) < 0.001
    else:
        # A remote adapter's server stamps the write with its own clock, after the call began.
        assert t - timedelta(seconds=1) <= got.updated_at <= now() + timedelta(seconds=1)


@pytest.mark.parametrize("key", KEYS)
async def test_keys_are_opaque(state_store: StateStore, key: str) -> None:
    scope = asset_scope("team/orders" + unique(""))
    await state_store.put(scope, key, b'"v"', expires_at=None, now=now())
    got = await state_store.get(scope, key, now=now())
    assert got is not None and got.key == key and got.value == b'"v"'
    page = await state_store.list(scope, now=now())
    assert [e.key for e in page.entries] == [key]


async def test_a_value_at_the_size_limit_is_stored_whole(state_store: StateStore) -> None:
    value = b'"' + b"x" * (64 * 1024 - 2) + b'"'
    scope = task_scope()
    await state_store.put(scope, "big", value, expires_at=None, now=now())
    got = await state_store.get(scope, "big", now=now())
    assert got is not None and got.value == value


async def test_concurrent_reads_each_get_their_own_entry(state_store: StateStore) -> None:
    """Reads issued together (the Redis and PostgreSQL adapters send them as one round trip) each answer
    for their own scope and key: task and asset scopes, map indexes, missing and expired keys."""
    t0 = now()
    tasks = [task_scope(i % 3 - 1, dag="dag", run=unique("run")) for i in range(6)]
    assets = [asset_scope() for _ in range(3)]
    expected: dict[tuple[TaskScope | AssetScope, str], bytes | None] = {}
    # An entry expired at the readers' time, where the adapter judges expiry by the caller's clock.
    keys = ("k", "job/id", "gone", *(("old",) if state_store.capabilities.caller_clock else ()))
    scopes: list[TaskScope | AssetScope] = [*tasks, *assets]
    for n, scope in enumerate(scopes):
        for key in keys:
            value = b"%d" % n + key.encode().replace(b"/", b"")
            if key == "gone":
                expected[(scope, key)] = None
                continue
            expires_at = t0 + timedelta(seconds=1) if key == "old" else None
            await state_store.put(scope, key, b'"' + value + b'"', expires_at=expires_at, now=t0)
            expected[(scope, key)] = None if key == "old" else b'"' + value + b'"'
    later = t0 + timedelta(seconds=2)
    reads = list(expected)
    got = await asyncio.gather(*(state_store.get(scope, key, now=later) for scope, key in reads))
    assert [None if entry is None else entry.value for entry in got] == [expected[r] for r in reads]
    assert [entry.key for entry in got if entry is not None] == [k for (_, k) in reads if expected[(_, k)]]


async def test_put_replaces_and_counts_versions(state_store: StateStore) -> None:
    scope = task_scope()
    for version in range(1, 4):
        entry = await state_store.put(scope, "k", str(version).encode(), expires_at=None, now=now())
        assert entry.version == version
    got = await state_store.get(scope, "k", now=now())
    assert got is not None and got.value == b"3" and got.version == 3


async def test_expires_at_round_trips(state_store: StateStore) -> None:
    scope = task_scope()
    expires = (now() + timedelta(days=30)).replace(microsecond=123000)
    await state_store.put(scope, "k", b"1", expires_at=expires, now=now())
    got = await state_store.get(scope, "k", now=now())
    assert got is not None and got.expires_at == expires


async def test_if_version_is_compare_and_set(state_store: StateStore) -> None:
    scope = task_scope()
    first = await state_store.put(scope, "k", b"1", expires_at=None, now=now(), if_version=0)
    assert first.version == 1
    with pytest.raises(VersionMismatch):
        await state_store.put(scope, "k", b"2", expires_at=None, now=now(), if_version=0)
    with pytest.raises(VersionMismatch):
        await state_store.put(scope, "k", b"2", expires_at=None, now=now(), if_version=7)
    got = await state_store.get(scope, "k", now=now())
    assert got is not None and got.value == b"1" and got.version == 1
    second = await state_store.put(scope, "k", b"2", expires_at=None, now=now(), if_version=1)
    assert second.version == 2
    with pytest.raises(VersionMismatch):
        await state_store.put(scope, "absent", b"2", expires_at=None, now=now(), if_version=1)
    assert await state_store.get(scope, "absent", now=now()) is None


async def test_a_failed_precondition_says_the_same_on_every_store(state_store: StateStore) -> None:
    """One message (the domain's), whichever store found the precondition false: the 412 a caller reads.
    (The REST client relays its server's, after naming where it came from, as it does for every error.)"""
    scope = task_scope()
    await state_store.put(scope, "counter", b"1", expires_at=None, now=now())
    for if_version in (0, 7):
        with pytest.raises(VersionMismatch) as put:
            await state_store.put(scope, "counter", b"2", expires_at=None, now=now(), if_version=if_version)
        assert str(put.value).endswith(str(version_mismatch("counter", if_version)))
    with pytest.raises(VersionMismatch) as absent:
        await state_store.put(scope, "absent", b"2", expires_at=None, now=now(), if_version=1)
    assert str(absent.value).endswith("State key 'absent' is not at version 1")
    if state_store.capabilities.conditional_delete:
        for if_version in (0, 7):
            with pytest.raises(VersionMismatch) as delete:
                await state_store.delete(scope, "counter", now=now(), if_version=if_version)
            assert str(delete.value).endswith(str(version_mismatch("counter", if_version)))


async def test_delete(state_store: StateStore) -> None:
    scope = task_scope()
    await state_store.put(scope, "k", b"1", expires_at=None, now=now())
    assert await state_store.delete(scope, "k", now=now()) is True
    assert await state_store.get(scope, "k", now=now()) is None
    assert await state_store.delete(scope, "k", now=now()) is False
    # A re-created key starts again at version 1.
    entry = await state_store.put(scope, "k", b"2", expires_at=None, now=now())
    assert entry.version == 1


def needs_conditional_delete(store: StateStore) -> None:
    # A store without it must refuse if_version (Invalid): tests/adapters/test_rest.py checks the REST one.
    if not store.capabilities.conditional_delete:
        pytest.skip("adapter declares no conditional delete")


async def test_delete_if_version_is_compare_and_delete(state_store: StateStore) -> None:
    needs_conditional_delete(state_store)
    scope = asset_scope()
    await state_store.put(scope, "k", b"1", expires_at=None, now=now())
    await state_store.put(scope, "k", b"2", expires_at=None, now=now())
    # A stale version, or "must be absent", fails and removes nothing.
    for stale in (1, 3, 0):
        with pytest.raises(VersionMismatch):
            await state_store.delete(scope, "k", now=now(), if_version=stale)
    got = await state_store.get(scope, "k", now=now())
    assert got is not None and got.value == b"2" and got.version == 2
    assert await state_store.delete(scope, "k", now=now(), if_version=2) is True
    assert await state_store.get(scope, "k", now=now()) is None
    # An absent key has no version: "must be absent" holds (nothing removed), any version fails.
    assert await state_store.delete(scope, "k", now=now(), if_version=0) is False
    with pytest.raises(VersionMismatch):
        await state_store.delete(scope, "k", now=now(), if_version=2)


async def test_delete_if_version_sees_an_expired_entry_as_absent(state_store: StateStore) -> None:
    needs_conditional_delete(state_store)
    needs_caller_clock(state_store)
    scope = task_scope()
    t = now()
    await state_store.put(scope, "k", b"1", expires_at=t + timedelta(seconds=10), now=t)
    later = t + timedelta(seconds=11)
    with pytest.raises(VersionMismatch):
        await state_store.delete(scope, "k", now=later, if_version=1)
    assert await state_store.delete(scope, "k", now=later, if_version=0) is False
    # Still live at the caller's own time: "must be absent" fails.
    with pytest.raises(VersionMismatch):
        await state_store.delete(scope, "k", now=t, if_version=0)


async def test_delete_if_version_in_a_task_scope_leaves_other_map_indices(state_store: StateStore) -> None:
    needs_conditional_delete(state_store)
    dag, run = unique("dag"), unique("run")
    first, second = task_scope(0, dag=dag, run=run), task_scope(1, dag=dag, run=run)
    await state_store.put(first, "k", b"1", expires_at=None, now=now())
    await state_store.put(second, "k", b"1", expires_at=None, now=now())
    assert await state_store.delete(first, "k", now=now(), if_version=1) is True
    kept = await state_store.get(second, "k", now=now())
    assert kept is not None and kept.version == 1


async def test_scopes_never_see_each_others_keys(state_store: StateStore) -> None:
    dag, run = unique("dag"), unique("run")
    scopes: list[TaskScope | AssetScope] = [
        TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=-1),
        TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=0),
        TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=1),
        TaskScope(dag_id=dag, run_id=run, task_id="t2", map_index=-1),
        TaskScope(dag_id=dag, run_id=run + "x", task_id="t", map_index=-1),
        TaskScope(dag_id=dag + "x", run_id=run, task_id="t", map_index=-1),
        AssetScope(name=dag),
        AssetScope(name=f"{dag}/{run}"),
    ]
    for i, scope in enumerate(scopes):
        await state_store.put(scope, "k", str(i).encode(), expires_at=None, now=now())
    for i, scope in enumerate(scopes):
        got = await state_store.get(scope, "k", now=now())
        assert got is not None and got.value == str(i).encode(), scope
        page = await state_store.list(scope, now=now())
        assert page.total == 1 and [e.value for e in page.entries] == [str(i).encode()]


async def test_segments_cannot_escape_their_scope(state_store: StateStore) -> None:
    # An asset "a" with key "b/c" and an asset "a/b" with key "c" are two different entries.
    base = unique("esc")
    await state_store.put(AssetScope(name=base), "b/c", b"1", expires_at=None, now=now())
    await state_store.put(AssetScope(name=f"{base}/b"), "c", b"2", expires_at=None, now=now())
    one = await state_store.get(AssetScope(name=base), "b/c", now=now())
    two = await state_store.get(AssetScope(name=f"{base}/b"), "c", now=now())
    assert one is not None and one.value == b"1"
    assert two is not None and two.value == b"2"
    assert await state_store.clear(AssetScope(name=f"{base}/b")) == 1
    still = await state_store.get(AssetScope(name=base), "b/c", now=now())
    assert still is not None and still.value == b"1"


async def test_a_dag_named_like_the_asset_namespace_stays_apart(state_store: StateStore) -> None:
    # Object layouts put assets under "<prefix>/assets/<name>/": a DAG called "assets" must not collide.
    name = unique("shared")
    task = TaskScope(dag_id="assets", run_id=name, task_id="k", map_index=-1)
    asset = AssetScope(name=name)
    await state_store.put(task, "k", b"1", expires_at=None, now=now())
    await state_store.put(asset, "k", b"2", expires_at=None, now=now())
    assert await state_store.clear(asset) == 1
    got = await state_store.get(task, "k", now=now())
    assert got is not None and got.value == b"1"
    assert (await state_store.list(task, now=now())).total == 1
    await state_store.put(asset, "k", b"2", expires_at=None, now=now())
    assert await state_store.clear(task, all_map_indices=True) == 1
    kept = await state_store.get(asset, "k", now=now())
    assert kept is not None and kept.value == b"2"


async def test_clear_removes_only_the_scope(state_store: StateStore) -> None:
    dag, run = unique("dag"), unique("run")
    target = TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=0)
    sibling = TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=1)
    other_task = TaskScope(dag_id=dag, run_id=run, task_id="t2", map_index=0)
    for key in ("a", "b", "c/d"):
        await state_store.put(target, key, b"1", expires_at=None, now=now())
    await state_store.put(sibling, "a", b"1", expires_at=None, now=now())
    await state_store.put(other_task, "a", b"1", expires_at=None, now=now())
    assert await state_store.clear(target) == 3
    assert (await state_store.list(target, now=now())).total == 0
    assert await state_store.get(sibling, "a", now=now()) is not None
    assert await state_store.get(other_task, "a", now=now()) is not None
    assert await state_store.clear(target) == 0


async def test_clear_all_map_indices_is_opt_in_and_stays_in_the_task(state_store: StateStore) -> None:
    dag, run = unique("dag"), unique("run")
    indices = [TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=i) for i in (-1, 0, 1, 2)]
    bystanders = [
        TaskScope(dag_id=dag, run_id=run, task_id="t2", map_index=0),
        TaskScope(dag_id=dag, run_id=run, task_id="tt", map_index=-1),
        TaskScope(dag_id=dag, run_id=run + "2", task_id="t", map_index=0),
        TaskScope(dag_id=dag + "2", run_id=run, task_id="t", map_index=0),
    ]
    for scope in indices + bystanders:
        await state_store.put(scope, "k", b"1", expires_at=None, now=now())
    assert await state_store.clear(indices[1]) == 1
    assert await state_store.get(indices[2], "k", now=now()) is not None
    assert await state_store.clear(indices[2], all_map_indices=True) == 3
    for scope in indices:
        assert await state_store.get(scope, "k", now=now()) is None
    for scope in bystanders:
        assert await state_store.get(scope, "k", now=now()) is not None, scope


async def test_clear_asset_ignores_all_map_indices(state_store: StateStore) -> None:
    a, b = asset_scope(), asset_scope()
    await state_store.put(a, "k", b"1", expires_at=None, now=now())
    await state_store.put(b, "k", b"1", expires_at=None, now=now())
    assert await state_store.clear(a, all_map_indices=True) == 1
    assert await state_store.get(b, "k", now=now()) is not None


def needs_caller_clock(store: StateStore) -> None:
    if not store.capabilities.caller_clock:
        pytest.skip("adapter judges expiry by its server's clock; the real-time variant covers it")


async def test_expired_entries_are_absent_everywhere(state_store: StateStore) -> None:
    needs_caller_clock(state_store)
    scope = task_scope()
    t0 = now()
    soon = t0 + timedelta(seconds=30)
    later = t0 + timedelta(seconds=60)
    await state_store.put(scope, "gone", b"1", expires_at=soon, now=t0)
    await state_store.put(scope, "kept", b"2", expires_at=None, now=t0)
    assert await state_store.get(scope, "gone", now=t0) is not None
    assert await state_store.get(scope, "gone", now=later) is None
    page = await state_store.list(scope, now=later)
    assert [e.key for e in page.entries] == ["kept"] and page.total == 1
    assert await state_store.delete(scope, "gone", now=later) is False


async def test_entries_expire_in_real_time(state_store: StateStore) -> None:
    scope = task_scope()
    # Seconds to write and read it back while live (a busy machine is slow: two writes and a read through
    # moto took more than one), then a sleep past its expiry.
    expires_at = now() + timedelta(seconds=3)
    await state_store.put(scope, "gone", b"1", expires_at=expires_at, now=now())
    await state_store.put(scope, "kept", b"2", expires_at=now() + timedelta(days=1), now=now())
    assert await state_store.get(scope, "gone", now=now()) is not None
    await asyncio.sleep(max(0.0, (expires_at - now()).total_seconds()) + 0.15)
    assert await state_store.get(scope, "gone", now=now()) is None
    page = await state_store.list(scope, now=now())
    assert [e.key for e in page.entries] == ["kept"] and page.total == 1
    assert await state_store.delete(scope, "gone", now=now()) is False
    entry = await state_store.put(scope, "gone", b"3", expires_at=None, now=now(), if_version=0)
    assert entry.version == 1


async def test_a_put_over_an_expired_entry_starts_fresh(state_store: StateStore) -> None:
    needs_caller_clock(state_store)
    scope = task_scope()
    t0 = now()
    await state_store.put(scope, "k", b"1", expires_at=t0 + timedelta(seconds=1), now=t0)
    later = t0 + timedelta(seconds=5)
    entry = await state_store.put(scope, "k", b"2", expires_at=None, now=later, if_version=0)
    assert entry.version == 1
    got = await state_store.get(scope, "k", now=later)
    assert got is not None and got.value == b"2" and got.expires_at is None


async def test_list_orders_by_key_and_pages(state_store: StateStore) -> None:
    scope = task_scope()
    keys = [f"k{i:02d}" for i in range(25)]
    for key in reversed(keys):
        await state_store.put(scope, key, b"1", expires_at=None, now=now())
    first = await state_store.list(scope, now=now(), limit=10, offset=0)
    last = await state_store.list(scope, now=now(), limit=10, offset=20)
    assert first.total == last.total == 25
    assert [e.key for e in first.entries] == keys[:10]
    assert [e.key for e in last.entries] == keys[20:]


async def test_purge_expired_removes_expired_and_keeps_live(state_store: StateStore) -> None:
    scope = task_scope()
    await state_store.put(scope, "old", b"1", expires_at=now() + timedelta(milliseconds=200), now=now())
    await state_store.put(scope, "live", b"1", expires_at=now() + timedelta(days=1), now=now())
    await state_store.put(scope, "forever", b"1", expires_at=None, now=now())
    past = now()
    await asyncio.sleep(0.3)
    purged = await state_store.purge_expired(now=now(), batch_size=2)
    assert purged >= (0 if state_store.capabilities.native_expiry else 1)
    assert await state_store.get(scope, "live", now=now()) is not None
    assert await state_store.get(scope, "forever", now=now()) is not None
    if state_store.capabilities.caller_clock:
        # Seen from before "old" expired, only a purge (or native expiry) can explain its absence.
        assert (await state_store.list(scope, now=past)).total == 2


async def test_concurrent_puts_lose_no_version(state_store: StateStore) -> None:
    if not state_store.capabilities.atomic_versions:
        pytest.skip("adapter declares no atomic versions")
    scope = task_scope()
    writers = 40
    await asyncio.gather(
        *(state_store.put(scope, "k", str(i).encode(), expires_at=None, now=now()) for i in range(writers))
    )
    got = await state_store.get(scope, "k", now=now())
    assert got is not None and got.version == writers


async def test_compare_and_set_counter_loses_no_update(state_store: StateStore) -> None:
    if not state_store.capabilities.atomic_versions:
        pytest.skip("adapter declares no atomic versions")
    scope = task_scope()
    workers, increments = 8, 5

    async def worker() -> None:
        done = 0
        while done < increments:
            entry = await state_store.get(scope, "counter", now=now())
            current = int(entry.value) if entry else 0
            try:
                await state_store.put(
                    scope,
                    "counter",
                    str(current + 1).encode(),
                    expires_at=None,
                    now=now(),
                    if_version=entry.version if entry else 0,
                )
            except VersionMismatch:
                continue
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    got = await state_store.get(scope, "counter", now=now())
    assert got is not None and int(got.value) == workers * increments


# --- listing keys by prefix (scan), and the prefix of list ----------------------------------------------

# Byte order of the keys' UTF-8, which is code point order: "Z" < "a" < "é" (U+00E9) < "中" < "😀", and a
# key sorts before every longer key it starts. A locale's order would put "é" next to "e", case folded.
ORDERED_KEYS = [
    "A",
    "B/",
    "Z",
    "a",
    "a/",
    "a/b",
    "a/b/c",
    "a0",
    "ab",
    "b",
    "e",
    "z",
    "é",
    "ѐ",
    "中",
    "\ufffd",
    "😀",
]


async def scan_all(
    store: StateStore, scope: TaskScope | AssetScope, *, prefix: str = "", limit: int = 100
) -> list[str]:
    """Every key a scan with ``prefix`` lists, page after page (the pages asserted to be consistent)."""
    keys: list[str] = []
    after: str | None = None
    while True:
        page = await store.scan(scope, now=now(), prefix=prefix, after=after, limit=limit)
        assert len(page.entries) <= limit
        keys.extend(e.key for e in page.entries)
        if not page.more:
            return keys
        assert page.entries, "more without entries"
        after = page.entries[-1].key


async def test_scan_lists_keys_in_byte_order(state_store: StateStore) -> None:
    scope = task_scope()
    for key in reversed(ORDERED_KEYS):
        await state_store.put(scope, key, b'"v"', expires_at=None, now=now())
    page = await state_store.scan(scope, now=now())
    assert [e.key for e in page.entries] == ORDERED_KEYS
    assert page.more is False
    assert all(e.value == b'"v"' and e.version == 1 for e in page.entries)
    # list (offset paging) orders the same way.
    assert [e.key for e in (await state_store.list(scope, now=now())).entries] == ORDERED_KEYS


@pytest.mark.parametrize(
    "prefix",
    ["", "a", "a/", "a/b", "é", "😀", "B", "nothing", "a/b/c/d"],
)
async def test_scan_and_list_take_only_keys_with_the_prefix(state_store: StateStore, prefix: str) -> None:
    scope = asset_scope()
    for key in ORDERED_KEYS:
        await state_store.put(scope, key, b"1", expires_at=None, now=now())
    expected = [k for k in ORDERED_KEYS if k.startswith(prefix)]
    assert await scan_all(state_store, scope, prefix=prefix, limit=2) == expected
    listed = await state_store.list(scope, now=now(), prefix=prefix, limit=3, offset=1)
    assert [e.key for e in listed.entries] == expected[1:4]
    assert listed.total == len(expected)


async def test_scan_prefix_ends_at_the_highest_characters(state_store: StateStore) -> None:
    """The end of a prefix's range is computed, not a LIKE: characters at the top of the code space (and
    next to the surrogates, which no key holds) still bound it exactly."""
    scope = task_scope()
    keys = ["p\ud7ff", "p\ud7ffx", "p\ue000", "p\U0010ffff", "p\U0010ffffz", "q", "\U0010ffff", "\U0010ffffa"]
    for key in keys:
        await state_store.put(scope, key, b"1", expires_at=None, now=now())
    for prefix in ("p\ud7ff", "p", "p\U0010ffff", "\U0010ffff", "q"):
        assert await scan_all(state_store, scope, prefix=prefix, limit=1) == sorted(
            k for k in keys if k.startswith(prefix)
        ), prefix


async def test_scan_pages_with_more_and_after(state_store: StateStore) -> None:
    scope = task_scope()
    keys = [f"job/{i:03d}" for i in range(7)]
    for key in [*keys, "job", "jobs/1", "other"]:
        await state_store.put(scope, key, b"1", expires_at=None, now=now())
    first = await state_store.scan(scope, now=now(), prefix="job/", limit=3)
    assert [e.key for e in first.entries] == keys[:3] and first.more
    second = await state_store.scan(scope, now=now(), prefix="job/", after=keys[2], limit=3)
    assert [e.key for e in second.entries] == keys[3:6] and second.more
    last = await state_store.scan(scope, now=now(), prefix="job/", after=keys[5], limit=3)
    assert [e.key for e in last.entries] == keys[6:] and not last.more
    # Exactly a page left: no "more" past it.
    exact = await state_store.scan(scope, now=now(), prefix="job/", after=keys[3], limit=3)
    assert [e.key for e in exact.entries] == keys[4:] and not exact.more
    # An "after" below the prefix starts at the prefix; one past it finds nothing.
    below = await state_store.scan(scope, now=now(), prefix="job/", after="a", limit=2)
    assert [e.key for e in below.entries] == keys[:2]
    past = await state_store.scan(scope, now=now(), prefix="job/", after="job0", limit=2)
    assert past.entries == [] and not past.more
    # "after" need not be a key (it was deleted, or never existed).
    gap = await state_store.scan(scope, now=now(), prefix="job/", after="job/0025", limit=2)
    assert [e.key for e in gap.entries] == keys[3:5]


async def test_scan_keys_only_leaves_the_values_out(state_store: StateStore) -> None:
    scope = asset_scope()
    t = now()
    expires = (t + timedelta(days=1)).replace(microsecond=0)
    await state_store.put(scope, "a", b'{"x": 1}', expires_at=expires, now=t)
    await state_store.put(scope, "a", b'{"x": 2}', expires_at=expires, now=t)
    await state_store.put(scope, "b", b"2", expires_at=None, now=t)
    full = await state_store.scan(scope, now=now())
    bare = await state_store.scan(scope, now=now(), keys_only=True)
    assert [e.value for e in full.entries] == [b'{"x": 2}', b"2"]
    assert [e.value for e in bare.entries] == [None, None]
    assert [(e.key, e.version, e.expires_at) for e in bare.entries] == [("a", 2, expires), ("b", 1, None)]
    assert [e.updated_at for e in bare.entries] == [e.updated_at for e in full.entries]


async def test_scan_ends_a_page_at_its_bytes_of_values(state_store: StateStore) -> None:
    # Each value is 300 bytes of UTF-8 and 101 characters: a store counting characters lists more.
    scope = task_scope()
    value = ('"' + "中" * 99 + 'x"').encode()
    assert len(value) == 300
    keys = [f"k{i}" for i in range(5)]
    for key in keys:
        await state_store.put(scope, key, value, expires_at=None, now=now())

    async def page(max_bytes: int, **more: Any) -> tuple[list[str], bool]:
        scan = await state_store.scan(scope, now=now(), limit=10, max_bytes=max_bytes, **more)
        assert all(e.value == value for e in scan.entries if not more.get("keys_only"))
        return [e.key for e in scan.entries], scan.more

    # An entry while the values before it total fewer bytes than the bound: the first always.
    assert await page(600) == (keys[:2], True)
    assert await page(601) == (keys[:3], True)
    assert await page(1) == (keys[:1], True)
    assert await page(1, after="k3") == (["k4"], False)  # nothing follows: no "more"
    assert await page(1500) == (keys, False)
    assert await page(1, keys_only=True) == (keys, False)  # no values, no bound
    # Paging on: every key once.
    listed: list[str] = []
    after: str | None = None
    while True:
        scan = await state_store.scan(scope, now=now(), after=after, limit=10, max_bytes=500)
        listed.extend(e.key for e in scan.entries)
        if not scan.more:
            break
        after = listed[-1]
    assert listed == keys


async def test_a_listing_by_offset_goes_on_as_a_scan_after_its_last_key(state_store: StateStore) -> None:
    # The state service reads a long offset page so (``StateService.list_entries``): both must order the
    # keys alike, by the bytes of their UTF-8, whatever the characters.
    scope = task_scope()
    keys = ["p/a", "p/Z", "p/é", "p/中", "p/😀", "p/\u00ff", "p/ab", "p/a b", "p/~"]
    for key in [*keys, "q", "o"]:
        await state_store.put(scope, key, b"1", expires_at=None, now=now())
    ordered = sorted(keys, key=lambda k: k.encode())
    first = await state_store.list(scope, now=now(), limit=3, offset=1, prefix="p/")
    assert first.total == len(keys) and [e.key for e in first.entries] == ordered[1:4]
    rest = await state_store.scan(scope, now=now(), prefix="p/", after=first.entries[-1].key, limit=100)
    assert [e.key for e in rest.entries] == ordered[4:] and not rest.more


async def test_a_long_scan_keeps_the_page_rule_across_the_stores_windows(state_store: StateStore) -> None:
    # SQLite sums values' sizes 16, 32, 64... rows at a time (Dialect.scan_window): a page longer than a
    # window, cut by its bytes in a later window or not at all, is the page one statement would give.
    scope = task_scope()
    keys = [f"k{i:03d}" for i in range(150)]
    for i, key in enumerate(keys):
        await state_store.put(scope, key, b'"' + b"x" * (8 + i % 5) + b'"', expires_at=None, now=now())
    sizes = [10 + i % 5 for i in range(150)]

    def cut(limit: int, max_bytes: int, start: int = 0) -> int:
        """How many entries the rule keeps: each while the values before it total under max_bytes."""
        held = 0
        for n, size in enumerate(sizes[start : start + limit]):
            if n and held >= max_bytes:
                return n
            held += size
        return min(limit, len(sizes) - start)

    for limit, max_bytes, after in (
        (149, 10**9, None),
        (150, 10**9, None),
        (140, 1000, None),
        (120, 1300, "k009"),
    ):
        scan = await state_store.scan(scope, now=now(), after=after, limit=limit, max_bytes=max_bytes)
        start = 0 if after is None else keys.index(after) + 1
        n = cut(limit, max_bytes, start)
        assert [e.key for e in scan.entries] == keys[start : start + n], (limit, max_bytes, after)
        assert scan.more == (start + n < len(keys)), (limit, max_bytes, after)


async def test_scan_skips_expired_keys(state_store: StateStore) -> None:
    needs_caller_clock(state_store)
    scope = task_scope()
    t0 = now()
    for i in range(6):
        expires_at = t0 + timedelta(seconds=30) if i % 2 else None
        await state_store.put(scope, f"k{i}", b"1", expires_at=expires_at, now=t0)
    later = t0 + timedelta(seconds=60)
    page = await state_store.scan(scope, now=later, prefix="k", limit=2)
    assert [e.key for e in page.entries] == ["k0", "k2"] and page.more
    rest = await state_store.scan(scope, now=later, prefix="k", after="k2", limit=2)
    # k5 expired: nothing live follows k4, so no "more".
    assert [e.key for e in rest.entries] == ["k4"] and not rest.more
    assert len((await state_store.scan(scope, now=t0, prefix="k", limit=10)).entries) == 6


async def test_scan_stays_in_its_scope(state_store: StateStore) -> None:
    dag, run = unique("dag"), unique("run")
    mine = TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=0)
    others: list[TaskScope | AssetScope] = [
        TaskScope(dag_id=dag, run_id=run, task_id="t", map_index=1),
        TaskScope(dag_id=dag, run_id=run, task_id="t2", map_index=0),
        AssetScope(name=dag),
    ]
    await state_store.put(mine, "k/1", b"1", expires_at=None, now=now())
    for scope in others:
        await state_store.put(scope, "k/0", b"1", expires_at=None, now=now())
        await state_store.put(scope, "k/2", b"1", expires_at=None, now=now())
    assert await scan_all(state_store, mine, prefix="k/", limit=1) == ["k/1"]


async def test_scan_pages_stay_correct_while_keys_come_and_go(state_store: StateStore) -> None:
    """Keyset paging: between pages, keys are added and deleted before and after the position. Every key
    live throughout is listed exactly once, in order; no key is listed twice; none outside the prefix."""
    scope = task_scope()
    stable = [f"p/{i:03d}" for i in range(0, 60, 2)]
    doomed = [f"p/{i:03d}" for i in range(1, 60, 4)]
    for key in [*stable, *doomed, "p", "q/000"]:
        await state_store.put(scope, key, b"1", expires_at=None, now=now())
    seen: list[str] = []
    after: str | None = None
    added: list[str] = []
    deleted_ahead: list[str] = []
    while True:
        page = await state_store.scan(scope, now=now(), prefix="p/", after=after, limit=4)
        seen.extend(e.key for e in page.entries)
        if not page.more:
            break
        after = page.entries[-1].key
        # Between pages: delete a doomed key behind the position and one ahead of it, add a key behind
        # it and one just past it.
        behind = [d for d in doomed if d < after][-1:]
        ahead = [d for d in doomed if d > after and d not in deleted_ahead][:1]
        deleted_ahead += ahead
        added.append(f"{after}+")
        await asyncio.gather(
            *(state_store.delete(scope, k, now=now()) for k in behind + ahead),
            state_store.put(scope, f"p/{len(added):03d}x", b"1", expires_at=None, now=now()),
            state_store.put(scope, f"{after}+", b"1", expires_at=None, now=now()),
        )
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert set(stable) <= set(seen)
    assert all(k.startswith("p/") for k in seen)
    # A key added past the position before the next page is listed; one deleted ahead never is.
    assert set(added) <= set(seen)
    assert not set(deleted_ahead) & set(seen)
    assert deleted_ahead


async def test_scan_concurrent_with_writers(state_store: StateStore) -> None:
    """Scans racing puts and deletes in the same scope: a page is always ordered, within the prefix, and
    holds every key live throughout."""
    scope = asset_scope()
    stable = [f"s/{i:02d}" for i in range(20)]
    for key in stable:
        await state_store.put(scope, key, b"1", expires_at=None, now=now())
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            key = f"s/{i % 20:02d}.{i}"
            await state_store.put(scope, key, b"2", expires_at=None, now=now())
            await state_store.delete(scope, key, now=now())
            i += 1

    writer = asyncio.create_task(churn())
    try:
        for _ in range(3):
            seen = await scan_all(state_store, scope, prefix="s/", limit=3)
            assert seen == sorted(set(seen))
            assert set(stable) <= set(seen)
    finally:
        stop.set()
        await writer


# --- batches -------------------------------------------------------------------------------------------


def needs_atomic_batch(store: StateStore) -> None:
    if not store.capabilities.atomic_batch:
        pytest.skip("adapter declares no atomic batch")


async def test_a_store_without_atomic_batch_refuses_and_changes_nothing(state_store: StateStore) -> None:
    if state_store.capabilities.atomic_batch:
        pytest.skip("adapter declares atomic batches")
    scope = task_scope()
    with pytest.raises(Unsupported):
        await state_store.batch(scope, [BatchPut(key="a", value=b"1")], now=now())
    assert await state_store.get(scope, "a", now=now()) is None


async def test_batch_applies_in_order_and_reads_its_own_writes(state_store: StateStore) -> None:
    needs_atomic_batch(state_store)
    scope = task_scope()
    await state_store.put(scope, "old", b'"o"', expires_at=None, now=now())
    results = await state_store.batch(
        scope,
        [
            BatchGet(key="a"),
            BatchPut(key="a", value=b'{"n": 1}', if_version=0),
            BatchGet(key="a", if_version=1),
            BatchPut(key="a", value=b"2"),
            BatchGet(key="a"),
            BatchDelete(key="old", if_version=1),
            BatchGet(key="old"),
            BatchDelete(key="never"),
            BatchDelete(key="never", if_version=0),
            BatchPut(key="old", value=b"3", if_version=0),
        ],
        now=now(),
    )
    assert results[0] == BatchResult()
    assert results[1].entry is not None and results[1].entry.version == 1
    assert results[2].entry is not None and results[2].entry.value == b'{"n": 1}'
    assert results[3].entry is not None and results[3].entry.version == 2
    got_a = results[4].entry
    assert got_a is not None and (got_a.value, got_a.version) == (b"2", 2)
    assert results[5] == BatchResult(deleted=True)
    assert results[6] == BatchResult()
    assert results[7] == BatchResult(deleted=False) and results[8] == BatchResult(deleted=False)
    assert results[9].entry is not None and results[9].entry.version == 1
    stored_a = await state_store.get(scope, "a", now=now())
    stored_old = await state_store.get(scope, "old", now=now())
    assert stored_a is not None and (stored_a.value, stored_a.version) == (b"2", 2)
    assert stored_old is not None and (stored_old.value, stored_old.version) == (b"3", 1)
    page = await state_store.list(scope, now=now())
    assert [e.key for e in page.entries] == ["a", "old"]


@pytest.mark.parametrize("failing", [0, 3, 6])
async def test_a_failed_precondition_at_index_k_writes_nothing(state_store: StateStore, failing: int) -> None:
    needs_atomic_batch(state_store)
    scope = task_scope()
    await state_store.put(scope, "x", b"1", expires_at=None, now=now())
    await state_store.put(scope, "y", b"1", expires_at=None, now=now())
    ops: list[BatchOp] = [
        BatchPut(key="x", value=b"2", if_version=1),
        BatchDelete(key="y"),
        BatchPut(key="new", value=b"1"),
        BatchGet(key="x", if_version=2),
        BatchPut(key="x", value=b"3"),
        BatchPut(key="y", value=b"9", if_version=0),
        BatchGet(key="new", if_version=1),
    ]
    # Break operation ``failing``'s precondition: expect a version that will not be there.
    broken = ops[failing]
    ops[failing] = msgspec.structs.replace(broken, if_version=(broken.if_version or 0) + 7)
    with pytest.raises(BatchMismatch) as raised:
        await state_store.batch(scope, ops, now=now())
    assert raised.value.index == failing
    assert isinstance(raised.value, VersionMismatch)
    x = await state_store.get(scope, "x", now=now())
    y = await state_store.get(scope, "y", now=now())
    assert x is not None and (x.value, x.version) == (b"1", 1)
    assert y is not None and (y.value, y.version) == (b"1", 1)
    assert await state_store.get(scope, "new", now=now()) is None
    # Without the broken precondition the same batch applies whole.
    ops[failing] = broken
    await state_store.batch(scope, ops, now=now())
    x = await state_store.get(scope, "x", now=now())
    assert x is not None and (x.value, x.version) == (b"3", 3)


async def test_batch_sees_expired_entries_as_absent(state_store: StateStore) -> None:
    needs_atomic_batch(state_store)
    needs_caller_clock(state_store)
    scope = task_scope()
    t0 = now()
    later = t0 + timedelta(seconds=60)
    await state_store.put(scope, "gone", b"1", expires_at=t0 + timedelta(seconds=30), now=t0)
    await state_store.put(scope, "gone", b"2", expires_at=t0 + timedelta(seconds=30), now=t0)
    results = await state_store.batch(
        scope,
        [
            BatchGet(key="gone", if_version=0),
            BatchDelete(key="gone", if_version=0),
            BatchPut(key="gone", value=b"3", expires_at=later + timedelta(seconds=60), if_version=0),
        ],
        now=later,
    )
    assert results[0] == BatchResult() and results[1] == BatchResult(deleted=False)
    assert results[2].entry is not None and results[2].entry.version == 1
    got = await state_store.get(scope, "gone", now=later)
    assert got is not None and (got.value, got.version) == (b"3", 1)


async def test_batch_stays_in_its_scope(state_store: StateStore) -> None:
    needs_atomic_batch(state_store)
    dag, run = unique("dag"), unique("run")
    mine, sibling = task_scope(0, dag=dag, run=run), task_scope(1, dag=dag, run=run)
    await state_store.put(sibling, "k", b"1", expires_at=None, now=now())
    results = await state_store.batch(
        mine, [BatchGet(key="k"), BatchPut(key="k", value=b"2", if_version=0)], now=now()
    )
    assert results[0] == BatchResult()
    other = await state_store.get(sibling, "k", now=now())
    assert other is not None and (other.value, other.version) == (b"1", 1)
    asset = asset_scope()
    await state_store.batch(asset, [BatchPut(key="k", value=b"3")], now=now())
    assert (await state_store.list(asset, now=now())).total == 1


@pytest.mark.parametrize("start", [0, 1], ids=["absent", "at-version-1"])
async def test_two_batches_racing_on_the_same_versions_exactly_one_wins(
    state_store: StateStore, start: int
) -> None:
    """Real concurrency: both batches are in flight at once (on PostgreSQL, on two pooled connections),
    expecting the same versions of the same keys; one applies whole, the other raises and writes nothing."""
    needs_atomic_batch(state_store)
    for _ in range(10):
        scope = task_scope()
        for key in ("a", "b") if start else ():
            await state_store.put(scope, key, b"0", expires_at=None, now=now())

        def writer(name: bytes) -> list[BatchOp]:
            return [
                BatchPut(key="a", value=name, if_version=start),
                BatchPut(key="b", value=name, if_version=start),
                BatchPut(key=f"only-{name.decode()}", value=name),
            ]

        outcomes = await asyncio.gather(
            state_store.batch(scope, writer(b"1"), now=now()),
            state_store.batch(scope, writer(b"2"), now=now()),
            return_exceptions=True,
        )
        won = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, list)]
        lost = [outcome for outcome in outcomes if isinstance(outcome, BatchMismatch)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert lost[0].index == 0
        winner = str(won[0] + 1).encode()
        keys = {e.key: e for e in (await state_store.list(scope, now=now())).entries}
        assert set(keys) == {"a", "b", f"only-{winner.decode()}"}
        assert {(keys[k].value, keys[k].version) for k in ("a", "b")} == {(winner, start + 1)}


async def test_unconditional_batches_racing_lose_no_version(state_store: StateStore) -> None:
    """Without preconditions every racing batch applies, each whole, one after the other: on PostgreSQL
    both may find a key absent, and the one whose insert comes second runs again over the other's row."""
    needs_atomic_batch(state_store)
    scope = task_scope()
    writers = 8
    outcomes = await asyncio.gather(
        *(
            state_store.batch(
                scope, [BatchPut(key="p", value=b"1"), BatchPut(key="q", value=b"1")], now=now()
            )
            for _ in range(writers)
        )
    )
    versions = sorted(r[0].entry.version for r in outcomes if r[0].entry is not None)
    assert versions == list(range(1, writers + 1))
    for key in ("p", "q"):
        got = await state_store.get(scope, key, now=now())
        assert got is not None and got.version == writers


async def test_a_batch_of_unconditional_puts_versions_each_key_as_put_does(state_store: StateStore) -> None:
    """Puts only, no precondition, each key once (PostgreSQL's one-statement form): a live key goes to its
    version plus one, an expired or absent key to 1, and the results come in the operations' order."""
    needs_atomic_batch(state_store)
    needs_caller_clock(state_store)
    scope = task_scope()
    t0 = now()
    later = t0 + timedelta(seconds=60)
    for _ in range(3):
        await state_store.put(scope, "m-live", b"0", expires_at=None, now=t0)
    await state_store.put(scope, "a-gone", b"0", expires_at=t0 + timedelta(seconds=30), now=t0)
    await state_store.put(scope, "a-gone", b"0", expires_at=t0 + timedelta(seconds=30), now=t0)
    expiry = later + timedelta(seconds=90)
    ops: list[BatchOp] = [
        BatchPut(key="z-new", value=b'{"z": 1}'),
        BatchPut(key="m-live", value=b"1", expires_at=expiry),
        BatchPut(key="a-gone", value=b"[1]"),
    ]
    results = await state_store.batch(scope, ops, now=later)
    written = [r.entry for r in results]
    assert [(e.key, e.value, e.version) for e in written if e is not None] == [
        ("z-new", b'{"z": 1}', 1),
        ("m-live", b"1", 4),
        ("a-gone", b"[1]", 1),
    ]
    assert written[1] is not None and written[1].expires_at == expiry
    for entry in written:
        assert entry is not None
        stored = await state_store.get(scope, entry.key, now=later)
        assert stored is not None
        assert (stored.value, stored.version, stored.expires_at) == (
            entry.value,
            entry.version,
            entry.expires_at,
        )


async def test_unconditional_and_reading_batches_racing_on_the_same_keys_all_apply(
    state_store: StateStore,
) -> None:
    """Batches of plain puts and batches that also read (which take their rows another way on
    PostgreSQL), in flight at once over the same keys named in opposite orders: none waits for another in
    a cycle, and every one applies whole, one after the other."""
    needs_atomic_batch(state_store)
    scope = task_scope()
    each = 6
    plain: list[BatchOp] = [BatchPut(key="z", value=b"1"), BatchPut(key="a", value=b"1")]
    reading: list[BatchOp] = [BatchGet(key="a"), BatchPut(key="a", value=b"2"), BatchPut(key="z", value=b"2")]
    outcomes = await asyncio.gather(
        *(state_store.batch(scope, ops, now=now()) for _ in range(each) for ops in (plain, reading))
    )
    assert len(outcomes) == 2 * each
    for key in ("a", "z"):
        got = await state_store.get(scope, key, now=now())
        assert got is not None and got.version == 2 * each


async def test_reading_batches_racing_see_each_other_one_after_the_other(state_store: StateStore) -> None:
    """Read-then-write batches in flight at once over the same keys (PostgreSQL: optimistic, a read then a
    write that applies only if nothing changed, else again; at last the locked path): each applies whole,
    and each one's get saw exactly the version its own put replaced, as if they ran one after the other."""
    needs_atomic_batch(state_store)
    scope = task_scope()
    writers = 8
    ops: list[BatchOp] = [BatchGet(key="n"), BatchPut(key="n", value=b"1"), BatchDelete(key="gone")]
    outcomes = await asyncio.gather(*(state_store.batch(scope, ops, now=now()) for _ in range(writers)))
    pairs = []
    for got, put, _ in outcomes:
        assert put.entry is not None
        pairs.append((0 if got.entry is None else got.entry.version, put.entry.version))
    assert sorted(pairs) == [(v, v + 1) for v in range(writers)]
    stored = await state_store.get(scope, "n", now=now())
    assert stored is not None and stored.version == writers


async def test_mixed_batches_racing_on_the_same_versions_exactly_one_wins(state_store: StateStore) -> None:
    """Gets, conditional puts and conditional deletes, many batches at once expecting the same versions:
    exactly one applies, whole; every other raises with the index of the first precondition that failed
    and writes nothing."""
    needs_atomic_batch(state_store)
    for _ in range(5):
        scope = task_scope()
        await state_store.put(scope, "cursor", b"0", expires_at=None, now=now())
        await state_store.put(scope, "lock", b"0", expires_at=None, now=now())

        def writer(n: int) -> list[BatchOp]:
            return [
                BatchGet(key="cursor", if_version=1),
                BatchPut(key="cursor", value=str(n).encode(), if_version=1),
                BatchDelete(key="lock", if_version=1),
                BatchPut(key=f"mine-{n}", value=b"1", if_version=0),
            ]

        outcomes = await asyncio.gather(
            *(state_store.batch(scope, writer(n), now=now()) for n in range(6)), return_exceptions=True
        )
        won = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, list)]
        lost = [outcome for outcome in outcomes if isinstance(outcome, BatchMismatch)]
        assert len(won) == 1 and len(lost) == 5, outcomes
        assert {mismatch.index for mismatch in lost} == {0}
        keys = {e.key: e for e in (await state_store.list(scope, now=now())).entries}
        assert set(keys) == {"cursor", f"mine-{won[0]}"}
        assert (keys["cursor"].value, keys["cursor"].version) == (str(won[0]).encode(), 2)
