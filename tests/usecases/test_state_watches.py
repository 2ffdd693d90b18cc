"""StateWatches over real stores (SQLite, PostgreSQL, Redis): one subscription per watched scope whatever
the number of watchers, and a lost hint delays a wake-up but never loses it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import cast

import pytest

from stateport.adapters.clock import SystemClock
from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.redis.changes import RedisChanges
from stateport.adapters.shared.changes import BusChanges
from stateport.domain.ports import StateChanges, StateStore
from stateport.domain.watching import ABSENT, MANY_CHANGED, StateWatches, WatchConfig
from tests.contract.test_state_store import task_scope
from tests.fixtures.counting import Counted
from tests.services import REDIS_URL


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, StateStore, str]:
    store: StateStore = request.getfixturevalue(f"{request.param}_state_store")
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""
    return request.param, store, prefix


@pytest.fixture
async def changes(backend: tuple[str, StateStore, str]) -> AsyncIterator[StateChanges]:
    name, _, prefix = backend
    if name == "redis":
        redis_changes = await RedisChanges.connect(REDIS_URL, prefix=prefix)
        yield redis_changes
        await redis_changes.close()
    else:
        yield BusChanges(MemoryEventBus())


def watches(store: StateStore, changes: StateChanges, recheck_s: float = 600.0) -> StateWatches:
    return StateWatches(store, changes, SystemClock(), WatchConfig(recheck_s=recheck_s), rng=random.Random(1))


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_thousand_watchers_of_a_key_share_one_subscription_and_all_wake(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    _, store, _ = backend
    w = watches(store, changes)
    scope = task_scope()
    entry = await store.put(scope, "k", b"1", expires_at=None, now=now())
    waiting = [
        asyncio.create_task(w.wait_for_change(scope, "k", entry.version, 30, caller="test"))
        for _ in range(1000)
    ]
    await asyncio.sleep(0.3)
    assert w.watching() == 1
    await store.put(scope, "k", b"2", expires_at=None, now=now())
    changes.notify(scope, "k")
    states = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert {s.version if s is not None else None for s in states} == {2}
    assert w.watching() == 0
    await w.close()


async def test_a_lost_hint_is_found_by_the_safety_reread(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    _, store, _ = backend
    if store.capabilities.publishes_changes:
        pytest.skip("the store announces every write itself: no hint to lose here")
    w = watches(store, changes, recheck_s=0.5)
    scope = task_scope()
    waiting = asyncio.create_task(w.wait_for_change(scope, "k", ABSENT, 30, caller="test"))
    await asyncio.sleep(0.1)
    await store.put(scope, "k", b"1", expires_at=None, now=now())  # and no notify: the hint is lost
    state = await asyncio.wait_for(waiting, 5)
    assert state is not None and state.version == 1
    await w.close()


async def test_a_prefix_watch_sees_only_its_prefix(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    _, store, _ = backend
    w = watches(store, changes)
    scope = task_scope()
    async with aclosing(w.prefix_changes(scope, "in/", caller="test")) as feed:
        assert await anext(feed) is None  # set up
        for key in ("out/1", "in/1"):
            await store.put(scope, key, b"1", expires_at=None, now=now())
            changes.notify(scope, key)
        state = await asyncio.wait_for(anext(feed), 5)
        assert state is not None and state.key == "in/1" and state.version == 1
    await w.close()


async def test_prefix_watchers_woken_by_one_change_share_one_read_of_it(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    # 1,000 prefix watchers woken by one hint made 1,000 reads of the key, and a stream's event each.
    _, store, _ = backend
    w = watches(store, changes)
    scope = task_scope()
    feeds = [w.prefix_changes(scope, "in/", caller="test") for _ in range(200)]
    try:
        assert await asyncio.gather(*(anext(feed) for feed in feeds)) == [None] * 200  # set up
        await store.put(scope, "in/1", b'{"n": 1}', expires_at=None, now=now())
        changes.notify(scope, "in/1")
        states = await asyncio.wait_for(asyncio.gather(*(anext(feed) for feed in feeds)), 10)
        assert len({id(state) for state in states}) == 1  # one read, told to all
        assert states[0] is not None and states[0].entry is not None
        assert (states[0].key, states[0].entry.value, states[0].version) == ("in/1", b'{"n": 1}', 1)
    finally:
        for feed in feeds:
            await feed.aclose()
    await w.close()


async def test_a_prefix_watch_listing_again_tells_what_changed_unseen_with_its_value(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    # It lists keys and versions only, then reads the keys that changed: what it tells is the same.
    _, store, _ = backend
    w = StateWatches(store, changes, SystemClock(), WatchConfig(recheck_s=600.0, spread_s=0.01))
    scope = task_scope()
    for key in ("p/a", "p/b", "p/same"):
        await store.put(scope, key, b"1", expires_at=None, now=now())
    async with aclosing(w.prefix_changes(scope, "p/", caller="test")) as feed:
        assert await anext(feed) is None  # set up
        # Unannounced (a lost hint): a rewrite, a delete, a new key.
        await store.put(scope, "p/a", b'"two"', expires_at=None, now=now())
        await store.delete(scope, "p/b", now=now())
        await store.put(scope, "p/c", b'"new"', expires_at=None, now=now())
        changes.notify(scope, "")  # RECHECK: list the prefix again
        told = [await asyncio.wait_for(anext(feed), 5) for _ in range(3)]
        assert [(s.key, s.version, s.entry and s.entry.value, s.expired) for s in told if s is not None] == [
            ("p/a", 2, b'"two"', False),
            ("p/b", ABSENT, None, False),
            ("p/c", 1, b'"new"', False),
        ]
        # Nothing else changed: the next RECHECK tells nothing (p/same is not told).
        changes.notify(scope, "")
        await store.put(scope, "p/d", b"4", expires_at=None, now=now())
        changes.notify(scope, "p/d")
        last = await asyncio.wait_for(anext(feed), 5)
        assert last is not None and last.key == "p/d"
    await w.close()


async def test_a_prefix_rewritten_whole_unseen_is_told_key_by_key_with_the_values(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    # More changed keys than a re-list reads one by one (MANY_CHANGED): they are listed with their values.
    _, store, _ = backend
    w = StateWatches(store, changes, SystemClock(), WatchConfig(recheck_s=600.0, spread_s=0.01))
    scope = task_scope()
    keys = [f"p/{i:03d}" for i in range(MANY_CHANGED + 20)]
    for key in keys:
        await store.put(scope, key, b"1", expires_at=None, now=now())
    async with aclosing(w.prefix_changes(scope, "p/", caller="test")) as feed:
        assert await anext(feed) is None  # set up
        for key in keys[:-2]:
            await store.put(scope, key, f'"{key}"'.encode(), expires_at=None, now=now())
        for key in keys[-2:]:
            await store.delete(scope, key, now=now())
        changes.notify(scope, "")  # RECHECK
        told = [await asyncio.wait_for(anext(feed), 5) for _ in keys]
    await w.close()
    # Each once; in no set order: with Redis, a key's own announcement may come before the re-list.
    by_key = {s.key: s for s in told if s is not None}
    assert len(told) == len(by_key) == len(keys) and sorted(by_key) == keys
    rewritten = [(s.entry.value, s.version) for s in map(by_key.get, keys[:-2]) if s and s.entry]
    assert rewritten == [(f'"{key}"'.encode(), 2) for key in keys[:-2]]
    assert all(s.entry is None and not s.expired for s in map(by_key.__getitem__, keys[-2:]))


async def test_the_prefix_watchers_of_a_scope_list_it_again_together(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    # An outsider's find: on S3, 50 prefix watchers of one scope each listed it on its own safety timer
    # (276 requests a second for 10 keys). They list it together, on the scope's timer, in one listing.
    _, store, _ = backend
    counted = Counted(store, "scan")
    w = StateWatches(
        cast(StateStore, counted), changes, SystemClock(), WatchConfig(recheck_s=0.2), rng=random.Random(1)
    )
    scope = task_scope()
    await store.put(scope, "p/1", b"1", expires_at=None, now=now())
    told: list[list[tuple[str, int]]] = [[] for _ in range(50)]

    async def watch(into: list[tuple[str, int]]) -> None:
        async for state in w.prefix_changes(scope, "p/", caller="test"):
            if state is not None:
                into.append((state.key, state.version))

    watching = [asyncio.create_task(watch(into)) for into in told]
    await asyncio.sleep(0.3)  # set up
    before = counted.calls
    await asyncio.sleep(1.5)  # some 7 safety timers (0.1-0.3 s): each watcher on its own made 350 listings
    listed = counted.calls - before
    await store.put(scope, "p/1", b"2", expires_at=None, now=now())  # unannounced: a re-list finds it
    for _ in range(50):
        if all(told):
            break
        await asyncio.sleep(0.1)
    for task in watching:
        task.cancel()
    await asyncio.gather(*watching, return_exceptions=True)
    await w.close()
    assert 1 <= listed <= 16, listed  # one listing per timer, not one per watcher
    assert told == [[("p/1", 2)]] * 50


async def test_a_new_watcher_is_never_answered_an_older_version_than_it_knows(
    backend: tuple[str, StateStore, str], changes: StateChanges
) -> None:
    """The shared state may lag a write made elsewhere (its hint in flight, or lost): a watcher joining with
    a newer version must wait on that one, and a stream starts from a read made when it starts."""
    _, store, _ = backend
    w = watches(store, changes)
    scope = task_scope()
    await store.put(scope, "k", b"1", expires_at=None, now=now())
    # The shared state: version 1.
    first = asyncio.create_task(w.wait_for_change(scope, "k", 1, 30, caller="test"))
    await asyncio.sleep(0.2)
    await store.put(scope, "k", b"2", expires_at=None, now=now())  # no notify: a hint not there yet
    assert await w.wait_for_change(scope, "k", 2, 0.3, caller="test") is None
    async with aclosing(w.key_changes(scope, "k", caller="test")) as stream:
        state = await anext(stream)
        assert state is not None and state.version == 2
    first.cancel()
    await w.close()
