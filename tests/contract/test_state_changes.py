"""The StateChanges contract (src/domain/ports/state.py), for every state backend a server can use.

Each backend is paired with the StateChanges the composition root gives it: SQLite with hints on the
in-process bus, PostgreSQL on LISTEN/NOTIFY, S3 on the in-process bus plus polling, Redis with its write
scripts' own PUBLISH. A write is followed by ``notify``, as ``StateService`` does after every write; a store
that declares ``publishes_changes`` must announce writes that never call it (a worker writing directly).
(The REST client is a worker's view of a server, not a server's backend: it watches through the HTTP routes.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.redis.changes import RedisChanges
from stateport.adapters.redis.state import RedisStateStore
from stateport.adapters.shared.changes import BusChanges
from stateport.adapters.sql.events import PostgresEventBus
from stateport.domain.errors import BatchMismatch
from stateport.domain.models import BatchDelete, BatchGet, BatchOp, BatchPut, Scope
from stateport.domain.ports import RECHECK, StateChanges, StateStore, Subscription
from tests.contract.test_state_store import asset_scope, task_scope
from tests.services import REDIS_URL, unique

WATCHED = ["sqlite", "postgres", "redis", "redis_cluster", "s3"]
HINT_S = 5.0


class Watched:
    """A store and the changes a watcher subscribes to; ``writer``: the changes of the process that writes
    (another connection where the backend has processes apart); ``direct``: a second store on the same data
    (a worker's own), if the backend has worker-direct writers that announce."""

    def __init__(
        self,
        store: StateStore,
        changes: StateChanges,
        *,
        writer: StateChanges | None = None,
        direct: StateStore | None = None,
    ) -> None:
        self.store = store
        self.changes = changes
        self.writer = writer or changes
        self.direct = direct

    def notify(self, scope: Scope, key: str) -> None:
        self.writer.notify(scope, key)


@pytest.fixture(params=WATCHED)
def backend(request: pytest.FixtureRequest) -> tuple[str, StateStore, str]:
    """The backend's name, its store and what its changes connect to (resolved outside the test's loop)."""
    name = request.param
    store: StateStore = request.getfixturevalue(f"{name}_state_store")
    where = ""
    if name in ("redis", "redis_cluster"):
        url = REDIS_URL if name == "redis" else request.getfixturevalue("redis_cluster_url")
        where = url + " " + request.getfixturevalue("redis_prefix")
    elif name == "postgres":
        where = request.getfixturevalue("postgres_url")
    return name, store, where


@pytest.fixture
async def watched(backend: tuple[str, StateStore, str]) -> AsyncIterator[Watched]:
    name, store, where = backend
    if name in ("redis", "redis_cluster"):
        url, prefix = where.split(" ")
        changes = await RedisChanges.connect(url, prefix=prefix, timeout_s=5.0)
        direct = await RedisStateStore.connect(url, prefix=prefix, timeout_s=5.0)
        try:
            yield Watched(store, changes, direct=direct)
        finally:
            await direct.close()
            await changes.close()
    elif name == "postgres":
        # A channel of its own, so tests running at the same time on the shared server stay apart.
        # Two buses: the watcher's and the writer's, as two server processes have.
        channel = unique("changes")
        bus = await PostgresEventBus.connect(where, channel=channel)
        writer_bus = await PostgresEventBus.connect(where, channel=channel)
        writer = BusChanges(writer_bus)
        try:
            yield Watched(store, BusChanges(bus), writer=writer)
        finally:
            await writer.close()
            await writer_bus.close()
            await bus.close()
    else:
        yield Watched(store, BusChanges(MemoryEventBus(), poll_s=2.0 if name == "s3" else None))


def now() -> datetime:
    return datetime.now(UTC)


async def drain(sub: Subscription) -> None:
    """Drop hints of writes made before ``sub`` opened that are still on their way (a Redis Cluster
    carries a hint from node to node): a late hint is a harmless wake-up, but not what a test counts."""
    while await sub.next(0.5) is not None:
        pass


async def put(w: Watched, scope: Scope, key: str) -> None:
    await w.store.put(scope, key, b"1", expires_at=None, now=now())
    w.notify(scope, key)


@pytest.mark.parametrize("make_scope", [task_scope, asset_scope], ids=["task", "asset"])
async def test_an_announced_write_reaches_every_subscriber_of_the_scope(
    watched: Watched, make_scope: object
) -> None:
    scope = make_scope()  # type: ignore[operator]
    async with watched.changes.subscribe(scope) as a, watched.changes.subscribe(scope) as b:
        await put(watched, scope, "ключ/1")
        for sub in (a, b):
            assert await sub.next(HINT_S) == "ключ/1".encode()


async def test_other_scopes_hear_nothing(watched: Watched) -> None:
    mine, other = task_scope(), task_scope()
    # The same task at another map index is another scope.
    sibling = task_scope(3, dag=mine.dag_id, run=mine.run_id, task=mine.task_id)
    async with watched.changes.subscribe(mine) as sub:
        await put(watched, other, "k")
        await put(watched, sibling, "k")
        await put(watched, mine, "mine")
        assert await sub.next(HINT_S) == b"mine"
        assert await sub.next(0.2) is None


async def test_deletes_and_clears_are_announced(watched: Watched) -> None:
    scope = task_scope()
    await watched.store.put(scope, "k", b"1", expires_at=None, now=now())
    async with watched.changes.subscribe(scope) as sub:
        await drain(sub)
        assert await watched.store.delete(scope, "k", now=now())
        watched.notify(scope, "k")
        assert await sub.next(HINT_S) == b"k"
        await watched.store.put(scope, "j", b"1", expires_at=None, now=now())
        watched.notify(scope, "j")
        assert await sub.next(HINT_S) == b"j"
        assert await watched.store.clear(scope) == 1
        watched.notify(scope, "")
        # A clear names no key: every watcher of the scope re-reads.
        assert await sub.next(HINT_S) == RECHECK


async def test_a_store_that_publishes_announces_writes_made_around_the_server(watched: Watched) -> None:
    if not watched.store.capabilities.publishes_changes:
        pytest.skip("the store does not declare publishes_changes: only a server's writes are announced")
    assert watched.direct is not None
    scope, asset = task_scope(5), asset_scope()
    async with watched.changes.subscribe(scope) as sub, watched.changes.subscribe(asset) as asset_sub:
        # The worker's own store: no notify, no server in between.
        await watched.direct.put(scope, "a", b"1", expires_at=None, now=now())
        assert await sub.next(HINT_S) == b"a"
        await watched.direct.put(scope, "a", b"2", expires_at=None, now=now(), if_version=1)
        assert await sub.next(HINT_S) == b"a"
        # A failed compare-and-set changes nothing and announces nothing.
        with pytest.raises(Exception, match="version"):
            await watched.direct.put(scope, "a", b"3", expires_at=None, now=now(), if_version=1)
        assert await sub.next(0.2) is None
        assert await watched.direct.delete(scope, "a", now=now())
        assert await sub.next(HINT_S) == b"a"
        await watched.direct.put(asset, "x", b"1", expires_at=None, now=now())
        assert await asset_sub.next(HINT_S) == b"x"
        # Puts batched in one script call each announce themselves.
        await asyncio.gather(
            *(watched.direct.put(scope, f"b{i}", b"1", expires_at=None, now=now()) for i in range(5))
        )
        heard = [await sub.next(HINT_S) for _ in range(5)]
        assert sorted(h or b"" for h in heard) == [f"b{i}".encode() for i in range(5)]
        assert await watched.direct.clear(scope) == 5
        assert await sub.next(HINT_S) == RECHECK
        await watched.direct.put(scope, "c", b"1", expires_at=None, now=now())
        assert await sub.next(HINT_S) == b"c"
        assert await watched.direct.clear(scope, all_map_indices=True) == 1
        assert await sub.next(HINT_S) == RECHECK


async def test_a_backend_that_announces_only_server_writes_says_how_often_to_poll(watched: Watched) -> None:
    """Worker-direct backends whose store does not publish (S3) must be polled; SQL has no such writers."""
    if watched.store.capabilities.publishes_changes:
        assert watched.changes.poll_s is None
    else:
        assert watched.changes.poll_s is None or watched.changes.poll_s > 0


async def test_a_store_that_publishes_announces_a_batchs_writes(watched: Watched) -> None:
    """A worker's direct batch: every put and every delete of a live entry is heard; a batch that fails
    its precondition wrote nothing and announces nothing."""
    if not watched.store.capabilities.publishes_changes:
        pytest.skip("the store does not declare publishes_changes: only a server's writes are announced")
    assert watched.direct is not None
    scope = task_scope(6)
    await watched.direct.put(scope, "old", b"1", expires_at=None, now=now())
    async with watched.changes.subscribe(scope) as sub:
        await drain(sub)
        operations: list[BatchOp] = [
            BatchPut(key="a", value=b"1"),
            BatchGet(key="a"),
            BatchDelete(key="old"),
            BatchDelete(key="never"),
        ]
        await watched.direct.batch(scope, operations, now=now())
        heard = {await sub.next(HINT_S) for _ in range(2)}
        assert heard == {b"a", b"old"}
        assert await sub.next(0.2) is None
        with pytest.raises(BatchMismatch):
            await watched.direct.batch(
                scope, [BatchPut(key="b", value=b"1"), BatchGet(key="a", if_version=9)], now=now()
            )
        assert await sub.next(0.2) is None
