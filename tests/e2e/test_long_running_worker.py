"""A ``stateport worker`` outlives its token's TTL (issue #12 item 1).

A real server whose tokens live 5 s (no leeway to speak of), a real worker process started as docs/runs.md
shows with a 5 s API token from ``stateport token api --ttl 5``, and an application client with a 5 s token
too. For 60 s the client runs DAG runs one after another; half of them hold the worker's only slot for
longer than the token lives (so no claim renews it then), and write task state only after their
task-instance token has expired several times over. Every run must succeed and the worker must still run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from stateport.client import RunFailed, StateportClient
from tests.fixtures.rest import SECRET, STATEPORT, run_server
from tests.fixtures.worker_process import minted_worker_token, tail, wait_registered

pytestmark = [pytest.mark.slow, pytest.mark.longest]  # a minute by design

DURATION_S = 60.0
TTL_S = 5
HOLD_S = 7.0  # longer than a token lives
RUN_TIMEOUT_S = 60.0  # a hang guard per run

DAG_MODULE = """
import asyncio
import os
import time

from stateport.worker import AsyncTaskContext, Dag, SyncTaskContext

SUFFIX = os.environ["LONG_DAG_SUFFIX"]
dag = Dag(f"long{SUFFIX}", result_task="answer", queue=f"long{SUFFIX}")


@dag.task
def hold(ctx: SyncTaskContext) -> int:
    time.sleep(ctx.conf["hold"])
    ctx.state.set("held", ctx.conf["hold"])  # the first state call, after the claim's token expired
    return int(ctx.conf["n"])


@dag.task(upstream=[hold])
async def answer(ctx: AsyncTaskContext) -> dict:
    await asyncio.sleep(ctx.conf["hold"])
    await ctx.state.set("answered", True)
    return {"n": ctx.input, "held": await ctx.state.get("answered")}
"""


def test_a_worker_and_a_client_outlive_their_5_s_tokens(tmp_path: Path) -> None:
    suffix = f"_{uuid.uuid4().hex[:12]}"
    (tmp_path / "long_dag.py").write_text(DAG_MODULE)
    data = tmp_path / "server"
    with run_server(data, jwt_expiration_s=str(TTL_S), jwt_leeway_s="0.5", lease_s="6") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        env.update(STATEPORT_DATA_DIR=str(data), STATEPORT_JWT_SECRET=SECRET)
        minted = minted_worker_token(STATEPORT, env, TTL_S)
        worker_env = env | {
            "STATEPORT_URL": server.base_url,
            "STATEPORT_TOKEN": minted.stdout.strip(),
            "LONG_DAG_SUFFIX": suffix,
        }
        command = [str(STATEPORT), "worker", "long_dag", "--register", "--queues", f"long{suffix}"]
        command += ["--concurrency", "1", "--wait", "3", "--grace", "5", "--log-level", "info"]
        with tempfile.TemporaryFile() as log:
            worker = subprocess.Popen(
                command, cwd=tmp_path, env=worker_env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                _run_for_a_minute(server.base_url, server.tokens.mint_api_token, f"long{suffix}", worker, log)
                assert worker.poll() is None, tail(log)
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=30) == 0, tail(log)
                # A refused token's status, not the digits inside a task instance id or a timestamp.
                assert re.search(r"\b403\b", tail(log)) is None, tail(log)
                assert f"API token valid for {TTL_S} s" in minted.stderr
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()


def _run_for_a_minute(
    base_url: str, mint: Callable[..., str], dag_id: str, worker: subprocess.Popen[bytes], log: IO[bytes]
) -> None:
    wait_registered(base_url, mint("reader", frozenset({"runs:read"}), ttl_s=600), dag_id, worker, log)
    token = mint("app", frozenset({"runs:write", "runs:read"}), ttl_s=TTL_S)
    started = time.monotonic()
    done = 0
    with StateportClient(base_url, token) as client:
        while time.monotonic() - started < DURATION_S:
            hold = HOLD_S if done % 2 == 0 else 0.0
            try:
                outcome = client.run(dag_id, {"n": done, "hold": hold}, timeout=RUN_TIMEOUT_S)
            except RunFailed as failed:
                pytest.fail(f"{failed}; the worker's log: {tail(log)}")
            assert outcome.results == {"answer": {"n": done, "held": True}}, outcome
            done += 1
    # Every run for a minute succeeded (12 token lifetimes): the worker renewed its token on its claims
    # and, while its one slot was held, every 2.5 s by a claim of nothing; the client on each of its calls.
