"""The RunStore contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from stateport.domain.errors import Conflict, NotFound
from stateport.domain.ids import uuid7
from stateport.domain.models import (
    HELD_MAX_ACTIVE,
    DagSpec,
    DagVersion,
    Outcome,
    Run,
    RunState,
    TaskSpec,
    TIState,
)
from stateport.domain.ports import RunStores
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


async def test_create_run_round_trips(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="a"), TaskSpec(task_id="b")))
    run = make_run(dag, key=unique("key"))
    created = await run_stores.runs.create_run(run, make_tis(run, ["a", "b"]))
    assert created == run
    assert await run_stores.runs.get_run(dag.dag_id, run.run_id) == run
    assert await run_stores.runs.get_run(dag.dag_id, unique("run")) is None
    assert [ti.task_id for ti in await run_stores.runs.list_task_instances(dag.dag_id, run.run_id)] == [
        "a",
        "b",
    ]


async def test_a_run_id_that_exists_is_a_conflict(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    run = make_run(dag)
    await run_stores.runs.create_run(run, make_tis(run, ["t"]))
    again = make_run(dag, run.run_id, conf={"other": True})
    with pytest.raises(
        Conflict, match=f"DAG run '{run.run_id}' already exists for DAG '{dag.dag_id}': wait for it by its id"
    ):
        await run_stores.runs.create_run(again, make_tis(again, ["t"]))
    assert await run_stores.runs.get_run(dag.dag_id, run.run_id) == run
    assert len(await run_stores.runs.list_task_instances(dag.dag_id, run.run_id)) == 1


async def test_the_same_run_id_in_two_dags_is_two_runs(run_stores: RunStores) -> None:
    run_id = unique("run")
    for dag_id in (unique("dag"), unique("dag")):
        dag = await register(run_stores.dags, dag_id, spec())
        run = make_run(dag, run_id)
        assert await run_stores.runs.create_run(run, make_tis(run, ["t"])) == run


async def test_an_idempotency_key_returns_the_first_run_and_creates_nothing(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    key = unique("key")
    first = msgspec.structs.replace(make_run(dag, key=key), request_hash="a" * 64)
    await run_stores.runs.create_run(first, make_tis(first, ["t"]))
    second = msgspec.structs.replace(make_run(dag, key=key, conf={"second": True}), request_hash="b" * 64)
    # The first run, with the request hash it was created with (the caller tells the requests apart).
    assert await run_stores.runs.create_run(second, make_tis(second, ["t"])) == first
    assert await run_stores.runs.get_run(dag.dag_id, first.run_id) == first
    assert await run_stores.runs.get_run(dag.dag_id, second.run_id) is None
    assert await run_stores.runs.list_task_instances(dag.dag_id, second.run_id) == []
    # The key belongs to the DAG: another DAG may use it for its own run.
    other = await register(run_stores.dags, unique("dag"), spec())
    third = make_run(other, key=key)
    assert await run_stores.runs.create_run(third, make_tis(third, ["t"])) == third


async def test_concurrent_creates_with_one_key_make_one_run(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    key = unique("key")
    runs = [make_run(dag, key=key) for _ in range(8)]
    results = await asyncio.gather(*(run_stores.runs.create_run(run, make_tis(run, ["t"])) for run in runs))
    assert len({r.run_id for r in results}) == 1
    winner = results[0]
    assert await run_stores.runs.get_run(dag.dag_id, winner.run_id) == winner
    for run in runs:
        if run.run_id != winner.run_id:
            assert await run_stores.runs.get_run(dag.dag_id, run.run_id) is None


async def test_runs_are_listed_by_creation_filtered_by_state_and_paged(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    made = []
    for _ in range(4):
        run = make_run(dag)
        await run_stores.runs.create_run(run, make_tis(run, ["t"]))
        made.append(run)
        await asyncio.sleep(0.002)  # distinct creation times
    first, second, third, fourth = made
    await finish(run_stores.runs, first)
    await finish(run_stores.runs, third, RunState.FAILED)

    async def ids(states: frozenset[RunState] = frozenset(), **page: Any) -> tuple[list[str], int]:
        options = {"newest_first": True, "limit": 100, "offset": 0, **page}
        runs, total = await run_stores.runs.list_runs(dag.dag_id, states=states, **options)
        return [run.run_id for run in runs], total

    assert await ids() == ([r.run_id for r in reversed(made)], 4)
    assert await ids(newest_first=False, limit=2, offset=1) == ([second.run_id, third.run_id], 4)
    assert await ids(frozenset({RunState.SUCCESS})) == ([first.run_id], 1)
    done = frozenset({RunState.SUCCESS, RunState.FAILED})
    assert await ids(done) == ([third.run_id, first.run_id], 2)
    assert await ids(done, offset=5) == ([], 2)
    assert await ids(frozenset({RunState.QUEUED})) == ([fourth.run_id, second.run_id], 2)
    (listed,), _ = await run_stores.runs.list_runs(
        dag.dag_id, states=frozenset(), newest_first=True, limit=1, offset=0
    )
    assert listed == await run_stores.runs.get_run(dag.dag_id, fourth.run_id)
    assert await run_stores.runs.list_runs(
        unique("nodag"), states=frozenset(), newest_first=True, limit=10, offset=0
    ) == ([], 0)


async def test_task_instances_are_listed_by_task_map_index_and_try(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="b"), TaskSpec(task_id="a")))
    run = make_run(dag)
    await run_stores.runs.create_run(run, make_tis(run, ["b"], map_index=1) + make_tis(run, ["a"]))
    await add_task_instances(
        run_stores.runs,
        make_tis(run, ["b"], map_index=0, try_number=2)
        + make_tis(run, ["b"], map_index=0)
        + make_tis(run, ["B"], map_index=-1)
        + make_tis(run, ["b"], map_index=-1),
    )
    listed = await run_stores.runs.list_task_instances(dag.dag_id, run.run_id)
    # Task ids order byte-wise ("B" before "a"), whatever the database's locale.
    assert [(ti.task_id, ti.map_index, ti.try_number) for ti in listed] == [
        ("B", -1, 1),
        ("a", -1, 1),
        ("b", -1, 1),
        ("b", 0, 1),
        ("b", 0, 2),
        ("b", 1, 1),
    ]


async def test_get_task_instance_round_trips(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    run = make_run(dag)
    (ti,) = make_tis(run, ["t"])
    await run_stores.runs.create_run(run, [ti])
    assert await run_stores.runs.get_task_instance(ti.id) == ti
    assert await run_stores.runs.get_task_instance(uuid7()) is None


async def test_add_task_instances_conflicts_with_an_existing_try(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec())
    run = make_run(dag)
    (ti,) = make_tis(run, ["t"])
    await run_stores.runs.create_run(run, [ti])
    retry = make_tis(run, ["t"], try_number=2)
    await add_task_instances(run_stores.runs, retry)
    assert await run_stores.runs.get_task_instance(retry[0].id) == retry[0]
    fresh = make_tis(run, ["t"], map_index=5)
    with pytest.raises(Conflict):
        await add_task_instances(run_stores.runs, fresh + make_tis(run, ["t"], try_number=2))
    # All or nothing: the fresh one was not added either.
    assert await run_stores.runs.get_task_instance(fresh[0].id) is None


async def test_a_locked_run_applies_compare_and_set_changes_together(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 2)
    at = now()
    outcome = Outcome(state=RunState.SUCCESS, results={"t000": 1})
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert unit.run == run
        assert [ti.id for ti in await unit.task_instances()] == [ti.id for ti in tis]
        assert await unit.transition(tis[0].id, TIState.QUEUED, TIState.SKIPPED, now=at)
        assert not await unit.transition(tis[0].id, TIState.QUEUED, TIState.FAILED, now=at)
        assert (await unit.settle(outcome, None, now=at))[0]
        assert not (
            await unit.settle(Outcome(state=RunState.FAILED, failed_task="x", reason="y"), None, now=at)
        )[0]
        assert (await unit.settle(None, RunState.RUNNING, now=at))[1]
        assert not (await unit.settle(None, RunState.RUNNING, now=at))[1]
        (extra,) = make_tis(run, ["t001"], try_number=2)
        await unit.add_task_instances([extra], now=at)
    stored = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert stored is not None and stored.outcome == outcome and stored.state is RunState.RUNNING
    skipped = await run_stores.runs.get_task_instance(tis[0].id)
    assert skipped is not None and skipped.state is TIState.SKIPPED and skipped.ended_at == at
    assert await run_stores.runs.get_task_instance(extra.id) == extra


async def test_a_locked_run_settles_its_outcome_and_state_in_one_call(run_stores: RunStores) -> None:
    # The last report of a run sets both at once: each is applied by its own rule.
    run, _ = await queued_run(run_stores, 1)
    at, later = now(), now() + timedelta(seconds=5)
    outcome = Outcome(state=RunState.SUCCESS, results={"t000": [1, 2]})
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.settle(outcome, RunState.SUCCESS, now=at) == (True, True)
        assert unit.run.outcome == outcome and unit.run.state is RunState.SUCCESS and unit.run.ended_at == at
        # Nothing left to change: an outcome never changes, the state is already success.
        other = Outcome(state=RunState.FAILED, failed_task="t000", reason="late")
        assert await unit.settle(other, RunState.SUCCESS, now=later) == (False, False)
        assert await unit.settle(None, None, now=later) == (False, False)
    stored = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert stored is not None and stored == unit.run
    assert stored.started_at is None  # it never ran: success does not make it started
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        # The state moves on, the outcome stays; ended_at is cleared by a state other than success or failed.
        assert await unit.settle(other, RunState.RUNNING, now=later) == (False, True)
        assert unit.run.outcome == outcome and unit.run.started_at == later and unit.run.ended_at is None
    assert await run_stores.runs.get_run(run.dag_id, run.run_id) == unit.run


async def test_a_locked_runs_task_instances_include_its_own_writes(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 3)
    at = now()
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        before = await unit.task_instances()
        assert await unit.transition(tis[1].id, TIState.QUEUED, TIState.FAILED, now=at, error="boom")
        (retry,) = make_tis(run, [tis[1].task_id], try_number=2)
        await unit.add_task_instances([retry], now=at)
        seen = await unit.task_instances()
    # What the unit saw of its own writes is exactly what a fresh read finds after the commit.
    assert seen == await run_stores.runs.list_task_instances(run.dag_id, run.run_id)
    assert len(seen) == len(before) + 1
    failed = next(ti for ti in seen if ti.id == tis[1].id)
    assert failed.state is TIState.FAILED and failed.error == "boom" and failed.ended_at == at


async def test_a_locked_runs_task_instances_stay_in_list_order_through_its_writes(
    run_stores: RunStores,
) -> None:
    # A unit may keep what it read across its own writes (a report reads the run's task instances twice):
    # each read is still every try in list order, as a fresh read lists them, whatever was written between.
    run, tis = await queued_run(run_stores, 3)
    at = now()
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        (await unit.task_instances()).clear()  # the caller's list: the unit's own is left as it was
        assert await unit.transition(tis[2].id, TIState.QUEUED, TIState.FAILED, now=at, error="boom")
        assert [ti.id for ti in await unit.task_instances()] == [ti.id for ti in tis]
        # A retry of the first task and a mapped instance of the second sort in between the others.
        (retry,) = make_tis(run, [tis[0].task_id], try_number=2)
        (mapped,) = make_tis(run, [tis[1].task_id], map_index=0)
        await unit.add_task_instances([mapped, retry], now=at)
        listed = await unit.task_instances()
        assert [ti.id for ti in listed] == [tis[0].id, retry.id, tis[1].id, mapped.id, tis[2].id]
        assigned = await unit.assign(retry.id, TIState.SCHEDULED, "w1", now=at, lease_until=at)
        assert assigned is not None and assigned.state is TIState.RUNNING
        assert await unit.transition(tis[1].id, TIState.QUEUED, TIState.SKIPPED, now=at)
        seen = await unit.task_instances()
    assert seen == await run_stores.runs.list_task_instances(run.dag_id, run.run_id)
    assert [ti.id for ti in seen] == [ti.id for ti in listed]
    assert [ti.state for ti in seen] == [
        TIState.QUEUED,
        TIState.RUNNING,
        TIState.SKIPPED,
        TIState.SCHEDULED,
        TIState.FAILED,
    ]


async def test_a_locked_run_rolls_back_when_the_block_raises(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 1)
    with pytest.raises(RuntimeError):
        async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
            await unit.transition(tis[0].id, TIState.QUEUED, TIState.SKIPPED, now=now())
            await unit.settle(Outcome(state=RunState.SUCCESS), None, now=now())
            raise RuntimeError("abandon")
    assert await run_stores.runs.get_task_instance(tis[0].id) == tis[0]
    stored = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert stored is not None and stored.outcome is None


async def test_a_locked_run_is_changed_at_the_now_it_is_given(run_stores: RunStores) -> None:
    # Far from the real clock, so that a store stamping its own time could not pass. The run's last change
    # is not in the model; retention reads it.
    created = datetime(2001, 1, 1, tzinfo=UTC)
    ended, settled = created + timedelta(hours=1), created + timedelta(hours=2)
    tick = timedelta(microseconds=1)
    run, _ = await queued_run(run_stores, 1, at=created)
    key = await finish(run_stores.runs, run, at=ended)
    assert key not in await run_stores.retention.finished_runs(ended_before=ended, limit=10_000)
    assert key in await run_stores.retention.finished_runs(ended_before=ended + tick, limit=10_000)
    async with run_stores.runs.lock_run(*key) as unit:
        assert (await unit.settle(Outcome(state=RunState.SUCCESS), None, now=settled))[0]
    assert not await run_stores.retention.delete_run(*key, ended_before=settled)
    assert await run_stores.retention.delete_run(*key, ended_before=settled + tick)


async def test_locking_a_missing_run_is_not_found(run_stores: RunStores) -> None:
    with pytest.raises(NotFound):
        async with run_stores.runs.lock_run(unique("dag"), unique("run")):
            pass


async def test_two_locks_of_one_run_do_not_interleave(run_stores: RunStores) -> None:
    run, _ = await queued_run(run_stores, 1)
    events: list[str] = []

    async def hold(name: str) -> None:
        async with run_stores.runs.lock_run(run.dag_id, run.run_id):
            events.append(f"{name} in")
            await asyncio.sleep(0.1)
            events.append(f"{name} out")

    await asyncio.gather(hold("a"), hold("b"))
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


async def _full_dag(run_stores: RunStores, at: datetime) -> DagVersion:
    """A DAG of ``max_active_runs`` 1 with one run active already. Every server process's sweeper admits
    the held runs of each DAG it finds room in (``Sweeper.admit_held``), those of the session's servers on
    this database included: here it finds none, so only the test admits (an admission by another test's
    server once failed a test's admit)."""
    dag = await register(
        run_stores.dags, unique("dag"), DagSpec(tasks=[TaskSpec(task_id="t")], max_active_runs=1)
    )
    active = make_run(dag, at=at - timedelta(seconds=1))
    assert await run_stores.runs.create_run(active, make_tis(active, ["t"])) == active
    return dag


async def _hold(run_stores: RunStores, dag: DagVersion, caller: str | None, at: datetime) -> str:
    """A run of ``dag`` held back by max_active_runs, triggered by ``caller`` at ``at``; its run_id."""
    run = msgspec.structs.replace(make_run(dag, caller=caller, at=at), held_by=HELD_MAX_ACTIVE)
    assert await run_stores.runs.create_run(run, make_tis(run, ["t"])) == run
    return run.run_id


async def test_callers_take_turns_among_held_runs(run_stores: RunStores) -> None:
    # Held runs were admitted oldest first, whoever triggered them: 100 runs of one caller held another
    # caller's back behind every one of them. Each caller's held runs follow one another, and a caller
    # holding none goes level with the next to be admitted (the older first).
    t0 = now()
    dag = await _full_dag(run_stores, t0)
    x = [await _hold(run_stores, dag, "x" * 32, t0 + timedelta(seconds=i)) for i in range(3)]
    y = [await _hold(run_stores, dag, "y" * 32, t0 + timedelta(seconds=3 + i)) for i in range(2)]
    unknown = await _hold(run_stores, dag, None, t0 + timedelta(seconds=5))  # the CLI's: no caller
    other_dag = await _full_dag(run_stores, t0)
    await _hold(run_stores, other_dag, "y" * 32, t0 + timedelta(seconds=6))
    # x's places 0-2, y's 0-1, the unknown caller's 0; equal places, oldest first.
    assert await run_stores.runs.held_runs(dag.dag_id, limit=10) == [x[0], y[0], unknown, x[1], y[1], x[2]]
    assert await run_stores.runs.held_runs(dag.dag_id, limit=2) == [x[0], y[0]]


async def test_a_caller_holding_none_goes_right_after_the_next_to_be_admitted(run_stores: RunStores) -> None:
    t0 = now()
    # max_active_runs 2: a sweeper of another server on this database (``Sweeper.admit_held``) admits the
    # same two runs the test does, if it comes first (it did once, and the test's admit answered False).
    dag = await register(
        run_stores.dags, unique("dag"), DagSpec(tasks=[TaskSpec(task_id="t")], max_active_runs=2)
    )
    x = [await _hold(run_stores, dag, "x" * 32, t0 + timedelta(seconds=i)) for i in range(4)]
    for run_id in x[:2]:
        async with run_stores.runs.lock_run(dag.dag_id, run_id) as unit:
            await unit.admit(2, now=t0 + timedelta(seconds=5))
    assert await run_stores.runs.held_runs(dag.dag_id, limit=10) == [x[2], x[3]]
    # Where the line is: one past the highest place admitted (x[1]'s 1), not the lowest held (x[2]'s 2 too).
    y = await _hold(run_stores, dag, "y" * 32, t0 + timedelta(seconds=6))
    assert await run_stores.runs.held_runs(dag.dag_id, limit=10) == [x[2], y, x[3]]
    # x's admitted runs finished: the line is the lowest place held.
    for run_id in x[:2]:
        await finish(
            run_stores.runs, await _run(run_stores, dag.dag_id, run_id), at=t0 + timedelta(seconds=7)
        )
    z = await _hold(run_stores, dag, "z" * 32, t0 + timedelta(seconds=8))
    assert await run_stores.runs.held_runs(dag.dag_id, limit=10) == [x[2], y, z, x[3]]


async def _run(run_stores: RunStores, dag_id: str, run_id: str) -> Run:
    run = await run_stores.runs.get_run(dag_id, run_id)
    assert run is not None
    return run


async def test_a_running_try_keeps_xcoms_under_its_own_keys_until_its_run_goes(run_stores: RunStores) -> None:
    store = run_stores.runs
    run, tis = await queued_run(run_stores, 2)
    running, queued = tis
    at = now()
    async with store.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.assign(running.id, TIState.QUEUED, "w1", now=at, lease_until=at + timedelta(60))
    assert await store.push_xcom(running.id, "n", b'{"a":[1,2]}', max_keys=2)
    assert await store.push_xcom(running.id, "n", b"3", max_keys=2)  # replaced, still one key
    assert await store.push_xcom(running.id, "trigger_run_id", b'"r1"', max_keys=2)
    # A third key is one too many; a key it holds may still be pushed again.
    assert not await store.push_xcom(running.id, "third", b"1", max_keys=2)
    assert await store.push_xcom(running.id, "trigger_run_id", b'"r2"', max_keys=2)
    assert await store.xcom(running.id, "n") == b"3"
    assert await store.xcom(running.id, "trigger_run_id") == b'"r2"'
    assert await store.xcom(running.id, "third") is None
    # A try that is not running keeps nothing.
    assert not await store.push_xcom(queued.id, "n", b"1", max_keys=2)
    assert await store.xcom(queued.id, "n") is None

    assert await store.delete_xcom(running.id, "n")
    assert not await store.delete_xcom(running.id, "n")
    assert await store.xcom(running.id, "n") is None
    # The try's end keeps them (a downstream task pulls them then); the run's going takes them.
    async with store.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.transition(running.id, TIState.RUNNING, TIState.SUCCESS, now=at)
    assert await store.xcom(running.id, "trigger_run_id") == b'"r2"'
    assert await store.delete_run(run.dag_id, run.run_id, states=frozenset())
    assert await store.xcom(running.id, "trigger_run_id") is None
