"""DAG params (Airflow's ``Param``) over HTTP: a spec's params are checked when it is registered, and every
trigger's conf against them, on the public API (400, Airflow's ``{"detail": "Invalid input for param ..."}``)
and on the Execution API (a task's TriggerDagRunOperator: 400, ``reason`` ``value_error``); no run is made."""

from __future__ import annotations

from typing import Any

import httpx

from tests.http.conftest import World, validation_errors
from tests.services import unique

PARAMS = {
    "n": {"default": 3, "schema": {"type": "integer", "minimum": 1}, "description": "how many"},
    "day": {"schema": {"type": "string", "format": "date"}},
}


async def _register(client: httpx.AsyncClient, world: World, params: dict[str, Any]) -> httpx.Response:
    spec = {"tasks": [{"task_id": "t"}], "params": params}
    return await client.put(f"/api/v2/dags/{unique('params')}", json=spec, headers=world.api("dags:write"))


async def _runs(client: httpx.AsyncClient, world: World, dag_id: str) -> list[dict[str, Any]]:
    listed = await client.get(f"/api/v2/dags/{dag_id}/dagRuns", headers=world.api("runs:read"))
    assert listed.status_code == 200, listed.text
    runs: list[dict[str, Any]] = listed.json()["dag_runs"]
    return runs


async def test_a_trigger_whose_conf_the_params_refuse_is_400_and_makes_no_run(
    client: httpx.AsyncClient, world: World
) -> None:
    registered = await _register(client, world, PARAMS)
    assert registered.status_code == 200, registered.text
    dag_id = registered.json()["dag_id"]
    assert registered.json()["params"]["n"] == PARAMS["n"]
    url, auth = f"/api/v2/dags/{dag_id}/dagRuns", world.api("runs:write")
    for conf, said in (
        ({}, "Invalid input for param day: No value passed"),
        ({"day": "tomorrow"}, "Invalid input for param day: "),
        ({"day": "2026-12-07", "n": 0}, "Invalid input for param n: 0 is less than the minimum of 1"),
    ):
        refused = await client.post(url, json={"logical_date": None, "conf": conf}, headers=auth)
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"].startswith(said), refused.text
    assert await _runs(client, world, dag_id) == []
    made = await client.post(url, json={"logical_date": None, "conf": {"day": "2026-12-07"}}, headers=auth)
    assert made.status_code == 200, made.text
    assert made.json()["conf"] == {"day": "2026-12-07"}  # stored as sent, as Airflow stores it
    assert len(await _runs(client, world, dag_id)) == 1


async def test_a_task_triggering_a_run_whose_params_refuse_its_conf_is_told_as_airflow_tells_it(
    client: httpx.AsyncClient, world: World
) -> None:
    registered = await _register(client, world, PARAMS)
    dag_id = registered.json()["dag_id"]
    url = f"/execution/dag-runs/{dag_id}/{unique('r')}"
    refused = await client.post(url, json={"conf": {"n": 2}}, headers=world.auth("extract"))
    assert refused.status_code == 400, refused.text
    assert refused.json() == {
        "detail": {"reason": "value_error", "message": "Invalid input for param day: No value passed"}
    }
    made = await client.post(url, json={"conf": {"day": "2026-12-07"}}, headers=world.auth("extract"))
    assert made.status_code == 204, made.text


async def test_a_spec_whose_params_cannot_be_checked_is_refused_naming_the_param(
    client: httpx.AsyncClient, world: World
) -> None:
    for params, loc in (
        ({"n": {"schema": {"type": "nope"}}}, ["body", "params", "n", "schema"]),
        ({"n": {"default": "x", "schema": {"type": "integer"}}}, ["body", "params", "n", "default"]),
        ({"n": {"schema": {"$ref": "http://127.0.0.1:9/s.json"}}}, ["body", "params", "n", "schema"]),
    ):
        [error] = validation_errors(await _register(client, world, params))
        assert error["loc"] == loc, error
    malformed: list[dict[str, Any]] = [{"n": {"schema": []}}, {"n": {"bogus": 1}}, {"": {}}]
    for bad in malformed:
        assert validation_errors(await _register(client, world, bad)), bad
