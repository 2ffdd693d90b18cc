"""The proposal's inference DAG end to end: a server process on PostgreSQL and two ``stateport worker``
processes running ``tests.e2e.inference_dag``.

The caller gets its answer as soon as the result task succeeds, and its failure as soon as a key task fails,
in both cases before the 6-second teardown is done: the test polls the run every 10 ms, notes when the
outcome appeared, and compares with the end time the teardown wrote into its task state. (The order of the
two is what counts; the teardown is long so that a busy machine slowing the polling cannot reverse it.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.fixtures.rest import STATEPORT, Server, run_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
QUESTION = "What is a DAG?"
EXPECTED = {
    "question": QUESTION,
    "answer": "A DAG is a directed acyclic graph of tasks.",
    "sources": ["docs/core-concepts/dags"],
}
POLL_S = 0.01
TIMEOUT_S = 30.0  # a hang guard: a run takes about 7 s here, most of it the teardown


@dataclass(frozen=True)
class Deployment:
    server: Server
    dag_id: str

    def api(self) -> httpx.Client:
        token = self.server.api_token("runs:write", "runs:read", "state:admin")
        return httpx.Client(base_url=self.server.base_url, headers={"authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("inference-server"), database_url=postgres_url) as running:
        yield running


@pytest.fixture(scope="module")
def deployment(server: Server) -> Iterator[Deployment]:
    """Two worker processes for the inference DAG (which they register), stopped with SIGTERM at the end."""
    suffix = f"_{uuid.uuid4().hex[:12]}"
    dag_id = f"inference{suffix}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env["INFERENCE_DAG_SUFFIX"] = suffix
    token = server.api_token("worker", "dags:write")
    with ExitStack() as files:
        logs: list[IO[bytes]] = [files.enter_context(tempfile.TemporaryFile()) for _ in range(2)]
        yield from _run_workers(server, dag_id, token, env, logs)


def _run_workers(
    server: Server, dag_id: str, token: str, env: dict[str, str], logs: list[IO[bytes]]
) -> Iterator[Deployment]:
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for n, log in enumerate(logs):
            command = [str(STATEPORT), "worker", "tests.e2e.inference_dag", "--register"]
            command += ["--queues", dag_id, "--concurrency", "4", "--grace", "5", "--wait", "3"]
            command += ["--worker-id", f"e2e-{n}"]
            worker_env = dict(env)
            if n == 0:  # one by flags, one by environment
                command += ["--url", server.base_url, "--token", token]
            else:
                worker_env.update(STATEPORT_URL=server.base_url, STATEPORT_TOKEN=token)
            workers.append(
                subprocess.Popen(command, cwd=REPO, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
            )
        _wait_registered(server, dag_id, workers, logs)
        yield Deployment(server=server, dag_id=dag_id)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for n, worker in enumerate(workers):
            code = worker.wait(timeout=20)
            if code != 0:
                pytest.fail(f"worker {n} exited with {code}:\n{_tail(logs[n])}")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _wait_registered(
    server: Server, dag_id: str, workers: list[subprocess.Popen[bytes]], logs: list[IO[bytes]]
) -> None:
    token = server.api_token("runs:read")
    deadline = time.monotonic() + TIMEOUT_S
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {token}"}) as api:
        while api.get(f"/api/v2/dags/{dag_id}").status_code != 200:
            for n, worker in enumerate(workers):
                if worker.poll() is not None:
                    pytest.fail(f"worker {n} exited with {worker.returncode}:\n{_tail(logs[n])}")
            if time.monotonic() > deadline:
                pytest.fail(f"the workers did not register {dag_id}:\n{_tail(logs[0])}")
            time.sleep(0.1)


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read()[-4000:].decode(errors="replace")


def trigger(api: httpx.Client, dag_id: str, conf: dict[str, Any]) -> str:
    response = api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
    assert response.status_code == 200, response.text
    run_id: str = response.json()["dag_run_id"]
    return run_id


def wait_outcome(api: httpx.Client, dag_id: str, run_id: str) -> tuple[dict[str, Any], float]:
    """The run's outcome, and the wall-clock time this caller first saw it (a tight 10 ms loop)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        response = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        assert response.status_code == 200, response.text
        run = response.json()
        if run.get("outcome") is not None:
            return run["outcome"], time.time()
        if time.monotonic() > deadline:
            pytest.fail(f"no outcome after {TIMEOUT_S} s: {run}")
        time.sleep(POLL_S)


def teardown_finished_at(api: httpx.Client, dag_id: str, run_id: str) -> float:
    """When the teardown finished, as it wrote in its task state (waits for it)."""
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/cleanup/state-store/finished_at"
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        response = api.get(url)
        if response.status_code == 200:
            finished: float = response.json()["value"]
            return finished
        assert response.status_code == 404, response.text
        if time.monotonic() > deadline:
            pytest.fail(f"the teardown did not finish in {TIMEOUT_S} s")
        time.sleep(0.05)


def task_states(api: httpx.Client, dag_id: str, run_id: str) -> dict[str, list[str]]:
    response = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    assert response.status_code == 200, response.text
    states: dict[str, list[str]] = {}
    for ti in sorted(response.json()["task_instances"], key=lambda ti: (ti["task_id"], ti["map_index"])):
        states.setdefault(ti["task_id"], []).append(ti["state"])
    return states


def wait_run_finished(api: httpx.Client, dag_id: str, run_id: str) -> str:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        state: str = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
        if state in {"success", "failed"}:
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"the run did not finish in {TIMEOUT_S} s")
        time.sleep(0.05)


def test_the_answer_arrives_before_the_teardown_finishes(deployment: Deployment) -> None:
    with deployment.api() as api:
        run_id = trigger(api, deployment.dag_id, {"question": QUESTION, "versions": 3})
        outcome, seen_at = wait_outcome(api, deployment.dag_id, run_id)
        finished_at = teardown_finished_at(api, deployment.dag_id, run_id)
        final = wait_run_finished(api, deployment.dag_id, run_id)
        states = task_states(api, deployment.dag_id, run_id)
    assert outcome == {"state": "success", "results": {"answer": EXPECTED}}
    # The caller had its answer while the teardown still slept (it takes about 6 s).
    assert seen_at < finished_at, (seen_at, finished_at)
    assert final == "success"
    assert states == {
        "rephrase": ["success"],
        "ask": ["success"] * 3,  # one per version of the question
        "dedupe": ["success"],
        "verify": ["success"],  # the three answers were one, worded three ways
        "answer": ["success"],
        "cleanup": ["success"],
    }


def test_a_failed_verification_is_reported_before_the_teardown_finishes(deployment: Deployment) -> None:
    with deployment.api() as api:
        run_id = trigger(api, deployment.dag_id, {"question": QUESTION, "versions": 4, "fail_verify": True})
        outcome, seen_at = wait_outcome(api, deployment.dag_id, run_id)
        finished_at = teardown_finished_at(api, deployment.dag_id, run_id)
        final = wait_run_finished(api, deployment.dag_id, run_id)
        states = task_states(api, deployment.dag_id, run_id)
    assert outcome["state"] == "failed" and outcome["failed_task"] == "verify", outcome
    assert "verify" in outcome["reason"] and not outcome.get("results")
    assert seen_at < finished_at, (seen_at, finished_at)
    assert final == "failed"
    # verify is not retried (NonRetryableError); the answer never runs; the teardown still does.
    assert states["verify"] == ["failed"] and states["answer"] == ["upstream_failed"]
    assert states["cleanup"] == ["success"] and states["ask"] == ["success"] * 4
