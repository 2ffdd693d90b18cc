"""Read batches on a standalone Redis go out on a connection of their own, pipelined
(``adapters/redis/pipelined.py``): opened as the pool's connections are, shared by every batch in flight,
replaced when lost, and working on the event loop the server runs (uvloop)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvloop
from redis.asyncio import Redis

from stateport.adapters.redis.client import open_client
from stateport.adapters.redis.state import RedisStateStore
from stateport.domain.errors import Unavailable
from stateport.domain.models import TaskScope
from tests.adapters.private_redis import PrivateRedis, running_private_redis
from tests.services import redis_key_prefix, unique

pytestmark = pytest.mark.redis


def now() -> datetime:
    return datetime.now(UTC)


async def clients(admin: Redis) -> list[dict[str, Any]]:
    """The server's client connections but ``admin``'s own."""
    me = await admin.client_id()
    return [c for c in await admin.client_list() if int(c["id"]) != me]


async def read_each_in_its_own_step(store: RedisStateStore, scope: TaskScope, keys: list[str]) -> list[Any]:
    """Reads of ``keys`` started one event-loop step apart, so that many batches are in flight at once."""

    async def after(steps: int, key: str) -> Any:
        for _ in range(steps):
            await asyncio.sleep(0)
        entry = await store.get(scope, key, now=now())
        return None if entry is None else entry.value

    return await asyncio.gather(*(after(i % 25, key) for i, key in enumerate(keys)))


async def test_batches_in_flight_share_one_connection_and_each_read_gets_its_own_entry(
    private_redis: PrivateRedis,
) -> None:
    store = await RedisStateStore.connect(private_redis.url, prefix=redis_key_prefix(), max_connections=4)
    admin = Redis.from_url(private_redis.url)
    try:
        scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
        keys = [f"k{n}" for n in range(100)]
        for key in keys:
            await store.put(scope, key, key.encode(), expires_at=None, now=now())
        before = len(await clients(admin))
        got = await read_each_in_its_own_step(store, scope, keys * 3)
        assert got == [key.encode() for key in keys * 3]
        # One connection more for every read of 25 steps (through the pool, as many as it holds).
        assert len(await clients(admin)) == before + 1
    finally:
        await admin.aclose()
        await store.close()


async def test_the_reads_connection_authenticates_selects_the_database_and_names_itself() -> None:
    with running_private_redis("--requirepass", "secret") as server:
        admin = Redis(port=server.port, password="secret")
        try:
            await admin.acl_setuser(
                "reader", enabled=True, passwords=["+other"], keys=["*"], channels=["*"], commands=["+@all"]
            )
            for credentials in (":secret", "reader:other"):
                url = f"redis://{credentials}@127.0.0.1:{server.port}/3?client_name=sp-reads"
                store = await RedisStateStore.connect(url, prefix=redis_key_prefix())
                try:
                    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
                    # Written through the pool, read through the reads' connection: the same database.
                    await store.put(scope, "k", b"1", expires_at=None, now=now())
                    assert await read_each_in_its_own_step(store, scope, ["k"] * 4) == [b"1"] * 4
                    theirs = await clients(admin)
                    assert len(theirs) >= 2
                    assert {(c["name"], c["db"]) for c in theirs} == {("sp-reads", "3")}
                finally:
                    await store.close()
                    await asyncio.sleep(0.05)  # the closed connections leave the server's list
        finally:
            await admin.aclose()


async def test_a_refused_password_is_unavailable_within_the_timeout() -> None:
    with running_private_redis("--requirepass", "secret") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        store = RedisStateStore(
            open_client(url, timeout_s=1.0, max_connections=2), owns_client=True, timeout_s=1.0
        )
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await store.get(TaskScope(dag_id="d", run_id="r", task_id="t"), "k", now=now())
            assert time.monotonic() - started < 1.0 * 3  # a hang guard, not a timing target
        finally:
            await store.close()


async def test_an_error_reply_fails_its_batch_alone_and_later_replies_keep_their_order(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """Redis refuses a read of a key that is not a hash (WRONGTYPE): that batch is Unavailable, the reads
    sent after it on the same connection get their own entries."""
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await private_store.put(scope, "good", b"1", expires_at=None, now=now())
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.set(private_store.layout.scope(scope).entry("bad"), "not a hash")
        bad = asyncio.ensure_future(private_store.get(scope, "bad", now=now()))
        await asyncio.sleep(0)  # the bad read is sent in a step of its own, before the good ones
        good = await read_each_in_its_own_step(private_store, scope, ["good"] * 6)
        with pytest.raises(Unavailable, match="refused"):
            await bad
        assert good == [b"1"] * 6
    finally:
        await admin.aclose()


async def test_a_read_after_redis_closed_the_connection_gets_its_answer(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await private_store.put(scope, "k", b"1", expires_at=None, now=now())
    admin = Redis.from_url(private_redis.url)
    try:
        for _ in range(3):
            assert await read_each_in_its_own_step(private_store, scope, ["k"] * 4) == [b"1"] * 4
            await admin.client_kill_filter(_type="normal", skipme=True)
    finally:
        await admin.aclose()


async def test_reads_over_a_unix_socket() -> None:
    with tempfile.TemporaryDirectory() as folder:
        socket = str(Path(folder) / "redis.sock")
        with running_private_redis("--unixsocket", socket, "--unixsocketperm", "700") as server:
            store = await RedisStateStore.connect(f"unix://{socket}?db=2", prefix=redis_key_prefix())
            admin = Redis(port=server.port)
            try:
                scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
                await store.put(scope, "k", b"1", expires_at=None, now=now())
                assert await read_each_in_its_own_step(store, scope, ["k"] * 4) == [b"1"] * 4
                assert all(c["db"] == "2" and c["addr"].startswith(socket) for c in await clients(admin))
            finally:
                await admin.aclose()
                await store.close()


def test_reads_on_uvloop(private_redis: PrivateRedis) -> None:
    """The server's event loop: its transports are not asyncio's classes."""

    async def main() -> list[Any]:
        store = await RedisStateStore.connect(private_redis.url, prefix=redis_key_prefix())
        try:
            scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
            await store.put(scope, "k", b"1", expires_at=None, now=now())
            lone = await store.get(scope, "k", now=now())
            batched = await read_each_in_its_own_step(store, scope, ["k"] * 8)
            return [None if lone is None else lone.value, *batched]
        finally:
            await store.close()

    assert uvloop.run(main()) == [b"1"] * 9
