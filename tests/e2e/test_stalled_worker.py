"""A ``stateport worker`` whose event loop an async task holds (it never awaits) exits, so that a supervisor
starts a new one, instead of living on with no heartbeat, no claim and no answer to SIGTERM (an outsider's
find: one such task took out every worker its retries reached, for good).

A real server and a real worker process started as docs/runs.md shows, with ``--stall-exit 3``; the task
spins without awaiting. The worker must exit with status 70 within a few seconds of the task's start, its
log naming the task; a new worker (the supervisor's) then serves the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from stateport.client import StateportClient
from tests.fixtures.rest import STATEPORT, run_server
from tests.fixtures.worker_process import tail, wait_registered

pytestmark = [pytest.mark.slow]

STALL_S = 3
BOUND_S = 30.0

DAG_MODULE = """
import os
import signal

from stateport.worker import AsyncTaskContext, Dag

SUFFIX = os.environ["STALL_DAG_SUFFIX"]
dag = Dag(f"stall{SUFFIX}", result_task="spin", queue=f"stall{SUFFIX}")


@dag.task(timeout=1)
async def spin(ctx: AsyncTaskContext) -> int:
    if ctx.conf.get("spin"):
        while True:  # never awaits: its timeout cannot cancel it
            pass
    if ctx.conf.get("hold"):
        while True:  # calls that hold the GIL for seconds each: the watchdog's thread runs only between them
            sum(range(ctx.conf["hold"]))
    return 7
"""


@dataclass
class Setup:
    """A server, the DAG module's worker command against it, and an application client."""

    dag_id: str
    base_url: str
    api: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    client: StateportClient
    log: IO[bytes]

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_registered(self.base_url, self.api, self.dag_id, worker, self.log, bound_s=BOUND_S)
        return worker


@contextmanager
def setup(tmp_path: Path) -> Iterator[Setup]:
    suffix = f"_{uuid.uuid4().hex[:12]}"
    dag_id = f"stall{suffix}"
    (tmp_path / "stall_dag.py").write_text(DAG_MODULE)
    with run_server(tmp_path / "server") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        env |= {
            "STATEPORT_URL": server.base_url,
            "STATEPORT_TOKEN": server.tokens.mint_api_token("worker", frozenset({"worker", "dags:write"})),
            "STALL_DAG_SUFFIX": suffix,
        }
        command = [str(STATEPORT), "worker", "stall_dag", "--register", "--queues", dag_id]
        command += ["--concurrency", "2", "--wait", "1", "--stall-exit", str(STALL_S)]
        api = server.api_token("runs:read", "runs:write")
        with (
            tempfile.TemporaryFile() as log,
            StateportClient(server.base_url, api, timeout=BOUND_S) as client,
        ):
            yield Setup(dag_id, server.base_url, api, command, env, tmp_path, client, log)


def stopped(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGCONT)
        worker.kill()
    worker.wait()


@pytest.mark.parametrize(
    "conf",
    [{"spin": True}, {"hold": 400_000_000}],
    ids=["a Python loop", "calls holding the GIL (an outsider's re-check: taken for a stopped process)"],
)
def test_a_worker_whose_event_loop_is_held_exits_and_a_new_one_serves(
    tmp_path: Path, conf: dict[str, object]
) -> None:
    with setup(tmp_path) as at:
        worker = at.start_worker()
        try:
            at.client.trigger(at.dag_id, conf)
            assert worker.wait(timeout=BOUND_S) == 70, tail(at.log)
            said = tail(at.log)
            assert "event loop has not turned" in said and f"{at.dag_id}.spin" in said, said
            # The task that holds the loop is named (the line listed every running task), and said at
            # once where the watchdog's thread runs during the stall (a stall shorter than --stall-exit
            # had said nothing: an outsider's find).
            assert f"task '{at.dag_id}.spin (" in said, said
            if "spin" in conf:
                assert f"s: task '{at.dag_id}.spin (" in said and "WARNING" in said, said
        finally:
            stopped(worker)
        # The supervisor's new worker serves the next run.
        worker = at.start_worker()
        try:
            assert at.client.run(at.dag_id, {}, timeout=BOUND_S).result == 7
        finally:
            stopped(worker)


def test_a_worker_stopped_as_a_whole_is_not_taken_for_a_stalled_one(tmp_path: Path) -> None:
    # An outsider's find: a worker frozen (SIGSTOP, a paused VM) longer than --stall-exit exited at once when
    # it resumed, with nothing running; the watchdog's own thread was stopped too, and that time is no task's.
    with setup(tmp_path) as at:
        worker = at.start_worker()
        try:
            worker.send_signal(signal.SIGSTOP)
            time.sleep(STALL_S * 2)
            worker.send_signal(signal.SIGCONT)
            time.sleep(STALL_S + 1)
            assert worker.poll() is None, tail(at.log)
            assert at.client.run(at.dag_id, {}, timeout=BOUND_S).result == 7
        finally:
            stopped(worker)
