"""A large result reported to a real ``stateport serve``: its body is checked in a process of the
server's own (``stateport.http.checking``, started with ``spawn`` from the server's entry point), and the
server answers it as it answers a small one."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from tests.fixtures.rest import Server
from tests.services import unique


async def running_tasks(
    client: httpx.AsyncClient, server: Server, n: int
) -> tuple[str, list[dict[str, Any]]]:
    """A DAG of ``n`` independent tasks on a queue of their own, triggered; its claimed task instances."""
    dag_id, queue = unique("large"), unique("q")
    api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read', 'worker')}"}
    tasks = [{"task_id": f"t{i}", "queue": queue} for i in range(n)]
    assert (await client.put(f"/api/v2/dags/{dag_id}", json={"tasks": tasks}, headers=api)).status_code == 200
    run = await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=api)
    assert run.status_code == 200, run.text
    claim = {"worker_id": "w", "queues": [queue], "max_tasks": n, "wait_s": 5}
    claimed = await client.post("/execution/workers/claim", json=claim, headers=api)
    found: list[dict[str, Any]] = claimed.json()["task_instances"]
    assert len(found) == n, claimed.text
    return f"/api/v2/dags/{dag_id}/dagRuns/{run.json()['dag_run_id']}", found


async def test_a_large_result_is_stored_and_a_large_bad_one_refused_by_a_real_server(
    stateport_server: Server,
) -> None:
    value = [{"id": i, "name": f"row {i}", "tags": ["a", "b"]} for i in range(40_000)]  # ~1.3 MiB
    nested: object = 1
    for _ in range(70):  # deeper than the 64 levels every JSON value may nest
        nested = [nested]
    deep = {"pad": "x" * 400_000, "v": nested}
    async with httpx.AsyncClient(base_url=stateport_server.base_url, timeout=60) as client:
        run_url, (good, bad) = await running_tasks(client, stateport_server, 2)

        async def report(ti: dict[str, Any], result: object) -> httpx.Response:
            body = msgspec.json.encode({"state": "success", "result": result})
            assert len(body) > 256 * 1024  # checked off the event loop
            return await client.patch(
                f"/execution/task-instances/{ti['id']}/state",
                content=body,
                headers={"Authorization": f"Bearer {ti['token']}", "Content-Type": "application/json"},
            )

        refused = await report(bad, deep)
        assert refused.status_code == 422, refused.text
        (error,) = refused.json()["detail"]
        assert error["loc"] == ["body", "result"], error
        assert "the limit is 64 for every JSON value" in error["msg"], error
        assert (await report(good, value)).status_code == 204
        assert (await report(bad, value)).status_code == 204  # the refused try was still running
        reader = {"Authorization": f"Bearer {stateport_server.api_token('runs:read')}"}
        run = (await client.get(run_url, headers=reader)).json()
        assert run["state"] == "success", run
        tis = await client.get(f"{run_url}/taskInstances", headers=reader)
        assert {ti["state"] for ti in tis.json()["task_instances"]} == {"success"}
