"""The wait use case: outcome and state changes over real stores and buses, timeouts, lost notifications,
one watch per run, and no database connection held while waiting."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import pytest

from stateport.adapters.memory.events import MemoryEventBus
from stateport.domain.engine.events import RunEvents, run_topic
from stateport.domain.engine.reports import Failure, TaskNotRunning
from stateport.domain.errors import NotFound, StateportError
from stateport.domain.models import Run, RunState, TIState
from stateport.domain.ports import RunStore, RunStores
from stateport.domain.waiting import RunWaits, WaitConfig
from tests.waits.conftest import EVENTS_ONLY, WaitRig, chain, make_rig

# The waiters' own safety re-read is 60-180 s here (EVENTS_ONLY): an answer within PROMPT_S came through the
# bus, however busy the machine.
PROMPT_S = 5.0


async def test_the_outcome_wakes_a_waiter_through_the_bus(rig: WaitRig) -> None:
    run = await rig.start({"tasks": chain("a", "b"), "result_task": "b"})
    waits = rig.waits()
    waiter = asyncio.create_task(waits.wait_for_outcome(run.dag_id, run.run_id, 30, caller="test"))
    await rig.succeed(await rig.claim_one("a"), 1)
    b = await rig.claim_one("b")
    await asyncio.sleep(0.2)
    assert not waiter.done()
    reported = time.monotonic()
    await rig.succeed(b, {"answer": 42})
    done = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - reported < PROMPT_S
    assert done.outcome is not None
    assert done.outcome.state is RunState.SUCCESS
    assert done.outcome.results == {"b": {"answer": 42}}
    assert waits.watching() == 0


class CountedReads:
    """The real run store, its ``get_run`` calls counted and held while ``gate`` is clear (every other
    call passed through)."""

    def __init__(self, runs: RunStore) -> None:
        self._runs = runs
        self.reads = 0
        self.finished = 0
        self.cancelled = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()  # set when a read has its snapshot and waits at the gate

    async def get_run(self, dag_id: str, run_id: str) -> Run | None:
        self.reads += 1
        try:
            found = await self._runs.get_run(dag_id, run_id)
            if not self.gate.is_set():
                self.held.set()
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runs, name)


def held(waits: RunWaits, dag_id: str, run_id: str, timeout: float) -> asyncio.Future[Run | None]:
    """A ``RunWaits.hold`` on the run as a future: what the hold is told (an error raised), or cancelled
    with the hold."""
    told: asyncio.Future[Run | None] = asyncio.get_running_loop().create_future()

    def then(ended: Run | StateportError | None) -> None:
        if not told.done():
            told.set_exception(ended) if isinstance(ended, StateportError) else told.set_result(ended)

    hold = waits.hold(dag_id, run_id, timeout, then, caller="test")
    told.add_done_callback(lambda _: hold.cancel() if told.cancelled() else None)
    return told


async def test_an_outcome_committed_in_this_process_answers_its_waiters_without_a_read(
    rig: WaitRig,
) -> None:
    # The waits of the engine's own process: they hear its RunEvents directly.
    counted = CountedReads(rig.stores.runs)
    waits = RunWaits(cast(RunStore, counted), rig.core.events, rig.core.plans, rig.core.results, EVENTS_ONLY)
    try:
        run = await rig.start({"tasks": chain("a", "b"), "result_task": "b"})
        async with aclosing(waits.changes(run.dag_id, run.run_id, timeout=30, caller="test")) as stream:
            assert (await anext(stream)).outcome is None  # the watch has read the run
            parked = held(waits, run.dag_id, run.run_id, 30)
            await rig.succeed(await rig.claim_one("a"), 1)
            b = await rig.claim_one("b")
            await asyncio.sleep(0.3)  # the bus's news of a and b came, and the watch read the run again
            assert not parked.done()
            reads = counted.reads
            await rig.succeed(b, {"answer": 42})
            answered = await asyncio.wait_for(parked, 10)
            last = await asyncio.wait_for(anext(stream), 10)
            await asyncio.sleep(0.3)  # the bus's news of the outcome reaches the watch, if it is still there
            assert counted.reads == reads  # answered from the committed run: no read after the report
        assert answered is not None and answered.outcome is not None and last.outcome is not None
        assert answered == await rig.stores.runs.get_run(run.dag_id, run.run_id)  # as the store has it
        assert waits.watching() == 0
    finally:
        await waits.close()


async def test_a_read_under_way_when_the_outcome_is_handed_over_is_let_finish_and_ignored(
    memory_rig: WaitRig,
) -> None:
    rig = memory_rig
    counted = CountedReads(rig.stores.runs)
    waits = RunWaits(cast(RunStore, counted), rig.core.events, rig.core.plans, rig.core.results, EVENTS_ONLY)
    try:
        run = await rig.start({"tasks": chain("a", "b"), "result_task": "b"})
        async with aclosing(waits.changes(run.dag_id, run.run_id, timeout=30, caller="test")) as stream:
            assert (await anext(stream)).outcome is None
            await rig.succeed(await rig.claim_one("a"), 1)
            b = await rig.claim_one("b")
            await asyncio.sleep(0.3)
            counted.gate.clear()  # the next read reads the run, then is held before it answers
            await rig.core.events.bus.publish(run_topic(run.dag_id, run.run_id), b"running")
            await asyncio.wait_for(counted.held.wait(), 10)  # a read under way, its snapshot taken
            await rig.succeed(b, {"answer": 42})  # handed over while that read is held
            counted.gate.set()  # the read answers now, with the run as it was before the outcome
            await asyncio.sleep(0.2)
            # A consumer slower than all of it still gets the outcome, not the read's older run.
            last = await asyncio.wait_for(anext(stream), 10)
            assert last.outcome is not None and last.outcome.results == {"b": {"answer": 42}}
        assert counted.cancelled == 0 and counted.finished == counted.reads  # let finish, not cancelled
        assert waits.watching() == 0
        again = await held(waits, run.dag_id, run.run_id, 5)  # a new waiter reads the run afresh
        assert again is not None and again.outcome is not None
    finally:
        await waits.close()


async def test_a_timed_out_wait_leaves_the_run_and_waiting_again_reattaches(rig: WaitRig) -> None:
    run = await rig.start({"tasks": chain("a"), "result_task": "a"})
    waits = rig.waits()
    started = time.monotonic()
    first = await waits.wait_for_outcome(run.dag_id, run.run_id, 0.3, caller="test")
    # Ended by its own timeout: the re-read (60-180 s) would come far later than this hang guard.
    assert 0.25 < time.monotonic() - started < 10
    assert first.outcome is None
    assert first.state is RunState.QUEUED
    claimed = await rig.claim_one("a")  # the run is still there and still runnable
    again = asyncio.create_task(rig.waits().wait_for_outcome(run.dag_id, run.run_id, 30, caller="test"))
    await asyncio.sleep(0.1)
    await rig.succeed(claimed, "x")
    final = await asyncio.wait_for(again, 10)
    assert final.outcome is not None
    assert final.outcome.results == {"a": "x"}


async def test_a_zero_timeout_still_reads_the_run(memory_rig: WaitRig) -> None:
    run = await memory_rig.start({"tasks": chain("a"), "result_task": "a"})
    got = await memory_rig.waits().wait_for_outcome(run.dag_id, run.run_id, 0, caller="test")
    assert got.run_id == run.run_id
    assert got.outcome is None


async def test_an_unknown_run_is_not_found(memory_rig: WaitRig) -> None:
    waits = memory_rig.waits()
    with pytest.raises(NotFound, match="was not found"):
        await waits.wait_for_outcome("nope", "nope", 1, caller="test")
    with pytest.raises(NotFound):
        async for _ in waits.changes("nope", "nope", caller="test"):
            pass
    assert waits.watching() == 0


async def test_changes_end_with_the_outcome_while_the_teardown_still_runs(rig: WaitRig) -> None:
    spec = {
        "tasks": [
            {"task_id": "work"},
            {"task_id": "cleanup", "upstream": ["work"], "teardown": True},
        ],
        "result_task": "work",
    }
    run = await rig.start(spec)
    # Each step waits for the change it caused to be seen, not for a guessed time.
    seen: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    async def follow() -> None:
        async for changed in rig.waits().changes(run.dag_id, run.run_id, timeout=30, caller="test"):
            seen.put_nowait((changed.state.value, changed.outcome is not None))

    follower = asyncio.create_task(follow())
    assert await asyncio.wait_for(seen.get(), 10) == ("queued", False)
    work = await rig.claim_one("work")
    assert await asyncio.wait_for(seen.get(), 10) == ("running", False)
    await rig.succeed(work, [1, 2])
    await asyncio.wait_for(follower, 10)
    assert seen.get_nowait() == ("running", True) and seen.empty()
    states = {
        ti.task_id: ti.state for ti in await rig.stores.runs.list_task_instances(run.dag_id, run.run_id)
    }
    assert states["cleanup"] is TIState.QUEUED  # the stream ended before the teardown even started


async def test_a_failed_key_task_ends_the_wait_with_the_failure(rig: WaitRig) -> None:
    run = await rig.start({"tasks": chain("a", "b"), "result_task": "b"})
    waiter = asyncio.create_task(rig.waits().wait_for_outcome(run.dag_id, run.run_id, 30, caller="test"))
    a = await rig.claim_one("a")
    await rig.core.reports.report(a.ti.id, Failure(error="boom", retryable=False))
    done = await asyncio.wait_for(waiter, 10)
    assert done.outcome is not None
    assert done.outcome.state is RunState.FAILED
    assert done.outcome.failed_task == "a"


async def test_a_lost_notification_is_made_up_by_the_safety_recheck(
    stores: RunStores, tmp_path: Path
) -> None:
    # The engine publishes where no waiter listens: every notification is lost.
    rig = await make_rig(stores, MemoryEventBus(), MemoryEventBus(), tmp_path)
    try:
        run = await rig.start({"tasks": chain("a"), "result_task": "a"})
        waits = rig.waits(WaitConfig(recheck_s=0.4))
        waiter = asyncio.create_task(waits.wait_for_outcome(run.dag_id, run.run_id, 30, caller="test"))
        await rig.succeed(await rig.claim_one("a"), 7)
        # Only the re-read (0.4 s) can find the outcome; without it (below) nothing does for 60-180 s.
        done = await asyncio.wait_for(waiter, 10)
        assert done.outcome is not None
        assert done.outcome.results == {"a": 7}
        # With the events-only timer the same lost notification is not noticed for a long while.
        run2 = await rig.start({"tasks": chain("a"), "result_task": "a"})
        slow_waits = rig.waits()
        async with aclosing(
            slow_waits.changes(run2.dag_id, run2.run_id, timeout=30, caller="test")
        ) as stream:
            assert (await anext(stream)).outcome is None  # the watch has read the run before it finishes
            slow = asyncio.create_task(
                slow_waits.wait_for_outcome(run2.dag_id, run2.run_id, 30, caller="test")
            )
            await rig.succeed(await rig.claim_one("a"), 8)
            await asyncio.sleep(1.0)
            assert not slow.done()
            slow.cancel()
            await asyncio.gather(slow, return_exceptions=True)
    finally:
        await rig.blobs.close()


async def test_a_recheck_message_makes_the_watch_read_again(memory_rig: WaitRig) -> None:
    other = MemoryEventBus()  # the waiters' bus, which the engine does not publish on
    run = await memory_rig.start({"tasks": chain("a"), "result_task": "a"})
    waits = memory_rig.waits(WaitConfig(recheck_s=120.0, spread_s=0.2), bus=other)
    async with aclosing(waits.changes(run.dag_id, run.run_id, timeout=30, caller="test")) as stream:
        assert (await anext(stream)).outcome is None  # the watch has read the run before it finishes
        waiter = asyncio.create_task(waits.wait_for_outcome(run.dag_id, run.run_id, 30, caller="test"))
        await memory_rig.succeed(await memory_rig.claim_one("a"), 1)
        await asyncio.sleep(0.3)
        assert not waiter.done()
        # What a bus delivers to every subscriber after it reconnected.
        await other.publish(run_topic(run.dag_id, run.run_id), b"")
        done = await asyncio.wait_for(waiter, 10)  # the next re-read would be 60-180 s away
        assert done.outcome is not None


async def test_outcome_waiters_skip_the_reads_a_message_says_cannot_bring_the_outcome(
    rig: WaitRig,
) -> None:
    counted = CountedReads(rig.stores.runs)
    # Another process's waits: they hear the engine's changes over the bus only.
    waits = RunWaits(
        cast(RunStore, counted), RunEvents(rig.waiter_bus), rig.core.plans, rig.core.results, EVENTS_ONLY
    )
    topic = None
    try:
        run = await rig.start({"tasks": chain("a", "b"), "result_task": "b"})
        topic = run_topic(run.dag_id, run.run_id)
        parked = held(waits, run.dag_id, run.run_id, 30)
        await _until_reads(counted, 1)  # the watch's first read
        a = await rig.claim_one("a")  # a claim does not lock the run: its message makes the watch read
        await _until_reads(counted, 2)
        # a's report leaves the run without an outcome and says so: no read for the long-poll.
        await rig.succeed(a, 1)
        b = await rig.claim_one("b")  # read
        await _until_reads(counted, 3)
        await rig.engine_bus.publish(topic, b"running;open")
        await rig.engine_bus.publish(topic, b"running")  # read: it comes after the one before
        await _until_reads(counted, 4)
        await asyncio.sleep(0.3)
        assert counted.reads == 4
        assert not parked.done()
        # A wait stream on the same run wants every change: now the watch reads on any message.
        async with aclosing(waits.changes(run.dag_id, run.run_id, timeout=30, caller="test")) as stream:
            assert (await anext(stream)).outcome is None
            await rig.engine_bus.publish(topic, b"running;open")
            await _until_reads(counted, 5)
        await rig.succeed(b, {"answer": 42})  # the outcome's message is read
        answered = await asyncio.wait_for(parked, PROMPT_S)
        assert answered is not None and answered.outcome is not None
    finally:
        await waits.close()


async def test_a_wait_stream_joining_a_watch_that_let_messages_pass_reads_the_run_first(
    memory_rig: WaitRig,
) -> None:
    # The waits hear only what this test publishes: the engine's own messages go to its bus.
    other = MemoryEventBus()
    counted = CountedReads(memory_rig.stores.runs)
    waits = RunWaits(
        cast(RunStore, counted), RunEvents(other), memory_rig.core.plans, memory_rig.core.results, EVENTS_ONLY
    )
    try:
        run = await memory_rig.start({"tasks": chain("a", "b"), "result_task": "b"})
        parked = held(waits, run.dag_id, run.run_id, 30)
        await _until_reads(counted, 1)
        assert run.state is RunState.QUEUED
        await memory_rig.claim_one("a")  # the run is running now; its message never reaches these waits
        topic = run_topic(run.dag_id, run.run_id)
        await other.publish(topic, b"running;open")  # let pass: only the long-poll waits
        await asyncio.sleep(0.2)
        assert counted.reads == 1
        # A wait stream joins: it is told the run as it is now, not as the watch last read it.
        async with aclosing(waits.changes(run.dag_id, run.run_id, timeout=30, caller="test")) as stream:
            seen = await asyncio.wait_for(anext(stream), PROMPT_S)
            if seen.state is RunState.QUEUED:  # the snapshot it had, before the read it asked for
                seen = await asyncio.wait_for(anext(stream), PROMPT_S)
            assert seen.state is RunState.RUNNING
        assert counted.reads == 2
        parked.cancel()
    finally:
        await waits.close()


async def _until_reads(counted: CountedReads, reads: int) -> None:
    """Wait (at most PROMPT_S) until ``reads`` reads have answered."""
    async with asyncio.timeout(PROMPT_S):
        while True:
            if counted.finished >= reads:
                return
            await asyncio.sleep(0.01)


async def test_one_watch_serves_every_waiter_of_a_run(memory_rig: WaitRig) -> None:
    bus = memory_rig.waiter_bus
    assert isinstance(bus, MemoryEventBus)
    run = await memory_rig.start({"tasks": chain("a"), "result_task": "a"})
    waits = memory_rig.waits()
    waiters = [
        asyncio.create_task(waits.wait_for_outcome(run.dag_id, run.run_id, 30, caller="test"))
        for _ in range(200)
    ]
    await asyncio.sleep(0.2)
    assert waits.watching() == 1
    assert bus.subscriber_count(run_topic(run.dag_id, run.run_id)) == 1
    await memory_rig.succeed(await memory_rig.claim_one("a"), "v")
    results = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert {r.outcome.results["a"] for r in results if r.outcome is not None} == {"v"}
    assert len(results) == 200
    assert waits.watching() == 0
    assert bus.subscriber_count() == 0


async def test_waiters_that_go_away_release_the_watch(memory_rig: WaitRig) -> None:
    bus = memory_rig.waiter_bus
    assert isinstance(bus, MemoryEventBus)
    run = await memory_rig.start({"tasks": chain("a"), "result_task": "a"})
    waits = memory_rig.waits()
    waiters = [
        asyncio.create_task(waits.wait_for_outcome(run.dag_id, run.run_id, 30, caller="test"))
        for _ in range(5)
    ]
    stream = waits.changes(run.dag_id, run.run_id, caller="test")
    assert (await anext(stream)).state is RunState.QUEUED
    await asyncio.sleep(0.1)
    assert waits.watching() == 1
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert waits.watching() == 1  # the stream still follows the run
    await stream.aclose()
    await asyncio.sleep(0)
    assert waits.watching() == 0
    await asyncio.sleep(0.05)
    assert bus.subscriber_count() == 0


async def test_cancel_fails_the_run_and_stops_its_tasks(memory_rig: WaitRig) -> None:
    spec = {
        "tasks": [
            {"task_id": "a"},
            {"task_id": "b"},
            {"task_id": "c", "upstream": ["a", "b"]},
            {"task_id": "m", "upstream": ["c"], "expand": "c"},
            {"task_id": "t", "upstream": ["m"], "teardown": True},
        ],
        "result_task": "c",
    }
    run = await memory_rig.start(spec)
    waiter = asyncio.create_task(
        memory_rig.waits().wait_for_outcome(run.dag_id, run.run_id, 30, caller="test")
    )
    running = (await memory_rig.claim(1))[0]
    cancelled = await memory_rig.core.advancer.cancel(run.dag_id, run.run_id)
    assert cancelled.state is RunState.FAILED
    assert cancelled.outcome is not None
    assert cancelled.outcome.reason == "cancelled"
    done = await asyncio.wait_for(waiter, 10)
    assert done.outcome == cancelled.outcome
    states = {
        ti.task_id: ti.state
        for ti in await memory_rig.stores.runs.list_task_instances(run.dag_id, run.run_id)
    }
    assert states[running.ti.task_id] is TIState.FAILED
    assert {k: v for k, v in states.items() if k != running.ti.task_id} == dict.fromkeys(
        {"a", "b", "c", "m", "t"} - {running.ti.task_id}, TIState.SKIPPED
    )
    with pytest.raises(TaskNotRunning):
        await memory_rig.core.reports.heartbeat(running.ti.id)
    assert await memory_rig.claim() == []
    # Cancelling again, or a finished run, changes nothing.
    again = await memory_rig.core.advancer.cancel(run.dag_id, run.run_id)
    assert again == cancelled


async def test_cancel_keeps_an_outcome_already_set(memory_rig: WaitRig) -> None:
    spec = {
        "tasks": [{"task_id": "a"}, {"task_id": "t", "upstream": ["a"], "teardown": True}],
        "result_task": "a",
    }
    run = await memory_rig.start(spec)
    await memory_rig.succeed(await memory_rig.claim_one("a"), 1)
    cancelled = await memory_rig.core.advancer.cancel(run.dag_id, run.run_id)
    assert cancelled.outcome is not None
    assert cancelled.outcome.state is RunState.SUCCESS
    assert cancelled.state is RunState.FAILED


async def test_results_of_named_tasks(memory_rig: WaitRig) -> None:
    spec = {
        "tasks": [
            {"task_id": "split"},
            {"task_id": "each", "upstream": ["split"], "expand": "split"},
            {"task_id": "join", "upstream": ["each"]},
        ],
        "result_task": "join",
    }
    run = await memory_rig.start(spec)
    await memory_rig.succeed(await memory_rig.claim_one("split"), [10, 20])
    for claimed in sorted(await memory_rig.claim(), key=lambda c: c.ti.map_index, reverse=True):
        await memory_rig.succeed(claimed, claimed.ti.map_index * 2)
    waits = memory_rig.waits()
    now = await memory_rig.runs.get_run(run.dag_id, run.run_id)
    got = await waits.results(now, ["each", "split", "join", "unknown"])
    assert got == {"each": [0, 2], "split": [10, 20]}
