"""FairTurns: callers take turns at a store's connections (stateport.adapters.shared.turns)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from stateport.adapters.s3.client import bounded_step
from stateport.adapters.shared.turns import take_turn
from stateport.domain.fairness import current_caller
from stateport.domain.turns import FairTurns


async def _queue(turns: FairTurns, caller: str, name: str, order: list[str]) -> asyncio.Task[None]:
    """A task that takes a turn as ``caller``, notes ``name`` and gives the turn back; queued by return."""

    async def take() -> None:
        current_caller.set(caller)
        await turns.acquire()
        order.append(name)
        turns.release()

    task = asyncio.create_task(take(), context=contextvars.copy_context())
    await asyncio.sleep(0)  # it reaches acquire and waits there
    return task


async def test_a_freed_turn_goes_to_the_next_caller_in_rotation() -> None:
    turns = FairTurns(1)
    await turns.acquire()
    assert turns.locked()
    order: list[str] = []
    tasks = [await _queue(turns, "a", name, order) for name in ("a1", "a2", "a3")] + [
        await _queue(turns, "b", "b1", order),
        await _queue(turns, "c", "c1", order),
    ]
    tasks.append(await _queue(turns, "b", "b2", order))
    turns.release()
    await asyncio.gather(*tasks)
    # Each caller's own in arrival order; no caller gets a second turn while another waits for its first.
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert not turns.locked()


async def test_free_turns_are_taken_at_once_whoever_asks() -> None:
    turns = FairTurns(2)
    await turns.acquire()
    await turns.acquire()
    assert turns.locked()
    turns.release()
    assert not turns.locked()
    await turns.acquire()
    assert turns.locked()


async def test_a_waiter_that_times_out_leaves_its_place() -> None:
    turns = FairTurns(1)
    await turns.acquire()
    with pytest.raises(TimeoutError):
        await take_turn(turns, 0.01)
    order: list[str] = []
    task = await _queue(turns, "b", "b1", order)
    turns.release()
    await task
    assert order == ["b1"] and not turns.locked()


async def test_a_turn_given_to_a_waiter_cancelled_meanwhile_passes_on() -> None:
    turns = FairTurns(1)
    await turns.acquire()
    order: list[str] = []
    first = await _queue(turns, "a", "a1", order)
    second = await _queue(turns, "b", "b1", order)
    turns.release()  # a1's turn, which it has not taken up yet
    first.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled() and order == ["b1"]
    assert not turns.locked()


async def test_s3_steps_take_turns_at_the_threads() -> None:
    # The S3 stores' boto3 steps queued in their executor's own queue, one caller's burst before anyone
    # else's; with turns, callers take turns at the threads (bounded_step).
    turns = FairTurns(1)
    gate = threading.Event()
    order: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as executor:

        async def step(caller: str, name: str, *, hold: bool = False) -> None:
            current_caller.set(caller)

            def run() -> None:
                if hold:
                    gate.wait(10)
                order.append(name)

            await bounded_step(executor, run, None, turns=turns)

        steps = [asyncio.create_task(step("a", "a0", hold=True))]
        for caller, name in [("a", "a1"), ("a", "a2"), ("b", "b1")]:
            await asyncio.sleep(0.01)  # queued in this order
            steps.append(asyncio.create_task(step(caller, name)))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*steps)
    assert order == ["a0", "a1", "b1", "a2"]
    assert not turns.locked()
