"""Claims parked in one process look at the store by turns, a group per queues and filters, not each on its
own timer (stateport.domain.engine.rechecks): their number does not load the store.

Each test parks its claims in a process of their own (a fresh wiring over the same stores) whose
LeaseStore counts the claim statements it runs: the real SQLite or PostgreSQL store underneath. The
counts asserted are those of the design (one look per interval or event, and one per claim served), far
below one look per claim, whatever the machine's speed: a slower event loop only makes fewer rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

import msgspec

from stateport.adapters.memory.events import MemoryEventBus
from stateport.domain.engine import RunCore
from stateport.domain.engine.claims import Claimed
from stateport.domain.models import DagSpec
from stateport.domain.ports import LeaseStore
from tests.engine.conftest import Harness
from tests.fixtures.core import wire
from tests.fixtures.counting import Counted
from tests.services import unique

# Far more claims than looks at the store the tests allow for.
CLAIMS = 40


def counted_process(
    h: Harness, *, recheck_s: float, own_bus: bool = False, per_caller: int = 100
) -> tuple[RunCore, Counted]:
    """A server process over the harness's stores whose claim statements are counted; ``own_bus``: on an
    event bus of its own, so that it hears none of the harness's events (as if every one were lost)."""
    leases = Counted(h.stores.leases, "claim")  # counts the claim statements: one per queue looked at
    stores = dataclasses.replace(h.stores, leases=cast(LeaseStore, leases))
    config = msgspec.structs.replace(
        h.core.config, claim_recheck_s=recheck_s, max_claim_rechecks_per_caller=per_caller
    )
    events = MemoryEventBus() if own_bus else h.events
    return wire(stores, events, h.blobs, h.clock, tokens=h.tokens, config=config).core, leases


async def park(core: RunCore, queue: str, n: int = CLAIMS, **kw: Any) -> list[asyncio.Task[list[Claimed]]]:
    """``n`` long-polling claims on ``queue`` by workers w0, w1, ... (oldest first), each begun waiting."""
    waiting = []
    for i in range(n):
        waiting.append(asyncio.create_task(core.claims.claim(f"w{i}", [queue], 1, 60, **kw)))
        await asyncio.sleep(0)  # in order: w0 is the oldest
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waiting)
    return waiting


async def ended(waiting: list[asyncio.Task[list[Claimed]]]) -> None:
    for w in waiting:
        w.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_claims_parked_on_an_empty_queue_look_at_the_store_once_per_interval(harness: Harness) -> None:
    core, leases = counted_process(harness, recheck_s=0.1)
    waiting = await park(core, harness.queue)
    before = leases.calls  # each looked once as it came, and the group since
    await asyncio.sleep(1.0)  # about 10 intervals: each claim on its own looked 10 times, 400 in all
    looks = leases.calls - before
    await ended(waiting)
    # One look per interval for the whole group (none when the event loop was too slow for a round).
    assert looks <= 12, looks


async def test_an_event_costs_one_look_per_claim_served_and_one_more(harness: Harness) -> None:
    core, leases = counted_process(harness, recheck_s=60.0)  # only the queue's events make rounds
    waiting = await park(core, harness.queue)
    before = leases.calls
    # Triggered in another process (the harness's own core), on the same bus: queued and announced.
    await harness.start({"tasks": [{"task_id": t} for t in "abc"]})
    await asyncio.wait(waiting[:3], timeout=10)
    await asyncio.sleep(0.3)  # time for a claim that should not have been served to answer
    served = [w for w in waiting if w.done() and w.result()]
    looks = leases.calls - before
    await ended(waiting)
    # The three oldest parked claims took one each, and the fourth found the queue empty; each of the
    # forty on its own would have looked on each of the events.
    assert sorted(c.ti.lease_owner or "" for w in served for c in w.result()) == ["w0", "w1", "w2"]
    assert looks <= 4 + 3, looks  # one round per event heard (three queued, one event each at most)


async def test_a_task_whose_event_was_lost_reaches_a_parked_claim_by_the_groups_recheck(
    harness: Harness,
) -> None:
    # The claims' process hears nothing of the harness's events: only the group's re-check finds the task.
    core, _ = counted_process(harness, recheck_s=0.2, own_bus=True)
    waiting = await park(core, harness.queue)
    await harness.start({"tasks": [{"task_id": "a"}, {"task_id": "b"}]})
    first = await asyncio.wait_for(asyncio.shield(waiting[0]), 10)
    second = await asyncio.wait_for(asyncio.shield(waiting[1]), 10)
    await ended(waiting)
    assert {c.ti.task_id for c in [*first, *second]} == {"a", "b"}
    assert [c.ti.lease_owner for c in [*first, *second]] == ["w0", "w1"]  # oldest first


async def test_claims_with_other_filters_look_in_a_group_of_their_own(harness: Harness) -> None:
    core, _ = counted_process(harness, recheck_s=0.2, own_bus=True)
    dag_id = unique("dag")
    spec = msgspec.convert({"tasks": [{"task_id": "t", "queue": harness.queue}]}, DagSpec)
    await harness.runs.register_dag(dag_id, spec)
    others = await park(core, harness.queue, dag_ids=["not-this-dag"])
    (mine,) = await park(core, harness.queue, 1, dag_ids=[dag_id])
    await harness.runs.trigger(dag_id)
    (claimed,) = await asyncio.wait_for(mine, 10)  # its group's re-check: no event is heard
    assert not any(w.done() for w in others)
    await ended(others)
    assert claimed.ti.task_id == "t" and claimed.ti.dag_id == dag_id


async def test_a_caller_with_many_groups_of_its_own_has_them_look_less_often_and_slows_no_one(
    harness: Harness,
) -> None:
    # A queue name per claim: 40 groups of one claim each, which at one look each per interval would be
    # 400 looks a second. Past its share (one queue per interval), its groups look 40 times less often.
    core, leases = counted_process(harness, recheck_s=0.1, own_bus=True, per_caller=1)
    spread = [w for i in range(CLAIMS) for w in await park(core, unique("q"), 1, caller="many")]
    # It also waits on this test's queue, where another caller waits too: that group looks for the
    # other caller at the usual pace (its load is one queue), and so the task reaches a claim there.
    shared = await park(core, harness.queue, 1, caller="many")
    shared += await park(core, harness.queue, 1, caller="one")
    before = leases.calls
    await asyncio.sleep(1.0)
    looks = leases.calls - before
    assert not any(w.done() for w in [*spread, *shared])  # none refused
    await harness.start({"tasks": [{"task_id": "a"}]})  # no event reaches the claims' process
    done, _ = await asyncio.wait(shared, timeout=2.0, return_when=asyncio.FIRST_COMPLETED)
    await ended([*spread, *shared])
    assert [c.ti.task_id for w in done for c in w.result()] == ["a"]
    # The shared group's ten looks, and at most one per group of its own (every 4 s).
    assert looks <= 12 + CLAIMS, looks
