"""The LeaseStore contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from msgspec.structs import replace

from stateport.domain.fairness import caller_key
from stateport.domain.ids import uuid7
from stateport.domain.models import RunState, TaskInstance, TaskSpec, TIState
from stateport.domain.ports import RunStores
from tests.contract.makers import make_run, make_tis, now, queued_run, register, spec
from tests.services import unique


async def test_a_claim_takes_the_oldest_queued_of_its_queue_and_starts_the_run(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 3)
    tis.sort(key=lambda ti: ti.id)  # uuid7: time-ordered to the millisecond, random within one
    other_run, others = await queued_run(run_stores, 1)
    at = now()
    claimed = await run_stores.leases.claim(
        tis[0].queue, "w1", limit=2, now=at, lease_until=at + timedelta(seconds=30)
    )
    assert [ti.id for ti in claimed] == [tis[0].id, tis[1].id]
    for ti in claimed:
        assert ti.state is TIState.RUNNING and ti.lease_owner == "w1"
        assert ti.lease_expires_at == at + timedelta(seconds=30) and ti.started_at == at
        assert ti.timeout_s == 5.0
        assert await run_stores.runs.get_task_instance(ti.id) == ti
    got = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert got is not None and got.state is RunState.RUNNING
    untouched = await run_stores.runs.get_run(other_run.dag_id, other_run.run_id)
    assert untouched is not None and untouched.state is RunState.QUEUED
    assert (await run_stores.runs.get_task_instance(others[0].id)) == others[0]
    rest = await run_stores.leases.claim(tis[0].queue, "w2", limit=5, now=at, lease_until=at)
    assert [ti.id for ti in rest] == [tis[2].id]
    assert await run_stores.leases.claim(tis[0].queue, "w2", limit=5, now=at, lease_until=at) == []


async def test_concurrent_claimers_get_each_task_instance_exactly_once(run_stores: RunStores) -> None:
    _, tis = await queued_run(run_stores, 60)
    queue = tis[0].queue
    at = now()

    async def claimer(n: int) -> list[TaskInstance]:
        got: list[TaskInstance] = []
        while True:
            batch = await run_stores.leases.claim(queue, f"w{n}", limit=3, now=at, lease_until=at)
            if not batch:
                return got
            got += batch

    results = await asyncio.gather(*(claimer(n) for n in range(8)))
    ids = [ti.id for batch in results for ti in batch]
    assert len(ids) == 60 and set(ids) == {ti.id for ti in tis}


async def test_claiming_from_a_running_run_leaves_the_run_as_it_is(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 2)
    at = now()
    until = at + timedelta(seconds=30)
    await run_stores.leases.claim(tis[0].queue, "w1", limit=1, now=at, lease_until=until)
    started = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert started is not None and started.state is RunState.RUNNING
    (second,) = await run_stores.leases.claim(tis[0].queue, "w2", limit=1, now=at, lease_until=until)
    assert second.lease_owner == "w2"
    assert await run_stores.runs.get_run(run.dag_id, run.run_id) == started


async def test_a_claim_starts_its_own_run_when_other_runs_are_started_already(run_stores: RunStores) -> None:
    # SQLite once read the run state of "WHERE dag_id = dag_id" (any run) in the claim's RETURNING: a run
    # claimed after another run had started stayed queued.
    first, first_tis = await queued_run(run_stores, 1)
    queue = first_tis[0].queue
    second, _ = await queued_run(run_stores, 1, queue=queue)
    third, _ = await queued_run(run_stores, 1, queue=queue)
    at = now()
    until = at + timedelta(seconds=30)
    for run in (first, second, third):
        (claimed,) = await run_stores.leases.claim(queue, "w1", limit=1, now=at, lease_until=until)
        assert claimed.run_id == run.run_id
        got = await run_stores.runs.get_run(run.dag_id, run.run_id)
        assert got is not None and got.state is RunState.RUNNING


async def _claim_one_by_one(run_stores: RunStores, queue: str) -> list[TaskInstance]:
    at = now()
    claimed: list[TaskInstance] = []
    while got := await run_stores.leases.claim(queue, unique("w"), limit=1, now=at, lease_until=at):
        claimed += got
    return claimed


def _order(tis: list[TaskInstance]) -> list[TaskInstance]:
    return sorted(tis, key=lambda ti: ti.id)  # uuid7: time-ordered to the millisecond, random within one


async def test_callers_take_turns_in_a_queue(run_stores: RunStores) -> None:
    # An outsider's find: 300 runs triggered by one caller held another caller's run back until every one
    # of them had been claimed (37 s). Within a priority, each caller's queued tries follow one another and
    # a caller with nothing queued goes right after the next try to be handed out.
    queue = unique("q")
    flood = [await queued_run(run_stores, 2, queue=queue, caller="x" * 32) for _ in range(3)]
    floods = [ti for _, tis in flood for ti in _order(tis)]
    _, late = await queued_run(run_stores, 2, queue=queue, caller="y" * 32)
    late = _order(late)
    _, unknown = await queued_run(run_stores, 1, queue=queue)  # a run with no caller (the CLI's)
    claimed = [ti.id for ti in await _claim_one_by_one(run_stores, queue)]
    # x's tags 1-6; y's 1-2 and the unknown caller's 1 (the next try's when queued); equal tags, oldest
    # first.
    expected = [floods[0], late[0], unknown[0], floods[1], late[1], *floods[2:]]
    assert claimed == [ti.id for ti in expected]


async def test_a_claim_of_many_returns_them_in_turn(run_stores: RunStores) -> None:
    # A claim whose answer has no room for all hands out the first it returns (outsider's find: the
    # oldest went out and the other caller's try was put back).
    queue = unique("q")
    _, flood = await queued_run(run_stores, 3, queue=queue, caller="x" * 32)
    _, (late,) = await queued_run(run_stores, 1, queue=queue, caller="y" * 32)
    flood = _order(flood)
    at = now()
    claimed = await run_stores.leases.claim(queue, unique("w"), limit=10, now=at, lease_until=at)
    assert [ti.id for ti in claimed] == [flood[0].id, late.id, flood[1].id, flood[2].id]


async def test_a_caller_turn_is_within_a_priority(run_stores: RunStores) -> None:
    queue = unique("q")
    _, low = await queued_run(run_stores, 3, queue=queue, caller="x" * 32)
    _, high = await queued_run(run_stores, 3, queue=queue, caller="x" * 32, priority=5)
    _, other = await queued_run(run_stores, 1, queue=queue, caller="y" * 32)
    claimed = [ti.id for ti in await _claim_one_by_one(run_stores, queue)]
    low, high = _order(low), _order(high)
    # The higher priority first, its own turns apart; then y's run next in line among the lower ones.
    assert claimed == [ti.id for ti in [*high, low[0], other[0], *low[1:]]]


async def test_a_try_no_claim_takes_does_not_hold_the_turns_back(run_stores: RunStores) -> None:
    # An outsider's find: a try no claim takes (of a DAG no worker serves) kept the lowest place queued, and
    # a caller coming later went ahead of every other caller's backlog. Where the queue is comes from what
    # was handed out last.
    queue = unique("q")
    stuck_run, _ = await queued_run(run_stores, 1, queue=queue, caller="z" * 32)
    x_run, flood = await queued_run(run_stores, 6, queue=queue, caller="x" * 32)
    flood = _order(flood)
    at = now()
    served = [x_run.dag_id]
    claimed = await run_stores.leases.claim(
        queue, unique("w"), limit=3, now=at, lease_until=at, dag_ids=served
    )
    assert [ti.id for ti in claimed] == [ti.id for ti in flood[:3]]
    y_run, (late,) = await queued_run(run_stores, 1, queue=queue, caller="y" * 32)
    # The stuck try's caller: its new try is placed where the queue is, not after its stuck one.
    z_run, (again,) = await queued_run(run_stores, 1, queue=queue, caller="z" * 32)
    served += [y_run.dag_id, z_run.dag_id]
    order = []
    while got := await run_stores.leases.claim(
        queue, unique("w"), limit=1, now=at, lease_until=at, dag_ids=served
    ):
        order += [ti.id for ti in got]
    assert order == [flood[3].id, late.id, again.id, flood[4].id, flood[5].id]
    assert stuck_run.dag_id not in served


async def test_a_try_queued_under_its_run_lock_takes_its_callers_turn(run_stores: RunStores) -> None:
    # The engine queues a run's next tasks by a transition (scheduled -> queued) when their upstream ends.
    queue = unique("q")
    _, flood = await queued_run(run_stores, 4, queue=queue, caller="x" * 32)
    dag = await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="t")))
    run = make_run(dag, caller="y" * 32)
    (scheduled,) = [replace(ti, queue=queue) for ti in make_tis(run, ["t"])]
    await run_stores.runs.create_run(run, [scheduled])
    # Claimed while scheduled: not at all.
    flood = _order(flood)
    at = now()
    (first,) = await run_stores.leases.claim(queue, unique("w"), limit=1, now=at, lease_until=at)
    assert first.id == flood[0].id
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.transition(scheduled.id, TIState.SCHEDULED, TIState.QUEUED, now=now())
    claimed = [ti.id for ti in await _claim_one_by_one(run_stores, queue)]
    assert claimed == [flood[1].id, scheduled.id, *(ti.id for ti in flood[2:])]


async def test_unclaim_puts_claimed_tries_back_as_they_were_and_no_others(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 4)
    at = now()
    later = at + timedelta(seconds=5)
    claimed = await run_stores.leases.claim(tis[0].queue, "w1", limit=4, now=at, lease_until=later)
    back, failed, other, kept = claimed
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.transition(failed.id, TIState.RUNNING, TIState.FAILED, now=at, error="cancelled")
    put_back = await run_stores.leases.unclaim([back, failed], now=later)
    # Leased to another worker: not this claim's to put back.
    assert await run_stores.leases.unclaim([replace(other, lease_owner="w2")], now=later) == []
    assert put_back == [back.id]
    before = next(ti for ti in tis if ti.id == back.id)
    assert await run_stores.runs.get_task_instance(back.id) == before
    for ti in (other, kept):
        assert await run_stores.runs.get_task_instance(ti.id) == ti
    stored = await run_stores.runs.get_task_instance(failed.id)
    assert stored is not None and stored.state is TIState.FAILED
    got = await run_stores.runs.get_run(run.dag_id, run.run_id)
    assert got is not None and got.state is RunState.RUNNING  # as the claim left it
    # Queued again, the same try: the next claim takes it.
    again = await run_stores.leases.claim(tis[0].queue, "w3", limit=4, now=later, lease_until=later)
    assert [(ti.id, ti.try_number, ti.lease_owner) for ti in again] == [(back.id, 1, "w3")]
    assert await run_stores.leases.unclaim([], now=later) == []


async def test_extend_lease_only_extends_a_running_task_instance(run_stores: RunStores) -> None:
    _, tis = await queued_run(run_stores, 2)
    at = now()
    (running,) = await run_stores.leases.claim(tis[0].queue, "w", limit=1, now=at, lease_until=at)
    later = at + timedelta(seconds=60)
    assert await run_stores.leases.extend_lease(running.id, later, now=at) is TIState.RUNNING
    stored = await run_stores.runs.get_task_instance(running.id)
    assert stored is not None and stored.lease_expires_at == later
    (waiting,) = [ti for ti in tis if ti.id != running.id]
    assert await run_stores.leases.extend_lease(waiting.id, later, now=at) is TIState.QUEUED
    queued = await run_stores.runs.get_task_instance(waiting.id)
    assert queued is not None and queued.lease_expires_at is None
    assert await run_stores.leases.extend_lease(uuid7(), later, now=at) is None


async def test_overdue_lists_expired_leases_and_timeouts(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 3)
    at = now()
    a, b = await run_stores.leases.claim(
        tis[0].queue, "w", limit=2, now=at, lease_until=at + timedelta(seconds=30)
    )

    async def mine(when: datetime) -> set[Any]:
        # The PostgreSQL database is shared: look only at this test's run.
        return {
            ti.id for ti in await run_stores.leases.overdue(when, limit=100_000) if ti.run_id == run.run_id
        }

    assert await mine(at + timedelta(seconds=4)) == set()
    assert await mine(at + timedelta(seconds=6)) == {a.id, b.id}  # past the 5 s timeout
    await run_stores.leases.extend_lease(a.id, at + timedelta(seconds=100), now=at)
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        # A finished try is never overdue.
        assert await unit.transition(b.id, TIState.RUNNING, TIState.SUCCESS, now=at, result=b"1")
    assert await mine(at + timedelta(seconds=6)) == {a.id}
    assert await mine(at + timedelta(seconds=1)) == set()


async def test_overdue_without_leases_lists_only_timeouts(run_stores: RunStores) -> None:
    # The sweeper's grace: no lease expires, so only tries past their timeout (5 s here) are asked for.
    run, tis = await queued_run(run_stores, 2)
    at = now()
    (a,) = await run_stores.leases.claim(
        tis[0].queue, "w", limit=1, now=at, lease_until=at + timedelta(seconds=1)
    )

    async def mine(when: datetime, leases: bool) -> set[Any]:
        listed = await run_stores.leases.overdue(when, limit=100_000, leases=leases)
        return {ti.id for ti in listed if ti.run_id == run.run_id}

    assert await mine(at + timedelta(seconds=3), leases=True) == {a.id}  # its lease expired
    assert await mine(at + timedelta(seconds=3), leases=False) == set()
    assert await mine(at + timedelta(seconds=6), leases=False) == {a.id}  # past its timeout


async def test_a_claim_naming_dags_takes_the_oldest_queued_of_those_dags_and_leaves_the_rest(
    run_stores: RunStores,
) -> None:
    # Another DAG's backlog ahead of the wanted ones on a shared queue, and behind them.
    before, ahead = await queued_run(run_stores, 4)
    queue = ahead[0].queue
    first, first_tis = await queued_run(run_stores, 2, queue=queue)
    # A dag_id JSON and SQL would have to quote (SQLite carries the list as JSON text).
    second, second_tis = await queued_run(run_stores, 2, queue=queue, dag_id=unique('d"a\\g é'))
    after, behind = await queued_run(run_stores, 2, queue=queue)
    wanted = sorted(ti.id for ti in first_tis + second_tis)
    at = now()
    until = at + timedelta(seconds=30)
    dag_ids = [first.dag_id, second.dag_id, unique("no-such-dag")]

    claimed = await run_stores.leases.claim(queue, "w1", limit=3, now=at, lease_until=until, dag_ids=dag_ids)
    assert [ti.id for ti in claimed] == wanted[:3]
    assert all(ti.state is TIState.RUNNING and ti.lease_owner == "w1" for ti in claimed)
    for run in (first, second):
        got = await run_stores.runs.get_run(run.dag_id, run.run_id)
        assert got is not None and got.state is RunState.RUNNING
    # The other DAGs' task instances and runs are untouched.
    for run, tis in ((before, ahead), (after, behind)):
        for ti in tis:
            assert await run_stores.runs.get_task_instance(ti.id) == ti
        assert await run_stores.runs.get_run(run.dag_id, run.run_id) == run

    rest = await run_stores.leases.claim(queue, "w2", limit=5, now=at, lease_until=until, dag_ids=dag_ids)
    assert [ti.id for ti in rest] == wanted[3:]
    again = await run_stores.leases.claim(queue, "w2", limit=5, now=at, lease_until=until, dag_ids=dag_ids)
    assert again == []
    # No DAG named: nothing; every DAG (None): the others, oldest first.
    assert await run_stores.leases.claim(queue, "w3", limit=5, now=at, lease_until=until, dag_ids=[]) == []
    everyone = await run_stores.leases.claim(queue, "w3", limit=10, now=at, lease_until=until)
    assert [ti.id for ti in everyone] == sorted(ti.id for ti in ahead + behind)


async def test_concurrent_claimers_naming_a_dag_get_each_of_its_task_instances_once(
    run_stores: RunStores,
) -> None:
    _, others = await queued_run(run_stores, 40)
    queue = others[0].queue
    run, tis = await queued_run(run_stores, 40, queue=queue)
    at = now()

    async def claimer(n: int) -> list[TaskInstance]:
        got: list[TaskInstance] = []
        while True:
            batch = await run_stores.leases.claim(
                queue, f"w{n}", limit=3, now=at, lease_until=at, dag_ids=[run.dag_id]
            )
            if not batch:
                return got
            got += batch

    results = await asyncio.gather(*(claimer(n) for n in range(8)))
    ids = [ti.id for batch in results for ti in batch]
    assert len(ids) == 40 and set(ids) == {ti.id for ti in tis}
    for ti in others:
        assert await run_stores.runs.get_task_instance(ti.id) == ti


async def test_queue_backlogs_count_the_queued_task_instances_of_each_queue(run_stores: RunStores) -> None:
    _, tis = await queued_run(run_stores, 3)
    queue = tis[0].queue
    at = now()
    assert (await run_stores.leases.queue_backlogs(at))[queue].queued == 3
    await run_stores.leases.claim(queue, "w1", limit=2, now=at, lease_until=at)
    assert (await run_stores.leases.queue_backlogs(at))[queue].queued == 1
    await run_stores.leases.claim(queue, "w1", limit=2, now=at, lease_until=at)
    assert queue not in await run_stores.leases.queue_backlogs(at)


async def test_a_queue_backlog_is_ready_since_its_longest_waiting_claimable_task_instance(
    run_stores: RunStores,
) -> None:
    # A DAG whose workers are gone, in a queue other DAGs' workers claim from: its depth says nothing, its
    # oldest ready try's age does (an outsider's find: no alert fired).
    created = now()
    run, tis = await queued_run(run_stores, 3)
    queue = tis[0].queue
    later = created + timedelta(hours=1)
    backlog = (await run_stores.leases.queue_backlogs(later))[queue]
    assert backlog.queued == 3
    assert backlog.ready_since is not None and created <= backlog.ready_since <= now()
    # A try that waits to be handed out (a retry's delay, a try given back) is ready from its time on.
    claimed = await run_stores.leases.claim(queue, "w1", limit=3, now=created, lease_until=later)
    assert {ti.id for ti in claimed} == {ti.id for ti in tis}
    soon, then = created + timedelta(minutes=1), created + timedelta(minutes=2)
    retry = replace(tis[0], id=uuid7(), try_number=2, state=TIState.QUEUED, not_before=then)
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        await unit.add_task_instances([retry], now=soon)
    before = (await run_stores.leases.queue_backlogs(soon))[queue]
    assert (before.queued, before.ready_since) == (1, None)
    after = (await run_stores.leases.queue_backlogs(later))[queue]
    assert (after.queued, after.ready_since) == (1, then)


async def test_ready_queues_are_those_of_the_listed_queues_a_claim_may_take_from_now(
    run_stores: RunStores,
) -> None:
    created = now()
    run, tis = await queued_run(run_stores, 2)
    queue = tis[0].queue
    empty, odd = unique("empty"), "q'\"\\/ é"
    listed = [empty, queue, odd, queue]
    assert await run_stores.leases.ready_queues(listed, created) == {queue}
    assert await run_stores.leases.ready_queues([empty], created) == set()
    assert await run_stores.leases.ready_queues([], created) == set()
    # Claimed (not queued), or queued to be handed out later (a retry's delay): not ready.
    later = created + timedelta(hours=1)
    await run_stores.leases.claim(queue, "w1", limit=2, now=created, lease_until=later)
    assert await run_stores.leases.ready_queues(listed, created) == set()
    soon, then = created + timedelta(minutes=1), created + timedelta(minutes=2)
    retry = replace(tis[0], id=uuid7(), try_number=2, state=TIState.QUEUED, not_before=then)
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        await unit.add_task_instances([retry], now=soon)
    assert await run_stores.leases.ready_queues(listed, soon) == set()
    assert await run_stores.leases.ready_queues(listed, then) == {queue}


async def test_a_claim_skipping_tasks_leaves_their_task_instances_queued(run_stores: RunStores) -> None:
    # The worker's copy of the DAG lacks t001 (a newer version added it): its claims skip it, with and
    # without naming DAGs, and take the rest in order.
    run, tis = await queued_run(run_stores, 3)
    other, _ = await queued_run(run_stores, 2, queue=tis[0].queue)
    queue, at = tis[0].queue, now()
    until = at + timedelta(seconds=30)
    # t001 of the other DAG is not skipped: only the (dag_id, task_id) pair named.
    skip = {(run.dag_id, "t001"), (unique("no-such-dag"), "t000")}

    async def claim(worker: str, dag_ids: list[str] | None) -> list[str]:
        got = await run_stores.leases.claim(
            queue, worker, limit=10, now=at, lease_until=until, dag_ids=dag_ids, skip_tasks=skip
        )
        return [f"{ti.dag_id}/{ti.task_id}" for ti in got]

    assert await claim("w1", [run.dag_id]) == [f"{run.dag_id}/t000", f"{run.dag_id}/t002"]
    assert await claim("w2", None) == [f"{other.dag_id}/t000", f"{other.dag_id}/t001"]
    assert await claim("w3", None) == []
    skipped = await run_stores.runs.get_task_instance(tis[1].id)
    assert skipped is not None and skipped.state is TIState.QUEUED
    # A claim that skips nothing takes it.
    (taken,) = await run_stores.leases.claim(queue, "w4", limit=10, now=at, lease_until=until)
    assert taken.id == tis[1].id


async def test_claims_and_put_backs_pass_over_the_tries_a_locked_run_holds(run_stores: RunStores) -> None:
    # A stop (a cancel) holds every try's row; a claim or a put-back under way meanwhile neither takes nor
    # moves one (on PostgreSQL they pass over the rows at once; SQLite's single writer waits its turn).
    run, tis = await queued_run(run_stores, 4)
    queue = tis[0].queue
    at = now()
    claimed = await run_stores.leases.claim(
        queue, "w1", limit=2, now=at, lease_until=at + timedelta(seconds=30)
    )
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        held = await unit.held_task_instances()
        assert sorted(ti.id for ti in held) == sorted(ti.id for ti in tis)
        assert {ti.id for ti in held if ti.state is TIState.RUNNING} == {ti.id for ti in claimed}
        claim = asyncio.create_task(run_stores.leases.claim(queue, "w2", limit=4, now=at, lease_until=at))
        put_back = asyncio.create_task(run_stores.leases.unclaim(claimed, now=at))
        await asyncio.sleep(0.2)
        for ti in held:
            to = TIState.FAILED if ti.state is TIState.RUNNING else TIState.SKIPPED
            assert await unit.transition(ti.id, ti.state, to, now=at, error="cancelled")
    assert await claim == [] and await put_back == []
    states = {ti.id: ti.state for ti in await run_stores.runs.list_task_instances(run.dag_id, run.run_id)}
    running = {ti.id for ti in claimed}
    assert states == {ti.id: TIState.FAILED if ti.id in running else TIState.SKIPPED for ti in held}


async def test_reclaim_hands_a_worker_its_running_tries_it_does_not_know_and_no_others(
    run_stores: RunStores,
) -> None:
    run, tis = await queued_run(run_stores, 5)
    # Worker ids of their own: the adapter's database holds the other tests' tries.
    w1, w2, w3 = unique("w1"), unique("w2"), unique("w3")
    # The caller keys of the tokens that claim (fairness.caller_key: 32 hex digits).
    k1, k2 = caller_key(unique("api:fleet1")), caller_key(unique("api:fleet2"))
    queue = tis[0].queue
    at = now()
    soon = at + timedelta(seconds=5)
    mine = await run_stores.leases.claim(queue, w1, limit=3, now=at, lease_until=soon, claimant=k1)
    theirs = await run_stores.leases.claim(queue, w2, limit=1, now=at, lease_until=soon, claimant=k2)
    assert {ti.lease_claimant for ti in mine} == {k1} and theirs[0].lease_claimant == k2
    known, lost, ended = mine
    async with run_stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.transition(ended.id, TIState.RUNNING, TIState.SUCCESS, now=at)
    later = at + timedelta(seconds=1)
    until = at + timedelta(seconds=30)
    # Another token's claim naming w1 (a worker id is the claim's own word): nothing, and nothing changed.
    assert await run_stores.leases.reclaim(w1, [], limit=5, now=later, lease_until=until, claimant=k2) == []
    assert await run_stores.runs.get_task_instance(lost.id) == lost
    again = await run_stores.leases.reclaim(
        w1, [known.id], limit=5, now=later, lease_until=until, claimant=k1
    )
    # The same try, handed out again to the same worker: started then, leased for longer.
    assert again == [replace(lost, lease_expires_at=until, started_at=later)]
    assert await run_stores.runs.get_task_instance(lost.id) == again[0]
    for ti in (known, *theirs):
        assert await run_stores.runs.get_task_instance(ti.id) == ti
    (queued,) = [ti for ti in tis if ti.id not in {t.id for t in (*mine, *theirs)}]
    assert await run_stores.runs.get_task_instance(queued.id) == queued
    # Every one it runs named: nothing; another worker's: only its own.
    reclaim = partial(run_stores.leases.reclaim, limit=5, now=later, lease_until=until)
    assert await reclaim(w1, [known.id, lost.id], claimant=k1) == []
    assert [ti.id for ti in await reclaim(w2, [], claimant=k2)] == [theirs[0].id]
    assert await reclaim(w3, [], claimant=k1) == []


async def test_reclaim_never_hands_out_a_try_claimed_by_no_token(run_stores: RunStores) -> None:
    _, tis = await queued_run(run_stores, 1)
    worker = unique("w")
    at = now()
    (claimed,) = await run_stores.leases.claim(tis[0].queue, worker, limit=1, now=at, lease_until=at + LONG)
    assert claimed.lease_claimant is None
    # Not even to a claimant whose key is empty, as no key: a try leased before claimants were recorded.
    for claimant in (caller_key("api:any"), ""):
        assert (
            await run_stores.leases.reclaim(
                worker, [], limit=1, now=at, lease_until=at + LONG, claimant=claimant
            )
            == []
        )


# A lease that outlasts the test. The adapter's database is shared for the session, with a server process
# (tests/fixtures/rest.py, airflow_server) whose sweeper ends every try past its lease: a try leased "until
# now" could be ended (or held, locked, by that sweeper) between a claim and a reclaim (seen once in CI).
LONG = timedelta(hours=1)


async def test_reclaim_takes_at_most_its_limit_oldest_first(run_stores: RunStores) -> None:
    _, tis = await queued_run(run_stores, 3)
    w1 = unique("w1")
    at = now()
    key = caller_key(w1)
    claimed = await run_stores.leases.claim(
        tis[0].queue, w1, limit=3, now=at, lease_until=at + LONG, claimant=key
    )
    first = await run_stores.leases.reclaim(w1, [], limit=2, now=at, lease_until=at + LONG, claimant=key)
    assert [ti.id for ti in first] == sorted(ti.id for ti in claimed)[:2]


async def test_reclaim_leaves_a_try_whose_lease_a_heartbeat_extended(run_stores: RunStores) -> None:
    _, tis = await queued_run(run_stores, 2)
    worker = unique("w")
    at = now()
    key = caller_key(worker)
    beaten, idle = await run_stores.leases.claim(
        tis[0].queue, worker, limit=2, now=at, lease_until=at + LONG, claimant=key
    )
    later = at + timedelta(seconds=1)
    assert await run_stores.leases.extend_lease(beaten.id, later + LONG, now=later) is TIState.RUNNING
    reclaim = partial(run_stores.leases.reclaim, worker, [], limit=5, claimant=key)
    again = await reclaim(now=later, lease_until=later + LONG)
    assert [ti.id for ti in again] == [idle.id]
    # Handed out again, it may be handed out again (its worker missed that answer too), until it beats.
    last = later + timedelta(seconds=1)
    assert [ti.id for ti in await reclaim(now=last, lease_until=last + LONG)] == [idle.id]
    assert (
        await run_stores.leases.extend_lease(idle.id, last + LONG, now=last + timedelta(seconds=1))
        is TIState.RUNNING
    )
    assert await reclaim(now=last, lease_until=last + LONG) == []
