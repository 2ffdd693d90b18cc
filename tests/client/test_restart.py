"""A wait that timed out, then a server restart, then waiting again: the wait re-attaches to the run
(kept in the database) and gets its outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stateport.client import AsyncStateportClient, WaitTimeout
from stateport.worker import Worker, WorkerClient
from tests.client.conftest import SCOPES, make_dag
from tests.fixtures.rest import run_server


async def test_waiting_again_after_a_restart_gets_the_outcome(tmp_path: Path) -> None:
    dag = make_dag()
    data_dir = tmp_path / "server"
    with run_server(data_dir) as before:
        token = before.api_token(*SCOPES)
        async with WorkerClient.create(before.base_url, token) as api:
            await dag.push(api)
        async with AsyncStateportClient(before.base_url, token) as client:
            with pytest.raises(WaitTimeout) as caught:
                await client.run(dag.dag_id, {"x": 50}, timeout=0.3)  # no worker yet: nothing runs
    run_id = caught.value.run_id
    with run_server(data_dir) as after:  # same data directory and database, a new process and port
        token = after.api_token(*SCOPES)
        async with AsyncStateportClient(after.base_url, token) as client:
            assert (await client.get_run(dag.dag_id, run_id)).state == "queued"
            waiting = asyncio.create_task(client.wait(dag.dag_id, run_id, timeout=30))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            worker = Worker(after.base_url, token, [dag], queues=[dag.queue], wait_s=2.0)
            running = asyncio.create_task(worker.run())
            try:
                outcome = await asyncio.wait_for(waiting, 30)
            finally:
                worker.stop(force=True)
                await asyncio.wait_for(running, 10)
    assert outcome.result == 100
