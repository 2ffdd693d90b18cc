"""Drive a Stateport server with a client generated from its own OpenAPI document (openapi-python-client).

Run by tests/e2e/test_generated_client.py in the generator's environment, with the generated package
(``sp_client``) on ``PYTHONPATH``: ``python generated_client_driver.py <base_url> <api token> <dag id>``.
It registers a DAG, triggers a run, claims and reports its tasks as a worker, reads and writes their
state, reads the run back every way the public API offers, and asks for a few refusals; every answer must
be parsed by the generated client into the model its document names for that status. It prints one JSON
line per call: the operation, the status and the name of the parsed model (``null`` when the client
parsed nothing). An answer the client cannot parse raises, and the driver exits non-zero.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any
from uuid import UUID

from sp_client import AuthenticatedClient
from sp_client.api.dag import get_dag, get_dags, put_dag
from sp_client.api.dag_run import (
    cancel_dag_run,
    delete_dag_run,
    get_dag_run,
    get_dag_run_outcome,
    get_dag_runs,
    patch_dag_run,
    trigger_dag_run,
)
from sp_client.api.health import health_live, health_ready
from sp_client.api.state_raw_admin import (
    get_raw_task_state,
    get_state_capabilities,
    list_raw_task_state,
    put_raw_task_state,
)
from sp_client.api.task_instance import get_task_instance, get_task_instances
from sp_client.api.task_state import state_task_batch, state_task_get, state_task_list, state_task_put
from sp_client.api.task_state_store import get_task_state_store, list_task_state_store, set_task_state_store
from sp_client.api.version import get_version
from sp_client.api.workers import get_workers, ti_heartbeat, ti_update_state, worker_claim
from sp_client.api.x_coms import xcom_head
from sp_client.models import (
    AdminPutBody,
    BatchBody,
    ClaimBody,
    DAGRunPatchBody,
    DagSpec,
    HeartbeatBody,
    StatePutBody,
    SuccessBody,
    TaskStateStoreBody,
    TriggerDAGRunPostBody,
)
from sp_client.types import Response

WORKER = "generated-client-worker"


def shown(operation: str, response: Response[Any]) -> Any:
    """Print what the client made of an answer, and return the parsed model."""
    parsed = response.parsed
    print(
        json.dumps(
            {
                "operation": operation,
                "status": int(response.status_code),
                "model": None if parsed is None else type(parsed).__name__,
            }
        ),
        flush=True,
    )
    return parsed


def run_tasks(
    base_url: str, api: AuthenticatedClient, dag_id: str, run_id: str, *, quiet: bool = False
) -> None:
    """Claim and run the run's two tasks as a worker would: state written, a heartbeat, an upstream's
    XComs counted, a result; each answer shown unless ``quiet`` (a run worked in a thread)."""

    def show(operation: str, response: Response[Any]) -> Any:
        return response.parsed if quiet else shown(operation, response)

    for task_id in ("extract", "load"):
        claim = ClaimBody.from_dict(
            {"worker_id": WORKER, "queues": ["default"], "dag_ids": [dag_id], "wait_s": 5}
        )
        claimed = show("worker_claim", worker_claim.sync_detailed(client=api, body=claim))
        (ti,) = claimed.task_instances
        assert (ti.run_id, ti.task_id) == (run_id, task_id), (ti.run_id, ti.task_id)
        task = AuthenticatedClient(base_url=base_url, token=ti.token, raise_on_unexpected_status=True)
        ti_id = ti.id
        assert isinstance(ti_id, UUID), ti_id  # documented as the UUID the Execution API routes take
        if task_id == "load":  # a HEAD's answer is headers only: no body to parse
            counted = xcom_head.sync_detailed(dag_id, run_id, "extract", "return_value", client=task)
            assert counted.headers["content-range"] == "map_indexes 1", counted.headers
            show("xcom_head", counted)
        beat = HeartbeatBody.from_dict({"hostname": "generated", "pid": 1})
        show("ti_heartbeat", ti_heartbeat.sync_detailed(ti_id, client=task, body=beat))
        put = StatePutBody.from_dict({"value": {"rows": 3}})
        show("state_task_put", state_task_put.sync_detailed(ti_id, "progress", client=task, body=put))
        value = show("state_task_get", state_task_get.sync_detailed(ti_id, "progress", client=task))
        assert value.value == {"rows": 3}, value.value
        show("state_task_list", state_task_list.sync_detailed(ti_id, client=task))
        batch = BatchBody.from_dict(
            {"operations": [{"op": "put", "key": "k", "value": [1, 2]}, {"op": "get", "key": "k"}]}
        )
        show("state_task_batch", state_task_batch.sync_detailed(ti_id, client=task, body=batch))
        success = SuccessBody.from_dict({"state": "success", "result": {"task": task_id}, "task_outlets": []})
        show("ti_update_state", ti_update_state.sync_detailed(ti_id, client=task, body=success))


def main() -> None:
    base_url, token, dag_id = sys.argv[1:4]
    api = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
    shown("health_live", health_live.sync_detailed(client=api))
    shown("health_ready", health_ready.sync_detailed(client=api))
    shown("get_version", get_version.sync_detailed(client=api))
    spec = DagSpec.from_dict(
        {
            "tasks": [{"task_id": "extract"}, {"task_id": "load", "upstream": ["extract"]}],
            "result_task": "load",
        }
    )
    shown("put_dag", put_dag.sync_detailed(dag_id, client=api, body=spec))
    shown("get_dag", get_dag.sync_detailed(dag_id, client=api))
    shown("get_dags", get_dags.sync_detailed(client=api, limit=5))

    trigger = TriggerDAGRunPostBody.from_dict({"logical_date": None, "conf": {"n": 1}, "note": "generated"})
    run = shown("trigger_dag_run", trigger_dag_run.sync_detailed(dag_id, client=api, body=trigger))
    run_id = run.dag_run_id
    run_tasks(base_url, api, dag_id, run_id)
    outcome = shown("get_dag_run_outcome", get_dag_run_outcome.sync_detailed(dag_id, run_id, client=api))
    assert outcome.state == "success", outcome.state
    shown("get_dag_run", get_dag_run.sync_detailed(dag_id, run_id, client=api))
    shown("get_dag_runs", get_dag_runs.sync_detailed(dag_id, client=api, order_by=["-run_after"]))
    shown("get_task_instances", get_task_instances.sync_detailed(dag_id, run_id, client=api))
    shown("get_task_instance", get_task_instance.sync_detailed(dag_id, run_id, "load", client=api))
    note = DAGRunPatchBody.from_dict({"note": "checked"})
    shown("patch_dag_run", patch_dag_run.sync_detailed(dag_id, run_id, client=api, body=note))
    shown("get_workers", get_workers.sync_detailed(client=api))

    stored = TaskStateStoreBody.from_dict({"value": "kept"})
    shown(
        "set_task_state_store",
        set_task_state_store.sync_detailed(dag_id, run_id, "load", "note", client=api, body=stored),
    )
    shown(
        "get_task_state_store", get_task_state_store.sync_detailed(dag_id, run_id, "load", "note", client=api)
    )
    shown("list_task_state_store", list_task_state_store.sync_detailed(dag_id, run_id, "load", client=api))
    raw = AdminPutBody.from_dict({"value": {"raw": True}})
    shown(
        "put_raw_task_state",
        put_raw_task_state.sync_detailed(dag_id, run_id, "load", -1, "raw", client=api, body=raw),
    )
    shown(
        "get_raw_task_state", get_raw_task_state.sync_detailed(dag_id, run_id, "load", -1, "raw", client=api)
    )
    # The client sends every documented default (offset=0, keys_only=false): each must count as left out.
    shown("list_raw_task_state", list_raw_task_state.sync_detailed(dag_id, run_id, "load", -1, client=api))
    keys = list_raw_task_state.sync_detailed(
        dag_id, run_id, "load", -1, client=api, cursor="", keys_only="true"
    )
    shown("list_raw_task_state", keys)
    shown("get_state_capabilities", get_state_capabilities.sync_detailed(client=api))

    # Waited for (Prefer: wait) while a thread works the run: the answer is typed as the run's outcome.
    waited_id = f"waited-{run_id}"
    waited = TriggerDAGRunPostBody.from_dict({"logical_date": None, "dag_run_id": waited_id})
    worker = threading.Thread(
        target=run_tasks, args=(base_url, api, dag_id, waited_id), kwargs={"quiet": True}
    )
    worker.start()
    outcome_run = shown(
        "trigger_dag_run", trigger_dag_run.sync_detailed(dag_id, client=api, body=waited, prefer="wait=60")
    )
    worker.join()
    assert outcome_run.results.additional_properties == {"load": {"task": "load"}}, outcome_run.results

    second = shown("trigger_dag_run", trigger_dag_run.sync_detailed(dag_id, client=api, body=trigger))
    shown("cancel_dag_run", cancel_dag_run.sync_detailed(dag_id, second.dag_run_id, client=api))
    shown("delete_dag_run", delete_dag_run.sync_detailed(dag_id, second.dag_run_id, client=api))
    # Refusals, each parsed into the error model the document names for its status.
    shown("get_dag_run", get_dag_run.sync_detailed(dag_id, second.dag_run_id, client=api))
    shown("get_dag_runs", get_dag_runs.sync_detailed(dag_id, client=api, limit=-1))
    shown("put_dag", put_dag.sync_detailed(dag_id, client=api, body=DagSpec.from_dict({"tasks": []})))
    reader = AuthenticatedClient(base_url=base_url, token="not-a-token", raise_on_unexpected_status=True)
    shown("get_dags", get_dags.sync_detailed(client=reader))


if __name__ == "__main__":
    main()
