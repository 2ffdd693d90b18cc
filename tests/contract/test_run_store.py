"""The RunStore contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from stateport.domain.dags import dag_version, validate_spec
from stateport.domain.errors import Conflict, NotFound
from stateport.domain.ids import uuid7
from stateport.domain.models import (
    Asset,
    AssetRef,
    Dag,
    DagSpec,
    Outcome,
    Run,
    RunState,
    TaskInstance,
    TaskScope,
    TaskSpec,
    TIState,
)
from stateport.domain.ports import RunStore
from tests.services import unique

RUN_STORES = ["sqlite", "postgres"]


@pytest.fixture(params=RUN_STORES)
def run_store(request: pytest.FixtureRequest) -> RunStore:
    store: RunStore = request.getfixturevalue(f"{request.param}_run_store")
    return store


def now() -> datetime:
    return datetime.now(UTC)


def spec(*tasks: TaskSpec, result_task: str | None = None) -> DagSpec:
    return DagSpec(tasks=list(tasks) or [TaskSpec(task_id="t")], result_task=result_task)


async def register(store: RunStore, dag_id: str, dag_spec: DagSpec, *, at: datetime | None = None) -> Dag:
    dag = Dag(dag_id=dag_id, version=dag_version(dag_spec), spec=dag_spec, created_at=at or now())
    return await store.put_dag(dag, validate_spec(dag_spec))


def make_run(
    dag: Dag, run_id: str | None = None, *, key: str | None = None, conf: dict[str, Any] | None = None
) -> Run:
    t = now()
    return Run(
        dag_id=dag.dag_id,
        run_id=run_id or unique("run"),
        dag_version=dag.version,
        conf=conf if conf is not None else {"n": 1, "nested": {"a": [1, "b", None]}},
        state=RunState.QUEUED,
        run_after=t - timedelta(seconds=1),
        created_at=t,
        idempotency_key=key,
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


# --- DAGs and assets ----------------------------------------------------------------------------------


async def test_get_dag_missing_is_none(run_store: RunStore) -> None:
    assert await run_store.get_dag(unique("dag")) is None
    dag = await register(run_store, unique("dag"), spec())
    assert await run_store.get_dag(dag.dag_id, "0" * 16) is None


async def test_put_dag_makes_the_version_current_and_keeps_old_ones(run_store: RunStore) -> None:
    dag_id = unique("dag")
    first_spec = spec(TaskSpec(task_id="a"))
    second_spec = spec(TaskSpec(task_id="a"), TaskSpec(task_id="b", upstream=["a"]), result_task="b")
    first = await register(run_store, dag_id, first_spec)
    assert first.version == dag_version(first_spec) and first.spec == first_spec
    second = await register(run_store, dag_id, second_spec)
    assert second.version != first.version
    current = await run_store.get_dag(dag_id)
    assert current is not None and current.version == second.version and current.spec == second_spec
    old = await run_store.get_dag(dag_id, first.version)
    assert old is not None and old.spec == first_spec and old.created_at == first.created_at
    # Putting an older version again makes it current; it keeps its first registration time.
    again = await register(run_store, dag_id, first_spec, at=now() + timedelta(hours=1))
    assert again.version == first.version and again.created_at == first.created_at
    current = await run_store.get_dag(dag_id)
    assert current is not None and current.version == first.version


async def test_put_dag_of_the_current_version_changes_nothing(run_store: RunStore) -> None:
    dag_id = unique("dag")
    dag_spec = spec(TaskSpec(task_id="a", outlets=[AssetRef(name=unique("asset"), uri=unique("s3://b/"))]))
    first = await register(run_store, dag_id, dag_spec)
    second = await register(run_store, dag_id, dag_spec, at=now() + timedelta(hours=1))
    assert second == first
    stored = await run_store.get_dag(dag_id)
    assert stored == first


async def test_put_dag_registers_assets_by_name_and_uri(run_store: RunStore) -> None:
    name, uri, plain = unique("orders"), unique("s3://bucket/orders"), unique("plain")
    await register(
        run_store, unique("dag"), spec(TaskSpec(task_id="a", inlets=[plain, AssetRef(name=name, uri=uri)]))
    )
    assert await run_store.get_asset(name=name) == Asset(name=name, uri=uri)
    assert await run_store.get_asset(uri=uri) == Asset(name=name, uri=uri)
    assert await run_store.get_asset(name=plain) == Asset(name=plain, uri=None)
    assert await run_store.get_asset(name=unique("nope")) is None
    assert await run_store.get_asset(uri=unique("s3://nope")) is None


async def test_an_asset_takes_a_new_uri_and_keeps_it_when_named_alone(run_store: RunStore) -> None:
    name = unique("asset")
    old_uri, new_uri = unique("s3://old"), unique("s3://new")
    await register(
        run_store, unique("dag"), spec(TaskSpec(task_id="a", outlets=[AssetRef(name=name, uri=old_uri)]))
    )
    await register(
        run_store, unique("dag"), spec(TaskSpec(task_id="b", outlets=[AssetRef(name=name, uri=new_uri)]))
    )
    assert await run_store.get_asset(name=name) == Asset(name=name, uri=new_uri)
    assert await run_store.get_asset(uri=old_uri) is None
    await register(run_store, unique("dag"), spec(TaskSpec(task_id="c", inlets=[name])))
    assert await run_store.get_asset(uri=new_uri) == Asset(name=name, uri=new_uri)


async def test_a_uri_used_by_another_asset_is_a_conflict_and_changes_nothing(run_store: RunStore) -> None:
    uri = unique("s3://shared")
    owner = unique("owner")
    await register(
        run_store, unique("dag"), spec(TaskSpec(task_id="a", outlets=[AssetRef(name=owner, uri=uri)]))
    )
    dag_id, intruder = unique("dag"), unique("intruder")
    with pytest.raises(Conflict):
        await register(
            run_store,
            dag_id,
            spec(TaskSpec(task_id="a", outlets=[unique("fresh"), AssetRef(name=intruder, uri=uri)])),
        )
    assert await run_store.get_dag(dag_id) is None
    assert await run_store.get_asset(name=intruder) is None
    assert await run_store.get_asset(uri=uri) == Asset(name=owner, uri=uri)


# --- runs -------------------------------------------------------------------------------------------------


async def test_create_run_round_trips(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec(TaskSpec(task_id="a"), TaskSpec(task_id="b")))
    run = make_run(dag, key=unique("key"))
    created = await run_store.create_run(run, make_tis(run, ["a", "b"]))
    assert created == run
    assert await run_store.get_run(dag.dag_id, run.run_id) == run
    assert await run_store.get_run(dag.dag_id, unique("run")) is None
    assert [ti.task_id for ti in await run_store.list_task_instances(dag.dag_id, run.run_id)] == ["a", "b"]


async def test_a_run_id_that_exists_is_a_conflict(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec())
    run = make_run(dag)
    await run_store.create_run(run, make_tis(run, ["t"]))
    again = make_run(dag, run.run_id, conf={"other": True})
    with pytest.raises(Conflict, match=f"DAG run '{run.run_id}' already exists for DAG '{dag.dag_id}'"):
        await run_store.create_run(again, make_tis(again, ["t"]))
    assert await run_store.get_run(dag.dag_id, run.run_id) == run
    assert len(await run_store.list_task_instances(dag.dag_id, run.run_id)) == 1


async def test_the_same_run_id_in_two_dags_is_two_runs(run_store: RunStore) -> None:
    run_id = unique("run")
    for dag_id in (unique("dag"), unique("dag")):
        dag = await register(run_store, dag_id, spec())
        run = make_run(dag, run_id)
        assert await run_store.create_run(run, make_tis(run, ["t"])) == run


async def test_an_idempotency_key_returns_the_first_run_and_creates_nothing(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec())
    key = unique("key")
    first = msgspec.structs.replace(make_run(dag, key=key), request_hash="a" * 64)
    await run_store.create_run(first, make_tis(first, ["t"]))
    second = msgspec.structs.replace(make_run(dag, key=key, conf={"second": True}), request_hash="b" * 64)
    # The first run, with the request hash it was created with (the caller tells the requests apart).
    assert await run_store.create_run(second, make_tis(second, ["t"])) == first
    assert await run_store.get_run(dag.dag_id, first.run_id) == first
    assert await run_store.get_run(dag.dag_id, second.run_id) is None
    assert await run_store.list_task_instances(dag.dag_id, second.run_id) == []
    # The key belongs to the DAG: another DAG may use it for its own run.
    other = await register(run_store, unique("dag"), spec())
    third = make_run(other, key=key)
    assert await run_store.create_run(third, make_tis(third, ["t"])) == third


async def test_concurrent_creates_with_one_key_make_one_run(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec())
    key = unique("key")
    runs = [make_run(dag, key=key) for _ in range(8)]
    results = await asyncio.gather(*(run_store.create_run(run, make_tis(run, ["t"])) for run in runs))
    assert len({r.run_id for r in results}) == 1
    winner = results[0]
    assert await run_store.get_run(dag.dag_id, winner.run_id) == winner
    for run in runs:
        if run.run_id != winner.run_id:
            assert await run_store.get_run(dag.dag_id, run.run_id) is None


# --- task instances -------------------------------------------------------------------------------------


async def test_runs_are_listed_by_creation_filtered_by_state_and_paged(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec())
    made = []
    for _ in range(4):
        run = make_run(dag)
        await run_store.create_run(run, make_tis(run, ["t"]))
        made.append(run)
        await asyncio.sleep(0.002)  # distinct creation times
    first, second, third, fourth = made
    await finish(run_store, first)
    await finish(run_store, third, RunState.FAILED)

    async def ids(states: frozenset[RunState] = frozenset(), **page: Any) -> tuple[list[str], int]:
        options = {"newest_first": True, "limit": 100, "offset": 0, **page}
        runs, total = await run_store.list_runs(dag.dag_id, states=states, **options)
        return [run.run_id for run in runs], total

    assert await ids() == ([r.run_id for r in reversed(made)], 4)
    assert await ids(newest_first=False, limit=2, offset=1) == ([second.run_id, third.run_id], 4)
    assert await ids(frozenset({RunState.SUCCESS})) == ([first.run_id], 1)
    done = frozenset({RunState.SUCCESS, RunState.FAILED})
    assert await ids(done) == ([third.run_id, first.run_id], 2)
    assert await ids(done, offset=5) == ([], 2)
    assert await ids(frozenset({RunState.QUEUED})) == ([fourth.run_id, second.run_id], 2)
    (listed,), _ = await run_store.list_runs(
        dag.dag_id, states=frozenset(), newest_first=True, limit=1, offset=0
    )
    assert listed == await run_store.get_run(dag.dag_id, fourth.run_id)
    assert await run_store.list_runs(
        unique("nodag"), states=frozenset(), newest_first=True, limit=10, offset=0
    ) == ([], 0)


async def test_task_instances_are_listed_by_task_map_index_and_try(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec(TaskSpec(task_id="b"), TaskSpec(task_id="a")))
    run = make_run(dag)
    await run_store.create_run(run, make_tis(run, ["b"], map_index=1) + make_tis(run, ["a"]))
    await run_store.add_task_instances(
        make_tis(run, ["b"], map_index=0, try_number=2)
        + make_tis(run, ["b"], map_index=0)
        + make_tis(run, ["B"], map_index=-1)
        + make_tis(run, ["b"], map_index=-1)
    )
    listed = await run_store.list_task_instances(dag.dag_id, run.run_id)
    # Task ids order byte-wise ("B" before "a"), whatever the database's locale.
    assert [(ti.task_id, ti.map_index, ti.try_number) for ti in listed] == [
        ("B", -1, 1),
        ("a", -1, 1),
        ("b", -1, 1),
        ("b", 0, 1),
        ("b", 0, 2),
        ("b", 1, 1),
    ]


async def test_get_task_instance_round_trips(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec())
    run = make_run(dag)
    (ti,) = make_tis(run, ["t"])
    await run_store.create_run(run, [ti])
    assert await run_store.get_task_instance(ti.id) == ti
    assert await run_store.get_task_instance(uuid7()) is None


async def test_add_task_instances_conflicts_with_an_existing_try(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec())
    run = make_run(dag)
    (ti,) = make_tis(run, ["t"])
    await run_store.create_run(run, [ti])
    retry = make_tis(run, ["t"], try_number=2)
    await run_store.add_task_instances(retry)
    assert await run_store.get_task_instance(retry[0].id) == retry[0]
    fresh = make_tis(run, ["t"], map_index=5)
    with pytest.raises(Conflict):
        await run_store.add_task_instances(fresh + make_tis(run, ["t"], try_number=2))
    # All or nothing: the fresh one was not added either.
    assert await run_store.get_task_instance(fresh[0].id) is None


async def test_get_binding_gives_the_scope_and_the_tasks_assets(run_store: RunStore) -> None:
    inlet, outlet, elsewhere = unique("in"), unique("out"), unique("else")
    dag = await register(
        run_store,
        unique("dag"),
        spec(
            TaskSpec(task_id="reader", inlets=[inlet], outlets=[AssetRef(name=outlet, uri=unique("s3://o"))]),
            TaskSpec(task_id="other", outlets=[elsewhere]),
        ),
    )
    run = make_run(dag)
    reader, other = make_tis(run, ["reader", "other"])
    await run_store.create_run(run, [reader, other])
    (mapped,) = make_tis(run, ["reader"], map_index=3)
    await run_store.add_task_instances([mapped])
    binding = await run_store.get_binding(reader.id)
    assert binding is not None
    assert binding.ti_id == reader.id
    assert binding.scope == TaskScope(dag_id=dag.dag_id, run_id=run.run_id, task_id="reader", map_index=-1)
    assert binding.assets == frozenset({inlet, outlet})
    mapped_binding = await run_store.get_binding(mapped.id)
    assert mapped_binding is not None and mapped_binding.scope.map_index == 3
    other_binding = await run_store.get_binding(other.id)
    assert other_binding is not None and other_binding.assets == frozenset({elsewhere})
    assert await run_store.get_binding(uuid7()) is None


async def test_a_binding_follows_the_runs_dag_version(run_store: RunStore) -> None:
    dag_id, old_asset, new_asset = unique("dag"), unique("old"), unique("new")
    old = await register(run_store, dag_id, spec(TaskSpec(task_id="t", outlets=[old_asset])))
    run = make_run(old)
    (ti,) = make_tis(run, ["t"])
    await run_store.create_run(run, [ti])
    await register(run_store, dag_id, spec(TaskSpec(task_id="t", outlets=[new_asset])))
    binding = await run_store.get_binding(ti.id)
    assert binding is not None and binding.assets == frozenset({old_asset})


async def test_task_exists_at_a_map_index_or_any(run_store: RunStore) -> None:
    dag = await register(run_store, unique("dag"), spec(TaskSpec(task_id="t"), TaskSpec(task_id="u")))
    run = make_run(dag)
    await run_store.create_run(run, make_tis(run, ["t"], map_index=2))

    def scope(task_id: str, map_index: int = -1) -> TaskScope:
        return TaskScope(dag_id=dag.dag_id, run_id=run.run_id, task_id=task_id, map_index=map_index)

    assert await run_store.task_exists(scope("t", 2)) is True
    assert await run_store.task_exists(scope("t", -1)) is False
    assert await run_store.task_exists(scope("t", -1), any_map_index=True) is True
    assert await run_store.task_exists(scope("u"), any_map_index=True) is False
    elsewhere = TaskScope(dag_id=dag.dag_id, run_id=unique("run"), task_id="t", map_index=2)
    assert await run_store.task_exists(elsewhere, any_map_index=True) is False


# --- the run engine: claims, leases, locked runs ------------------------------------------------------


async def queued_run(
    store: RunStore, count: int, *, queue: str | None = None
) -> tuple[Run, list[TaskInstance]]:
    """A run whose ``count`` task instances are queued on a fresh queue (or ``queue``)."""
    task_ids = [f"t{i:03d}" for i in range(count)]
    dag = await register(store, unique("dag"), spec(*(TaskSpec(task_id=t) for t in task_ids)))
    run = make_run(dag)
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
        )
        for t in task_ids
    ]
    await store.create_run(run, tis)
    return run, tis


async def test_a_claim_takes_the_oldest_queued_of_its_queue_and_starts_the_run(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 3)
    tis.sort(key=lambda ti: ti.id)  # uuid7: time-ordered to the millisecond, random within one
    other_run, others = await queued_run(run_store, 1)
    at = now()
    claimed = await run_store.claim(
        tis[0].queue, "w1", limit=2, now=at, lease_until=at + timedelta(seconds=30)
    )
    assert [ti.id for ti in claimed] == [tis[0].id, tis[1].id]
    for ti in claimed:
        assert ti.state is TIState.RUNNING and ti.lease_owner == "w1"
        assert ti.lease_expires_at == at + timedelta(seconds=30) and ti.started_at == at
        assert ti.timeout_s == 5.0
        assert await run_store.get_task_instance(ti.id) == ti
    got = await run_store.get_run(run.dag_id, run.run_id)
    assert got is not None and got.state is RunState.RUNNING
    untouched = await run_store.get_run(other_run.dag_id, other_run.run_id)
    assert untouched is not None and untouched.state is RunState.QUEUED
    assert (await run_store.get_task_instance(others[0].id)) == others[0]
    rest = await run_store.claim(tis[0].queue, "w2", limit=5, now=at, lease_until=at)
    assert [ti.id for ti in rest] == [tis[2].id]
    assert await run_store.claim(tis[0].queue, "w2", limit=5, now=at, lease_until=at) == []


async def test_concurrent_claimers_get_each_task_instance_exactly_once(run_store: RunStore) -> None:
    _, tis = await queued_run(run_store, 60)
    queue = tis[0].queue
    at = now()

    async def claimer(n: int) -> list[TaskInstance]:
        got: list[TaskInstance] = []
        while True:
            batch = await run_store.claim(queue, f"w{n}", limit=3, now=at, lease_until=at)
            if not batch:
                return got
            got += batch

    results = await asyncio.gather(*(claimer(n) for n in range(8)))
    ids = [ti.id for batch in results for ti in batch]
    assert len(ids) == 60 and set(ids) == {ti.id for ti in tis}


async def test_extend_lease_only_extends_a_running_task_instance(run_store: RunStore) -> None:
    _, tis = await queued_run(run_store, 2)
    at = now()
    (running,) = await run_store.claim(tis[0].queue, "w", limit=1, now=at, lease_until=at)
    later = at + timedelta(seconds=60)
    assert await run_store.extend_lease(running.id, later) is TIState.RUNNING
    stored = await run_store.get_task_instance(running.id)
    assert stored is not None and stored.lease_expires_at == later
    (waiting,) = [ti for ti in tis if ti.id != running.id]
    assert await run_store.extend_lease(waiting.id, later) is TIState.QUEUED
    queued = await run_store.get_task_instance(waiting.id)
    assert queued is not None and queued.lease_expires_at is None
    assert await run_store.extend_lease(uuid7(), later) is None


async def test_overdue_lists_expired_leases_and_timeouts(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 3)
    at = now()
    a, b = await run_store.claim(tis[0].queue, "w", limit=2, now=at, lease_until=at + timedelta(seconds=30))

    async def mine(when: datetime) -> set[Any]:
        # The PostgreSQL database is shared: look only at this test's run.
        return {ti.id for ti in await run_store.overdue(when, limit=100_000) if ti.run_id == run.run_id}

    assert await mine(at + timedelta(seconds=4)) == set()
    assert await mine(at + timedelta(seconds=6)) == {a.id, b.id}  # past the 5 s timeout
    await run_store.extend_lease(a.id, at + timedelta(seconds=100))
    async with run_store.lock_run(run.dag_id, run.run_id) as unit:
        # A finished try is never overdue.
        assert await unit.transition(b.id, TIState.RUNNING, TIState.SUCCESS, now=at, result=b"1")
    assert await mine(at + timedelta(seconds=6)) == {a.id}
    assert await mine(at + timedelta(seconds=1)) == set()


async def test_a_locked_run_applies_compare_and_set_changes_together(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 2)
    at = now()
    outcome = Outcome(state=RunState.SUCCESS, results={"t000": 1})
    async with run_store.lock_run(run.dag_id, run.run_id) as unit:
        assert unit.run == run
        assert [ti.id for ti in await unit.task_instances()] == [ti.id for ti in tis]
        assert await unit.transition(tis[0].id, TIState.QUEUED, TIState.SKIPPED, now=at)
        assert not await unit.transition(tis[0].id, TIState.QUEUED, TIState.FAILED, now=at)
        assert await unit.set_outcome(outcome)
        assert not await unit.set_outcome(Outcome(state=RunState.FAILED, failed_task="x", reason="y"))
        assert await unit.set_state(RunState.RUNNING) and not await unit.set_state(RunState.RUNNING)
        (extra,) = make_tis(run, ["t001"], try_number=2)
        await unit.add_task_instances([extra])
    stored = await run_store.get_run(run.dag_id, run.run_id)
    assert stored is not None and stored.outcome == outcome and stored.state is RunState.RUNNING
    skipped = await run_store.get_task_instance(tis[0].id)
    assert skipped is not None and skipped.state is TIState.SKIPPED and skipped.ended_at == at
    assert await run_store.get_task_instance(extra.id) == extra


async def test_a_locked_runs_task_instances_include_its_own_writes(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 3)
    at = now()
    async with run_store.lock_run(run.dag_id, run.run_id) as unit:
        before = await unit.task_instances()
        assert await unit.transition(tis[1].id, TIState.QUEUED, TIState.FAILED, now=at, error="boom")
        (retry,) = make_tis(run, [tis[1].task_id], try_number=2)
        await unit.add_task_instances([retry])
        seen = await unit.task_instances()
    # What the unit saw of its own writes is exactly what a fresh read finds after the commit.
    assert seen == await run_store.list_task_instances(run.dag_id, run.run_id)
    assert len(seen) == len(before) + 1
    failed = next(ti for ti in seen if ti.id == tis[1].id)
    assert failed.state is TIState.FAILED and failed.error == "boom" and failed.ended_at == at


async def test_claiming_from_a_running_run_leaves_the_run_as_it_is(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 2)
    at = now()
    until = at + timedelta(seconds=30)
    await run_store.claim(tis[0].queue, "w1", limit=1, now=at, lease_until=until)
    started = await run_store.get_run(run.dag_id, run.run_id)
    assert started is not None and started.state is RunState.RUNNING
    (second,) = await run_store.claim(tis[0].queue, "w2", limit=1, now=at, lease_until=until)
    assert second.lease_owner == "w2"
    assert await run_store.get_run(run.dag_id, run.run_id) == started


async def test_a_claim_starts_its_own_run_when_other_runs_are_started_already(run_store: RunStore) -> None:
    # SQLite once read the run state of "WHERE dag_id = dag_id" (any run) in the claim's RETURNING: a run
    # claimed after another run had started stayed queued.
    first, first_tis = await queued_run(run_store, 1)
    queue = first_tis[0].queue
    second, _ = await queued_run(run_store, 1, queue=queue)
    third, _ = await queued_run(run_store, 1, queue=queue)
    at = now()
    until = at + timedelta(seconds=30)
    for run in (first, second, third):
        (claimed,) = await run_store.claim(queue, "w1", limit=1, now=at, lease_until=until)
        assert claimed.run_id == run.run_id
        got = await run_store.get_run(run.dag_id, run.run_id)
        assert got is not None and got.state is RunState.RUNNING


async def test_a_locked_run_rolls_back_when_the_block_raises(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 1)
    with pytest.raises(RuntimeError):
        async with run_store.lock_run(run.dag_id, run.run_id) as unit:
            await unit.transition(tis[0].id, TIState.QUEUED, TIState.SKIPPED, now=now())
            await unit.set_outcome(Outcome(state=RunState.SUCCESS))
            raise RuntimeError("abandon")
    assert await run_store.get_task_instance(tis[0].id) == tis[0]
    stored = await run_store.get_run(run.dag_id, run.run_id)
    assert stored is not None and stored.outcome is None


async def test_locking_a_missing_run_is_not_found(run_store: RunStore) -> None:
    with pytest.raises(NotFound):
        async with run_store.lock_run(unique("dag"), unique("run")):
            pass


async def test_two_locks_of_one_run_do_not_interleave(run_store: RunStore) -> None:
    run, _ = await queued_run(run_store, 1)
    events: list[str] = []

    async def hold(name: str) -> None:
        async with run_store.lock_run(run.dag_id, run.run_id):
            events.append(f"{name} in")
            await asyncio.sleep(0.1)
            events.append(f"{name} out")

    await asyncio.gather(hold("a"), hold("b"))
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


# --- retention ------------------------------------------------------------------------------------------


async def finish(store: RunStore, run: Run, state: RunState = RunState.SUCCESS) -> tuple[str, str]:
    async with store.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.set_state(state)
    return run.dag_id, run.run_id


async def delete_every_finished_run(store: RunStore, before: datetime) -> None:
    """Empty the store of finished runs (the PostgreSQL database is shared by every test and test run)."""
    while batch := await store.finished_runs(ended_before=before, limit=500):
        for dag_id, run_id in batch:
            assert await store.delete_run(dag_id, run_id, ended_before=before)


async def test_finished_runs_changed_before_the_cutoff_are_listed_oldest_first(run_store: RunStore) -> None:
    await delete_every_finished_run(run_store, now())
    first = await finish(run_store, (await queued_run(run_store, 1))[0])
    await queued_run(run_store, 1)  # queued, so never listed
    running, tis = await queued_run(run_store, 1)
    at = now()
    await run_store.claim(tis[0].queue, "w", limit=1, now=at, lease_until=at + timedelta(seconds=30))
    await asyncio.sleep(0.002)
    second = await finish(run_store, (await queued_run(run_store, 1))[0], RunState.FAILED)
    await asyncio.sleep(0.002)
    cutoff = now()
    await asyncio.sleep(0.002)
    await finish(run_store, (await queued_run(run_store, 1))[0])  # finished after the cutoff
    assert await run_store.finished_runs(ended_before=cutoff, limit=10) == [first, second]
    assert await run_store.finished_runs(ended_before=cutoff, limit=1) == [first]
    assert (await run_store.get_run(running.dag_id, running.run_id)) is not None


async def test_delete_run_takes_a_finished_run_with_its_task_instances(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 2)
    key = await finish(run_store, run)
    assert not await run_store.delete_run(*key, ended_before=now() - timedelta(hours=1))  # too recent
    assert await run_store.get_run(*key) is not None
    assert await run_store.delete_run(*key, ended_before=now() + timedelta(seconds=1))
    assert await run_store.get_run(*key) is None
    assert await run_store.list_task_instances(*key) == []
    assert await run_store.get_task_instance(tis[0].id) is None
    assert await run_store.get_binding(tis[1].id) is None
    assert not await run_store.delete_run(*key, ended_before=now() + timedelta(seconds=1))  # gone already
    # The DAG stays, and the run id may be used again.
    dag = await run_store.get_dag(run.dag_id)
    assert dag is not None
    assert await run_store.create_run(run, make_tis(run, ["t000"])) == run


async def test_an_unfinished_run_is_never_deleted(run_store: RunStore) -> None:
    run, tis = await queued_run(run_store, 1)
    later = now() + timedelta(days=1)
    assert not await run_store.delete_run(run.dag_id, run.run_id, ended_before=later)
    assert (run.dag_id, run.run_id) not in await run_store.finished_runs(ended_before=later, limit=10_000)
    assert await run_store.get_task_instance(tis[0].id) is not None
