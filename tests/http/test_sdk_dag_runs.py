"""A task triggers a DAG run and reads its state through the Execution API, as the Airflow Task SDK's
``TriggerDagRunOperator`` does (tests/e2e/test_airflow_sdk_supervisor.py runs the operator itself)."""

from __future__ import annotations

import httpx

from tests.http.conftest import World, validation_errors
from tests.services import unique

JSON = {"content-type": "application/json"}


async def test_a_task_triggers_a_run_and_reads_its_state(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    run_id = unique("triggered")
    url = f"/execution/dag-runs/{world.dag_id}/{run_id}"
    assert (await client.get(f"{url}/state", headers=auth)).status_code == 404
    made = await client.post(url, json={"conf": {"n": 5}, "note": "by a task"}, headers=auth)
    assert made.status_code == 204, made.text
    run = await world.services.runs.get_run(world.dag_id, run_id)
    assert (run.conf, run.note) == ({"n": 5}, "by a task")
    state = await client.get(f"{url}/state", headers=auth)
    assert (state.status_code, state.json()) == (200, {"state": run.state.value})
    # The same run again: 409, which the SDK reads as "already exists".
    assert (await client.post(url, json={}, headers=auth)).status_code == 409
    # An empty payload is every default (the SDK leaves them out).
    assert (await client.post(f"{url}_2", content=b"{}", headers=auth | JSON)).status_code == 204


async def test_what_a_stateport_run_cannot_be_is_refused(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    url = f"/execution/dag-runs/{world.dag_id}/{unique('r')}"
    dated = await client.post(url, json={"logical_date": "2026-12-06T00:00:00Z"}, headers=auth)
    [error] = validation_errors(dated)
    assert error["loc"] == ["body", "logical_date"] and "logical_date=None" in error["msg"], error
    assert validation_errors(await client.post(url, json={"conf": [1]}, headers=auth))
    assert validation_errors(await client.post(url, json={"bogus": 1}, headers=auth))
    repeated = b'{"conf": {}, "conf": {"x": 1}}'
    assert validation_errors(await client.post(url, content=repeated, headers=auth | JSON))
    assert validation_errors(
        await client.post(f"/execution/dag-runs/{world.dag_id}/a%00b", json={}, headers=auth)
    )
    missing = await client.post(f"/execution/dag-runs/{unique('nodag')}/r", json={}, headers=auth)
    assert missing.status_code == 404, missing.text
    # A task-instance token only: an API token, or none, is refused.
    assert (await client.post(url, json={}, headers=world.api("runs:write"))).status_code in (401, 403)
    assert (await client.post(url, json={})).status_code == 401
    assert (await client.get(f"{url}/state", headers=world.api("runs:read"))).status_code in (401, 403)
    # Nothing was made.
    assert (await client.get(f"{url}/state", headers=auth)).status_code == 404


async def test_clearing_a_run_is_refused_saying_why(client: httpx.AsyncClient, world: World) -> None:
    # TriggerDagRunOperator(reset_dag_run=True) on a run that exists: a bare 404 said nothing.
    url = f"/execution/dag-runs/{world.dag_id}/{world.run_id}/clear"
    refused = await client.post(url, headers=world.auth("extract"))
    assert refused.status_code == 501, refused.text
    assert "reset_dag_run" in refused.text and "another run id" in refused.text
    missing = await client.post(
        f"/execution/dag-runs/{world.dag_id}/{unique('r')}/clear", headers=world.auth("extract")
    )
    assert missing.status_code == 404, missing.text
