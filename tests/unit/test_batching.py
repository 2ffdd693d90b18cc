"""``StepBatcher`` (stateport.adapters.shared.batching): the calls of one event-loop step, one execute."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from stateport.adapters.shared.batching import StepBatcher


class Doubler:
    """An execute that doubles each call and records the batches it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, batch: Sequence[int]) -> list[int]:
        self.batches.append(list(batch))
        await self.release.wait()
        if any(call < 0 for call in batch):
            raise ValueError("negative")
        return [2 * call for call in batch]


async def test_calls_of_one_step_share_one_execute_and_get_their_own_reply() -> None:
    execute = Doubler()
    batcher = StepBatcher(execute)
    assert await asyncio.gather(*(batcher(i) for i in range(5))) == [0, 2, 4, 6, 8]
    assert execute.batches == [[0, 1, 2, 3, 4]]
    assert await batcher(7) == 14  # a lone call goes alone
    assert execute.batches[-1] == [7]


async def test_calls_of_later_steps_make_later_batches() -> None:
    execute = Doubler()
    execute.release.clear()
    batcher = StepBatcher(execute)
    first = [asyncio.ensure_future(batcher(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first batch is executing (held)
    second = [asyncio.ensure_future(batcher(i)) for i in (3, 4)]
    await asyncio.sleep(0)
    execute.release.set()
    assert await asyncio.gather(*first, *second) == [2, 4, 6, 8]
    assert execute.batches == [[1, 2], [3, 4]]


async def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_works() -> None:
    batcher = StepBatcher(Doubler())
    results = await asyncio.gather(batcher(1), batcher(-1), return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, ValueError]
    assert await batcher(3) == 6


async def test_a_caller_that_goes_away_leaves_the_others_their_replies() -> None:
    execute = Doubler()
    execute.release.clear()
    batcher = StepBatcher(execute)
    gone = asyncio.ensure_future(batcher(1))
    kept = asyncio.ensure_future(batcher(2))
    await asyncio.sleep(0)
    gone.cancel()
    execute.release.set()
    assert await kept == 4
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_batch_past_its_deadline_fails_its_callers_even_if_execute_ignores_cancellation() -> None:
    """The deadline is the batcher's own timer, not a cancellation the driver might swallow."""
    finished = asyncio.Event()

    async def stubborn(batch: Sequence[int]) -> list[int]:
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:  # what redis-py did in a connection's handshake
            await asyncio.sleep(0.3)
        finished.set()
        return list(batch)

    batcher = StepBatcher(stubborn, deadline_s=0.05, late=lambda: LookupError("late"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
    assert loop.time() - started < 0.25
    assert [type(r) for r in results] == [LookupError, LookupError]
    await asyncio.wait_for(finished.wait(), 1.0)  # the batch ran on; its late reply went to no one


async def test_a_batch_is_sent_early_at_max_calls_or_max_weight() -> None:
    execute = Doubler()
    by_count = StepBatcher(execute, max_calls=3)
    assert await asyncio.gather(*(by_count(i) for i in range(7))) == [0, 2, 4, 6, 8, 10, 12]
    assert execute.batches == [[0, 1, 2], [3, 4, 5], [6]]

    execute = Doubler()
    by_weight = StepBatcher(execute, weigh=lambda call: call, max_weight=10)
    assert await asyncio.gather(*(by_weight(i) for i in (4, 5, 1, 9, 2, 3))) == [8, 10, 2, 18, 4, 6]
    # 4 + 5 + 1 reaches 10: sent; 9 + 2 reaches 11: sent; 3 goes with the step's flush.
    assert execute.batches == [[4, 5, 1], [9, 2], [3]]
