"""DAGs, runs and task instances for the run-metadata contract tests (and the SQL adapter's own tests)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from msgspec.structs import replace

from stateport.domain.dags import dag_version, validate_spec
from stateport.domain.ids import uuid7
from stateport.domain.models import DagSpec, DagVersion, Run, RunState, TaskInstance, TaskSpec, TIState
from stateport.domain.ports import DagStore, RunStore, RunStores
from tests.services import unique


def now() -> datetime:
    return datetime.now(UTC)


def spec(*tasks: TaskSpec, result_task: str | None = None) -> DagSpec:
    return DagSpec(tasks=list(tasks) or [TaskSpec(task_id="t")], result_task=result_task)


async def register(
    store: DagStore, dag_id: str, dag_spec: DagSpec, *, at: datetime | None = None
) -> DagVersion:
    dag = DagVersion(dag_id=dag_id, version=dag_version(dag_spec), spec=dag_spec, created_at=at or now())
    return await store.put_dag(dag, validate_spec(dag_spec))


def make_run(
    dag: DagVersion,
    run_id: str | None = None,
    *,
    key: str | None = None,
    conf: dict[str, Any] | None = None,
    at: datetime | None = None,
    caller: str | None = None,
) -> Run:
    t = at or now()
    return Run(
        dag_id=dag.dag_id,
        run_id=run_id or unique("run"),
        dag_version=dag.version,
        conf=conf if conf is not None else {"n": 1, "nested": {"a": [1, "b", None]}},
        state=RunState.QUEUED,
        run_after=t - timedelta(seconds=1),
        created_at=t,
        idempotency_key=key,
        caller=caller,
    )


def make_tis(
    run: Run, task_ids: Sequence[str], *, map_index: int = -1, try_number: int = 1
) -> list[TaskInstance]:
    return [
        TaskInstance(
            id=uuid7(),
            dag_id=run.dag_id,
            run_id=run.run_id,
            task_id=task_id,
            map_index=map_index,
            try_number=try_number,
            state=TIState.SCHEDULED,
            queue="default",
        )
        for task_id in task_ids
    ]


async def add_task_instances(store: RunStore, task_instances: Sequence[TaskInstance]) -> None:
    """Add task instances to their (one) run as the engine does: under the run's lock."""
    ((dag_id, run_id),) = {(ti.dag_id, ti.run_id) for ti in task_instances}
    async with store.lock_run(dag_id, run_id) as unit:
        await unit.add_task_instances(task_instances, now=now())


async def queued_run(
    stores: RunStores,
    count: int,
    *,
    queue: str | None = None,
    at: datetime | None = None,
    dag_id: str | None = None,
    caller: str | None = None,
    priority: int = 0,
) -> tuple[Run, list[TaskInstance]]:
    """A run (created ``at``, default now) of a new DAG (``dag_id``, default a fresh one) whose ``count``
    task instances are queued on a fresh queue (or ``queue``), triggered by ``caller`` (a caller key) with
    ``priority``."""
    task_ids = [f"t{i:03d}" for i in range(count)]
    dag_spec = spec(*(TaskSpec(task_id=t) for t in task_ids))
    dag = await register(stores.dags, dag_id or unique("dag"), dag_spec, at=at)
    run = replace(make_run(dag, at=at, caller=caller), priority=priority)
    queue = queue or unique("q")
    tis = [
        TaskInstance(
            id=uuid7(),
            dag_id=run.dag_id,
            run_id=run.run_id,
            task_id=t,
            map_index=-1,
            try_number=1,
            state=TIState.QUEUED,
            queue=queue,
            timeout_s=5.0,
            priority=priority,
        )
        for t in task_ids
    ]
    await stores.runs.create_run(run, tis)
    return run, tis


async def finish(
    store: RunStore, run: Run, state: RunState = RunState.SUCCESS, *, at: datetime | None = None
) -> tuple[str, str]:
    """Set the run's state to ``state`` (a finished one), changed ``at`` (default now)."""
    async with store.lock_run(run.dag_id, run.run_id) as unit:
        assert (await unit.settle(None, state, now=at or now()))[1]
    return run.dag_id, run.run_id
