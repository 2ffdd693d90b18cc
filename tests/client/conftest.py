"""A ``stateport serve`` process on its embedded defaults (SQLite, in-process events) and a worker
(``stateport.worker``) running a small DAG in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from stateport.worker import AsyncTaskContext, Dag, NonRetryableError, Worker, WorkerClient
from tests.fixtures.rest import Server, run_server
from tests.services import unique

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")


def make_dag() -> Dag:
    """``double`` doubles ``conf["x"]`` after ``conf["sleep"]`` seconds; ``conf["fail"]`` fails it."""
    dag = Dag(unique("calc"), result_task="double", queue=unique("q"))

    @dag.task
    async def double(ctx: AsyncTaskContext) -> Any:
        await asyncio.sleep(float(ctx.conf.get("sleep", 0)))
        if ctx.conf.get("fail"):
            raise NonRetryableError("asked to fail")
        return int(ctx.conf.get("x", 0)) * 2

    return dag


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("client-server")) as running:
        yield running


@pytest.fixture
async def dag(server: Server) -> AsyncIterator[Dag]:
    """The DAG, registered, with a worker running it until the test ends."""
    made = make_dag()
    token = server.api_token(*SCOPES)
    async with WorkerClient.create(server.base_url, token) as api:
        await made.push(api)
    worker = Worker(server.base_url, token, [made], queues=[made.queue], wait_s=2.0)
    task = asyncio.create_task(worker.run())
    try:
        yield made
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(task, 10)
