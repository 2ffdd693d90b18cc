"""A worker that missed more answers than one claim can take back gets every try they handed it.

A real server (SQLite, leases of 120 s: only a hand-out again ends the runs in time) and an in-process
worker of concurrency 2 reaching it through a proxy. The proxy is frozen: the worker's open claim times out
(its answer, if the server sent one, never arrives), and three runs' tries are handed to that worker's id
meanwhile (by its parked claim, and by a claim the test sends under its id). The worker's next claim names
what it runs and gets two of them back (what it asks for); an outsider found that the third was never asked
for again and failed at its lease's expiry. Every run must succeed on its first try.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stateport.client import AsyncStateportClient
from stateport.worker import AsyncTaskContext, Dag, Worker, WorkerClient
from tests.fixtures.rest import Server, run_server
from tests.fixtures.tcp_proxy import TcpProxy
from tests.services import unique

pytestmark = [pytest.mark.slow]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
BOUND_S = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with run_server(tmp_path / "server", lease_s="120") as running:
        yield running


async def test_every_try_handed_out_in_lost_answers_comes_back(server: Server) -> None:
    dag = Dag(unique("missed"), result_task="t", queue=unique("q"))

    @dag.task
    async def t(ctx: AsyncTaskContext) -> int:
        return int(ctx.conf["n"])

    token = server.api_token(*SCOPES)
    async with WorkerClient.create(server.base_url, token) as api:
        await dag.push(api)
    host, port = server.base_url.removeprefix("http://").split(":")
    proxy = TcpProxy(upstream=(host, int(port)))
    await proxy.start()
    worker = Worker(
        f"http://127.0.0.1:{proxy.port}",
        token,
        [dag],
        queues=[dag.queue],
        concurrency=2,
        wait_s=1,
        timeout_s=1,
    )
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.5)  # claiming through the proxy
        proxy.freeze()
        async with AsyncStateportClient(server.base_url, token, timeout=BOUND_S) as client:
            run_ids = [(await client.trigger(dag.dag_id, {"n": n})).run_id for n in range(3)]
            await asyncio.sleep(0.5)  # the parked claim of the worker took what it could
            async with httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as http:
                body = {"worker_id": worker.worker_id, "queues": [dag.queue], "max_tasks": 3, "wait_s": 0}
                claimed = await http.post(
                    "/execution/workers/claim", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                assert claimed.status_code == 200, claimed.text
            await asyncio.sleep(2.5)  # the worker's claim has timed out: it may have missed an answer
            await proxy.cut()
            await proxy.start()  # the server answers again
            outcomes = [await client.wait(dag.dag_id, run_id, timeout=BOUND_S) for run_id in run_ids]
            assert [o.result for o in outcomes] == [0, 1, 2]
        async with httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as http:
            for run_id in run_ids:
                url = f"/api/v2/dags/{dag.dag_id}/dagRuns/{run_id}/taskInstances"
                got = await http.get(url, headers={"Authorization": f"Bearer {token}"})
                assert [(ti["state"], ti["try_number"]) for ti in got.json()["task_instances"]] == [
                    ("success", 1)
                ]
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(running, BOUND_S)
        await proxy.cut()
