"""The Airflow Task SDK's own task-instance calls on Stateport's routes, and what they refuse (SQLite and
PostgreSQL): ``PATCH .../run`` and Airflow's state payloads. The real SDK drives them end to end in
tests/e2e/test_airflow_sdk_lifecycle.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stateport.bootstrap import Services
from tests.http.test_workers import claim, start, ti_auth

START = {"state": "running", "hostname": "h", "unixname": "u", "pid": 1, "start_date": "2026-12-05T00:00:00Z"}
END = "2026-12-05T00:00:01Z"


async def _claimed(client: httpx.AsyncClient, services: Services, **task: Any) -> dict[str, Any]:
    _, _, queue = await start(services, [{"task_id": "a", **task}])
    (ti,) = await claim(client, services, queue)
    return ti


async def _refused(
    client: httpx.AsyncClient, services: Services, route: str, body: dict[str, Any], where: str
) -> None:
    """``body`` on a claimed task instance's ``route`` is a 422 naming ``where``."""
    ti = await _claimed(client, services)
    response = await client.patch(
        f"/execution/task-instances/{ti['id']}/{route}", json=body, headers=ti_auth(ti["token"])
    )
    assert response.status_code == 422, response.text
    assert where in str(response.json()["detail"][0]["loc"])


async def test_run_answers_a_running_task_instance_with_its_context(
    client: httpx.AsyncClient, services: Services
) -> None:
    ti = await _claimed(client, services, retries=3)
    url = f"/execution/task-instances/{ti['id']}"
    response = await client.patch(f"{url}/run", json=START, headers=ti_auth(ti["token"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["dag_run"]["dag_id"], body["dag_run"]["run_id"]) == (ti["dag_id"], ti["run_id"])
    assert body["dag_run"]["conf"] == {"who": "test"} and body["dag_run"]["state"] == "running"
    assert body["max_tries"] == 3 and body["should_retry"] is True
    # Twice is the same answer: nothing was started the first time.
    again = await client.patch(f"{url}/run", json=START, headers=ti_auth(ti["token"]))
    assert again.status_code == 200 and again.json() == body
    reported = await client.patch(
        f"{url}/state", json={"state": "success", "end_date": END}, headers=ti_auth(ti["token"])
    )
    assert reported.status_code == 204, reported.text
    ended = await client.patch(f"{url}/run", json=START, headers=ti_auth(ti["token"]))
    assert ended.status_code == 409
    assert ended.json()["detail"] == {
        "reason": "invalid_state",
        "message": f"Task instance {ti['id']} is success, not running: it cannot start",
        "previous_state": "success",
    }


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({**START, "start_date": "2026-12-05T00:00:00"}, "start_date"),  # naive, as Airflow refuses
        ({**START, "start_date": "9999-12-31T23:59:59-14:00"}, "start_date"),  # year 10000 in UTC
        ({**START, "pid": -1}, "pid"),
        ({**START, "pid": 2**31}, "pid"),
        ({**START, "state": "success"}, "state"),
        ({**START, "extra": 1}, "extra"),
        ({**START, "hostname": "h" * 1001}, "hostname"),
        ({k: v for k, v in START.items() if k != "unixname"}, "unixname"),
    ],
)
async def test_run_bodies_are_validated(
    client: httpx.AsyncClient, services: Services, body: dict[str, Any], where: str
) -> None:
    await _refused(client, services, "run", body, where)


async def test_run_is_the_task_instances_own(client: httpx.AsyncClient, services: Services) -> None:
    ti = await _claimed(client, services)
    other = await _claimed(client, services)
    url = f"/execution/task-instances/{ti['id']}/run"
    assert (await client.patch(url, json=START)).status_code == 401
    assert (await client.patch(url, json=START, headers=ti_auth(other["token"]))).status_code == 403
    missing = uuid.uuid4()
    token = services.tokens.mint_task_token(missing)
    gone = await client.patch(f"/execution/task-instances/{missing}/run", json=START, headers=ti_auth(token))
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("body", "retried"),
    [
        ({"state": "up_for_retry", "end_date": END, "retry_reason": "flaky", "retry_delay_seconds": 5}, True),
        ({"state": "up_for_retry", "end_date": END}, True),
        ({"state": "failed", "end_date": END, "rendered_map_index": None}, False),  # the SDK decided
        ({"state": "failed", "error": "boom"}, True),  # Stateport's own form: retried by default
        ({"state": "failed", "error": "boom", "retryable": False}, False),
    ],
)
async def test_failures_in_airflows_forms_are_retried_as_the_sdk_means(
    client: httpx.AsyncClient, services: Services, body: dict[str, Any], retried: bool
) -> None:
    dag_id, run_id, queue = await start(services, [{"task_id": "a", "retries": 1}])
    (ti,) = await claim(client, services, queue)
    response = await client.patch(
        f"/execution/task-instances/{ti['id']}/state", json=body, headers=ti_auth(ti["token"])
    )
    assert response.status_code == 204, response.text
    run = await services.runs.get_run(dag_id, run_id)
    assert (run.outcome is None) is retried
    if body.get("error") is None and body.get("retry_reason") is None:
        # No error sent (the SDK's form): the error says where it is (it said only "the task failed").
        tries = await services.runs.task_instances(dag_id, run_id)
        first = next(t for t in tries if t.try_number == 1)
        assert first.error is not None and "the traceback is in the log of the worker" in first.error
    if retried and "retry_delay_seconds" in body:
        # The SDK's delay holds the retry back (it was dropped: the retry went out at once).
        assert await claim(client, services, queue) == []
        tries = await services.runs.task_instances(dag_id, run_id)
        assert sorted((ti.try_number, ti.state.value) for ti in tries) == [(1, "up_for_retry"), (2, "queued")]
    elif retried:
        (again,) = await claim(client, services, queue)
        assert again["try_number"] == 2


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"state": "success", "end_date": "2026-12-05T00:00:01"}, "end_date"),  # naive
        ({"state": "success", "end_date": "yesterday"}, "end_date"),
        ({"state": "up_for_retry", "end_date": "9999-12-31T23:59:59-14:00"}, "end_date"),
        ({"state": "success", "task_outlets": {"a": 1}}, "task_outlets"),
        ({"state": "success", "rendered_map_index": 7}, "rendered_map_index"),
        ({"state": "up_for_retry", "retry_delay_seconds": -1}, "retry_delay_seconds"),
        ({"state": "up_for_retry", "error": "x"}, "error"),
        ({"state": "skipped", "end_date": "2026-12-05T00:00:01"}, "end_date"),  # naive
        ({"state": "upstream_failed", "end_date": END}, "state"),  # the rules' to decide, not a task's
        ({"state": "failed", "retryable": "no"}, "retryable"),
        ({"state": "up_for_reschedule", "end_date": END}, "reschedule_date"),
        ({"state": "up_for_reschedule", "reschedule_date": "2026-12-05T00:00:01"}, "reschedule_date"),
        ({"state": "up_for_reschedule", "reschedule_date": "99999-01-01T00:00:00Z"}, "reschedule_date"),
    ],
)
async def test_airflow_state_payloads_are_validated(
    client: httpx.AsyncClient, services: Services, body: dict[str, Any], where: str
) -> None:
    await _refused(client, services, "state", body, where)


async def test_a_deferral_fails_the_try_at_once_for_good_saying_why(
    client: httpx.AsyncClient, services: Services
) -> None:
    # A deferrable operator's deferred (there is no triggerer): a 422 left the try running until its lease
    # ran out, blamed on the worker, and spent a retry (an outsider's find).
    dag_id, run_id, queue = await start(services, [{"task_id": "a", "retries": 2}])
    (first,) = await claim(client, services, queue)
    body = {
        "state": "deferred",
        "classpath": "airflow.providers.standard.triggers.external_task.DagStateTrigger",
        "trigger_kwargs": {"dag_id": "other"},
        "trigger_timeout": None,
        "next_method": "execute_complete",
        "next_kwargs": {},
        "rendered_map_index": None,
    }
    url = f"/execution/task-instances/{first['id']}/state"
    response = await client.patch(url, json=body, headers=ti_auth(first["token"]))
    assert response.status_code == 204, response.text
    (ti,) = await services.runs.task_instances(dag_id, run_id)
    assert ti.state.value == "failed" and "deferrable=False" in (ti.error or ""), ti
    assert await claim(client, services, queue) == []  # not retried: it would defer again


async def test_a_reschedule_queues_the_next_try_for_its_date_using_no_retry(
    client: httpx.AsyncClient, services: Services
) -> None:
    # The Airflow Task SDK's up_for_reschedule (a sensor in reschedule mode, or a DAG file it could not load:
    # an outsider's find, 422, left the try running until its lease expired and spent a retry). Now the try
    # ends, its next one waits for the date, no retry is used, and the next try's start counts it.
    dag_id, run_id, queue = await start(services, [{"task_id": "a", "retries": 0}])
    (first,) = await claim(client, services, queue)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    body = {"state": "up_for_reschedule", "reschedule_date": soon, "end_date": END}
    url = f"/execution/task-instances/{first['id']}/state"
    response = await client.patch(url, json=body, headers=ti_auth(first["token"]))
    assert response.status_code == 204, response.text
    again = await client.patch(url, json=body, headers=ti_auth(first["token"]))
    assert again.status_code == 204, again.text  # the same report again
    tries = sorted(await services.runs.task_instances(dag_id, run_id), key=lambda t: t.try_number)
    assert [(t.try_number, t.state.value, t.error) for t in tries] == [
        (1, "up_for_retry", "rescheduled by the task"),
        (2, "queued", None),
    ]
    assert tries[1].retries_used == 0
    assert await claim(client, services, queue) == []  # not before its date
    (second,) = await claim(client, services, queue, wait_s=5)
    assert second["try_number"] == 2
    started = await client.patch(
        f"/execution/task-instances/{second['id']}/run", json=START, headers=ti_auth(second["token"])
    )
    assert started.status_code == 200, started.text
    assert started.json()["task_reschedule_count"] == 1
