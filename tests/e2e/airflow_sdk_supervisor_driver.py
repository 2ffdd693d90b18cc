"""Run claimed task instances with the Airflow Task SDK's own supervisor (run with the SDK's Python).

``supervise_task`` is how Airflow runs a task: it parses the DAG file, starts the try, renders the task's
templates (and stores them), checks its assets, runs it in a child process, pushes its return value to
XCom, pulls its upstream's from XCom, and reports. Environment: ``SP_BASE_URL`` (the Execution API),
``SP_WORKER_TOKEN``, ``SP_QUEUE``, ``SP_DAG_FILE`` (in ``AIRFLOW__CORE__DAGS_FOLDER``), ``SP_TASKS`` (how
many task instances to run, one claim each). Prints, last, a JSON object: task_id -> the supervisor's exit
code.
"""

from __future__ import annotations

import json
import os
import uuid

import httpx
from airflow.sdk.api.datamodels._generated import BundleInfo, TaskInstance
from airflow.sdk.execution_time.supervisor import supervise_task

base = os.environ["SP_BASE_URL"]
headers = {"Authorization": f"Bearer {os.environ['SP_WORKER_TOKEN']}"}
claim = {"worker_id": "sdk-supervisor", "queues": [os.environ["SP_QUEUE"]], "max_tasks": 1, "wait_s": 10}
exits: dict[str, int] = {}
for _ in range(int(os.environ["SP_TASKS"])):
    answer = httpx.post(f"{base}/workers/claim", json=claim, headers=headers, timeout=30)
    answer.raise_for_status()
    for claimed in answer.json()["task_instances"]:
        ti = TaskInstance(
            id=uuid.UUID(claimed["id"]),
            task_id=claimed["task_id"],
            dag_id=claimed["dag_id"],
            run_id=claimed["run_id"],
            try_number=claimed["try_number"],
            dag_version_id=uuid.uuid4(),
            map_index=claimed["map_index"],
        )
        exits[claimed["task_id"]] = supervise_task(
            ti=ti,
            bundle_info=BundleInfo(name="dags-folder"),
            dag_rel_path=os.environ["SP_DAG_FILE"],
            token=claimed["token"],
            server=base,
        )
print(json.dumps(exits))
