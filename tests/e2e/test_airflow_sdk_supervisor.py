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
from typing import Any, NamedTuple

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
    def a(**context):
        # A lazy proxy, read from the Execution API when used (an outsider's find: a 404 failed the
        # task); a Stateport run has no logical date, for which Airflow has no previous run either.
        assert str(context["prev_start_date_success"]) == "None"
        return {"n": 2}

    @task(inlets=[Asset("sdk_supervised_input")])
    def b(got):
        return got["n"] * 21

    b(a())


sdk_supervised()
"""


class Ran(NamedTuple):
    """What one run of a DAG file under the supervisor came to."""

    exits: dict[str, int]  # task_id -> the supervisor's exit code (the last instance's, for a mapped task)
    outcome: dict[str, Any]
    states: dict[str, str]  # task_id -> its task instances' state (the last one's, for a mapped task)
    reads: dict[str, Any]  # what the public API answered to each of ``reads``, after the run


def _run_dag_file(
    tmp_path: Path,
    dag_id: str,
    dag_file: str,
    tasks: list[dict[str, Any]],
    result: str,
    count: int,
    *,
    others: dict[str, list[dict[str, Any]]] | None = None,
    reads: tuple[str, ...] = (),
    **env: str,
) -> Ran:
    """Register ``tasks`` as ``dag_id`` (all on one queue, ``result`` its result task), trigger a run, run
    ``count`` of its task instances under the SDK's supervisor from ``dag_file`` (with ``env`` besides),
    and read the run. ``others``: DAGs registered besides (their tasks on a queue no one claims);
    ``reads``: public API paths read after the run."""
    python = sdk_python()
    queue = unique("supq")
    spec = {"tasks": [{**task, "queue": queue} for task in tasks], "result_task": result}
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / f"{dag_id}.py").write_text(dag_file)
    with run_server(tmp_path / "data", lease_s="600") as server:
        api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
        with httpx.Client(base_url=server.base_url, headers=api, timeout=30) as http:
            assert http.put(f"/api/v2/dags/{dag_id}", json=spec).status_code == 200
            for other, other_tasks in (others or {}).items():
                other_spec = {"tasks": [{**task, "queue": unique("unclaimed")} for task in other_tasks]}
                assert http.put(f"/api/v2/dags/{other}", json=other_spec).status_code == 200
            run_id = http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}).json()[
                "dag_run_id"
            ]
            exits = run_driver(
                python,
                DRIVER,
                tmp_path,
                server,
                SP_QUEUE=queue,
                SP_WORKER_TOKEN=server.api_token("worker"),
                SP_DAG_FILE=f"{dag_id}.py",
                SP_TASKS=str(count),
                AIRFLOW__CORE__DAGS_FOLDER=str(dags),
                **env,
            )
            run = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
            outcome = http.get(f"{run}/outcome", params={"timeout": "10"}).json()
            tis = http.get(f"{run}/taskInstances").json()["task_instances"]
            answers = {path: http.get(path).json() for path in reads}
    return Ran(exits, outcome, {ti["task_id"]: ti["state"] for ti in tis}, answers)


@pytest.mark.slow
def test_a_taskflow_dag_runs_under_the_sdks_supervisor_and_its_result_is_the_return_value(
    tmp_path: Path,
) -> None:
    tasks: list[dict[str, Any]] = [
        {"task_id": "a"},
        {"task_id": "b", "upstream": ["a"], "inlets": ["sdk_supervised_input"]},
    ]
    ran = _run_dag_file(tmp_path, "sdk_supervised", DAG_FILE, tasks, "b", 2)
    assert ran.exits == {"a": 0, "b": 0}
    assert ran.outcome == {"state": "success", "results": {"b": 42}}, ran


REF_FILE = """
from airflow.sdk import Asset, dag, task


@dag(dag_id="sdk_asset_refs", schedule=None)
def sdk_asset_refs():
    @task(outlets=[Asset.ref(name="sdk_ref_orders")])
    def produce(**context):
        # The SDK resolves the reference through the Execution API (assets/by-name) when it is used.
        context["outlet_events"][Asset.ref(name="sdk_ref_orders")].extra["rows"] = 3
        return 3

    @task(inlets=[Asset.ref(uri="s3://sdk-ref/orders")])
    def consume(n, **context):
        # Resolved (assets/by-uri) before this code runs: the SDK fails the task if it cannot be.
        (inlet,) = context["inlets"]
        return {"n": n, "inlet": inlet.uri}

    consume(produce())


sdk_asset_refs()
"""


@pytest.mark.slow
def test_assets_named_by_reference_are_resolved_for_the_tasks_that_declare_them(tmp_path: Path) -> None:
    # An outsider's find: `assets/by-name` and `by-uri` answered 404, so the SDK failed `consume` before its
    # code ran ("ASSET_NOT_FOUND") and `produce` when it touched its outlet's events.
    asset = {"name": "sdk_ref_orders", "uri": "s3://sdk-ref/orders"}
    tasks: list[dict[str, Any]] = [
        {"task_id": "produce", "outlets": [asset]},
        {"task_id": "consume", "upstream": ["produce"], "inlets": [asset]},
    ]
    ran = _run_dag_file(tmp_path, "sdk_asset_refs", REF_FILE, tasks, "consume", 2)
    assert ran.exits == {"produce": 0, "consume": 0}, ran
    expected = {"n": 3, "inlet": "s3://sdk-ref/orders"}
    assert ran.outcome == {"state": "success", "results": {"consume": expected}}, ran


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
    tasks: list[dict[str, Any]] = [
        {"task_id": "choose"},
        {"task_id": "left", "upstream": ["choose"]},
        {"task_id": "right", "upstream": ["choose"]},
    ]
    ran = _run_dag_file(tmp_path, "sdk_branch", BRANCH_FILE, tasks, "left", 2)
    assert ran.exits == {"choose": 0, "left": 0}
    assert ran.outcome == {"state": "success", "results": {"left": "L"}}, ran
    assert ran.states == {"choose": "success", "left": "success", "right": "skipped"}


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
    tasks: list[dict[str, Any]] = [
        {"task_id": "gen"},
        {"task_id": "times_ten", "upstream": ["gen"], "expand": "gen"},
        {"task_id": "total", "upstream": ["times_ten"]},
    ]
    ran = _run_dag_file(tmp_path, "sdk_mapped", MAPPED_FILE, tasks, "total", 5)
    assert ran.outcome == {"state": "success", "results": {"total": 60}}, ran


XCOM_FILE = """
from airflow.sdk import dag, task


@dag(dag_id="sdk_xcoms", schedule=None)
def sdk_xcoms():
    @task
    def split() -> dict[str, int]:  # a dict annotation makes it multiple_outputs, as it says
        return {"left": 2, "right": 20}

    @task
    def note(**context):
        context["ti"].xcom_push(key="seen", value={"by": "note"})

    @task
    def join(left, right, **context):
        seen = context["ti"].xcom_pull(task_ids="note", key="seen")
        missing = context["ti"].xcom_pull(task_ids="note", key="never_pushed")
        return {"sum": left + right, "seen": seen, "missing": missing}

    outputs = split()
    note() >> join(outputs["left"], outputs["right"])


sdk_xcoms()
"""


@pytest.mark.slow
def test_xcoms_under_keys_of_their_own_pass_between_tasks(tmp_path: Path) -> None:
    # A task with multiple_outputs pushes each output under its own key, and ti.xcom_push(key=...) does
    # likewise: each push was a 422, which failed the task.
    tasks: list[dict[str, Any]] = [
        {"task_id": "split"},
        {"task_id": "note"},
        {"task_id": "join", "upstream": ["split", "note"]},
    ]
    ran = _run_dag_file(tmp_path, "sdk_xcoms", XCOM_FILE, tasks, "join", 3)
    assert ran.exits == {"split": 0, "note": 0, "join": 0}, ran
    assert ran.outcome == {
        "state": "success",
        "results": {"join": {"sum": 22, "seen": {"by": "note"}, "missing": None}},
    }, ran


TRIGGER_FILE = """
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag


@dag(dag_id="sdk_trigger", schedule=None)
def sdk_trigger():
    # logical_date=None: a Stateport run has no logical date (the operator sends the time otherwise).
    TriggerDagRunOperator(
        task_id="kick",
        trigger_dag_id="sdk_triggered",
        trigger_run_id="from_kick",
        logical_date=None,
        conf={"n": 5},
    )


sdk_trigger()
"""


@pytest.mark.slow
def test_a_trigger_dag_run_operator_triggers_a_run_of_another_dag(tmp_path: Path) -> None:
    # Its trigger was a 404, and its push of the triggered run's id (XCom trigger_run_id) a 422.
    ran = _run_dag_file(
        tmp_path,
        "sdk_trigger",
        TRIGGER_FILE,
        [{"task_id": "kick"}],
        "kick",
        1,
        others={"sdk_triggered": [{"task_id": "work"}]},
        reads=("/api/v2/dags/sdk_triggered/dagRuns/from_kick",),
    )
    assert ran.exits == {"kick": 0} and ran.states == {"kick": "success"}, ran
    triggered = ran.reads["/api/v2/dags/sdk_triggered/dagRuns/from_kick"]
    assert (triggered["dag_run_id"], triggered["conf"], triggered["state"]) == (
        "from_kick",
        {"n": 5},
        "queued",
    )


BROKEN_FILE = """
from airflow.sdk import dag, task

raise RuntimeError("this DAG file does not load")
"""


@pytest.mark.slow
def test_a_dag_file_that_does_not_load_is_rescheduled_by_the_sdk_then_fails(tmp_path: Path) -> None:
    # An outsider's find: the SDK's up_for_reschedule was a 422, the supervisor exited, and the try stayed
    # running until its lease ran out (spending a retry, blamed on the worker). Now each reschedule ends
    # its try at once, uses no retry, and the SDK, told how many there were, fails the task after its own
    # limit ([workers] missing_dag_retries, 3). (With retries left, SDK 1.3.2's supervisor cannot report
    # that failure: it sends up_for_retry through a payload that does not take it, and the try ends at its
    # lease, as Airflow's would as a zombie.)
    ran = _run_dag_file(
        tmp_path,
        "sdk_broken",
        BROKEN_FILE,
        [{"task_id": "a"}],
        "a",
        4,
        AIRFLOW__WORKERS__MISSING_DAG_RETRY_DELAY="0",
    )
    assert ran.states == {"a": "failed"}, ran
    assert ran.outcome["state"] == "failed" and ran.outcome["failed_task"] == "a", ran


SENSOR_FILE = """
import os
from pathlib import Path

from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import dag

POKES = Path(os.environ["SP_POKES"])


def poke():
    count = int(POKES.read_text()) + 1 if POKES.exists() else 1
    POKES.write_text(str(count))
    return count >= 3


@dag(dag_id="sdk_sensor", schedule=None)
def sdk_sensor():
    PythonSensor(task_id="wait", python_callable=poke, mode="reschedule", poke_interval=1, timeout=120)


sdk_sensor()
"""


@pytest.mark.slow
def test_a_sensor_in_reschedule_mode_pokes_until_it_succeeds(tmp_path: Path) -> None:
    # An outsider's find: a reschedule-mode sensor's second poke asked when the first started
    # (GET /execution/task-reschedules/{id}/start_date), a 404, and the sensor failed.
    pokes = tmp_path / "pokes"
    ran = _run_dag_file(
        tmp_path, "sdk_sensor", SENSOR_FILE, [{"task_id": "wait"}], "wait", 3, SP_POKES=str(pokes)
    )
    assert pokes.read_text() == "3"
    assert ran.exits == {"wait": 0} and ran.states == {"wait": "success"}, ran
    assert ran.outcome["state"] == "success", ran


SECRETS_FILE = """
from airflow.sdk import Connection, Variable, dag, task


@dag(dag_id="sdk_secrets", schedule=None)
def sdk_secrets():
    @task
    def read():
        conn = Connection.get("warehouse")
        return [Variable.get("greeting"), Variable.get("absent", default="fallback"), conn.host, conn.port]

    read()


sdk_secrets()
"""


@pytest.mark.slow
def test_variables_and_connections_come_from_the_workers_environment(tmp_path: Path) -> None:
    # Stateport stores no Variables or Connections (runs.md): the Task SDK reads the worker's environment
    # first (AIRFLOW_VAR_*, AIRFLOW_CONN_*), as on Airflow, and a default applies to a Variable it lacks.
    ran = _run_dag_file(
        tmp_path,
        "sdk_secrets",
        SECRETS_FILE,
        [{"task_id": "read"}],
        "read",
        1,
        AIRFLOW_VAR_GREETING="hello",
        AIRFLOW_CONN_WAREHOUSE="postgresql://reader@db.example:6432/warehouse",
    )
    assert ran.exits == {"read": 0}, ran
    assert ran.outcome == {"state": "success", "results": {"read": ["hello", "fallback", "db.example", 6432]}}
