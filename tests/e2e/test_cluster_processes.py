"""Three ``stateport serve`` processes (standing for three hosts) on one PostgreSQL and one Redis Cluster
(state and events on the cluster): a run triggered on A, claimed and reported by a worker talking only to B,
waited on at C; task state written through one process and watched through another, and written by a
worker straight to the cluster.

The servers' safety re-read is far beyond the waits here (a first re-read comes at least 60 s after a wait
starts), so what wakes a waiter within ``PROMPT_S`` is the cluster's pub/sub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from stateport.client import AsyncStateportClient
from stateport.worker import AsyncTaskContext, AsyncTaskStateAccessor, Dag, Worker, WorkerClient
from tests.e2e.test_worker_direct import create_task_instance
from tests.fixtures.redis_cluster import LocalCluster
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
PROMPT_S = 5.0
WAIT_S = 30
RECHECK_S = "120"


class Hosts:
    def __init__(self, a: Server, b: Server, c: Server, cluster_url: str, prefix: str) -> None:
        self.a, self.b, self.c = a, b, c
        self.cluster_url = cluster_url
        self.prefix = prefix


@pytest.fixture(scope="module")
def hosts(
    postgres_url: str, redis_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hosts]:
    prefix = unique("sp")

    def host(name: str) -> AbstractContextManager[Server]:
        return run_server(
            tmp_path_factory.mktemp(name),
            database_url=postgres_url,
            state_backend="redis",
            events_backend="redis",
            redis_url=redis_cluster.url,
            redis_prefix=prefix,
            wait_recheck_s=RECHECK_S,
        )

    with host("host-a") as a, host("host-b") as b, host("host-c") as c:
        assert len({a.base_url, b.base_url, c.base_url}) == 3
        yield Hosts(a, b, c, redis_cluster.url, prefix)


@pytest.fixture
async def deployment(hosts: Hosts) -> AsyncIterator[tuple[Dag, dict[str, float]]]:
    """A DAG registered through A and a worker that talks to B only; when each run's task returned."""
    finished: dict[str, float] = {}
    dag = Dag(unique("hosts"), result_task="answer", queue=unique("q"))

    @dag.task
    async def answer(ctx: AsyncTaskContext) -> Any:
        finished[ctx.run_id] = time.monotonic()
        return {"n": ctx.conf["n"], "by": "worker-on-b"}

    async with WorkerClient.create(hosts.a.base_url, hosts.a.api_token(*SCOPES)) as api:
        await dag.push(api)
    worker = Worker(hosts.b.base_url, hosts.b.api_token(*SCOPES), [dag], queues=[dag.queue], wait_s=5.0)
    task = asyncio.create_task(worker.run())
    try:
        yield dag, finished
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(task, 10)


async def test_triggered_on_a_run_by_a_worker_on_b_waited_on_at_c(
    hosts: Hosts, deployment: tuple[Dag, dict[str, float]]
) -> None:
    dag, finished = deployment
    async with (
        AsyncStateportClient(hosts.a.base_url, hosts.a.api_token(*SCOPES)) as on_a,
        AsyncStateportClient(hosts.c.base_url, hosts.c.api_token(*SCOPES)) as on_c,
    ):
        for n in range(3):
            run = await on_a.trigger(dag.dag_id, {"n": n})
            (lines, streamed), (outcome, polled) = await asyncio.gather(
                _stream(on_c, dag.dag_id, run.run_id), _poll(on_c, dag.dag_id, run.run_id)
            )
            expected = {"answer": {"n": n, "by": "worker-on-b"}}
            assert lines[-1] == {"state": "success", "results": expected}
            assert outcome.results == expected
            done = finished[run.run_id]
            for how, at in (("stream", streamed), ("long-poll", polled)):
                assert at - done < PROMPT_S, f"{how} on C heard of the result {at - done:.2f} s after it came"


async def _stream(
    client: AsyncStateportClient, dag_id: str, run_id: str
) -> tuple[list[dict[str, Any]], float]:
    lines = [line async for line in client.stream(dag_id, run_id, timeout=WAIT_S)]
    return lines, time.monotonic()


async def _poll(client: AsyncStateportClient, dag_id: str, run_id: str) -> tuple[Any, float]:
    outcome = await client.wait(dag_id, run_id, timeout=WAIT_S)
    return outcome, time.monotonic()


def key_path(ti_id: object, key: str) -> str:
    return f"/execution/state/ti/{ti_id}/{quote(key, safe='')}"


async def long_poll(
    base_url: str, path: str, auth: dict[str, str], etag: str
) -> tuple[httpx.Response, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        response = await client.get(path, params={"wait": "60"}, headers={**auth, "If-None-Match": etag})
        return response, time.monotonic()


async def test_state_written_through_one_host_is_watched_through_the_others(hosts: Hosts) -> None:
    """Written through A; long-polled (``?wait``) through B and streamed (SSE) through C."""
    ti = create_task_instance(hosts.a)
    path = key_path(ti.id, "watermark")
    async with (
        httpx.AsyncClient(base_url=hosts.a.base_url, timeout=10) as writer,
        httpx.AsyncClient(base_url=hosts.c.base_url, timeout=30) as reader,
        reader.stream("GET", path, headers={**ti.auth(), "Accept": "text/event-stream"}) as stream,
    ):
        lines = stream.aiter_lines()
        async with asyncio.timeout(PROMPT_S):
            assert await anext(lines) == ": watching"
            assert await _next_id(lines) == "id: 0"  # absent when the stream began
        got = await writer.put(path, json={"value": 1}, headers=ti.auth())
        assert got.status_code == 204
        poll = asyncio.create_task(long_poll(hosts.b.base_url, path, ti.auth(), got.headers["etag"]))
        await asyncio.sleep(0.5)
        assert not poll.done()
        written = time.monotonic()
        assert (await writer.put(path, json={"value": 2}, headers=ti.auth())).status_code == 204
        response, answered = await asyncio.wait_for(poll, 30)
        assert response.status_code == 200
        assert response.json() == {"value": 2}
        assert answered - written < PROMPT_S
        async with asyncio.timeout(PROMPT_S):
            assert [await _next_id(lines), await _next_id(lines)] == ["id: 1", "id: 2"]


async def _next_id(lines: AsyncIterator[str]) -> str:
    while not (line := await anext(lines)).startswith("id:"):
        pass
    return line


async def test_a_worker_writing_to_the_cluster_directly_wakes_a_watcher_on_another_host(hosts: Hosts) -> None:
    ti = create_task_instance(hosts.a)
    path = key_path(ti.id, "cursor")
    async with httpx.AsyncClient(base_url=hosts.b.base_url, timeout=10) as api:
        got = await api.put(path, json={"value": "a"}, headers=ti.auth())
        assert got.status_code == 204
    poll = asyncio.create_task(long_poll(hosts.c.base_url, path, ti.auth(), got.headers["etag"]))
    state = await AsyncTaskStateAccessor.for_task_instance(
        ti.id,
        ti.token,
        hosts.a.base_url,
        scope=ti.scope,
        backend="redis",
        assets={ti.asset},
        redis_url=hosts.cluster_url,
        redis_prefix=hosts.prefix,
    )
    try:
        await asyncio.sleep(0.5)
        assert not poll.done()
        written = time.monotonic()
        await state.set("cursor", "b")
        response, answered = await asyncio.wait_for(poll, 30)
    finally:
        await state.close()
    assert response.status_code == 200
    assert response.json() == {"value": "b"}
    assert answered - written < PROMPT_S
