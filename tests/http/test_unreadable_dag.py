"""A DAG version whose stored spec no longer decodes (as a later release might find an old one) hides
nothing else: its runs, their task instances and the DAG itself are still shown with what is stored, beside
DAGs and runs that read well, on SQLite and PostgreSQL. Before, any listing that met such a version (the
runs of every DAG, the DAGs) answered 422 as a whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from stateport.bootstrap import Services, open_services
from stateport.domain.engine.progress import REPORT_NOT_APPLIED
from stateport.domain.models import DagSpec
from stateport.http.app import create_app
from tests.fixtures.broken_dags import break_spec, mend_spec
from tests.services import unique


@dataclass
class Two:
    """Two DAGs of ``spec`` whose ids share ``prefix``, a run of each whose ids share ``runs``, their tasks
    on ``queue``; ``broken``'s stored spec cannot be read, and ``broken_ti`` is a try of its run claimed
    before it broke (its token ``broken_token``); ``services`` and ``client`` are a process's that has not
    read the spec since."""

    spec: dict[str, Any]
    prefix: str
    runs: str
    queue: str
    good: str
    broken: str
    good_run: str
    broken_run: str
    broken_ti: str
    broken_token: str
    services: Services
    client: httpx.AsyncClient


@pytest.fixture
async def two(services: Services, client: httpx.AsyncClient) -> AsyncIterator[Two]:
    prefix, runs, queue = unique("unread"), unique("r"), unique("q")
    spec: dict[str, Any] = {
        "tasks": [
            {"task_id": "a", "retries": 2, "queue": queue},
            {"task_id": "b", "upstream": ["a"], "queue": queue},
        ],
        "result_task": "b",
        "max_active_runs": 3,
    }
    good, broken = f"{prefix}_good", f"{prefix}_broken"
    run_ids = {}
    for dag_id in (broken, good):
        await services.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
        run_ids[dag_id] = (await services.runs.trigger(dag_id, run_id=f"{runs}_{dag_id}")).run_id
    body = {"worker_id": "w1", "queues": [queue], "max_tasks": 1, "wait_s": 0}
    claimed = await client.post("/execution/workers/claim", json=body, headers=_api(services, "worker"))
    [ti] = claimed.json()["task_instances"]
    assert ti["dag_id"] == broken  # the older run's task first
    await break_spec(services.stores.dags, broken)
    # What follows is a server process that has not read the spec (this one keeps the plan it made).
    fresh = await open_services(services.settings, migrate=False)
    transport = httpx.ASGITransport(app=create_app(fresh.settings, fresh))  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
    async with httpx.AsyncClient(transport=transport, base_url="http://stateport") as reader:
        yield Two(
            spec,
            prefix,
            runs,
            queue,
            good,
            broken,
            run_ids[good],
            run_ids[broken],
            ti["id"],
            ti["token"],
            fresh,
            reader,
        )
    await fresh.close()
    await mend_spec(services.stores.dags, broken, spec)


def _api(services: Services, *scopes: str) -> dict[str, str]:
    scopes = scopes or ("runs:read", "runs:write")
    return {"Authorization": f"Bearer {services.tokens.mint_api_token('tester', frozenset(scopes))}"}


async def test_the_runs_of_every_dag_are_listed_with_one_whose_version_cannot_be_read(two: Two) -> None:
    client, services = two.client, two.services
    response = await client.get(
        "/api/v2/dags/~/dagRuns", params={"run_id_pattern": f"{two.runs}%"}, headers=_api(services)
    )
    assert response.status_code == 200, response.text
    listed = {run["dag_id"]: run for run in response.json()["dag_runs"]}
    assert set(listed) == {two.good, two.broken}
    for dag_id, run in listed.items():
        # What a run shows of its version is stored beside the spec: the unreadable one shows it too.
        [version] = run["dag_versions"]
        assert (version["dag_id"], version["version_number"]) == (dag_id, 1)
        assert run["dag_version"] == listed[two.good]["dag_version"]  # one spec, so one content hash
    one = await client.get(f"/api/v2/dags/{two.broken}/dagRuns", headers=_api(services))
    assert one.status_code == 200, one.text
    assert [run["dag_run_id"] for run in one.json()["dag_runs"]] == [two.broken_run]


async def test_a_run_and_its_task_instances_are_read_though_its_version_cannot_be(two: Two) -> None:
    client, services = two.client, two.services
    base = f"/api/v2/dags/{two.broken}/dagRuns/{two.broken_run}"
    run = await client.get(base, headers=_api(services))
    assert run.status_code == 200, run.text
    assert run.json()["dag_versions"][0]["version_number"] == 1
    tis = await client.get(f"{base}/taskInstances", headers=_api(services))
    assert tis.status_code == 200, tis.text
    # A task's retries are in the spec: unknown here, so no retries are shown (Airflow's max_tries).
    shown = {ti["task_id"]: (ti["state"], ti["max_tries"]) for ti in tis.json()["task_instances"]}
    assert shown == {"a": ("running", 0), "b": ("scheduled", 0)}
    good = await client.get(
        f"/api/v2/dags/{two.good}/dagRuns/{two.good_run}/taskInstances/a", headers=_api(services)
    )
    assert good.status_code == 200 and good.json()["max_tries"] == 2, good.text


async def test_a_dag_whose_spec_cannot_be_read_is_shown_with_import_errors(two: Two) -> None:
    client, services = two.client, two.services
    listed = await client.get(
        "/api/v2/dags", params={"dag_id_prefix_pattern": two.prefix}, headers=_api(services)
    )
    assert listed.status_code == 200, listed.text
    dags = {dag["dag_id"]: dag for dag in listed.json()["dags"]}
    assert listed.json()["total_entries"] == 2
    assert (dags[two.good]["has_import_errors"], dags[two.good]["max_active_runs"]) == (False, 3)
    assert [task["task_id"] for task in dags[two.good]["tasks"]] == ["a", "b"]
    shown = dags[two.broken]
    assert (shown["has_import_errors"], shown["tasks"], shown["result_task"], shown["max_active_runs"]) == (
        True,
        [],
        None,
        None,
    )
    assert shown["version"] == dags[two.good]["version"]
    one = await client.get(f"/api/v2/dags/{two.broken}", headers=_api(services))
    assert one.status_code == 200 and one.json() == shown, one.text


async def test_a_dag_whose_spec_cannot_be_read_takes_no_run(two: Two) -> None:
    client, services = two.client, two.services
    # Nothing can run from a spec that cannot be read: the trigger is refused, saying why, and makes no run.
    response = await client.post(
        f"/api/v2/dags/{two.broken}/dagRuns", json={"logical_date": None}, headers=_api(services)
    )
    assert response.status_code == 422, response.text
    assert "cannot be read" in response.text
    listed = await client.get(f"/api/v2/dags/{two.broken}/dagRuns", headers=_api(services))
    assert listed.json()["total_entries"] == 1


async def test_registering_the_dag_again_repairs_its_version(two: Two) -> None:
    client, services = two.client, two.services
    # The version is the content hash of its spec: the spec registered again (a redeploy) is that content,
    # and replaces the text that no longer decodes. Refused before, so nothing short of a new spec or an
    # edit of the database repaired the DAG.
    put = await client.put(f"/api/v2/dags/{two.broken}", json=two.spec, headers=_api(services, "dags:write"))
    assert put.status_code == 200, put.text
    assert (put.json()["has_import_errors"], [t["task_id"] for t in put.json()["tasks"]]) == (
        False,
        ["a", "b"],
    )
    shown = await client.get(f"/api/v2/dags/{two.broken}", headers=_api(services))
    assert shown.json() == put.json()
    assert (
        shown.json()["version"]
        == (await client.get(f"/api/v2/dags/{two.good}", headers=_api(services))).json()["version"]
    )
    # Its runs go on: the claimed try reports, and the next task is handed out.
    report = await client.patch(
        f"/execution/task-instances/{two.broken_ti}/state",
        json={"state": "success", "result": 1},
        headers={"Authorization": f"Bearer {two.broken_token}"},
    )
    assert report.status_code == 204, report.text
    triggered = await client.post(
        f"/api/v2/dags/{two.broken}/dagRuns", json={"logical_date": None}, headers=_api(services)
    )
    assert triggered.status_code == 200, triggered.text


async def test_a_run_whose_version_cannot_be_read_is_cancelled(two: Two) -> None:
    client, services = two.client, two.services
    url = f"/api/v2/dags/{two.broken}/dagRuns/{two.broken_run}"
    cancelled = await client.post(f"{url}/cancel", headers=_api(services))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "failed"
    assert cancelled.json()["outcome"] == {"state": "failed", "reason": "cancelled"}
    tis = (await client.get(f"{url}/taskInstances", headers=_api(services))).json()["task_instances"]
    assert {ti["task_id"]: ti["state"] for ti in tis} == {"a": "failed", "b": "skipped"}


async def test_a_report_whose_run_cannot_go_on_ends_the_run_and_stops_the_worker(two: Two) -> None:
    client, services = two.client, two.services
    # A valid report was a 422 and left the try running (its heartbeats still answered) until its lease
    # ran out: now the run ends at once, failed, naming the try, and the worker hears 409 (stop).
    report = await client.patch(
        f"/execution/task-instances/{two.broken_ti}/state",
        json={"state": "success", "result": 1},
        headers={"Authorization": f"Bearer {two.broken_token}"},
    )
    assert report.status_code == 409, report.text
    assert report.json()["detail"]["reason"] == "invalid_state"
    run = (
        await client.get(f"/api/v2/dags/{two.broken}/dagRuns/{two.broken_run}", headers=_api(services))
    ).json()
    assert (run["state"], run["outcome"]["failed_task"]) == ("failed", "a")
    [a] = [ti for ti in await services.runs.task_instances(two.broken, two.broken_run) if ti.task_id == "a"]
    assert a.error is not None and a.error.startswith(REPORT_NOT_APPLIED) and "cannot be read" in a.error
    heartbeat = await client.put(
        f"/execution/task-instances/{two.broken_ti}/heartbeat",
        json={"hostname": "h", "pid": 1},
        headers={"Authorization": f"Bearer {two.broken_token}"},
    )
    assert heartbeat.status_code == 409, heartbeat.text


async def test_a_task_whose_version_cannot_be_read_keeps_its_own_state(two: Two) -> None:
    client = two.client
    # Its own scope needs no spec (its assets do: they are declared there, so none is reachable).
    auth = {"Authorization": f"Bearer {two.broken_token}"}
    base = f"/execution/state/ti/{two.broken_ti}"
    put = await client.put(f"{base}/seen", json={"value": 1}, headers=auth)
    assert put.status_code == 204, put.text
    got = await client.get(f"{base}/seen", headers=auth)
    assert (got.status_code, got.json()["value"]) == (200, 1), got.text
    sdk = await client.get(f"/execution/store/ti/{two.broken_ti}/seen", headers=auth)
    assert (sdk.status_code, sdk.json()) == (200, {"value": 1}), sdk.text
