"""A worker that may have missed an answer (its claim timed out while it was frozen, or a report's answer
was lost) names the tries it runs in its next claim (``running``): the server hands out again, first, the
running tries leased to that worker that it lacks. Over the app from ``create_app`` on SQLite and
PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from stateport.bootstrap import Services
from tests.http.test_workers import CLAIM, api, report_claim, start, ti_auth
from tests.services import unique


async def claim_as(
    client: httpx.AsyncClient, services: Services, worker_id: str, queue: str, **body: Any
) -> httpx.Response:
    sent = {"worker_id": worker_id, "queues": [queue], "max_tasks": 5, "wait_s": 0, **body}
    return await client.post(CLAIM, json=sent, headers=api(services, "worker"))


def tasks_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["task_instances"]
    return found


async def test_a_claim_naming_what_runs_gets_the_tries_handed_to_it_that_it_lacks(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, run_id, queue = await start(services, [{"task_id": "a"}, {"task_id": "b"}], result_task="b")
    worker = unique("w")
    a, b = sorted(tasks_of(await claim_as(client, services, worker, queue)), key=lambda t: t["task_id"])
    # Without ``running`` nothing is handed out again; another worker gets none of this worker's tries.
    assert tasks_of(await claim_as(client, services, worker, queue)) == []
    assert tasks_of(await claim_as(client, services, unique("w"), queue, running=[])) == []
    # The worker runs a, and never read the answer that handed it b.
    (again,) = tasks_of(await claim_as(client, services, worker, queue, running=[a["id"]]))
    assert {k: again[k] for k in ("id", "task_id", "try_number", "conf")} == {
        "id": b["id"],
        "task_id": "b",
        "try_number": 1,
        "conf": b["conf"],
    }
    assert again["lease_expires_at"] >= b["lease_expires_at"]
    assert again["again"] is True and "again" not in a  # marked as handed out again; a first hand-out is not
    stored = await services.stores.runs.get_task_instance(uuid.UUID(b["id"]))
    assert stored is not None and stored.state == "running" and stored.lease_owner == worker
    # Its token works; the try runs to the end and the run succeeds, no retry spent.
    url = f"/execution/task-instances/{again['id']}/state"
    response = await client.patch(
        url, json={"state": "success", "result": 2}, headers=ti_auth(again["token"])
    )
    assert response.status_code == 204, response.text
    assert tasks_of(await claim_as(client, services, worker, queue, running=[a["id"]])) == []
    url = f"/execution/task-instances/{a['id']}/state"
    assert (
        await client.patch(url, json={"state": "success"}, headers=ti_auth(a["token"]))
    ).status_code == 204
    run = await client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api(services, "runs:read"))
    assert run.json()["outcome"] == {"state": "success", "results": {"b": 2}}


async def test_the_task_a_lost_report_answer_handed_out_is_handed_out_again(
    client: httpx.AsyncClient, services: Services
) -> None:
    # The report's answer carried b; the worker never read it and sent the report again, whose answer
    # (the report was applied already) hands out nothing.
    _, _, queue = await start(services, [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}])
    worker = unique("w")  # other tests' workers hold tries in the same database
    (a,) = tasks_of(await claim_as(client, services, worker, queue, max_tasks=1))
    url = f"/execution/task-instances/{a['id']}/state"
    headers = {**ti_auth(a["token"]), **report_claim(services, queue, worker_id=worker)}
    (b,) = (await client.patch(url, json={"state": "success", "result": 1}, headers=headers)).json()[
        "task_instances"
    ]
    assert (await client.patch(url, json={"state": "success", "result": 1}, headers=headers)).json() == {
        "task_instances": []
    }
    (again,) = tasks_of(await claim_as(client, services, worker, queue, running=[]))
    assert (again["id"], again["task_id"], again["inputs"]) == (b["id"], "b", {"a": 1})


async def test_running_is_bounded_and_checked(client: httpx.AsyncClient, services: Services) -> None:
    queue, worker = unique("q"), unique("w")  # other tests' workers hold tries in the same database
    for running in ([str(uuid.uuid4())] * 1001, ["not-a-uuid"], "x", [1]):
        response = await claim_as(client, services, worker, queue, running=running)
        assert response.status_code == 422, (running, response.text)
        assert response.headers["content-type"] == "application/json"
    assert tasks_of(await claim_as(client, services, worker, queue, running=[str(uuid.uuid4())] * 1000)) == []
