"""A wait that timed out, then a server restart, then waiting again: the wait re-attaches to the run
(kept in the database) and gets its outcome."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from stateport.client import AsyncStateportClient, ServerUnavailable, StateportClient, WaitTimeout
from stateport.worker import Worker, WorkerClient
from tests.client.conftest import SCOPES, make_dag
from tests.fixtures.rest import run_logged_server, run_server
from tests.services import free_port

DOWN_S = 4.0


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


async def test_a_run_begun_while_its_server_is_down_gets_its_outcome_once_the_server_is_back(
    tmp_path: Path,
) -> None:
    # An outsider's find: a server restarted within the callers' timeout lost every caller of run(), each
    # giving up after three tries of its trigger, while the runs went on and finished unseen.
    dag = make_dag()
    data_dir, port = tmp_path / "server", free_port()
    with run_logged_server(data_dir, None, port=port) as first:
        token = first.api_token(*SCOPES)
        async with WorkerClient.create(first.base_url, token) as api:
            await dag.push(api)
    async with AsyncStateportClient(first.base_url, token, timeout=2) as client:
        sync = StateportClient(first.base_url, token, timeout=2)
        calls = [
            asyncio.create_task(client.run(dag.dag_id, {"x": 21}, timeout=60)),
            asyncio.create_task(asyncio.to_thread(sync.run, dag.dag_id, {"x": 4}, 60)),
        ]
        await asyncio.sleep(DOWN_S)  # refused all along: more than three tries
        assert not any(call.done() for call in calls), [call.exception() for call in calls if call.done()]
        with run_logged_server(data_dir, None, port=port) as back:
            worker = Worker(back.base_url, token, [dag], queues=[dag.queue], wait_s=2.0)
            running = asyncio.create_task(worker.run())
            try:
                outcomes = await asyncio.wait_for(asyncio.gather(*calls), 60)
            finally:
                worker.stop(force=True)
                await asyncio.wait_for(running, 10)
                sync.close()
    assert [outcome.result for outcome in outcomes] == [42, 8]


async def test_a_run_whose_server_stays_down_names_its_idempotency_key(tmp_path: Path) -> None:
    async with AsyncStateportClient(f"http://127.0.0.1:{free_port()}", "token", timeout=1) as client:
        with pytest.raises(ServerUnavailable, match="Idempotency-Key was 'k-1': trigger with it"):
            await client.run("d", timeout=1.5, idempotency_key="k-1")


async def test_a_wait_stream_cut_by_a_server_shutdown_raises_instead_of_ending(tmp_path: Path) -> None:
    # An outsider's find: a server shutting down ends its wait streams without their outcome line, and
    # stream() just stopped, as after a finished run; the caller lost the answer.
    dag = make_dag()
    with run_server(tmp_path / "server") as server:
        token = server.api_token(*SCOPES)
        async with WorkerClient.create(server.base_url, token) as api:
            await dag.push(api)
        async with AsyncStateportClient(server.base_url, token) as client:
            run = await client.trigger(dag.dag_id, {"x": 1})  # no worker: it stays queued
            lines: list[dict[str, object]] = []

            async def follow() -> None:
                async for line in client.stream(dag.dag_id, run.dag_run_id, timeout=30):
                    lines.append(line)

            following = asyncio.create_task(follow())
            await asyncio.sleep(0.5)
            os.kill(server.pid, signal.SIGTERM)
            with pytest.raises(ServerUnavailable, match="ended before the run's outcome"):
                await asyncio.wait_for(following, 30)
            assert lines and lines[-1]["state"] == "queued"


def test_the_sync_wait_stream_cut_by_a_server_shutdown_raises(tmp_path: Path) -> None:
    dag = make_dag()
    with run_server(tmp_path / "server") as server:
        token = server.api_token(*SCOPES)

        async def push() -> None:
            async with WorkerClient.create(server.base_url, token) as api:
                await dag.push(api)

        asyncio.run(push())
        with StateportClient(server.base_url, token) as client:
            run = client.trigger(dag.dag_id, {"x": 1})
            stream = client.stream(dag.dag_id, run.dag_run_id, timeout=30)
            assert next(stream)["state"] == "queued"
            os.kill(server.pid, signal.SIGTERM)
            with pytest.raises(ServerUnavailable, match="ended before the run's outcome"):
                list(stream)
