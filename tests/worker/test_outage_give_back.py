"""A task whose state call outlasts its wait for the server (the state store down for longer than
``OUTAGE_WAIT_S``) is given back, not failed: the outage is not the task's doing, and failing it spent a
retry on each outage, or failed a run whose task had none (an outsider's find, with Redis state down 75 s)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import httpx
import pytest

from stateport.adapters.rest import execution
from stateport.worker import AsyncTaskContext, Dag, Worker
from tests.fixtures.redis import drop_prefix, redis_available
from tests.fixtures.rest import Server, run_logged_server
from tests.fixtures.tcp_proxy import TcpProxy
from tests.services import REDIS_URL, require, unique

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read", "state:admin")


async def test_a_task_whose_state_call_outlasts_its_wait_is_given_back_using_no_retry(
    fresh_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stateport.worker")
    require(redis_available(), f"Redis at {REDIS_URL}")
    monkeypatch.setattr(execution, "OUTAGE_WAIT_S", 1.0)
    proxy = TcpProxy(upstream=("127.0.0.1", 6379))
    await proxy.start()
    prefix = unique("giveback")
    dag = Dag(unique("stateful"), result_task="count", queue=unique("q"))  # no retries

    @dag.task
    async def count(ctx: AsyncTaskContext) -> int:
        await ctx.state.set("n", ctx.try_number)
        return ctx.try_number

    try:
        with contextlib.ExitStack() as stack:
            # In a thread: the server reaches Redis through the proxy, which this test's loop runs.
            server: Server = await asyncio.to_thread(
                stack.enter_context,
                run_logged_server(
                    tmp_path,
                    tmp_path / "server.log",
                    database_url=fresh_postgres_url,
                    state_backend="redis",
                    redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                    redis_prefix=prefix,
                ),
            )
            auth = {"Authorization": f"Bearer {server.api_token(*SCOPES)}"}
            worker = Worker(server.base_url, server.api_token(*SCOPES), [dag], queues=[dag.queue], wait_s=1.0)
            running = asyncio.create_task(worker.run())
            try:
                async with httpx.AsyncClient(base_url=server.base_url, headers=auth, timeout=30) as api:
                    await proxy.cut()  # the state store is out: every state call answers 503
                    run_id = await _trigger(api, dag)
                    latest = f"/api/v2/dags/{dag.dag_id}/dagRuns/{run_id}/taskInstances/count"
                    await _until_the_first_try_ends(api, latest)
                    await proxy.start()
                    outcome = await _outcome(api, dag.dag_id, run_id)
                    last = (await api.get(latest)).json()
            finally:
                worker.stop(force=True)
                await asyncio.wait_for(running, 30)
            await asyncio.to_thread(stack.close)
    finally:
        await proxy.cut()
        await drop_prefix(prefix)
    # Given back, its task having no retries: a later try ran once the store was back.
    assert outcome == {"state": "success", "results": {"count": last["try_number"]}}, outcome
    assert last["try_number"] >= 2, last
    said = [r.getMessage() for r in caplog.records if r.name.startswith("stateport.worker")]
    assert any("giving it back (the server could not answer the task" in line for line in said), said


async def _trigger(api: httpx.AsyncClient, dag: Dag) -> str:
    spec = {"tasks": [{"task_id": "count", "queue": dag.queue}], "result_task": "count"}
    (await api.put(f"/api/v2/dags/{dag.dag_id}", json=spec)).raise_for_status()
    made = await api.post(f"/api/v2/dags/{dag.dag_id}/dagRuns", json={"logical_date": None})
    made.raise_for_status()
    run_id: str = made.json()["dag_run_id"]
    return run_id


async def _until_the_first_try_ends(api: httpx.AsyncClient, latest: str) -> None:
    """Once the task instance is past its first try: a second queued, or the first failed for good."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ti = (await api.get(latest)).json()
        if ti["try_number"] >= 2 or ti["state"] in ("failed", "success"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the first try did not end")


async def _outcome(api: httpx.AsyncClient, dag_id: str, run_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = (await api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")).json()
        if run.get("outcome") is not None:
            return dict(run["outcome"])
        await asyncio.sleep(0.1)
    raise AssertionError("no outcome")
