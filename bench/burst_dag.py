"""The DAG the admission burst triggers (bench/burst.py): one trivial async task, its result the answer, and
``max_queued_runs`` 1,000. Served by ``stateport worker bench.burst_dag --app-dir <repo>``."""

from __future__ import annotations

from stateport.worker import AsyncTaskContext, Dag

DAG_ID = "bench_burst"
MAX_QUEUED_RUNS = 1000
dag = Dag(DAG_ID, result_task="answer", max_queued_runs=MAX_QUEUED_RUNS)


@dag.task
async def answer(ctx: AsyncTaskContext) -> dict[str, int]:
    return {"n": int(ctx.conf.get("n", 0))}
