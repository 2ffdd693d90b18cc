"""Two ``stateport serve`` processes sharing PostgreSQL (and its LISTEN/NOTIFY EventBus): a run triggered on
A, executed by a worker talking only to B, is waited on at A, by the stream and by the long-poll.

The result reaches A's waiters through the bus. The safety re-read cannot be what delivers it: the servers
re-read every 120 s on average, so a watch's first re-read comes at least 60 s after it starts, while each of
these waits gives up after 30 s (and is over in about a second when all is well).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from stateport.client import AsyncStateportClient
from stateport.worker import AsyncTaskContext, Dag, Worker, WorkerClient
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
# Generous for a busy machine, and still far below the first safety re-read (>= 60 s).
PROMPT_S = 5.0
WAIT_S = 30
TASK_S = 0.5


@pytest.fixture(scope="module")
def servers(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with (
        run_server(
            tmp_path_factory.mktemp("server-a"),
            database_url=postgres_url,
            events_backend="postgres",
            wait_recheck_s="120",
        ) as a,
        run_server(
            tmp_path_factory.mktemp("server-b"),
            database_url=postgres_url,
            events_backend="postgres",
            wait_recheck_s="120",
        ) as b,
    ):
        assert a.base_url != b.base_url
        yield a, b


class Finished:
    """When each run's result task returned (the worker reports right after)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}


@pytest.fixture
async def deployment(servers: tuple[Server, Server]) -> AsyncIterator[tuple[Dag, Finished]]:
    """A DAG registered through A and a worker running it against B only."""
    a, b = servers
    finished = Finished()
    dag = Dag(unique("two"), result_task="answer", queue=unique("q"))

    @dag.task
    async def answer(ctx: AsyncTaskContext) -> Any:
        await asyncio.sleep(TASK_S)
        finished.at[ctx.run_id] = time.monotonic()
        return {"n": ctx.conf["n"], "by": "worker-on-b"}

    token = a.api_token(*SCOPES)
    async with WorkerClient.create(a.base_url, token) as api:
        await dag.push(api)
    worker = Worker(b.base_url, b.api_token(*SCOPES), [dag], queues=[dag.queue], wait_s=5.0)
    task = asyncio.create_task(worker.run())
    try:
        yield dag, finished
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(task, 10)


async def test_a_result_reported_to_b_wakes_waiters_on_a(
    servers: tuple[Server, Server], deployment: tuple[Dag, Finished]
) -> None:
    a, _ = servers
    dag, finished = deployment
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        for n in range(3):
            run = await client.trigger(dag.dag_id, {"n": n})
            (lines, streamed), (outcome, polled) = await asyncio.gather(
                _stream(client, dag.dag_id, run.run_id), _poll(client, dag.dag_id, run.run_id)
            )
            expected = {"answer": {"n": n, "by": "worker-on-b"}}
            assert lines[0]["state"] in {"queued", "running"}
            assert lines[-1] == {"state": "success", "results": expected}
            assert outcome.results == expected
            done = finished.at[run.run_id]
            for how, at in (("stream", streamed), ("long-poll", polled)):
                assert at - done < PROMPT_S, f"{how} heard of the result {at - done:.2f} s after it came"


async def _stream(
    client: AsyncStateportClient, dag_id: str, run_id: str
) -> tuple[list[dict[str, Any]], float]:
    lines = [line async for line in client.stream(dag_id, run_id, timeout=WAIT_S)]
    return lines, time.monotonic()


async def _poll(client: AsyncStateportClient, dag_id: str, run_id: str) -> tuple[Any, float]:
    outcome = await client.wait(dag_id, run_id, timeout=WAIT_S)
    return outcome, time.monotonic()


async def test_trigger_and_wait_on_a_with_the_worker_on_b(
    servers: tuple[Server, Server], deployment: tuple[Dag, Finished]
) -> None:
    a, _ = servers
    dag, finished = deployment
    headers = {"Authorization": f"Bearer {a.api_token(*SCOPES)}", "Prefer": f"wait={WAIT_S}"}
    async with httpx.AsyncClient(base_url=a.base_url, timeout=WAIT_S + 30) as http:
        response = await http.post(
            f"/api/v2/dags/{dag.dag_id}/dagRuns",
            json={"logical_date": None, "conf": {"n": 7}},
            headers=headers,
        )
        answered = time.monotonic()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"] == {"answer": {"n": 7, "by": "worker-on-b"}}
    assert response.headers["preference-applied"] == f"wait={WAIT_S}"
    assert answered - finished.at[body["dag_run_id"]] < PROMPT_S


async def test_the_run_event_stream_on_a_hears_a_run_finished_through_b(
    servers: tuple[Server, Server], deployment: tuple[Dag, Finished]
) -> None:
    # The console's live pages read this stream (GET /api/v2/dagRuns/events): the worker reports to B
    # only, so the success reaches A's stream through the PostgreSQL bus.
    a, _ = servers
    dag, _finished = deployment
    headers = {"Authorization": f"Bearer {a.api_token(*SCOPES)}"}
    async with (
        httpx.AsyncClient(base_url=a.base_url, headers=headers, timeout=WAIT_S) as http,
        http.stream("GET", "/api/v2/dagRuns/events", params={"dag_id": dag.dag_id}) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert await anext(lines) == ": watching"
        run = (
            await http.post(
                f"/api/v2/dags/{dag.dag_id}/dagRuns", json={"logical_date": None, "conf": {"n": 1}}
            )
        ).json()
        wanted = {"dag_id": dag.dag_id, "dag_run_id": run["dag_run_id"], "state": "success"}
        async with asyncio.timeout(WAIT_S):
            async for line in lines:
                if line.startswith("data: ") and json.loads(line[6:]) == wanted:
                    break


# A deleted run's task instances are forgotten by every process as soon as the bus says so: well within
# this, where a process that kept trusting its binding would let the token write for BINDING_TRUST_S (5 s).
FORGOTTEN_S = 1.0


async def test_a_run_deleted_through_a_refuses_its_tokens_state_writes_through_b(
    servers: tuple[Server, Server],
) -> None:
    # An outsider's find: B, which had read the task instance's binding, let the deleted run's token write
    # its state for about 5 s more, and a run made again under the id inherited those keys.
    a, b = servers
    api = {"Authorization": f"Bearer {a.api_token(*SCOPES)}"}
    dag_id, queue = unique("deleted"), unique("q")
    async with httpx.AsyncClient(timeout=30) as http:
        spec = {"tasks": [{"task_id": "t", "queue": queue}], "result_task": "t"}
        assert (await http.put(f"{a.base_url}/api/v2/dags/{dag_id}", json=spec, headers=api)).is_success
        run = await http.post(
            f"{a.base_url}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=api
        )
        run_id = run.json()["dag_run_id"]
        claim = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 5}
        (ti,) = (await http.post(f"{a.base_url}/execution/workers/claim", json=claim, headers=api)).json()[
            "task_instances"
        ]
        task = {"Authorization": f"Bearer {ti['token']}"}
        key = f"{b.base_url}/execution/state/ti/{ti['id']}/k"
        assert (await http.put(key, json={"value": 1}, headers=task)).status_code == 204  # B trusts it now
        report = {"state": "success", "result": 1}
        state_url = f"{a.base_url}/execution/task-instances/{ti['id']}/state"
        assert (await http.patch(state_url, json=report, headers=task)).status_code == 204
        deleted = await http.delete(f"{a.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api)
        assert deleted.status_code == 204, deleted.text
        await asyncio.sleep(FORGOTTEN_S)
        ghost = await http.put(key, json={"value": "ghost"}, headers=task)
        assert ghost.status_code == 404, ghost.text
