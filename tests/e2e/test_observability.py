"""Logs and metrics of a real ``stateport serve`` and a real ``stateport worker``, both in JSON lines.

A run whose first task fails its first try and succeeds its retry, a run cancelled while queued, and a
try whose lease expires (claimed by hand, never heartbeated): the server's log must carry each lifecycle
event with its run, task instance, try and worker, the access log its requests with their ids, the
worker's log its tasks with the same fields, and the metrics scrape must count all of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stateport.client import StateportClient
from tests.fixtures.rest import STATEPORT, Server, run_logged_server

pytestmark = pytest.mark.slow

DAG_MODULE = """
import os
from pathlib import Path

from stateport.worker import Dag, SyncTaskContext

SUFFIX = os.environ["OBS_SUFFIX"]
dag = Dag(f"obs{SUFFIX}", result_task="answer", queue=f"obs{SUFFIX}")
idle = Dag(f"idle{SUFFIX}", queue=f"idle{SUFFIX}")
leased = Dag(f"lease{SUFFIX}", queue=f"lease{SUFFIX}")


@dag.task(retries=1)
def flaky(ctx: SyncTaskContext) -> int:
    if ctx.try_number == 1:
        raise RuntimeError("first try fails")
    return 41


@dag.task(upstream=[flaky])
def answer(ctx: SyncTaskContext) -> int:
    return ctx.input + 1


@idle.task
def never() -> None:
    pass


@leased.task(retries=1)
def abandoned() -> None:
    pass
"""
WAIT_S = 60.0


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log (the server's banner, on stdout, is plain text)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def events(lines: list[dict[str, Any]], name: str, **fields: Any) -> list[dict[str, Any]]:
    return [x for x in lines if x.get("event") == name and all(x.get(k) == v for k, v in fields.items())]


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def suffix() -> str:
    return f"_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with run_logged_server(
        tmp_path / "server",
        tmp_path / "server.log",
        log_format="json",
        log_level="info",
        access_log="1",
        lease_s="2",
        sweep_interval_s="0.2",
    ) as server:
        yield server


def test_lifecycle_in_json_logs_and_metrics(server: Server, suffix: str, tmp_path: Path) -> None:
    (tmp_path / "obs_dag.py").write_text(DAG_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    worker_id = f"obs-worker{suffix}"
    worker_env = env | {
        "STATEPORT_URL": server.base_url,
        "STATEPORT_TOKEN": server.api_token("worker", "dags:write"),
        "STATEPORT_LOG_FORMAT": "json",
        "OBS_SUFFIX": suffix,
    }
    command = [str(STATEPORT), "worker", "obs_dag", "--register", "--queues", f"obs{suffix}"]
    command += ["--worker-id", worker_id, "--wait", "2", "--grace", "5", "--log-level", "info"]
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(command, cwd=tmp_path, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        app = server.api_token("runs:write", "runs:read")
        with StateportClient(server.base_url, app) as client:
            _wait_registered(server, f"lease{suffix}", worker, worker_log)
            triggered = client.trigger(f"obs{suffix}")
            outcome = client.wait(f"obs{suffix}", triggered.run_id, timeout=WAIT_S)
            assert outcome.results == {"answer": 42}, outcome
            cancelled = client.trigger(f"idle{suffix}")
            client.cancel(f"idle{suffix}", cancelled.run_id)
            # Cancels of finished runs change nothing: neither counted nor logged (an outsider's find).
            client.cancel(f"idle{suffix}", cancelled.run_id)
            client.cancel(f"obs{suffix}", triggered.run_id)
            leased = client.trigger(f"lease{suffix}")
            ti_id = _claim_and_drop(server, f"lease{suffix}")
            _wait_for(lambda: events(json_lines(tmp_path / "server.log"), "lease_expired", ti_id=ti_id))
        scraped = scrape(server.base_url)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker_log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    server_lines = json_lines(tmp_path / "server.log")
    run_id = triggered.run_id
    dag_id = f"obs{suffix}"
    # The server: every lifecycle event, with its fields.
    assert events(server_lines, "run_triggered", dag_id=dag_id, run_id=run_id)
    claimed = events(server_lines, "task_claimed", dag_id=dag_id, run_id=run_id, worker_id=worker_id)
    assert {(x["task_id"], x["try_number"]) for x in claimed} == {("flaky", 1), ("flaky", 2), ("answer", 1)}
    assert all(uuid.UUID(x["ti_id"]) for x in claimed)
    retry = events(server_lines, "retry_scheduled", dag_id=dag_id, run_id=run_id, task_id="flaky")
    assert [x["try_number"] for x in retry] == [1]
    finished = events(server_lines, "run_finished", dag_id=dag_id, run_id=run_id)
    assert [x["state"] for x in finished] == ["success"]
    assert len(events(server_lines, "run_cancelled", dag_id=f"idle{suffix}", run_id=cancelled.run_id)) == 1
    assert not events(server_lines, "run_cancelled", dag_id=dag_id)
    assert [x["state"] for x in events(server_lines, "run_finished", run_id=cancelled.run_id)] == ["failed"]
    expired = events(server_lines, "lease_expired", ti_id=ti_id)
    assert expired[0]["run_id"] == leased.run_id and expired[0]["worker_id"] == "by-hand"
    # Lines logged while serving a request carry its id; the access log names each request.
    assert all(x.get("request_id") for x in events(server_lines, "run_triggered"))
    access = [x for x in server_lines if x["logger"] == "stateport.access"]
    assert any(x["path"].startswith(f"/api/v2/dags/{dag_id}/dagRuns") and x["status"] == 200 for x in access)
    assert len({x["request_id"] for x in access}) == len(access)
    # The worker: its tasks' lines name the task instance, the try and the worker.
    worker_lines = json_lines(worker_log)
    started = events(worker_lines, "task_started", run_id=run_id, worker_id=worker_id)
    assert {(x["task_id"], x["try_number"]) for x in started} == {("flaky", 1), ("flaky", 2), ("answer", 1)}
    ends = events(worker_lines, "task_finished", run_id=run_id, task_id="flaky")
    assert [(x["try_number"], x["state"]) for x in ends] == [(1, "failed"), (2, "success")]
    # No per-request lines from the HTTP client libraries.
    assert not [x for x in worker_lines if x["logger"].startswith(("httpx", "httpcore", "aiohttp"))]
    assert all(line.startswith("{") for line in worker_log.read_text().splitlines() if line.strip())

    # The metrics count the same story.
    def value(name: str, **labels: str) -> float:
        return scraped.get((name, frozenset(labels.items())), 0.0)

    assert value("stateport_runs_triggered_total", dag_id=dag_id) == 1
    assert value("stateport_runs_finished_total", dag_id=dag_id, state="success") == 1
    assert value("stateport_runs_cancelled_total", dag_id=f"idle{suffix}") == 1
    assert value("stateport_runs_cancelled_total", dag_id=dag_id) == 0
    assert value("stateport_retries_total", dag_id=dag_id) == 1
    assert value("stateport_lease_expiries_total", dag_id=f"lease{suffix}") == 1
    assert value("stateport_task_instances_claimed_total", queue=dag_id) == 3
    # Three tries of the run and the one claimed by hand ran; two of them failed into a retry.
    assert value("stateport_task_instances_total", state="running") == 4
    assert value("stateport_task_instances_total", state="success") == 2
    assert value("stateport_task_instances_total", state="up_for_retry") == 2
    # Queued: the idle run's task, the try claimed by hand, the retry its expiry made (a retry's new try
    # counts in the state it is created in), and those of the run's three tries that a claim took from the
    # queue. The others were handed straight to a claim (the worker's report's, as a rule; on a busy
    # machine one of them may come after the report and wait in the queue), so they went from scheduled
    # or up_for_retry to running.
    handed = value("stateport_handoffs_total", queue=dag_id)
    assert 1 <= handed <= 3
    assert value("stateport_task_instances_total", state="queued") == 3 + (3 - handed)
    # The expired try's retry waits in its queue: nobody claims that queue.
    assert value("stateport_queue_depth", queue=f"lease{suffix}") == 1
    for store in ("database", "state_store", "blob_store"):
        assert value("stateport_store_up", store=store) == 1, store


def _claim_and_drop(server: Server, queue: str) -> str:
    """Claim a task instance of ``queue`` as a worker would, and never heartbeat or report it."""
    token = server.api_token("worker")
    body = {"worker_id": "by-hand", "queues": [queue], "max_tasks": 1, "wait_s": 10}
    got = httpx.post(
        f"{server.base_url}/execution/workers/claim",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert got.status_code == 200, got.text
    tis = got.json()["task_instances"]
    assert len(tis) == 1, tis
    return str(tis[0]["id"])


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _wait_registered(server: Server, dag_id: str, worker: subprocess.Popen[bytes], log: Path) -> None:
    """Until the worker has registered its DAGs (the last one is ``dag_id``)."""
    headers = {"Authorization": f"Bearer {server.api_token('runs:read')}"}
    deadline = time.monotonic() + WAIT_S
    while (
        httpx.get(f"{server.base_url}/api/v2/dags/{dag_id}", headers=headers, timeout=10).status_code != 200
    ):
        assert worker.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
