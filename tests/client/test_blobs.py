"""Large results through ``stateport.client``: references are fetched and checked into values by default.

A real ``stateport serve`` process on SQLite or PostgreSQL, with filesystem blobs (served by its own
route) or S3 blobs (presigned URLs on a moto server), and a real worker whose mapped result task returns
values over the inline limit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from stateport.client import AsyncStateportClient, StateportClient
from stateport.worker import AsyncTaskContext, Dag, Worker, WorkerClient
from tests.fixtures.rest import Server, run_server
from tests.fixtures.s3 import CREDENTIALS
from tests.services import unique

BIG = 200 * 1024  # over the 64 KiB inline limit
SCOPES = ("worker", "dags:write", "runs:write", "runs:read")


@pytest.fixture(params=["sqlite-filesystem", "postgres-filesystem", "sqlite-s3", "postgres-s3"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    database, blobs = request.param.split("-")
    settings: dict[str, str] = {}
    env: dict[str, str] = {}
    if database == "postgres":
        settings["database_url"] = request.getfixturevalue("postgres_url")
    if blobs == "s3":
        bucket = f"stateport-{uuid.uuid4().hex[:20]}"
        request.getfixturevalue("s3_client").create_bucket(Bucket=bucket)
        settings |= {
            "blob_backend": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": request.getfixturevalue("s3_endpoint"),
        }
        env = {
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_CONFIG_FILE": "/nonexistent/stateport-test-aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/stateport-test-aws-credentials",
        }
    with run_server(tmp_path, env_extra=env, **settings) as running:
        yield running


def big(i: int) -> dict[str, Any]:
    return {"i": i, "blob": "x" * BIG}


@pytest.fixture
async def dag(server: Server) -> AsyncIterator[Dag]:
    """``split`` gives [0, 1]; ``large`` (the result task) maps over it, each value over the inline limit."""
    made = Dag(unique("large"), result_task="large", queue=unique("q"))

    @made.task
    async def split(ctx: AsyncTaskContext) -> list[int]:
        return [0, 1]

    @made.task(upstream=[split], expand=split)
    async def large(ctx: AsyncTaskContext) -> dict[str, Any]:
        return big(int(ctx.input))

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


async def test_the_async_client_resolves_references_to_values(server: Server, dag: Dag) -> None:
    expected = {"large": [big(0), big(1)]}
    token = server.api_token("runs:read", "runs:write")
    async with AsyncStateportClient(server.base_url, token, timeout=10) as client:
        outcome = await client.run(dag.dag_id, timeout=30)
        assert outcome.results == expected
        run_id = (await client.trigger(dag.dag_id)).run_id
        assert (await client.wait(dag.dag_id, run_id, timeout=30)).results == expected
        lines = [line async for line in client.stream(dag.dag_id, run_id, timeout=30)]
        assert lines[-1] == {"state": "success", "results": expected}
        run = await client.get_run(dag.dag_id, run_id)
        assert run.outcome is not None and run.outcome.results == expected
    async with AsyncStateportClient(server.base_url, token, timeout=10, resolve_blobs=False) as raw:
        references = (await raw.wait(dag.dag_id, run_id, timeout=30)).results["large"]
        assert [set(ref) for ref in references] == [{"__stateport_blob__"}] * 2
        assert all(ref["__stateport_blob__"]["url"] for ref in references)


async def test_the_sync_client_resolves_references_to_values(server: Server, dag: Dag) -> None:
    expected = {"large": [big(0), big(1)]}

    def use() -> None:
        with StateportClient(
            server.base_url, server.api_token("runs:read", "runs:write"), timeout=10
        ) as client:
            assert client.run(dag.dag_id, timeout=30).results == expected
            run_id = client.trigger(dag.dag_id).run_id
            assert client.wait(dag.dag_id, run_id, timeout=30).results == expected
            assert list(client.stream(dag.dag_id, run_id, timeout=30))[-1]["results"] == expected
            run = client.get_run(dag.dag_id, run_id)
            assert run.outcome is not None and run.outcome.results == expected

    # The worker runs in this loop: the blocking client gets a thread of its own.
    await asyncio.to_thread(use)


async def test_a_blob_that_does_not_match_its_reference_is_refused(server: Server, dag: Dag) -> None:
    from stateport.client import _wire
    from stateport.client.errors import StateportClientError

    token = server.api_token("runs:read", "runs:write")
    async with AsyncStateportClient(server.base_url, token, timeout=10, resolve_blobs=False) as raw:
        results = (await raw.run(dag.dag_id, timeout=30)).results
    (inner, _) = _wire.blob_references(results)
    async with AsyncStateportClient(server.base_url, token, timeout=10) as client:
        assert await client._blob_value(inner) == big(0)
        for forged in ({**inner, "sha256": "0" * 64}, {**inner, "size": inner["size"] - 1}):
            with pytest.raises(StateportClientError, match="reference"):
                await client._blob_value(forged)
