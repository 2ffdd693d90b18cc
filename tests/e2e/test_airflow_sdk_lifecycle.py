"""A task run by the Airflow Task SDK unchanged reports through Stateport's task-instance routes.

The SDK's client (1.3.2, in its own virtual environment) starts each claimed task instance (``PATCH
.../run``: 200 with Airflow's run context, which the SDK parses), heartbeats, and ends it its own way:
``up_for_retry`` (a retryable failure: the task's next try is queued), ``success`` (no result: the SDK's
return value goes to XCom), ``failed`` (for good, though the task has retries left: the SDK sends it once it
decided not to retry). Starting a task instance that has ended is Airflow's 409 ``invalid_state``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.test_airflow_sdk import run_driver, sdk_python
from tests.fixtures.rest import run_server
from tests.services import unique

DRIVER = Path(__file__).with_name("airflow_sdk_lifecycle_driver.py")


@pytest.mark.slow
def test_the_airflow_task_sdk_starts_and_ends_task_instances_its_own_way(tmp_path: Path) -> None:
    python = sdk_python()
    queue = unique("sdkq")
    spec = {
        "tasks": [
            {"task_id": "a", "retries": 1, "queue": queue},
            {"task_id": "b", "upstream": ["a"], "retries": 2, "queue": queue},
        ],
        "result_task": "b",
    }
    with run_server(tmp_path / "data", lease_s="600") as server:
        api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
        with httpx.Client(base_url=server.base_url, headers=api, timeout=30) as http:
            assert http.put("/api/v2/dags/sdk_life", json=spec).status_code == 200
            trigger = {"logical_date": None, "conf": {"n": 7}}
            run_id = http.post("/api/v2/dags/sdk_life/dagRuns", json=trigger).json()["dag_run_id"]
            out = run_driver(
                python, DRIVER, tmp_path, server, SP_QUEUE=queue, SP_WORKER_TOKEN=server.api_token("worker")
            )

            outcome = http.get(f"/api/v2/dags/sdk_life/dagRuns/{run_id}/outcome", params={"timeout": "10"})
            tis = http.get(f"/api/v2/dags/sdk_life/dagRuns/{run_id}/taskInstances").json()["task_instances"]

    context = {"run_id": run_id, "run_state": "running", "conf": {"n": 7}}
    assert out["a1"] == {**context, "max_tries": 1, "should_retry": True}
    assert out["a2"] == {**context, "max_tries": 1, "should_retry": False, "try_number": 2}
    assert out["start_ended"]["status"] == 409
    assert out["start_ended"]["detail"]["reason"] == "invalid_state"
    assert out["start_ended"]["detail"]["previous_state"] == "success"
    assert out["b"] == {**context, "max_tries": 2, "should_retry": True}
    # b's "failed" ended the run although b had retries left; a's up_for_retry used one of a's.
    assert outcome.json()["state"] == "failed" and outcome.json()["failed_task"] == "b"
    states = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in tis}
    assert states == {"a": ("success", 2), "b": ("failed", 1)}


@pytest.mark.slow
def test_a_task_the_airflow_task_sdk_skips_ends_skipped_and_the_rules_go_on(tmp_path: Path) -> None:
    # An outsider's find: the SDK's "skipped" (a task raising AirflowSkipException) was a 422, so such a
    # task could not report at all.
    python = sdk_python()
    queue = unique("sdkq")
    spec = {
        "tasks": [
            {"task_id": "s", "queue": queue},
            {"task_id": "t", "upstream": ["s"], "queue": queue},  # all_success: skipped with s
            {"task_id": "u", "upstream": ["s"], "trigger_rule": "none_failed", "queue": queue},
        ],
        "result_task": "u",
    }
    with run_server(tmp_path / "data", lease_s="600") as server:
        api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
        with httpx.Client(base_url=server.base_url, headers=api, timeout=30) as http:
            assert http.put("/api/v2/dags/sdk_skip", json=spec).status_code == 200
            run_id = http.post("/api/v2/dags/sdk_skip/dagRuns", json={"logical_date": None}).json()[
                "dag_run_id"
            ]
            env = {"SP_QUEUE": queue, "SP_WORKER_TOKEN": server.api_token("worker"), "SP_MODE": "skip"}
            out = run_driver(python, DRIVER, tmp_path, server, **env)
            outcome = http.get(f"/api/v2/dags/sdk_skip/dagRuns/{run_id}/outcome", params={"timeout": "10"})
            tis = http.get(f"/api/v2/dags/sdk_skip/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert out["s"]["run_id"] == out["u"]["run_id"] == run_id
    assert outcome.json()["state"] == "success", outcome.text
    states = {ti["task_id"]: ti["state"] for ti in tis}
    assert states == {"s": "skipped", "t": "skipped", "u": "success"}
