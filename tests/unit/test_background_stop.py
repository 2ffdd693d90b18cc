"""The server's background loops end at shutdown, even one whose first cancellation a driver swallowed
(``stateport.bootstrap.stopped``)."""

from __future__ import annotations

import asyncio
import time

from stateport.bootstrap import stopped


async def _loop_whose_driver_turns_a_cancel_into_its_timeout(
    ticks: list[int], in_call: asyncio.Event
) -> None:
    """As asyncpg connecting to a server that had stopped answering did: the cancellation came out of the
    call as a TimeoutError, which the loop took for a store failure (an outsider's find: the server's
    shutdown waited for the lease sweeper for ever). Between calls it sleeps, as the loops do."""
    while True:
        try:
            try:
                in_call.set()
                await asyncio.sleep(0.3)  # the driver's call
            except asyncio.CancelledError:
                raise TimeoutError from None
        except TimeoutError:
            ticks.append(1)  # "the store failed": the loop goes on
        in_call.clear()
        await asyncio.sleep(1.0)


async def test_a_loop_that_took_its_cancellation_for_an_error_is_asked_again_until_it_ends() -> None:
    ticks: list[int] = []
    in_call = asyncio.Event()
    stubborn = asyncio.create_task(_loop_whose_driver_turns_a_cancel_into_its_timeout(ticks, in_call))
    plain = asyncio.create_task(asyncio.sleep(60))
    await in_call.wait()
    started = time.monotonic()
    await asyncio.wait_for(stopped([stubborn, plain]), 10)
    assert time.monotonic() - started < 5
    assert stubborn.cancelled() and plain.cancelled()
    assert ticks  # it did swallow a cancellation first


async def test_an_error_a_loop_ended_with_is_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    try:
        await stopped([task])
    except RuntimeError as exc:
        assert str(exc) == "broken"
    else:
        raise AssertionError("the loop's error was lost")
