"""Runs from trigger to outcome through the engine's use cases, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest

from stateport.domain.engine.progress import LEASE_EXPIRED, RELEASED
from stateport.domain.engine.reports import Success, TaskNotRunning
from stateport.domain.errors import NotFound
from stateport.domain.ids import uuid7
from stateport.domain.models import RunState, TaskInstance, TIState
from stateport.domain.ports.observer import Observer, install, observer
from stateport.domain.results import BLOB_KEY
from tests.engine.conftest import Harness, by_state, chain


async def test_trigger_queues_the_root_tasks_and_announces_them(harness: Harness) -> None:
    async with harness.events.subscribe(f"queue:{harness.queue}") as sub:
        run = await harness.start({"tasks": chain("a", "b")})
        assert await sub.next(1.0) == b"1"
    assert await harness.states(run) == {"a": ["queued"], "b": ["scheduled"]}
    assert run.state is RunState.QUEUED and run.outcome is None


async def test_a_chain_runs_to_success_with_inputs_and_the_outcome(harness: Harness) -> None:
    run = await harness.start({"tasks": chain("a", "b", "c"), "result_task": "c"}, conf={"x": 2})
    a = await harness.claim_one("a")
    assert a.conf == {"x": 2} and a.inputs == {} and a.ti.state is TIState.RUNNING
    assert a.ti.lease_owner == "w1" and a.ti.lease_expires_at is not None
    assert harness.tokens.verify_task_token(a.token).subject == str(a.ti.id)
    assert (await harness.run(run)).state is RunState.RUNNING
    await harness.succeed(a, {"n": 1})
    b = await harness.claim_one("b")
    assert b.inputs == {"a": {"n": 1}}
    await harness.succeed(b, [1, 2])
    c = await harness.claim_one("c")
    assert c.inputs == {"b": [1, 2]}
    await harness.succeed(c, "done")
    final = await harness.run(run)
    assert final.state is RunState.SUCCESS
    assert msgspec.to_builtins(final.outcome) == {"state": "success", "results": {"c": "done"}}
    tis = await harness.tis(run)
    assert all(ti.started_at is not None and ti.ended_at is not None for ti in tis)


async def test_the_outcome_is_set_when_the_result_task_succeeds_while_a_teardown_still_runs(
    harness: Harness,
) -> None:
    spec = {
        "tasks": [
            {"task_id": "work"},
            {"task_id": "answer", "upstream": ["work"]},
            {"task_id": "cleanup", "upstream": ["work"], "teardown": True},
        ],
        "result_task": "answer",
    }
    run = await harness.start(spec)
    await harness.succeed(await harness.claim_one("work"), 1)
    claimed = {c.ti.task_id: c for c in await harness.claim()}
    assert set(claimed) == {"answer", "cleanup"}
    await harness.succeed(claimed["answer"], 42)
    seen = await harness.run(run)
    assert msgspec.to_builtins(seen.outcome) == {"state": "success", "results": {"answer": 42}}
    assert seen.state is RunState.RUNNING  # the teardown is still running
    await harness.succeed(claimed["cleanup"], None)
    assert (await harness.run(run)).state is RunState.SUCCESS


async def test_a_key_task_failure_sets_a_failed_outcome_at_once(harness: Harness) -> None:
    spec = {
        "tasks": [
            {"task_id": "slow"},
            {"task_id": "verify"},
            {"task_id": "answer", "upstream": ["slow", "verify"]},
            {"task_id": "cleanup", "upstream": ["slow", "answer"], "teardown": True},
        ],
        "result_task": "answer",
    }
    run = await harness.start(spec)
    claimed = {c.ti.task_id: c for c in await harness.claim()}
    await harness.fail(claimed["verify"], "references not found", retryable=False)
    seen = await harness.run(run)
    assert msgspec.to_builtins(seen.outcome) == {
        "state": "failed",
        "failed_task": "verify",
        "reason": "task 'verify' failed",
        "error": "references not found",
    }
    assert seen.state is RunState.RUNNING  # slow still runs; cleanup waits for it
    states = await harness.states(run)
    assert states["answer"] == ["upstream_failed"] and states["cleanup"] == ["scheduled"]
    await harness.succeed(claimed["slow"], 1)
    await harness.succeed(await harness.claim_one("cleanup"), None)
    final = await harness.run(run)
    assert final.state is RunState.FAILED and final.outcome == seen.outcome


async def test_a_retry_is_a_new_task_instance_with_the_same_scope(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "t", "retries": 1}], "result_task": "t"})
    first = await harness.claim_one("t")
    await harness.fail(first, "flaky")
    second = await harness.claim_one("t")
    assert second.ti.id != first.ti.id and second.ti.try_number == 2 and second.ti.retries_used == 1
    assert second.ti.scope == first.ti.scope
    states = {ti.id: ti for ti in await harness.tis(run)}
    assert states[first.ti.id].state is TIState.UP_FOR_RETRY and states[first.ti.id].error == "flaky"
    await harness.fail(second, "flaky again")
    assert await harness.claim() == []  # retries spent
    final = await harness.run(run)
    assert final.state is RunState.FAILED and final.outcome is not None
    assert final.outcome.failed_task == "t"
    assert await harness.states(run) == {"t": ["up_for_retry", "failed"]}


async def test_a_non_retryable_failure_uses_no_retry(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "t", "retries": 3}]})
    await harness.fail(await harness.claim_one("t"), "bad input", retryable=False)
    assert await harness.states(run) == {"t": ["failed"]}
    assert (await harness.run(run)).state is RunState.FAILED


async def test_release_queues_a_new_try_without_using_a_retry(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "t", "retries": 0}], "result_task": "t"})
    first = await harness.claim_one("t")
    await harness.release(first)
    await harness.release(first)  # a repeat changes nothing
    second = await harness.claim_one("t")
    assert second.ti.try_number == 2 and second.ti.retries_used == 0
    released = next(ti for ti in await harness.tis(run) if ti.id == first.ti.id)
    assert released.state is TIState.UP_FOR_RETRY and released.error == RELEASED
    await harness.fail(second, "no retries left")
    assert await harness.states(run) == {"t": ["up_for_retry", "failed"]}


class Requeues(Observer):
    """Which new tries of ``dag_id`` were told as retries and which as queued again without one."""

    def __init__(self, dag_id: str) -> None:
        self.dag_id = dag_id
        self.said: list[tuple[str, int, str]] = []

    def retry_scheduled(self, ti: TaskInstance, next_try: TaskInstance) -> None:
        if ti.dag_id == self.dag_id:
            self.said.append(("retry", next_try.try_number, ""))

    def try_requeued(self, ti: TaskInstance, next_try: TaskInstance, reason: str) -> None:
        if ti.dag_id == self.dag_id:
            self.said.append(("requeued", next_try.try_number, reason))


async def test_a_release_is_told_apart_from_a_retry(harness: Harness) -> None:
    # An outsider's find: a worker's release was logged "retry scheduled: try 2" (of a task of no retries)
    # and counted in stateport_retries_total: a fleet's rolling restart showed as a storm of retries.
    run = await harness.start({"tasks": [{"task_id": "t", "retries": 1}], "result_task": "t"})
    told, before = Requeues(run.dag_id), observer()
    install(told)
    try:
        await harness.release(await harness.claim_one("t"))
        await harness.fail(await harness.claim_one("t"), "flaky")
        await harness.claim_one("t")
    finally:
        install(before)
    assert told.said == [("requeued", 2, RELEASED), ("retry", 3, "")]


async def test_an_expired_lease_is_a_retryable_failure(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "t", "retries": 1}]})
    first = await harness.claim_one("t")
    harness.clock.advance(10)
    await harness.core.reports.heartbeat(first.ti.id)  # extends the lease to now + 30 s
    harness.clock.advance(29)
    assert await harness.core.sweeper.expire(first.ti) == 0  # not expired yet
    harness.clock.advance(2)
    assert await harness.core.sweeper.expire(first.ti) == 1
    assert await harness.core.sweeper.expire(first.ti) == 0  # a second sweeper finds nothing to do
    with pytest.raises(TaskNotRunning) as lost:
        await harness.core.reports.heartbeat(first.ti.id)
    assert lost.value.current_state is TIState.UP_FOR_RETRY
    with pytest.raises(TaskNotRunning):
        await harness.succeed(first, "too late")
    second = await harness.claim_one("t")
    assert second.ti.try_number == 2
    harness.clock.advance(31)
    assert await harness.core.sweeper.expire(second.ti) == 1
    tis = await harness.tis(run)
    assert [ti.error for ti in tis] == [LEASE_EXPIRED, LEASE_EXPIRED]
    assert (await harness.run(run)).state is RunState.FAILED


async def test_heartbeats_within_a_second_of_an_extension_write_nothing(harness: Harness) -> None:
    # An outsider's find: one token heartbeating 500 times a second made each a database write, and every
    # other caller waited behind them.
    await harness.start({"tasks": [{"task_id": "t", "retries": 1}]})
    first = await harness.claim_one("t")

    async def stored() -> object:
        ti = await harness.stores.runs.get_task_instance(first.ti.id)
        return None if ti is None else ti.lease_expires_at

    extended = await harness.core.reports.heartbeat(first.ti.id)
    assert await stored() == extended
    harness.clock.advance(0.5)
    assert await harness.core.reports.heartbeat(first.ti.id) == extended  # answered from the extension
    assert await stored() == extended
    harness.clock.advance(0.6)
    later = await harness.core.reports.heartbeat(first.ti.id)  # a second on: written again
    assert later > extended
    assert await stored() == later
    # A try reported here is forgotten: its next heartbeat is told at once that it ended.
    await harness.fail(first, "boom")
    with pytest.raises(TaskNotRunning):
        await harness.core.reports.heartbeat(first.ti.id)


async def test_a_try_past_its_timeout_fails(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "t", "timeout": 5, "retries": 1}]})
    first = await harness.claim_one("t")
    assert first.ti.timeout_s == 5
    harness.clock.advance(4)
    await harness.core.reports.heartbeat(first.ti.id)
    assert await harness.core.sweeper.expire(first.ti) == 0
    harness.clock.advance(2)
    assert await harness.core.sweeper.expire(first.ti) == 1
    second = await harness.claim_one("t")
    harness.clock.advance(6)
    assert await harness.core.sweeper.expire(second.ti) == 1
    assert [ti.error for ti in await harness.tis(run)] == ["timed out after 5 s"] * 2
    assert await harness.states(run) == {"t": ["up_for_retry", "failed"]}


async def test_the_token_outlives_the_timeout(harness: Harness) -> None:
    await harness.start({"tasks": [{"task_id": "t", "timeout": 7200}]})
    claimed = await harness.claim_one("t")
    claims = harness.tokens.verify_task_token(claimed.token)
    assert (claims.expires_at - claims.issued_at).total_seconds() >= 7200


async def test_repeated_reports_are_idempotent_and_conflicting_ones_refused(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "a"}, {"task_id": "b"}]})
    claimed = {c.ti.task_id: c for c in await harness.claim()}
    a, b = claimed["a"], claimed["b"]
    await harness.succeed(a, {"x": 1})
    await harness.core.reports.report(a.ti.id, Success(result=b'{ "x" : 1 }'))  # the same value
    with pytest.raises(TaskNotRunning) as other_value:
        await harness.succeed(a, {"x": 2})
    assert other_value.value.current_state is TIState.SUCCESS
    with pytest.raises(TaskNotRunning):
        await harness.fail(a, "after success")
    await harness.fail(b, "broken", retryable=False)
    await harness.fail(b, "broken", retryable=False)
    with pytest.raises(TaskNotRunning):
        await harness.succeed(b, 1)
    with pytest.raises(TaskNotRunning):
        await harness.fail(b, "another error")
    with pytest.raises(NotFound):
        await harness.core.reports.report(uuid7(), Success(result=b"1"))
    with pytest.raises(NotFound):
        await harness.core.reports.heartbeat(uuid7())
    assert await harness.states(run) == {"a": ["success"], "b": ["failed"]}


async def test_a_report_of_an_ended_try_is_compared_not_checked_again(harness: Harness) -> None:
    # A worker repeating a large report pays no second validation: a result no running try could report
    # (out of range) is only compared with how the try ended, and refused as not running.
    await harness.start({"tasks": [{"task_id": "a"}]})
    a = await harness.claim_one("a")
    await harness.succeed(a, {"x": 1})
    with pytest.raises(TaskNotRunning) as refused:
        await harness.core.reports.report(a.ti.id, Success(result=b'{"x": 1e999}'))
    assert refused.value.current_state is TIState.SUCCESS


async def test_a_report_for_a_queued_task_instance_is_refused(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "a"}]})
    (ti,) = await harness.tis(run)
    with pytest.raises(TaskNotRunning) as refused:
        await harness.core.reports.report(ti.id, Success(result=b"1"))
    assert refused.value.current_state is TIState.QUEUED


async def test_a_mapped_task_gets_one_instance_per_element(harness: Harness) -> None:
    spec = {
        "tasks": [
            {"task_id": "split"},
            {"task_id": "work", "upstream": ["split"], "expand": "split"},
            {"task_id": "join", "upstream": ["work"]},
        ],
        "result_task": "join",
    }
    run = await harness.start(spec)
    await harness.succeed(await harness.claim_one("split"), ["x", "y", "z"])
    works = await harness.claim()
    assert sorted((c.ti.map_index, c.inputs["split"]) for c in works) == [(0, "x"), (1, "y"), (2, "z")]
    for c in works:
        await harness.succeed(c, c.inputs["split"].upper())
    join = await harness.claim_one("join")
    assert join.inputs == {"work": ["X", "Y", "Z"]}
    await harness.succeed(join, "ok")
    assert (await harness.run(run)).state is RunState.SUCCESS


async def test_an_empty_expansion_is_skipped_and_the_result_is_an_empty_list(harness: Harness) -> None:
    spec = {
        "tasks": [{"task_id": "split"}, {"task_id": "work", "upstream": ["split"], "expand": "split"}],
        "result_task": "work",
    }
    run = await harness.start(spec)
    await harness.succeed(await harness.claim_one("split"), [])
    final = await harness.run(run)
    assert msgspec.to_builtins(final.outcome) == {"state": "success", "results": {"work": []}}
    assert await harness.states(run) == {"split": ["success"], "work": ["skipped"]}


def as_sent(inputs: Any) -> Any:
    """Inputs as a worker decodes them from a claim's answer."""
    return msgspec.json.decode(msgspec.json.encode(inputs))


async def test_a_large_result_goes_to_the_blob_store_by_reference(harness: Harness) -> None:
    spec = {
        "tasks": [
            {"task_id": "big"},
            {"task_id": "use", "upstream": ["big"]},
            {"task_id": "fan", "upstream": ["big"], "expand": "big"},
        ],
        "result_task": "big",
    }
    run = await harness.start(spec)
    value = [f"item-{i}-" + "x" * 100 for i in range(40)]  # about 4.5 KiB, over the 1 KiB inline limit
    raw = msgspec.json.encode(value)
    await harness.succeed(await harness.claim_one("big"), value)
    (stored,) = [ti for ti in await harness.tis(run) if ti.task_id == "big"]
    assert stored.result_ref is not None and stored.result is not None
    assert await harness.blobs.get(stored.result_ref) == raw  # whole, never truncated
    outcome = msgspec.to_builtins((await harness.run(run)).outcome)
    reference = outcome["results"]["big"][BLOB_KEY]
    assert reference["ref"] == stored.result_ref and reference["size"] == len(raw)
    assert reference["url"] is None  # the filesystem store has no URLs
    claimed = await harness.claim()
    # As the worker gets them: a blob's text goes out as it is (its items too), never decoded.
    use = next(c for c in claimed if c.ti.task_id == "use")
    assert as_sent(use.inputs) == {"big": value}
    fans = sorted((c.ti.map_index, as_sent(c.inputs["big"])) for c in claimed if c.ti.task_id == "fan")
    assert fans == list(enumerate(value))
    # A repeat of the large report is idempotent too (same content).
    big_ti = stored.id
    await harness.core.reports.report(big_ti, Success(result=raw))


async def test_concurrent_reports_of_one_run_queue_the_join_once(harness: Harness) -> None:
    spec = {
        "tasks": [
            *({"task_id": f"p{i}"} for i in range(8)),
            {"task_id": "join", "upstream": [f"p{i}" for i in range(8)]},
        ]
    }
    run = await harness.start(spec)
    claimed = await harness.claim()
    assert len(claimed) == 8
    await asyncio.gather(*(harness.succeed(c, c.ti.task_id) for c in claimed))
    tis = await harness.tis(run)
    joins = [ti for ti in tis if ti.task_id == "join"]
    assert len(joins) == 1 and joins[0].state is TIState.QUEUED
    join = await harness.claim_one("join")
    assert join.inputs == {f"p{i}": f"p{i}" for i in range(8)}


def slow_recheck(harness: Harness) -> Harness:
    """The harness with a 60 s safety re-check, far from how fast an event wakes a claim."""
    return harness.fresh(claim_recheck_s=60.0)


async def test_a_waiting_claim_wakes_when_work_is_queued(harness: Harness) -> None:
    spec: dict[str, Any] = {"tasks": [{"task_id": "t"}]}
    waiting = asyncio.create_task(slow_recheck(harness).core.claims.claim("w", [harness.queue], 1, 60))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await harness.start(spec)
    claimed = await asyncio.wait_for(waiting, 10)  # woken by the queue's event, not by the 60 s re-check
    assert len(claimed) == 1


async def test_a_claim_with_nothing_queued_ends_empty_after_its_wait(harness: Harness) -> None:
    started = time.monotonic()
    # Ends at its own deadline, not at the next (60 s) re-check.
    assert (
        await asyncio.wait_for(slow_recheck(harness).core.claims.claim("w", [harness.queue], 1, 0.3), 10)
        == []
    )
    assert time.monotonic() - started >= 0.3


async def test_many_concurrent_claimers_get_each_task_instance_once(harness: Harness) -> None:
    await harness.start({"tasks": [{"task_id": f"t{i}"} for i in range(30)]})
    results = await asyncio.gather(*(harness.claim(3, worker=f"w{n}") for n in range(8)))
    ids = [c.ti.id for batch in results for c in batch]
    assert len(ids) == 24 and len(set(ids)) == 24
    rest = await harness.claim(100)
    assert len(rest) == 6 and not {c.ti.id for c in rest} & set(ids)


async def test_running_runs_are_not_listed_by_other_states(harness: Harness) -> None:
    run = await harness.start({"tasks": [{"task_id": "t"}]})
    await harness.claim_one("t")
    assert len(by_state(await harness.tis(run), TIState.RUNNING)) == 1


async def test_the_sweeper_records_when_it_last_swept(harness: Harness) -> None:
    sweeper = harness.core.sweeper
    sweeper.last_swept_at = None
    await sweeper.sweep()
    assert sweeper.last_swept_at == harness.clock.now()
    harness.clock.advance(5)
    await sweeper.sweep()
    assert sweeper.last_swept_at == harness.clock.now()


@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)  # a database of its own: the sweep is global
async def test_a_timeout_is_seen_in_a_grace_whatever_leases_expired_before_it(harness: Harness) -> None:
    # In a grace no lease expires; a sweep asking for every overdue try got a batch of expired leases
    # only (the oldest first) and never reached a try past its timeout behind them until the grace ended.
    sweeper = harness.core.sweeper
    sweeper.batch = 2
    run = await harness.start(
        {"tasks": [{"task_id": f"t{i}"} for i in range(3)] + [{"task_id": "slow", "timeout": 5}]}
    )
    claimed = await harness.claim()
    assert len(claimed) == 4
    harness.clock.advance(31)  # every lease expired, and "slow" is past its timeout
    sweeper.store_failed()  # as after an outage, or at a process's start: a grace begins
    assert await sweeper.sweep() == 1
    ended = [ti for ti in await harness.tis(run) if ti.state is not TIState.RUNNING]
    assert [(ti.task_id, ti.error) for ti in ended] == [("slow", "timed out after 5 s")]


@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)  # a database of its own: the sweep is global
async def test_a_process_that_stopped_gives_leases_a_grace_before_it_sweeps_them(harness: Harness) -> None:
    # An outsider's find: a server process resumed after 40-60 s (SIGSTOP, a VM paused) swept at once and
    # ended a try whose worker had heartbeated all along, to a process that did not answer.
    sweeper = harness.core.sweeper
    sweeper.stall_s = 0.3
    run = await harness.start({"tasks": [{"task_id": "t"}]})
    claimed = await harness.claim_one("t")
    sweeps = asyncio.create_task(sweeper.run(0.02))  # its start's grace lasts a lease (30 s)
    leases = harness.stores.leases
    try:
        harness.clock.advance(29)
        beat = harness.clock.now() + timedelta(seconds=30)
        assert await leases.extend_lease(claimed.ti.id, beat, now=harness.clock.now()) is TIState.RUNNING
        harness.clock.advance(2)  # the start's grace is over; the lease holds
        await asyncio.sleep(0.2)
        assert [ti.state for ti in await harness.tis(run)] == [TIState.RUNNING]
        harness.clock.advance(30)  # the lease expired while the process was stopped...
        _freeze(0.5)  # ...and it was: its event loop did not turn
        await asyncio.sleep(0.3)  # it sweeps again, several times
        assert [ti.state for ti in await harness.tis(run)] == [TIState.RUNNING]
        harness.clock.advance(31)  # a lease later, with no heartbeat: the worker is gone
        await asyncio.sleep(0.3)
        assert [ti.state for ti in await harness.tis(run)] == [TIState.FAILED]
    finally:
        sweeps.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeps


async def test_a_process_stopped_during_a_sweep_gives_leases_a_grace_before_the_next(
    harness: Harness,
) -> None:
    # Only the sleeps between sweeps were measured: a stop while a sweep ran (it failed once in a full run
    # of the test above, the sweep under way when its event loop was held) went unseen, and the next sweep
    # ended a lease whose worker had heartbeated to a process that did not answer.
    sweeper = harness.core.sweeper
    # Above what a sweep takes on a busy machine (a full run in parallel made one take over 0.3 s, which
    # then counted as a stop), below the stop.
    sweeper.stall_s = 1.0
    run = await harness.start({"tasks": [{"task_id": "t"}]})
    await harness.claim_one("t")

    async def stopped() -> int:
        _freeze(1.5)  # the process stops while this sweep runs
        return 0

    sweeper.also.append(stopped)
    try:
        await sweeper.sweep()  # nothing is overdue yet
    finally:
        sweeper.also.remove(stopped)
    harness.clock.advance(31)  # the lease ran out meanwhile
    await sweeper.sweep()
    assert [ti.state for ti in await harness.tis(run)] == [TIState.RUNNING]
    harness.clock.advance(31)  # a lease later, with no heartbeat: the worker is gone
    await sweeper.sweep()
    assert [ti.state for ti in await harness.tis(run)] == [TIState.FAILED]


async def test_the_waiter_registrys_sweep_waits_out_an_outages_grace(harness: Harness) -> None:
    # An outsider's find: with two server processes, a database outage longer than the registry's lease
    # (15 s) let the rows of a live process run out, unrenewed, and the first sweep after it cancelled the
    # run of a caller that had never left (caller_disconnected). Its sweep waits out the grace, as leases do.
    sweeper = harness.core.sweeper
    swept: list[datetime] = []

    async def registry() -> int:
        swept.append(harness.clock.now())
        return 0

    sweeper.also.append(registry)
    try:
        await sweeper.sweep()
        assert len(swept) == 1  # no outage: swept
        sweeper.store_failed()  # a sweep failed: the store was out
        await sweeper.sweep()  # the store answers: a grace begins
        harness.clock.advance(harness.core.config.lease_s - 1)
        await sweeper.sweep()
        assert len(swept) == 1  # not within the grace, where the live processes renew their rows
        harness.clock.advance(2)
        await sweeper.sweep()
        assert len(swept) == 2
    finally:
        sweeper.also.remove(registry)


def _freeze(seconds: float) -> None:
    """Hold the event loop, as a stopped process does (a plain function: the loop must not turn)."""
    time.sleep(seconds)
