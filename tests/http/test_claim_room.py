"""A claim's answer carries task instances while their confs and inputs fit ``STATEPORT_MAX_CLAIM_BYTES``
(always at least one); the others it claimed go back to their queue as they were: the same try, no lease,
claimed by the next claim (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import msgspec

from stateport.bootstrap import Services
from stateport.domain.models import TIState
from tests.http.conftest import make_settings
from tests.http.test_blob_inputs import BIG, succeed
from tests.http.test_workers import CLAIM, api, claim, opened, report_claim, start, ti_auth

ROOM = 64 * 1024
UNFINISHED = (TIState.SCHEDULED, TIState.QUEUED, TIState.RUNNING)
CONF = {"blob": "c" * 20_000}  # three fit in the room, four do not


async def queued(services: Services, dag_id: str, run_id: str) -> list[tuple[str, int, TIState, Any, Any]]:
    """The run's task instances as (task_id, try_number, state, lease_owner, started_at), by task."""
    tis = await services.runs.task_instances(dag_id, run_id)
    return sorted((ti.task_id, ti.try_number, ti.state, ti.lease_owner, ti.started_at) for ti in tis)


async def test_a_claim_answers_what_its_room_holds_and_leaves_the_rest_queued_unspent(
    database_url: str, tmp_path: Path
) -> None:
    async with opened(make_settings(database_url, tmp_path, max_claim_bytes=ROOM)) as (services, client):
        tasks: list[dict[str, Any]] = [{"task_id": f"t{i}"} for i in range(10)]
        dag_id, _, queue = await start(services, tasks)
        run = await services.runs.trigger(dag_id, conf=CONF)
        body = {"worker_id": "w1", "queues": [queue], "max_tasks": 10, "wait_s": 0}
        headers = api(services, "worker")
        # The first run of the DAG (small conf) takes one claim of its own.
        assert len(await claim(client, services, queue, max_tasks=10)) == 10
        response = await client.post(CLAIM, json=body, headers=headers)
        assert response.status_code == 200, response.text
        first = response.json()["task_instances"]
        assert len(first) == 3 and all(t["conf"] == CONF for t in first)
        assert len(response.content) < ROOM + 8 * 1024
        # The seven left were put back as they were: queued, the same try, no lease, not started.
        states = await queued(services, dag_id, run.run_id)
        handed = {t["task_id"] for t in first}
        assert [s for s in states if s[0] not in handed] == [
            (f"t{i}", 1, TIState.QUEUED, None, None) for i in range(10) if f"t{i}" not in handed
        ]
        got = [first]
        while len(batch := await claim(client, services, queue, max_tasks=10)) > 0:
            got.append(batch)
        assert [len(batch) for batch in got] == [3, 3, 3, 1]
        ids = [t["id"] for batch in got for t in batch]
        assert len(set(ids)) == 10
        assert all(t["try_number"] == 1 for batch in got for t in batch)
        states = await queued(services, dag_id, run.run_id)
        assert {(s[1], s[2], s[3]) for s in states} == {(1, TIState.RUNNING, "w1")}
        # Each claim put back what it had no room for: 7, 4 and 1.
        metric = f'stateport_task_instances_put_back_total{{queue="{queue}"}} '
        text = (await client.get("/metrics")).text
        (line,) = [line for line in text.splitlines() if line.startswith(metric)]
        assert float(line.split()[-1]) == 12


async def test_one_task_instance_larger_than_the_room_goes_out(database_url: str, tmp_path: Path) -> None:
    async with opened(make_settings(database_url, tmp_path, max_claim_bytes=ROOM)) as (services, client):
        dag_id, _, queue = await start(services, [{"task_id": "a"}, {"task_id": "b"}])
        assert len(await claim(client, services, queue, max_tasks=5)) == 2
        conf = {"blob": "c" * (2 * ROOM)}
        await services.runs.trigger(dag_id, conf=conf)
        one, two = (
            await claim(client, services, queue, max_tasks=5),
            await claim(client, services, queue, max_tasks=5),
        )
        assert [len(one), len(two)] == [1, 1] and one[0]["conf"] == two[0]["conf"] == conf
        assert await claim(client, services, queue, max_tasks=5) == []


async def test_inputs_count_toward_the_room_in_a_claim_and_in_a_reports_claim(
    database_url: str, tmp_path: Path
) -> None:
    async with opened(make_settings(database_url, tmp_path, max_claim_bytes=ROOM)) as (services, client):
        tasks: list[dict[str, Any]] = [
            {"task_id": "a"},
            *({"task_id": f"d{i}", "upstream": ["a"]} for i in range(3)),
        ]
        dag_id, run_id, queue = await start(services, tasks)
        (a,) = await claim(client, services, queue)
        text = msgspec.json.encode({"blob": "x" * BIG})  # a blob-backed result, larger than the room
        url = f"/execution/task-instances/{a['id']}/state"
        headers = {
            **ti_auth(a["token"]),
            **report_claim(services, queue, max_tasks=3),
            "Content-Type": "application/json",
        }
        response = await client.patch(
            url, content=b'{"state": "success", "result": ' + text + b"}", headers=headers
        )
        assert response.status_code == 200, response.text
        (handed,) = response.json()["task_instances"]
        assert handed["inputs"] == {"a": {"blob": "x" * BIG}}
        states = await queued(services, dag_id, run_id)
        assert [s for s in states if s[0] not in ("a", handed["task_id"])] == [
            (t, 1, TIState.QUEUED, None, None) for t in ("d0", "d1", "d2") if t != handed["task_id"]
        ]
        rest = [await claim(client, services, queue, max_tasks=3) for _ in range(2)]
        assert [len(batch) for batch in rest] == [1, 1]
        assert {handed["task_id"], *(batch[0]["task_id"] for batch in rest)} == {"d0", "d1", "d2"}
        assert await claim(client, services, queue, max_tasks=3) == []


async def test_a_claim_of_small_task_instances_is_not_cut(
    client: httpx.AsyncClient, services: Services
) -> None:
    tasks: list[dict[str, Any]] = [{"task_id": "a"}]
    tasks += [{"task_id": f"m{i}", "upstream": ["a"]} for i in range(20)]
    _, _, queue = await start(services, tasks)
    (a,) = await claim(client, services, queue)
    await succeed(client, a, b'{"small": 1}')
    assert len(await claim(client, services, queue, max_tasks=100)) == 20


async def claims_until(
    stop: asyncio.Event, client: httpx.AsyncClient, services: Services, queue: str
) -> None:
    while not stop.is_set():
        await claim(client, services, queue, max_tasks=20)


async def test_a_cancel_while_claims_take_and_put_back_its_tries_leaves_none_unfinished(
    database_url: str, tmp_path: Path
) -> None:
    # An outsider's find: claims (and their put-backs) take no run lock, so a try claimed or put back
    # between a cancel's read and its write stayed queued or running; a later claim handed it out and its
    # report moved the failed run back to running. Every answer here has room for one task instance.
    async with opened(make_settings(database_url, tmp_path, max_claim_bytes=1024)) as (services, client):
        tasks: list[dict[str, Any]] = [{"task_id": "a"}, {"task_id": "m", "upstream": ["a"], "expand": "a"}]
        dag_id, first_run, queue = await start(services, tasks)
        (a,) = await claim(client, services, queue)
        await succeed(client, a, msgspec.json.encode(list(range(5))))
        await services.core.advancer.cancel(dag_id, first_run)  # the run ``start`` made: out of the way
        for round_ in range(3):
            run = await services.runs.trigger(dag_id, conf={"blob": "c" * 2000})
            (a,) = await claim(client, services, queue)
            await succeed(client, a, msgspec.json.encode(list(range(150))))
            stop = asyncio.Event()

            claimers = [asyncio.create_task(claims_until(stop, client, services, queue)) for _ in range(3)]
            await asyncio.sleep(0.05 * round_)
            response = await client.post(
                f"/api/v2/dags/{dag_id}/dagRuns/{run.run_id}/cancel", headers=api(services, "runs:write")
            )
            assert response.status_code == 200, response.text
            stop.set()
            await asyncio.gather(*claimers)
            left = [
                ti for ti in await services.runs.task_instances(dag_id, run.run_id) if ti.state in UNFINISHED
            ]
            assert left == [], left[:3]
            assert await claim(client, services, queue, max_tasks=20) == []
            got = await client.get(
                f"/api/v2/dags/{dag_id}/dagRuns/{run.run_id}", headers=api(services, "runs:read")
            )
            assert got.json()["state"] == "failed"


async def test_a_task_instance_that_does_not_fit_is_not_passed_by_a_smaller_one_of_lower_priority(
    database_url: str, tmp_path: Path
) -> None:
    async with opened(make_settings(database_url, tmp_path, max_claim_bytes=ROOM)) as (services, client):
        dag_id, _, queue = await start(services, [{"task_id": "t"}])
        assert len(await claim(client, services, queue)) == 1
        big = {"blob": "c" * (ROOM // 2 + 1000)}
        high = [await services.runs.trigger(dag_id, conf=big, priority=10) for _ in range(2)]
        low = await services.runs.trigger(dag_id, conf={"small": 1}, priority=0)
        first = await claim(client, services, queue, max_tasks=3)
        assert [t["run_id"] for t in first] == [high[0].run_id]
        second = await claim(client, services, queue, max_tasks=3)
        assert [t["run_id"] for t in second] == [high[1].run_id, low.run_id]
