"""A report that makes a task ready hands it to a claim waiting in the same process (no queue round trip).

Every test waits with a 60 s safety re-check, so a claim that answers quickly was answered by the hand-off
or by a queue event; which one is told by the queue's events: a handed task instance is never queued, so
nothing is announced for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from stateport.domain.engine.reports import Success, TaskNotRunning
from stateport.domain.models import DagSpec, RunState, TIState
from tests.engine.conftest import Harness, chain
from tests.engine.test_lifecycle import slow_recheck
from tests.services import unique


async def waiting_claim(h: Harness, worker: str, max_tasks: int = 1, wait_s: float = 60, **kw: Any) -> Any:
    """A long-polling claim, started and given time to begin waiting."""
    task = asyncio.create_task(h.core.claims.claim(worker, [h.queue], max_tasks, wait_s, **kw))
    await asyncio.sleep(0.2)
    assert not task.done()
    return task


async def test_a_report_hands_the_next_task_to_a_waiting_claim(harness: Harness) -> None:
    h = slow_recheck(harness)
    run = await harness.start({"tasks": chain("a", "b"), "result_task": "b"}, conf={"x": 1})
    a = await harness.claim_one("a")
    waiting = await waiting_claim(h, "w2")
    async with harness.events.subscribe(f"queue:{harness.queue}") as queue_events:
        await h.core.reports.report(a.ti.id, _success({"n": 1}))
        (b,) = await asyncio.wait_for(waiting, 10)
        assert await queue_events.next(0.2) is None  # b was never queued
    assert b.ti.task_id == "b" and b.ti.state is TIState.RUNNING and b.ti.lease_owner == "w2"
    assert b.inputs == {"a": {"n": 1}} and b.conf == {"x": 1}
    assert h.tokens.verify_task_token(b.token).subject == str(b.ti.id)
    stored = await harness.stores.runs.get_task_instance(b.ti.id)
    assert stored is not None and stored == b.ti
    assert stored.started_at is not None and stored.lease_expires_at is not None
    await h.core.reports.report(b.ti.id, _success(2))
    finished = await harness.run(run)
    assert finished.outcome is not None and finished.outcome.results == {"b": 2}


async def test_a_waiting_claim_takes_no_more_than_it_asked_for(harness: Harness) -> None:
    h = slow_recheck(harness)
    await harness.start({"tasks": [{"task_id": "a"}, *({"task_id": t, "upstream": ["a"]} for t in "bcd")]})
    a = await harness.claim_one("a")
    waiting = await waiting_claim(h, "w2", max_tasks=2)
    async with harness.events.subscribe(f"queue:{harness.queue}") as queue_events:
        await h.core.reports.report(a.ti.id, _success(1))
        handed = await asyncio.wait_for(waiting, 10)
        assert await queue_events.next(1.0) == b"1"  # the one left over is queued and announced
    assert len(handed) == 2 and {c.ti.lease_owner for c in handed} == {"w2"}
    (rest,) = await harness.claim()
    assert {c.ti.task_id for c in [*handed, rest]} == {"b", "c", "d"}


async def test_what_is_handed_to_a_claim_cancelled_meanwhile_is_given_back(harness: Harness) -> None:
    h = slow_recheck(harness)
    run = await harness.start({"tasks": chain("a", "b")})
    a = await harness.claim_one("a")
    waiting = await waiting_claim(h, "w2")
    await h.core.reports.report(a.ti.id, _success(1))
    # The hand-off committed, but the claim never ran again to answer with it (the server stopping).
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    tries = [ti for ti in await harness.tis(run) if ti.task_id == "b"]
    assert [(ti.try_number, ti.state) for ti in tries] == [(1, TIState.UP_FOR_RETRY), (2, TIState.QUEUED)]
    assert tries[1].retries_used == 0  # given back: no retry used
    b = await harness.claim_one("b")
    assert b.ti.try_number == 2 and b.inputs == {"a": 1}


async def test_what_is_handed_to_an_abandoned_claim_is_given_back(harness: Harness) -> None:
    h = slow_recheck(harness)
    run = await harness.start({"tasks": chain("a", "b")})
    a = await harness.claim_one("a")
    gone = asyncio.Event()
    waiting = await waiting_claim(h, "w2", abandoned=gone)
    await h.core.reports.report(a.ti.id, _success(1))
    gone.set()  # the worker hung up before the claim could answer
    assert await asyncio.wait_for(waiting, 10) == []
    states = [(ti.try_number, ti.state) for ti in await harness.tis(run) if ti.task_id == "b"]
    assert states == [(1, TIState.UP_FOR_RETRY), (2, TIState.QUEUED)]


async def test_a_claim_for_other_queues_is_not_handed_the_task(harness: Harness) -> None:
    h = slow_recheck(harness)
    await harness.start({"tasks": chain("a", "b")})
    a = await harness.claim_one("a")
    elsewhere = asyncio.create_task(h.core.claims.claim("w2", ["some-other-queue"], 1, 0.5))
    await asyncio.sleep(0.1)
    await h.core.reports.report(a.ti.id, _success(1))
    assert await asyncio.wait_for(elsewhere, 10) == []
    assert (await harness.claim_one("b")).ti.lease_owner == "w1"


def _success(value: Any) -> Success:
    return Success(result=msgspec.json.encode(value))


async def test_a_new_runs_ready_task_is_handed_to_a_waiting_claim(harness: Harness) -> None:
    h = slow_recheck(harness)
    waiting = await waiting_claim(h, "w2")
    runs = h.runs
    dag_id = unique("dag")
    spec = {"tasks": [{**t, "queue": harness.queue} for t in chain("a", "b")]}
    await runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
    async with harness.events.subscribe(f"queue:{harness.queue}") as queue_events:
        run = await runs.trigger(dag_id, conf={"q": 1})
        (a,) = await asyncio.wait_for(waiting, 10)
        assert await queue_events.next(0.2) is None  # a was never queued
    assert run.state is RunState.RUNNING and (await harness.run(run)).state is RunState.RUNNING
    assert a.ti.task_id == "a" and a.ti.lease_owner == "w2" and a.conf == {"q": 1} and a.inputs == {}
    assert await harness.stores.runs.get_task_instance(a.ti.id) == a.ti


async def test_a_repeated_idempotency_key_hands_nothing_out(harness: Harness) -> None:
    h = slow_recheck(harness)
    runs = h.runs
    dag_id = unique("dag")
    spec = {"tasks": [{"task_id": "a", "queue": harness.queue}]}
    await runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
    first = await runs.trigger(dag_id, idempotency_key="k")
    (a,) = await harness.claim()
    waiting = await waiting_claim(h, "w2", wait_s=0.5)
    assert (await runs.trigger(dag_id, idempotency_key="k")).run_id == first.run_id
    assert await asyncio.wait_for(waiting, 10) == []
    assert [ti.id for ti in await harness.tis(first)] == [a.ti.id]


async def test_a_report_hands_the_next_task_to_the_oldest_waiting_claim_naming_its_dag(
    harness: Harness,
) -> None:
    h = slow_recheck(harness)
    run = await harness.start({"tasks": chain("a", "b")})
    a = await harness.claim_one("a")
    # Waiting longer than the others, on the same queue, but for another DAG.
    other_dag = await waiting_claim(h, "w-other", wait_s=1.0, dag_ids=[unique("dag")])
    wanted = await waiting_claim(h, "w-wanted", dag_ids=[unique("dag"), run.dag_id])
    async with harness.events.subscribe(f"queue:{harness.queue}") as queue_events:
        await h.core.reports.report(a.ti.id, _success(1))
        (b,) = await asyncio.wait_for(wanted, 10)
        assert await queue_events.next(0.2) is None  # b was never queued
    assert b.ti.task_id == "b" and b.ti.lease_owner == "w-wanted" and b.inputs == {"a": 1}
    assert await asyncio.wait_for(other_dag, 10) == []


async def test_a_task_no_waiting_claim_may_take_stays_queued_for_a_claim_naming_its_dag(
    harness: Harness,
) -> None:
    h = slow_recheck(harness)
    run = await harness.start({"tasks": chain("a", "b")})
    a = await harness.claim_one("a")
    other_dag = await waiting_claim(h, "w-other", wait_s=1.0, dag_ids=[unique("dag")])
    async with harness.events.subscribe(f"queue:{harness.queue}") as queue_events:
        await h.core.reports.report(a.ti.id, _success(1))
        assert await queue_events.next(1.0) == b"1"  # queued and announced, not handed out
    # Woken by that event, the claim looked again and still took nothing of another DAG.
    assert await asyncio.wait_for(other_dag, 10) == []
    (b,) = [ti for ti in await harness.tis(run) if ti.task_id == "b"]
    assert b.state is TIState.QUEUED and b.lease_owner is None
    assert await h.core.claims.claim("w-other", [harness.queue], 5, 0, dag_ids=[unique("dag")]) == []
    assert await h.core.claims.claim("w-none", [harness.queue], 5, 0, dag_ids=[]) == []
    (claimed,) = await h.core.claims.claim("w-wanted", [harness.queue], 5, 0, dag_ids=[run.dag_id])
    assert claimed.ti.id == b.id and claimed.ti.lease_owner == "w-wanted" and claimed.inputs == {"a": 1}


async def test_a_new_runs_ready_task_goes_only_to_a_waiting_claim_naming_its_dag(harness: Harness) -> None:
    h = slow_recheck(harness)
    dag_id = unique("dag")
    other_dag = await waiting_claim(h, "w-other", wait_s=1.0, dag_ids=[unique("dag")])
    wanted = await waiting_claim(h, "w-wanted", max_tasks=1, dag_ids=[dag_id])
    spec = {"tasks": [{"task_id": t, "queue": harness.queue} for t in ("a", "b")]}
    await h.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
    async with harness.events.subscribe(f"queue:{harness.queue}") as queue_events:
        run = await h.runs.trigger(dag_id)
        (handed,) = await asyncio.wait_for(wanted, 10)
        assert await queue_events.next(1.0) == b"1"  # the other root task is queued and announced
    assert handed.ti.lease_owner == "w-wanted" and handed.ti.dag_id == dag_id
    assert await asyncio.wait_for(other_dag, 10) == []
    states = {ti.task_id: ti.state for ti in await harness.tis(run)}
    assert sorted(states.values()) == [TIState.QUEUED, TIState.RUNNING]


# --- a report that claims (ClaimBroker.report) ---------------------------------------------------------


async def report_claiming(h: Harness, claimed: Any, value: Any, room: int = 1, worker: str = "w1") -> Any:
    return await h.core.claims.report(
        claimed.ti.id, _success(value), worker_id=worker, queues=[h.queue], room=room
    )


async def test_a_report_that_claims_gets_what_it_makes_ready_before_a_waiting_claim(harness: Harness) -> None:
    h = slow_recheck(harness)
    run = await harness.start({"tasks": chain("a", "b"), "result_task": "b"}, conf={"x": 1})
    a = await harness.claim_one("a")
    waiting = await waiting_claim(h, "w2")
    async with harness.events.subscribe(f"queue:{harness.queue}") as queue_events:
        (b,) = await report_claiming(h, a, {"n": 1})
        assert await queue_events.next(0.2) is None  # b was never queued
    assert not waiting.done()  # the waiting claim goes on waiting: the reporter took b
    assert b.ti.task_id == "b" and b.ti.state is TIState.RUNNING and b.ti.lease_owner == "w1"
    assert b.inputs == {"a": {"n": 1}} and b.conf == {"x": 1}
    assert h.tokens.verify_task_token(b.token).subject == str(b.ti.id)
    assert await harness.stores.runs.get_task_instance(b.ti.id) == b.ti
    assert await report_claiming(h, b, 2) == []  # the last task: nothing follows
    assert (await harness.run(run)).outcome.results == {"b": 2}  # type: ignore[union-attr]
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_a_report_claims_no_more_than_its_room_and_the_rest_goes_to_the_waiting_claim(
    harness: Harness,
) -> None:
    h = slow_recheck(harness)
    await harness.start({"tasks": [{"task_id": "a"}, *({"task_id": t, "upstream": ["a"]} for t in "bcde")]})
    a = await harness.claim_one("a")
    waiting = await waiting_claim(h, "w2", max_tasks=1)
    mine = await report_claiming(h, a, 1, room=2)
    (theirs,) = await asyncio.wait_for(waiting, 10)
    (rest,) = await harness.claim()
    assert [c.ti.lease_owner for c in mine] == ["w1", "w1"] and theirs.ti.lease_owner == "w2"
    assert {c.ti.task_id for c in [*mine, theirs, rest]} == {"b", "c", "d", "e"}


async def test_a_report_that_claims_takes_only_its_queues(harness: Harness) -> None:
    h = slow_recheck(harness)
    await harness.start({"tasks": chain("a", "b")})
    a = await harness.claim_one("a")
    handed = await h.core.claims.report(
        a.ti.id, _success(1), worker_id="w1", queues=["some-other-queue"], room=1
    )
    assert handed == []
    assert (await harness.claim_one("b")).ti.task_id == "b"  # queued as usual


async def test_a_refused_report_that_claims_hands_nothing_out(harness: Harness) -> None:
    h = slow_recheck(harness)
    run = await harness.start({"tasks": chain("a", "b")})
    a = await harness.claim_one("a")
    await harness.core.reports.report(a.ti.id, _success(1))
    (b,) = await harness.claim()
    with pytest.raises(TaskNotRunning):
        await h.core.claims.report(a.ti.id, _success(2), worker_id="w9", queues=[h.queue], room=1)
    assert await report_claiming(h, a, 1) == []  # the same report again: nothing new is handed out
    assert [ti.lease_owner for ti in await harness.tis(run) if ti.task_id == "b"] == [b.ti.lease_owner]


async def test_an_admitted_runs_first_task_handed_to_a_waiting_claim_starts_the_run(harness: Harness) -> None:
    # A DAG running one run at a time: the second run is held, then admitted when the first ends, and its
    # task goes straight to a claim waiting here. The run is running from then on, as after any claim.
    h = slow_recheck(harness)
    first = await harness.start({"tasks": [{"task_id": "a"}], "result_task": "a", "max_active_runs": 1})
    second = await harness.runs.trigger(first.dag_id)
    assert second.state is RunState.QUEUED and second.held_by is not None
    a = await harness.claim_one("a")
    waiting = await waiting_claim(h, "w2")
    await h.core.reports.report(a.ti.id, _success(1))
    (handed,) = await asyncio.wait_for(waiting, 10)
    assert (handed.ti.run_id, handed.ti.state) == (second.run_id, TIState.RUNNING)
    admitted = await harness.stores.runs.get_run(second.dag_id, second.run_id)
    assert admitted is not None and admitted.held_by is None
    assert admitted.state is RunState.RUNNING and admitted.started_at is not None
    await h.core.reports.report(handed.ti.id, _success(2))
    done = await harness.run(second)
    assert done.state is RunState.SUCCESS and done.started_at == admitted.started_at


async def test_a_retry_waits_its_tasks_retry_delay_before_it_is_handed_out(harness: Harness) -> None:
    # An outsider's find: a retry was handed out at once, so a blip of a store a task uses (2 s of Redis)
    # spent every retry of the task. A task's retry_delay_s (Airflow's retry_delay) holds it back.
    run = await harness.start({"tasks": [{"task_id": "t", "retries": 2, "retry_delay_s": 10}]})
    first = await harness.claim_one("t")
    await harness.fail(first, "store blip")
    assert await harness.claim() == []  # queued, not yet due
    [_, retry] = sorted(await harness.tis(run), key=lambda ti: ti.try_number)
    assert (retry.try_number, retry.state) == (2, TIState.QUEUED)
    harness.clock.advance(10)
    second = await harness.claim_one("t")
    assert second.ti.try_number == 2
    # A lease that expires is a failed try as any other: its retry waits too.
    harness.clock.advance(31)
    assert await harness.core.sweeper.expire(second.ti) == 1
    assert await harness.claim() == []
    harness.clock.advance(10)
    assert (await harness.claim_one("t")).ti.try_number == 3


async def test_a_held_run_whose_deadline_passed_is_ended_not_admitted(harness: Harness) -> None:
    # An outsider's find: when the running run ended, the held runs behind it were admitted, their tasks
    # handed to workers and started, though their deadlines had passed; the next sweep then failed them.
    first = await harness.start({"tasks": [{"task_id": "a"}], "result_task": "a", "max_active_runs": 1})
    harness.clock.advance(0.001)  # held runs are admitted oldest first: one after the other
    late = await harness.runs.trigger(first.dag_id, deadline_s=5)
    harness.clock.advance(0.001)
    timely = await harness.runs.trigger(first.dag_id)
    assert late.held_by is not None and timely.held_by is not None
    a = await harness.claim_one("a")
    harness.clock.advance(6)
    await harness.succeed(a, 1)
    ended = await harness.run(late)
    assert ended.state is RunState.FAILED and ended.outcome is not None
    assert ended.outcome.reason == "deadline_exceeded" and ended.started_at is None
    assert {ti.state for ti in await harness.tis(late)} <= {TIState.SKIPPED}
    # The run behind it takes the room instead, at once.
    admitted = await harness.run(timely)
    assert admitted.held_by is None
    (next_a,) = await harness.claim()
    assert next_a.ti.run_id == timely.run_id


async def test_a_retry_is_not_handed_back_to_the_worker_whose_lease_on_it_expired(harness: Harness) -> None:
    """Found by an outsider: a frozen worker keeps its claims open here (its socket stays up); the oldest,
    they took the retry of the try whose lease it had just lost, and every retry was spent on it while
    another worker waited idle."""
    h = slow_recheck(harness)
    await harness.start({"tasks": [{"task_id": "t", "retries": 2}]})
    (first,) = await harness.claim(worker="frozen")
    frozen_claim = await waiting_claim(h, "frozen")  # its other slot, still claiming
    healthy_claim = await waiting_claim(h, "healthy")
    harness.clock.advance(31)
    # The sweeper of the process holding the claims (another process's does not know them: docs/runs.md).
    assert await h.core.sweeper.expire(first.ti) == 1
    assert await asyncio.wait_for(frozen_claim, 10) == []  # its claim that began before ended empty
    (retry,) = await asyncio.wait_for(healthy_claim, 10)
    assert (retry.ti.task_id, retry.ti.try_number, retry.ti.lease_owner) == ("t", 2, "healthy")
    # Once it claims again (it answers), it is handed work as any worker.
    await harness.start({"tasks": [{"task_id": "next"}]})
    (later,) = await harness.claim(worker="frozen")
    assert later.ti.task_id == "next"


async def test_a_claim_begun_after_the_worker_went_quiet_is_not_cut(harness: Harness) -> None:
    """Only claims from before the worker stopped answering end empty: a claim under the same id begun
    later (another process of it, or a worker started with the same --worker-id) is served as any (a full
    run failed a test whose claim shared its id with another test's abandoned lease)."""
    h = slow_recheck(harness)
    await harness.start({"tasks": [{"task_id": "t", "retries": 1}]})
    (first,) = await harness.claim(worker="same")
    harness.clock.advance(25)  # past half the lease (30 s): the lease's worker has been quiet since
    later = await waiting_claim(h, "same")
    harness.clock.advance(6)
    assert await h.core.sweeper.expire(first.ti) == 1
    (retry,) = await asyncio.wait_for(later, 10)
    assert (retry.ti.try_number, retry.ti.lease_owner) == (2, "same")
