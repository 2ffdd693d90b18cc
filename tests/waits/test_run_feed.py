"""The run feed (the run event stream's source) over real stores and real buses: the engine publishes on one
bus connection and the feed taps another on the same channel, as two server processes would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec
import pytest

from stateport.domain.engine.events import run_topic
from stateport.domain.errors import Overloaded, Unavailable
from stateport.domain.models import DagSpec
from stateport.domain.run_feed import MAX_PENDING, RECHECK_ALL, Recheck, RunChange, RunFeed
from stateport.domain.seats import Seats
from tests.services import unique
from tests.waits.conftest import WaitRig, chain

Got = list[RunChange] | Recheck | None
# Generous for a busy machine; every wait here ends on what the feed yields, never on a time.
SEEN_S = 30.0


async def _until(changes: AsyncGenerator[Got, None], dag_id: str, run_id: str, state: str) -> list[RunChange]:
    seen: list[RunChange] = []
    async with asyncio.timeout(SEEN_S):
        async for got in changes:
            if isinstance(got, list):
                seen += got
                if RunChange(dag_id, run_id, state) in got:
                    return seen
    raise AssertionError(f"the feed ended before {state}: {seen}")


async def test_the_feed_hears_each_runs_changes_through_the_bus(rig: WaitRig) -> None:
    feed = RunFeed(rig.waiter_bus, rig.stores.runs, seats=Seats(10))
    async with (
        aclosing(feed.changes(None, idle_s=SEEN_S, caller="test")) as every,
        aclosing(feed.changes("none", idle_s=SEEN_S, caller="test")) as other,
    ):
        assert await anext(every) is None and await anext(other) is None  # set up
        run = await rig.start({"tasks": chain("a", "b"), "result_task": "b"})
        await _until(every, run.dag_id, run.run_id, "queued")
        a = await rig.claim_one("a")
        await _until(every, run.dag_id, run.run_id, "running")
        await rig.succeed(a, 1)
        await rig.succeed(await rig.claim_one("b"), 2)
        # Changes not read yet are held as the latest state of each run: a slow reader skips none of its
        # runs, only states in between.
        seen = await _until(every, run.dag_id, run.run_id, "success")
        assert seen[-1] == RunChange(run.dag_id, run.run_id, "success")
        assert feed.streams == 2
    assert feed.streams == 0


async def test_ids_holding_colons_are_told_apart_by_reading_the_run(memory_rig: WaitRig) -> None:
    # run:<dag_id>:<run_id> cannot be split by its text when both hold ":": the feed reads which run exists.
    feed = RunFeed(memory_rig.waiter_bus, memory_rig.stores.runs, seats=Seats(10))
    dag_id = unique("a:b")
    spec = {"tasks": [{"task_id": "t", "queue": memory_rig.queue}]}
    await memory_rig.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
    async with aclosing(feed.changes(dag_id, idle_s=SEEN_S, caller="test")) as changes:
        await anext(changes)
        await memory_rig.runs.trigger(dag_id, run_id="c:d:e")
        assert await _until(changes, dag_id, "c:d:e", "queued")


async def test_a_reader_far_behind_is_told_to_recheck_and_holds_a_bounded_backlog(
    memory_rig: WaitRig,
) -> None:
    bus = memory_rig.waiter_bus
    feed = RunFeed(bus, memory_rig.stores.runs, seats=Seats(10))
    async with aclosing(feed.changes(None, idle_s=SEEN_S, caller="test")) as changes:
        await anext(changes)
        for i in range(MAX_PENDING + 50):  # distinct runs: none replaces another
            await bus.publish(run_topic("far", f"behind{i}"), b"queued")
        # A later change of a held run replaces it; a change that leaves the run without an outcome says so
        # after its state (";open", for the run's waiters), which the stream does not show.
        await bus.publish(run_topic("far", "behind0"), b"running;open")
        assert await anext(changes) is RECHECK_ALL
        held = await anext(changes)
        assert isinstance(held, list) and len(held) == MAX_PENDING
        assert RunChange("far", "behind0", "running") in held


async def test_streams_are_capped_per_process_and_end_when_the_server_drains(memory_rig: WaitRig) -> None:
    feed = RunFeed(memory_rig.waiter_bus, memory_rig.stores.runs, seats=Seats(1))
    async with aclosing(feed.changes(None, idle_s=SEEN_S, caller="test")) as first:
        await anext(first)
        with pytest.raises(Overloaded):
            await anext(feed.changes(None, idle_s=SEEN_S, caller="test"))
        waiting = asyncio.create_task(anext(first))
        await asyncio.sleep(0)
        feed.drain()
        with pytest.raises(Unavailable, match="shutting down"):
            await asyncio.wait_for(waiting, SEEN_S)
    assert feed.streams == 0


async def test_an_idle_stream_yields_a_heartbeat(memory_rig: WaitRig) -> None:
    feed = RunFeed(memory_rig.waiter_bus, memory_rig.stores.runs, seats=Seats(1))
    async with aclosing(feed.changes(None, idle_s=0.01, caller="test")) as changes:
        await anext(changes)
        assert await anext(changes) is None
