"""A task's state calls over the Execution API wait out a server that cannot answer for now (issue #6's rule:
a store that is down gives a fast 503; a worker then waits it out rather than failing the task at once)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from stateport.adapters.rest import execution
from stateport.domain.errors import Unavailable
from stateport.domain.models import TaskScope
from stateport.worker.state import AsyncTaskStateAccessor, TaskStateAccessor
from tests.e2e.test_worker_direct import create_task_instance
from tests.fixtures.redis import drop_prefix, redis_available
from tests.fixtures.tcp_proxy import TcpProxy, proxied_server
from tests.services import REDIS_URL, require

pytestmark = pytest.mark.postgres

# Shorter than the state calls' wait (60 s), longer than their first pauses.
OUTAGE_S = 3.0
# Longer than the sync accessor's old guard of a call (3 x 5 s + 1), shorter than the wait.
LONG_OUTAGE_S = 20.0


async def test_a_state_call_waits_out_a_database_outage_and_succeeds(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: a 503 (the store restarting) failed the task at once, and each of its retries
    # the same way, 20 ms apart: a 10 s Redis restart failed the run.
    async with proxied_server(tmp_path, fresh_postgres_url) as (server, proxy, _log):
        ti = await asyncio.to_thread(create_task_instance, server)
        async with await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, server.base_url) as state:
            await state.set("before", 1)
            await proxy.cut()  # the server answers 503: its database cannot be reached
            writing = asyncio.create_task(state.set("during", {"n": 2}))
            reading = asyncio.create_task(state.get("before"))
            await asyncio.sleep(OUTAGE_S)
            assert not writing.done() and not reading.done()
            await proxy.start()
            assert await asyncio.wait_for(writing, 30) == 1
            assert await asyncio.wait_for(reading, 30) == 1
            assert await state.get("during") == {"n": 2}


async def test_a_state_call_fails_once_the_outage_outlasts_its_wait(
    fresh_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "OUTAGE_WAIT_S", 1.5)
    async with proxied_server(tmp_path, fresh_postgres_url) as (server, proxy, _log):
        ti = await asyncio.to_thread(create_task_instance, server)
        async with await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, server.base_url) as state:
            await proxy.cut()
            started = time.monotonic()
            with pytest.raises(Unavailable, match="503"):
                await state.set("during", 1)
            # Tried again, then given up: not the first answer, not much past the wait.
            assert 0.5 < time.monotonic() - started < 15
            await proxy.start()
            assert await state.get("during") is None


async def test_a_sync_state_call_waits_out_an_outage_longer_than_its_call_guard(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: the sync accessor (a plain task function's ctx.state) gave up after its 16 s
    # guard of a call, while the async one rode out the same outage.
    async with proxied_server(tmp_path, fresh_postgres_url) as (server, proxy, _log):
        ti = await asyncio.to_thread(create_task_instance, server)
        state = await asyncio.to_thread(TaskStateAccessor.for_task_instance, ti.id, ti.token, server.base_url)
        try:
            await proxy.cut()
            writing = asyncio.create_task(asyncio.to_thread(state.set, "during", 1))
            await asyncio.sleep(LONG_OUTAGE_S)
            assert not writing.done()
            await proxy.start()
            assert await asyncio.wait_for(writing, 30) == 1
            assert await asyncio.to_thread(state.get, "during") == 1
        finally:
            await asyncio.to_thread(state.close)


async def test_a_direct_accessor_waits_out_its_stores_outage_from_its_opening(redis_prefix: str) -> None:
    # An outsider's find: going direct, a task failed at the first refused connection of its store's
    # restart (the REST path waited it out), and a task that never touched its state failed too, at the
    # accessor's opening.
    require(redis_available(), f"Redis at {REDIS_URL}")
    parts = urlsplit(REDIS_URL)
    proxy = TcpProxy(upstream=(parts.hostname or "127.0.0.1", parts.port or 6379))
    await proxy.start()
    await proxy.cut()  # Redis "restarting": refused
    url = f"redis://127.0.0.1:{proxy.port}/{(parts.path or '/0').lstrip('/') or '0'}"
    scope = TaskScope(dag_id="d", run_id="r", task_id="t", map_index=-1)
    opening = asyncio.create_task(
        AsyncTaskStateAccessor.for_task_instance(
            uuid.uuid4(),
            "unused",
            "http://127.0.0.1:1",
            scope,
            "redis",
            redis_url=url,
            redis_prefix=redis_prefix,
        )
    )
    try:
        await asyncio.sleep(OUTAGE_S)
        assert not opening.done()  # waiting, not failed
        await proxy.start()
        state = await asyncio.wait_for(opening, 30)
        async with state:
            await state.set("before", 1)
            await proxy.cut()
            writing = asyncio.create_task(state.set("during", {"n": 2}))
            await asyncio.sleep(OUTAGE_S)
            assert not writing.done()
            await proxy.start()
            assert await asyncio.wait_for(writing, 30) == 1
            assert await state.get("during") == {"n": 2} and await state.get("before") == 1
    finally:
        opening.cancel()
        await proxy.cut()
        await drop_prefix(redis_prefix)


async def test_the_worker_registry_says_an_outage_once_not_every_round(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: "worker registry: the database is unavailable" was logged every 5 s through an
    # outage, the one loop whose lines were not held back.
    async with proxied_server(tmp_path, fresh_postgres_url) as (server, proxy, log):
        token = server.api_token("worker")
        claim = {"worker_id": "w-registry", "queues": ["none"], "max_tasks": 1, "wait_s": 0}
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            await proxy.cut()
            deadline = time.monotonic() + 12.0  # two rounds and more (a round every 5 s)
            while time.monotonic() < deadline:
                await http.post("/execution/workers/claim", json=claim)  # noted, then flushed in vain
                await asyncio.sleep(0.5)
            said = [line for line in log.read_text().splitlines() if "worker registry" in line]
            assert len(said) == 1, said
            await proxy.start()


async def test_the_worker_registry_says_it_works_again_only_once_it_wrote(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: a round with nothing to write counted as a success, and "worker registry works
    # again" was logged while the database was still down.
    async with proxied_server(tmp_path, fresh_postgres_url, log_level="info") as (server, proxy, log):
        token = server.api_token("worker")
        claim = {"worker_id": "w-quiet", "queues": ["none"], "max_tasks": 1, "wait_s": 0}
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            await proxy.cut()
            await http.post("/execution/workers/claim", json=claim)  # noted, then flushed in vain
            await asyncio.sleep(12.0)  # two rounds and more with nothing more to write
            said = [line for line in log.read_text().splitlines() if "worker registry" in line]
            assert said and not [line for line in said if "works again" in line], said
            await proxy.start()
