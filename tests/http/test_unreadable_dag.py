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

from stateport.bootstrap import Services
from stateport.domain.models import DagSpec
from tests.fixtures.broken_dags import break_spec, mend_spec
from tests.services import unique

SPEC: dict[str, Any] = {
    "tasks": [{"task_id": "a", "retries": 2}, {"task_id": "b", "upstream": ["a"]}],
    "result_task": "b",
    "max_active_runs": 3,
}


@dataclass
class Two:
    """Two DAGs whose ids share ``prefix``, a run of each whose ids share ``runs``; ``broken``'s spec
    cannot be read."""

    prefix: str
    runs: str
    good: str
    broken: str
    good_run: str
    broken_run: str


@pytest.fixture
async def two(services: Services) -> AsyncIterator[Two]:
    prefix, runs = unique("unread"), unique("r")
    good, broken = f"{prefix}_good", f"{prefix}_broken"
    run_ids = {}
    for dag_id in (good, broken):
        await services.runs.register_dag(dag_id, msgspec.convert(SPEC, DagSpec))
        run_ids[dag_id] = (await services.runs.trigger(dag_id, run_id=f"{runs}_{dag_id}")).run_id
    await break_spec(services.stores.dags, broken)
    yield Two(prefix, runs, good, broken, run_ids[good], run_ids[broken])
    await mend_spec(services.stores.dags, broken, SPEC)


def _api(services: Services) -> dict[str, str]:
    token = services.tokens.mint_api_token("tester", frozenset({"runs:read", "runs:write"}))
    return {"Authorization": f"Bearer {token}"}


async def test_the_runs_of_every_dag_are_listed_with_one_whose_version_cannot_be_read(
    client: httpx.AsyncClient, services: Services, two: Two
) -> None:
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


async def test_a_run_and_its_task_instances_are_read_though_its_version_cannot_be(
    client: httpx.AsyncClient, services: Services, two: Two
) -> None:
    base = f"/api/v2/dags/{two.broken}/dagRuns/{two.broken_run}"
    run = await client.get(base, headers=_api(services))
    assert run.status_code == 200, run.text
    assert run.json()["dag_versions"][0]["version_number"] == 1
    tis = await client.get(f"{base}/taskInstances", headers=_api(services))
    assert tis.status_code == 200, tis.text
    # A task's retries are in the spec: unknown here, so no retries are shown (Airflow's max_tries).
    assert {ti["task_id"]: ti["max_tries"] for ti in tis.json()["task_instances"]} == {"a": 0, "b": 0}
    good = await client.get(
        f"/api/v2/dags/{two.good}/dagRuns/{two.good_run}/taskInstances/a", headers=_api(services)
    )
    assert good.status_code == 200 and good.json()["max_tries"] == 2, good.text


async def test_a_dag_whose_spec_cannot_be_read_is_shown_with_import_errors(
    client: httpx.AsyncClient, services: Services, two: Two
) -> None:
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


async def test_a_dag_whose_spec_cannot_be_read_takes_no_run(
    client: httpx.AsyncClient, services: Services, two: Two
) -> None:
    # Nothing can run from a spec that cannot be read: the trigger is refused, saying why, and makes no run.
    response = await client.post(
        f"/api/v2/dags/{two.broken}/dagRuns", json={"logical_date": None}, headers=_api(services)
    )
    assert response.status_code == 422, response.text
    assert "cannot be read" in response.text
    listed = await client.get(f"/api/v2/dags/{two.broken}/dagRuns", headers=_api(services))
    assert listed.json()["total_entries"] == 1
