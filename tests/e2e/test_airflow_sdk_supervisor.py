"""A DAG file written for Airflow runs on Stateport through the Airflow Task SDK's own supervisor.

An outsider's find: the supervisor (``supervise_task``, what Airflow's workers run) calls more of the
Execution API than the SDK's client alone: it stores a templated task's rendered fields, asks whether a
task's assets are active, pushes the task's return value to XCom and pulls its upstream's from there. Each
answered 404, so a TaskFlow task, a task with an inlet and a task that returned a value all failed. Here
``a`` returns a value, ``b`` takes it as its argument (an XCom pull) and declares an inlet, and the run's
result is ``b``'s return value, which the SDK pushed to XCom and reported success without.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.test_airflow_sdk import run_driver, sdk_python
from tests.fixtures.rest import run_server
from tests.services import unique

DRIVER = Path(__file__).with_name("airflow_sdk_supervisor_driver.py")
DAG_FILE = """
from airflow.sdk import Asset, dag, task


@dag(dag_id="sdk_supervised", schedule=None)
def sdk_supervised():
    @task
    def a():
        return {"n": 2}

    @task(inlets=[Asset("sdk_supervised_input")])
    def b(got):
        return got["n"] * 21

    b(a())


sdk_supervised()
"""


@pytest.mark.slow
def test_a_taskflow_dag_runs_under_the_sdks_supervisor_and_its_result_is_the_return_value(
    tmp_path: Path,
) -> None:
    python = sdk_python()
    queue = unique("supq")
    spec = {
        "tasks": [
            {"task_id": "a", "queue": queue},
            {"task_id": "b", "upstream": ["a"], "queue": queue, "inlets": ["sdk_supervised_input"]},
        ],
        "result_task": "b",
    }
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "sdk_supervised.py").write_text(DAG_FILE)
    with run_server(tmp_path / "data", lease_s="600") as server:
        api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
        with httpx.Client(base_url=server.base_url, headers=api, timeout=30) as http:
            assert http.put("/api/v2/dags/sdk_supervised", json=spec).status_code == 200
            run_id = http.post("/api/v2/dags/sdk_supervised/dagRuns", json={"logical_date": None}).json()[
                "dag_run_id"
            ]
            exits = run_driver(
                python,
                DRIVER,
                tmp_path,
                server,
                SP_QUEUE=queue,
                SP_WORKER_TOKEN=server.api_token("worker"),
                SP_DAG_FILE="sdk_supervised.py",
                SP_TASKS="2",
                AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            )
            outcome = http.get(
                f"/api/v2/dags/sdk_supervised/dagRuns/{run_id}/outcome", params={"timeout": "10"}
            )
    assert exits == {"a": 0, "b": 0}
    assert outcome.json() == {"state": "success", "results": {"b": 42}}, outcome.text


BRANCH_FILE = """
from airflow.sdk import dag, task


@dag(dag_id="sdk_branch", schedule=None)
def sdk_branch():
    @task.branch
    def choose():
        return "left"

    @task
    def left():
        return "L"

    @task
    def right():
        return "R"

    choose() >> [left(), right()]


sdk_branch()
"""


@pytest.mark.slow
def test_a_branch_operator_skips_the_branch_it_did_not_choose(tmp_path: Path) -> None:
    # Its skip-downstream call was a 404, which failed the branch task.
    python = sdk_python()
    queue = unique("branchq")
    spec = {
        "tasks": [
            {"task_id": "choose", "queue": queue},
            {"task_id": "left", "upstream": ["choose"], "queue": queue},
            {"task_id": "right", "upstream": ["choose"], "queue": queue},
        ],
        "result_task": "left",
    }
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "sdk_branch.py").write_text(BRANCH_FILE)
    with run_server(tmp_path / "data", lease_s="600") as server:
        api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
        with httpx.Client(base_url=server.base_url, headers=api, timeout=30) as http:
            assert http.put("/api/v2/dags/sdk_branch", json=spec).status_code == 200
            run_id = http.post("/api/v2/dags/sdk_branch/dagRuns", json={"logical_date": None}).json()[
                "dag_run_id"
            ]
            exits = run_driver(
                python,
                DRIVER,
                tmp_path,
                server,
                SP_QUEUE=queue,
                SP_WORKER_TOKEN=server.api_token("worker"),
                SP_DAG_FILE="sdk_branch.py",
                SP_TASKS="2",
                AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            )
            outcome = http.get(f"/api/v2/dags/sdk_branch/dagRuns/{run_id}/outcome", params={"timeout": "10"})
            tis = http.get(f"/api/v2/dags/sdk_branch/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert exits == {"choose": 0, "left": 0}
    assert outcome.json() == {"state": "success", "results": {"left": "L"}}, outcome.text
    assert {ti["task_id"]: ti["state"] for ti in tis} == {
        "choose": "success",
        "left": "success",
        "right": "skipped",
    }


MAPPED_FILE = """
from airflow.sdk import dag, task


@dag(dag_id="sdk_mapped", schedule=None)
def sdk_mapped():
    @task
    def gen():
        return [1, 2, 3]

    @task
    def times_ten(x):
        return x * 10

    @task
    def total(values):
        return sum(values)

    total(times_ten.expand(x=gen()))


sdk_mapped()
"""


@pytest.mark.slow
def test_a_mapped_task_and_the_task_that_reduces_it_run_under_the_sdks_supervisor(tmp_path: Path) -> None:
    # An outsider's find: the reduce read the mapped values as a sequence (HEAD for its length, item by
    # item), which were 422s.
    python = sdk_python()
    queue = unique("mapq")
    spec = {
        "tasks": [
            {"task_id": "gen", "queue": queue},
            {"task_id": "times_ten", "upstream": ["gen"], "expand": "gen", "queue": queue},
            {"task_id": "total", "upstream": ["times_ten"], "queue": queue},
        ],
        "result_task": "total",
    }
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "sdk_mapped.py").write_text(MAPPED_FILE)
    with run_server(tmp_path / "data", lease_s="600") as server:
        api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
        with httpx.Client(base_url=server.base_url, headers=api, timeout=30) as http:
            assert http.put("/api/v2/dags/sdk_mapped", json=spec).status_code == 200
            run_id = http.post("/api/v2/dags/sdk_mapped/dagRuns", json={"logical_date": None}).json()[
                "dag_run_id"
            ]
            run_driver(
                python,
                DRIVER,
                tmp_path,
                server,
                SP_QUEUE=queue,
                SP_WORKER_TOKEN=server.api_token("worker"),
                SP_DAG_FILE="sdk_mapped.py",
                SP_TASKS="5",
                AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            )
            outcome = http.get(f"/api/v2/dags/sdk_mapped/dagRuns/{run_id}/outcome", params={"timeout": "10"})
    assert outcome.json() == {"state": "success", "results": {"total": 60}}, outcome.text
