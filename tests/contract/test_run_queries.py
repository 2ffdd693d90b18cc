"""The RunStore contract for what Airflow's public API reads (src/domain/ports.py): runs' start and end
times, the run listing with Airflow's filters and orderings, deleting a run, a task's tries. Every
adapter; names are unique per test, since the PostgreSQL database is shared."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from stateport.domain.models import DagVersion, Outcome, Run, RunState, TaskSpec
from stateport.domain.ports import RunStores
from stateport.domain.queries import RunField, RunQuery, Sort, TimeRange
from tests.contract.makers import (
    add_task_instances,
    finish,
    make_run,
    make_tis,
    now,
    queued_run,
    register,
    spec,
)
from tests.services import unique

T0 = datetime(2001, 1, 1, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def test_a_run_is_started_and_ended_by_its_state(run_stores: RunStores) -> None:
    run, (ti,) = await queued_run(run_stores, 1, at=at(0))
    assert (run.started_at, run.ended_at) == (None, None)
    assert await run_stores.runs.get_run(run.dag_id, run.run_id) == run
    # A claim starts the run.
    await run_stores.leases.claim(ti.queue, "w", limit=1, now=at(1), lease_until=at(2))
    claimed = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert claimed is not None and (claimed.state, claimed.started_at, claimed.ended_at) == (
        RunState.RUNNING,
        at(1),
        None,
    )
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert not (await unit.settle(None, RunState.RUNNING, now=at(2)))[1]
        assert (await unit.settle(None, RunState.SUCCESS, now=at(3)))[1]
        # The unit's run is the run as stored.
        assert (unit.run.started_at, unit.run.ended_at) == (at(1), at(3))
    ended = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert ended is not None and (ended.started_at, ended.ended_at) == (at(1), at(3))
    # Leaving success or failed clears the end; the start stays the first.
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert (await unit.settle(None, RunState.RUNNING, now=at(4)))[1]
        assert (unit.run.started_at, unit.run.ended_at) == (at(1), None)
    again = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert again is not None and (again.started_at, again.ended_at) == (at(1), None)


async def test_set_state_starts_a_run_that_no_claim_started(run_stores: RunStores) -> None:
    run, _ = await queued_run(run_stores, 1, at=at(0))
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert (await unit.settle(None, RunState.RUNNING, now=at(1)))[1]
        assert (await unit.settle(None, RunState.FAILED, now=at(2)))[1]
    stored = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert stored is not None and (stored.started_at, stored.ended_at) == (at(1), at(2))
    # Failed straight from queued (a cancel): ended, never started.
    other, _ = await queued_run(run_stores, 1, at=at(0))
    await finish(run_stores.runs, other, RunState.FAILED, at=at(5))
    cancelled = await run_stores.runs.get_run(other.dag_id, other.run_id)
    assert cancelled is not None and (cancelled.started_at, cancelled.ended_at) == (None, at(5))


async def test_create_run_stores_the_start_and_end_given(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    run = msgspec.structs.replace(make_run(dag, at=at(0)), state=RunState.RUNNING, started_at=at(0))
    assert await run_stores.runs.create_run(run, make_tis(run, ["t"])) == run
    assert await run_stores.runs.get_run(dag.dag_id, run.run_id) == run


async def test_delete_run_takes_the_run_and_every_try_in_the_states_given(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 2)
    await add_task_instances(run_stores.runs, make_tis(run, [tis[0].task_id], try_number=2))
    key = (run.dag_id, run.run_id)
    assert not await run_stores.runs.delete_run(*key, states=frozenset({RunState.SUCCESS}))
    assert await run_stores.runs.get_run(*key) == run
    assert await run_stores.runs.delete_run(*key, states=frozenset({RunState.QUEUED, RunState.FAILED}))
    assert await run_stores.runs.get_run(*key) is None
    assert await run_stores.runs.list_task_instances(*key) == []
    assert await run_stores.runs.get_task_instance(tis[0].id) is None
    assert not await run_stores.runs.delete_run(*key, states=frozenset())
    # Any state when none is given; the DAG stays and the run id may be used again.
    running, (ti,) = await queued_run(run_stores, 1)
    await run_stores.leases.claim(
        ti.queue, "w", limit=1, now=now(), lease_until=now() + timedelta(seconds=30)
    )
    assert await run_stores.runs.delete_run(running.dag_id, running.run_id, states=frozenset())
    assert await run_stores.runs.get_run(running.dag_id, running.run_id) is None
    assert await run_stores.dags.get_dag(run.dag_id) is not None
    assert await run_stores.runs.create_run(run, make_tis(run, ["t000"])) == run


async def test_a_tasks_tries_are_listed_by_map_index_and_try(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="m"), TaskSpec(task_id="o")))
    run = make_run(dag)
    await run_stores.runs.create_run(run, make_tis(run, ["o"]))
    await add_task_instances(
        run_stores.runs,
        make_tis(run, ["m"], map_index=1)
        + make_tis(run, ["m"], map_index=0, try_number=2)
        + make_tis(run, ["m"], map_index=0),
    )
    tries = await run_stores.runs.list_task_tries(run.dag_id, run.run_id, "m")
    assert [(ti.map_index, ti.try_number) for ti in tries] == [(0, 1), (0, 2), (1, 1)]
    assert [ti.task_id for ti in await run_stores.runs.list_task_tries(run.dag_id, run.run_id, "o")] == ["o"]
    assert await run_stores.runs.list_task_tries(run.dag_id, run.run_id, "nope") == []


async def _runs(run_stores: RunStores) -> tuple[DagVersion, list[Run]]:
    """Four runs of a fresh DAG, created a minute apart: r0 success (started 10, ended 13: 3 minutes),
    r1 failed (started 11, ended 20: 9 minutes), r2 running (started 12), r3 queued."""
    dag = await register(run_stores.dags, unique("dag"), spec())
    made = []
    for i in range(4):
        run = msgspec.structs.replace(
            make_run(dag, f"r{i}_{unique('x')}", conf={"i": 3 - i}, at=at(i)), run_after=at(30 - i)
        )
        await run_stores.runs.create_run(run, make_tis(run, ["t"]))
        made.append(run)
    for run, start, end, state in (
        (made[0], 10, 13, RunState.SUCCESS),
        (made[1], 11, 20, RunState.FAILED),
        (made[2], 12, None, None),
    ):
        async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
            await unit.settle(None, RunState.RUNNING, now=at(start))
            if end is not None and state is not None:
                await unit.settle(None, state, now=at(end))
    return dag, made


async def test_query_runs_filters_and_counts(run_stores: RunStores) -> None:
    dag, made = await _runs(run_stores)
    names = {run.run_id: f"r{i}" for i, run in enumerate(made)}

    async def listed(**query: Any) -> tuple[list[str], int]:
        page = await run_stores.runs.query_run_keys(RunQuery(**{"dag_id": dag.dag_id, **query}))
        return [names[key.run_id] for key in page.items], page.total

    assert await listed() == (["r0", "r1", "r2", "r3"], 4)
    assert await listed(states=frozenset({RunState.SUCCESS, RunState.QUEUED})) == (["r0", "r3"], 2)
    assert await listed(limit=2, offset=1) == (["r1", "r2"], 4)
    assert await listed(limit=0) == ([], 4)
    assert await listed(offset=9) == ([], 4)
    assert await listed(run_after=TimeRange(gte=at(28), lt=at(30))) == (["r1", "r2"], 2)
    assert await listed(start_date=TimeRange(gt=at(10))) == (["r1", "r2"], 2)
    assert await listed(end_date=TimeRange(lte=at(13))) == (["r0"], 1)
    assert await listed(updated_at=TimeRange(gte=at(13))) == (["r0", "r1"], 2)
    assert await listed(run_id_pattern="R1_|r3") == (["r1", "r3"], 2)
    assert await listed(run_id_prefix_pattern="r2_") == (["r2"], 1)
    # The listed keys are the stored runs'.
    page = await run_stores.runs.query_run_keys(RunQuery(dag_id=dag.dag_id, limit=1))
    assert [(key.dag_id, key.run_id) for key in page.items] == [(dag.dag_id, made[0].run_id)]
    assert await run_stores.runs.query_run_keys(RunQuery(dag_id=unique("nodag"))) == type(page)(
        items=[], total=0
    )


async def test_query_runs_orders_as_airflow(run_stores: RunStores) -> None:
    dag, made = await _runs(run_stores)
    names = {run.run_id: f"r{i}" for i, run in enumerate(made)}

    async def ordered(*keys: tuple[RunField, bool]) -> list[str]:
        order = tuple(Sort(field=field, descending=desc) for field, desc in keys)
        page = await run_stores.runs.query_run_keys(RunQuery(dag_id=dag.dag_id, order_by=order))
        return [names[key.run_id] for key in page.items]

    assert await ordered((RunField.ID, True)) == ["r3", "r2", "r1", "r0"]
    assert await ordered((RunField.RUN_AFTER, False)) == ["r3", "r2", "r1", "r0"]
    assert await ordered((RunField.CONF, False)) == ["r3", "r2", "r1", "r0"]
    assert await ordered((RunField.STATE, False), (RunField.ID, False)) == ["r1", "r3", "r2", "r0"]
    # Missing values: after every value ascending, before every value descending.
    assert await ordered((RunField.START_DATE, False), (RunField.ID, False)) == ["r0", "r1", "r2", "r3"]
    assert await ordered((RunField.START_DATE, True), (RunField.ID, False)) == ["r3", "r2", "r1", "r0"]
    assert await ordered((RunField.END_DATE, True), (RunField.ID, False)) == ["r2", "r3", "r1", "r0"]
    assert await ordered((RunField.DURATION, False), (RunField.ID, False)) == ["r0", "r1", "r2", "r3"]
    assert await ordered((RunField.DURATION, True), (RunField.ID, True)) == ["r3", "r2", "r1", "r0"]
    # Null on every run: orders nothing, the next key decides.
    assert await ordered((RunField.LOGICAL_DATE, True), (RunField.ID, True)) == ["r3", "r2", "r1", "r0"]
    assert await ordered((RunField.RUN_ID, True)) == ["r3", "r2", "r1", "r0"]
    assert await ordered((RunField.DAG_ID, False), (RunField.UPDATED_AT, True)) == ["r1", "r0", "r2", "r3"]


async def test_query_runs_of_every_dag(run_stores: RunStores) -> None:
    token = unique("every")
    first = await register(run_stores.dags, unique("dag"), spec())
    second = await register(run_stores.dags, unique("dag"), spec())
    made: list[Run] = []
    for dag in (first, second, first):
        run = make_run(dag, f"{token}_{len(made)}")
        await run_stores.runs.create_run(run, make_tis(run, ["t"]))
        made.append(run)
        await asyncio.sleep(0.002)  # distinct creation times
    page = await run_stores.runs.query_run_keys(
        RunQuery(dag_id=None, run_id_prefix_pattern=token, order_by=(Sort(field=RunField.ID),))
    )
    assert [(key.dag_id, key.run_id) for key in page.items] == [(r.dag_id, r.run_id) for r in made]
    assert page.total == 3


async def test_a_listed_runs_size_is_the_bytes_of_its_conf_and_outcome(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    conf = {"text": "é" * 100}  # 200 bytes of UTF-8, 100 characters: a store counting characters is short
    run = make_run(dag, unique("r"), conf=conf)
    await run_stores.runs.create_run(run, make_tis(run, ["t"]))
    (key,) = (await run_stores.runs.query_run_keys(RunQuery(dag_id=dag.dag_id))).items
    stored = await run_stores.runs.get_run(dag.dag_id, run.run_id)
    assert stored is not None and stored.outcome is None
    assert key.size == len(msgspec.json.encode(stored.conf))
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        await unit.settle(Outcome(state=RunState.SUCCESS, results={"t": "é"}), RunState.SUCCESS, now=at(1))
    (key,) = (await run_stores.runs.query_run_keys(RunQuery(dag_id=dag.dag_id))).items
    ended = await run_stores.runs.get_run(dag.dag_id, run.run_id)
    assert ended is not None and ended.outcome is not None
    assert key.size == len(msgspec.json.encode(ended.conf)) + len(msgspec.json.encode(ended.outcome))


async def test_get_runs_answers_the_runs_of_the_keys_that_exist_in_their_order(run_stores: RunStores) -> None:
    first = await register(run_stores.dags, unique("dag"), spec())
    second = await register(run_stores.dags, unique("dag"), spec())
    made = []
    # The same run ids in two DAGs: a pair is matched whole, never a DAG of one key with a run of another.
    for dag in (first, second):
        for run_id in ("a", "b"):
            run = make_run(dag, run_id, conf={"of": dag.dag_id})
            await run_stores.runs.create_run(run, make_tis(run, ["t"]))
            made.append(run)
    keys = [(second.dag_id, "b"), (first.dag_id, "a"), (first.dag_id, "nope"), (second.dag_id, "a")]
    got = await run_stores.runs.get_runs(keys)
    assert [(run.dag_id, run.run_id, run.conf["of"]) for run in got] == [
        (second.dag_id, "b", second.dag_id),
        (first.dag_id, "a", first.dag_id),
        (second.dag_id, "a", second.dag_id),
    ]
    assert got[1] == await run_stores.runs.get_run(first.dag_id, "a")
    assert await run_stores.runs.get_runs([]) == []
