"""A worker frozen while it runs a task, past its lease and its task token's life, says on waking that it
lost the try's lease, not that its token was refused.

An outsider's find: such a worker (SIGSTOP, a paused VM) logged its heartbeat's "403 Invalid auth token:
expired" and then, at ERROR, "report ... refused: 403 Invalid auth token: expired", and the task as failed
by the server's refusal of its result: an operator went looking for a wrong token. The server had ended the
try when its lease expired. A real server (leases of 2 s, task tokens of 3 s, 1 s of leeway) and a real
worker process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

import pytest

from stateport.client import StateportClient
from stateport.worker.execution import LEASE_LOST
from tests.fixtures.rest import STATEPORT, run_server
from tests.fixtures.worker_process import wait_registered

pytestmark = [pytest.mark.slow]

BOUND_S = 30.0
FROZEN_S = 8.0  # past the lease (2 s) and the task token's life (3 s, and the server's leeway of 1 s)

DAG_MODULE = """
import asyncio
import os

from stateport.worker import AsyncTaskContext, Dag

dag = Dag(os.environ["FROZEN_DAG_ID"], result_task="t", queue=os.environ["FROZEN_DAG_ID"])


@dag.task
async def t(ctx: AsyncTaskContext) -> int:
    await asyncio.sleep(ctx.conf.get("sleep", 0))
    return 7
"""


def _until_said(log: IO[bytes], words: str) -> str:
    """The worker's log once it holds ``words``."""
    deadline = time.monotonic() + BOUND_S
    while True:
        log.seek(0)
        said = log.read().decode(errors="replace")
        if words in said:
            return said
        assert time.monotonic() < deadline, said[-4000:]
        time.sleep(0.1)


def test_a_worker_frozen_past_its_lease_says_it_lost_the_lease(tmp_path: Path) -> None:
    dag_id = f"frozen_{uuid.uuid4().hex[:12]}"
    (tmp_path / "frozen_dag.py").write_text(DAG_MODULE)
    with (
        run_server(
            tmp_path / "server", lease_s="2", sweep_interval_s="0.2", jwt_expiration_s="3", jwt_leeway_s="1"
        ) as server,
        tempfile.NamedTemporaryFile() as log,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        env |= {
            "STATEPORT_URL": server.base_url,
            "STATEPORT_TOKEN": server.tokens.mint_api_token("worker", frozenset({"worker", "dags:write"})),
            "FROZEN_DAG_ID": dag_id,
        }
        command = [str(STATEPORT), "worker", "frozen_dag", "--register", "--queues", dag_id, "--wait", "1"]
        api = server.api_token("runs:read", "runs:write")
        worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_registered(server.base_url, api, dag_id, worker, log, bound_s=BOUND_S)
            with StateportClient(server.base_url, api, timeout=BOUND_S) as client:
                client.trigger(dag_id, {"sleep": 2})
                _until_said(log, "task started")
                worker.send_signal(signal.SIGSTOP)
                time.sleep(FROZEN_S)
                worker.send_signal(signal.SIGCONT)
                # Said by whichever call comes first on waking: the heartbeat ("lost the lease of ...")
                # or the task's report ("report for ... not taken").
                _until_said(log, LEASE_LOST)
                time.sleep(1)  # the other call's lines, if any
                said = _until_said(log, LEASE_LOST)
                assert "Invalid auth token" not in said and " ERROR " not in said, said[-4000:]
                # The worker goes on: the try's retry-less failure ended the run; the next run is served.
                assert client.run(dag_id, {}, timeout=BOUND_S).result == 7
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.kill()
            worker.wait()
