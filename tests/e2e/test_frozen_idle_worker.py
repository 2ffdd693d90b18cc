"""An idle worker frozen past its claim's read timeout (SIGSTOP, a paused VM, a laptop asleep) keeps the task
that claim was handed while it was frozen.

The server hands a run's task to the claim the worker has open; the answer sits unread in the frozen
worker's socket. When the worker wakes, its read timeout has passed and the claim fails without the answer
being read. Its next claim names what it runs (nothing), and the server hands it the try again: the run
succeeds at once, with its first try, instead of waiting for the lease to expire and failing (the task has
no retries).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from stateport.client import StateportClient
from tests.fixtures.rest import STATEPORT, run_server
from tests.fixtures.worker_process import tail, wait_registered

pytestmark = [pytest.mark.slow]

WAIT_S = 3  # the worker's long-poll: its read timeout is this plus its client timeout, 10 s
FROZEN_S = 15.0  # past that read timeout
LEASE_S = 120  # far longer than the test: only a hand-out again lets the run end in time
BOUND_S = 30.0

DAG_MODULE = """
import os

from stateport.worker import Dag, SyncTaskContext

SUFFIX = os.environ["FROZEN_DAG_SUFFIX"]
dag = Dag(f"frozen{SUFFIX}", result_task="t", queue=f"frozen{SUFFIX}")


@dag.task
def t(ctx: SyncTaskContext) -> int:
    return 42
"""


def test_a_task_handed_to_a_frozen_idle_worker_runs_when_it_wakes(tmp_path: Path) -> None:
    suffix = f"_{uuid.uuid4().hex[:12]}"
    dag_id = f"frozen{suffix}"
    (tmp_path / "frozen_dag.py").write_text(DAG_MODULE)
    data = tmp_path / "server"
    with run_server(data, lease_s=str(LEASE_S)) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        env |= {
            "STATEPORT_URL": server.base_url,
            "STATEPORT_TOKEN": server.tokens.mint_api_token("worker", frozenset({"worker", "dags:write"})),
            "FROZEN_DAG_SUFFIX": suffix,
        }
        command = [str(STATEPORT), "worker", "frozen_dag", "--register", "--queues", dag_id]
        command += ["--concurrency", "1", "--wait", str(WAIT_S), "--log-level", "info"]
        api_token = server.api_token("runs:read", "runs:write")
        with tempfile.TemporaryFile() as log:
            worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_registered(server.base_url, api_token, dag_id, worker, log, bound_s=BOUND_S)
                # Frozen just after a claim began, so that the trigger finds it open: a claim's wait ends
                # after WAIT_S even while its worker is frozen (a stop at a random moment failed when the
                # open claim ran out before the trigger came).
                _claim_begun(server.base_url)
                worker.send_signal(signal.SIGSTOP)
                with StateportClient(server.base_url, api_token, timeout=BOUND_S) as client:
                    run_id = client.trigger(dag_id).run_id
                    time.sleep(FROZEN_S)
                    ti = _only_task_instance(server.base_url, api_token, dag_id, run_id)
                    assert ti["state"] == "running", ti  # handed to the frozen worker's claim
                    worker.send_signal(signal.SIGCONT)
                    woke = time.monotonic()
                    outcome = client.wait(dag_id, run_id, timeout=BOUND_S)
                    assert time.monotonic() - woke < BOUND_S
                assert outcome.state == "success" and outcome.result == 42, tail(log)
                ti = _only_task_instance(server.base_url, api_token, dag_id, run_id)
                assert (ti["state"], ti["try_number"]) == ("success", 1)
                assert worker.poll() is None, tail(log)
            finally:
                worker.send_signal(signal.SIGCONT)
                worker.kill()
                worker.wait()


def _claims_answered(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=BOUND_S).text
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("stateport_claims_total")
    )


def _claim_begun(base_url: str) -> None:
    """Return shortly after the server answered a claim: the worker's next one is then open, with most of
    its WAIT_S to go."""
    before = _claims_answered(base_url)
    deadline = time.monotonic() + BOUND_S
    while _claims_answered(base_url) == before:
        assert time.monotonic() < deadline, "the worker's claims were not answered"
        time.sleep(0.05)
    time.sleep(0.3)  # its next claim arrives


def _only_task_instance(base_url: str, token: str, dag_id: str, run_id: str) -> dict[str, object]:
    url = f"{base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=BOUND_S)
    assert response.status_code == 200, response.text
    (ti,) = response.json()["task_instances"]
    found: dict[str, object] = ti
    return found
