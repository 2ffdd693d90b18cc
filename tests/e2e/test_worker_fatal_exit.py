"""A ``stateport worker`` that meets a fatal error exits, abandoned sync task threads or not.

An outsider's find: past its API token's maximum lifetime the worker printed "Forbidden ... 403" and then
stayed alive, serving nothing, for as long as a sync task that ignored ``ctx.stopping`` (here one past its
timeout, abandoned as documented) kept its thread: the interpreter joins pool threads at exit, and a
supervisor restarts only a process that exits.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from stateport.client import RunFailed, StateportClient
from tests.fixtures.rest import SECRET, STATEPORT, run_server
from tests.fixtures.worker_process import minted_worker_token, tail, wait_registered

pytestmark = pytest.mark.slow

LIFETIME_DAYS = 0.0001  # 8.64 s: how long the worker's token may be renewed
BOUND_S = 90.0  # a hang guard: the lifetime, a renewal's period and the exit

DAG_MODULE = """
import os
import time

from stateport.worker import Dag, SyncTaskContext

SUFFIX = os.environ["STUCK_DAG_SUFFIX"]
dag = Dag(f"stuck{SUFFIX}", result_task="t", queue=f"stuck{SUFFIX}")


@dag.task(timeout=1)
def t(ctx: SyncTaskContext) -> int:
    time.sleep(600)  # ignores ctx.stopping: its thread outlives the try
    return 1
"""


def test_a_worker_whose_token_is_refused_exits_though_a_sync_task_thread_runs(tmp_path: Path) -> None:
    suffix = f"_{uuid.uuid4().hex[:12]}"
    (tmp_path / "stuck_dag.py").write_text(DAG_MODULE)
    data = tmp_path / "server"
    with run_server(
        data, api_token_max_lifetime_days=str(LIFETIME_DAYS), jwt_expiration_s="3", jwt_leeway_s="0.5"
    ) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        env.update(STATEPORT_DATA_DIR=str(data), STATEPORT_JWT_SECRET=SECRET)
        minted = minted_worker_token(
            STATEPORT, env | {"STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS": str(LIFETIME_DAYS)}, 3
        )
        worker_env = env | {
            "STATEPORT_URL": server.base_url,
            "STATEPORT_TOKEN": minted.stdout.strip(),
            "STUCK_DAG_SUFFIX": suffix,
        }
        command = [str(STATEPORT), "worker", "stuck_dag", "--register", "--queues", f"stuck{suffix}"]
        command += ["--wait", "1", "--log-level", "info"]
        with tempfile.TemporaryFile() as log:
            worker = subprocess.Popen(
                command, cwd=tmp_path, env=worker_env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                reader = server.tokens.mint_api_token("reader", frozenset({"runs:read"}), ttl_s=600)
                wait_registered(server.base_url, reader, f"stuck{suffix}", worker, log)
                app = server.tokens.mint_api_token("app", frozenset({"runs:write", "runs:read"}), ttl_s=600)
                with (
                    StateportClient(server.base_url, app) as client,
                    pytest.raises(RunFailed, match="timed out"),
                ):
                    client.run(f"stuck{suffix}", {}, timeout=60)  # its thread abandoned, still sleeping
                assert worker.wait(timeout=BOUND_S) == 1, tail(log)
                assert "403" in tail(log) and "exiting with 1 sync task thread(s) still running" in tail(log)
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
