"""The 3-task chain the sync-execution measurements run: a -> b -> c, c the result task, trivial async tasks.

Served by ``stateport worker bench.chain_dag --app-dir <repo>``. With ``BENCH_CHAIN_LOG`` set, each task
appends ``<monotonic s> <run_id> <task_id>`` to that file when it starts, so the suite can say where a
run's time goes (CLOCK_MONOTONIC is shared by every process on the machine). One short line written with
O_APPEND: a blocking write of ~60 bytes, on purpose synchronous (microseconds, and no thread hop to time).
"""

from __future__ import annotations

import os
import time

from stateport.worker import AsyncTaskContext, Dag

DAG_ID = "bench_chain"
dag = Dag(DAG_ID, result_task="c")
_LOG = os.environ.get("BENCH_CHAIN_LOG")
_fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _LOG else None


def _mark(ctx: AsyncTaskContext, task: str) -> None:
    if _fd is not None:
        os.write(_fd, f"{time.monotonic():.6f} {ctx.run_id} {task}\n".encode())


@dag.task
async def a(ctx: AsyncTaskContext) -> int:
    _mark(ctx, "a")
    return 1


@dag.task(upstream=[a])
async def b(ctx: AsyncTaskContext) -> int:
    _mark(ctx, "b")
    return int(ctx.input) + 1


@dag.task(upstream=[b])
async def c(ctx: AsyncTaskContext) -> int:
    _mark(ctx, "c")
    return int(ctx.input) + 1


# The engine-throughput measurement's DAG: independent trivial tasks, so that runs queued ahead are drained
# by however many workers run, and task instances per second is the engine's rate (claim, run, report).
WIDE_DAG_ID = "bench_wide"
WIDE_TASKS = 8
wide = Dag(WIDE_DAG_ID)


def _constant(task_id: str) -> None:
    async def constant() -> int:
        return 1

    wide.task(task_id=task_id)(constant)


for _i in range(WIDE_TASKS):
    _constant(f"t{_i}")
