"""``Timers`` (stateport.domain.timers): many deadlines on one loop timer, in order, dead ones skipped."""

from __future__ import annotations

import asyncio
import math

from stateport.domain.timers import MIN_COMPACT, Timers


class Target:
    """A timed target that records its firings in a shared list."""

    def __init__(self, name: str, fired: list[str]) -> None:
        self.name = name
        self.fired = fired
        self.fire_at = math.inf
        self.done = asyncio.Event()

    def fire(self) -> None:
        self.fired.append(self.name)
        self.done.set()


async def test_deadlines_fire_in_their_order_on_one_timer() -> None:
    loop = asyncio.get_running_loop()
    timers, fired = Timers(), list[str]()
    now = loop.time()
    targets = [Target(name, fired) for name in "cab"]
    for target, delay in zip(targets, (0.06, 0.02, 0.04), strict=True):
        target.fire_at = now + delay
        timers.at(target.fire_at, target)
    await asyncio.wait_for(targets[0].done.wait(), 5)
    assert fired == ["a", "b", "c"]
    assert all(t.fire_at == math.inf for t in targets)  # a fired target wants nothing more
    assert len(timers) == 0


async def test_soonest_only_moves_a_deadline_earlier_and_the_old_entry_is_dead() -> None:
    loop = asyncio.get_running_loop()
    timers, fired = Timers(), list[str]()
    target = Target("t", fired)
    timers.soonest(loop.time() + 0.05, target)
    later = loop.time() + 10
    timers.soonest(later, target)  # later than due: nothing changes
    assert target.fire_at < later and len(timers) == 1
    timers.soonest(loop.time() + 0.01, target)  # sooner: a new entry, the first one dead
    assert len(timers) == 2
    await asyncio.wait_for(target.done.wait(), 5)
    await asyncio.sleep(0.1)  # past the dead entry's time
    assert fired == ["t"]


async def test_a_target_that_gave_up_its_time_is_not_fired() -> None:
    loop = asyncio.get_running_loop()
    timers, fired = Timers(), list[str]()
    gone, kept = Target("gone", fired), Target("kept", fired)
    for target in (gone, kept):
        target.fire_at = loop.time() + 0.02
        timers.at(target.fire_at, target)
    gone.fire_at = math.inf  # woken another way
    await asyncio.wait_for(kept.done.wait(), 5)
    assert fired == ["kept"]


async def test_dead_entries_are_compacted_away() -> None:
    loop = asyncio.get_running_loop()
    timers, fired = Timers(), list[str]()
    far = loop.time() + 3600
    for i in range(MIN_COMPACT - 1):
        target = Target(str(i), fired)
        target.fire_at = far
        timers.at(far, target)
        target.fire_at = math.inf  # each finished before its deadline
    live = Target("live", fired)
    live.fire_at = loop.time() + 0.01
    timers.at(live.fire_at, live)  # the heap reaches MIN_COMPACT: compacted to the one live entry
    assert len(timers) == 1
    await asyncio.wait_for(live.done.wait(), 5)
    assert fired == ["live"]
    timers.close()
