"""Drives the real Airflow Task SDK client's task-instance calls (apache-airflow-task-sdk 1.3.2) against
Stateport: start, heartbeat, and each way a try ends (up_for_retry, success, failed), as an Airflow worker's
supervisor makes them.

Run by tests/e2e/test_airflow_sdk_lifecycle.py with the Python of the SDK's own virtual environment. Stateport
hands tasks out by claims, so the driver claims each task instance (with the worker's API token) and then
uses only the SDK's client, with the task instance's token, for what follows. It prints one JSON line.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
from airflow.sdk.api.client import Client, ServerResponseError
from airflow.sdk.api.datamodels._generated import TerminalStateNonSuccess


def now() -> datetime:
    return datetime.now(timezone.utc)  # noqa: UP017 (the SDK venv's Python may be old)


def claim(base_url: str, task_id: str) -> dict[str, Any]:
    """The next task instance of the DAG's queue, which must be ``task_id``'s."""
    body = {"worker_id": "sdk-lifecycle", "queues": [os.environ["SP_QUEUE"]], "max_tasks": 1, "wait_s": 30}
    headers = {"Authorization": f"Bearer {os.environ['SP_WORKER_TOKEN']}"}
    got = httpx.post(f"{base_url}/workers/claim", json=body, headers=headers, timeout=60).json()
    (ti,) = got["task_instances"]
    assert ti["task_id"] == task_id, ti
    return dict(ti)


def started(client: Client, ti: uuid.UUID) -> dict[str, Any]:
    context = client.task_instances.start(ti, os.getpid(), now())
    client.task_instances.heartbeat(ti, os.getpid())
    dag_run = context.dag_run
    return {
        "run_id": dag_run.run_id,
        "run_state": str(dag_run.state.value),
        "conf": dag_run.conf,
        "max_tries": context.max_tries,
        "should_retry": context.should_retry,
    }


def skip() -> None:
    """``SP_MODE=skip``: the SDK skips ``s`` (as for a task raising ``AirflowSkipException``), then succeeds
    ``u``, which runs after it by its trigger rule."""
    base_url = os.environ["SP_BASE_URL"]
    out: dict[str, Any] = {}
    first = claim(base_url, "s")
    client = Client(base_url=base_url, token=first["token"])
    ti = uuid.UUID(first["id"])
    out["s"] = started(client, ti)
    client.task_instances.finish(ti, TerminalStateNonSuccess.SKIPPED, now(), rendered_map_index=None)
    client.task_instances.finish(ti, TerminalStateNonSuccess.SKIPPED, now(), rendered_map_index=None)  # again
    second = claim(base_url, "u")
    client = Client(base_url=base_url, token=second["token"])
    ti = uuid.UUID(second["id"])
    out["u"] = started(client, ti)
    client.task_instances.succeed(ti, when=now(), task_outlets=[], outlet_events=[], rendered_map_index=None)
    print(json.dumps(out))


def main() -> None:
    if os.environ.get("SP_MODE") == "skip":
        skip()
        return
    base_url = os.environ["SP_BASE_URL"]
    out: dict[str, Any] = {}

    first = claim(base_url, "a")
    client = Client(base_url=base_url, token=first["token"])
    ti = uuid.UUID(first["id"])
    out["a1"] = started(client, ti)
    client.task_instances.retry(ti, end_date=now(), rendered_map_index=None, retry_reason="flaky")

    second = claim(base_url, "a")
    client = Client(base_url=base_url, token=second["token"])
    ti = uuid.UUID(second["id"])
    out["a2"] = {**started(client, ti), "try_number": second["try_number"]}
    client.task_instances.succeed(ti, when=now(), task_outlets=[], outlet_events=[], rendered_map_index=None)
    try:
        client.task_instances.start(ti, os.getpid(), now())
        out["start_ended"] = "no error"
    except ServerResponseError as exc:
        out["start_ended"] = {"status": exc.response.status_code, "detail": exc.detail}

    third = claim(base_url, "b")
    client = Client(base_url=base_url, token=third["token"])
    ti = uuid.UUID(third["id"])
    out["b"] = started(client, ti)
    client.task_instances.finish(ti, TerminalStateNonSuccess.FAILED, now(), rendered_map_index=None)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
