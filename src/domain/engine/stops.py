"""Stop signals: a worker hears within about a second that a task instance it runs must stop.

A run cancelled (explicitly, by its last disconnecting caller, or by its deadline) ends its running tries
in the store; a worker used to learn it only at the task's next heartbeat (a third of the lease, 10 s by
default). Instead each worker process holds one long-poll naming the task instances it runs; it is
answered as soon as one of them is no longer ``running``. The poll listens to the runs' EventBus topics
(every cancel announces its run, in whichever process it happened) and re-reads the task instances' states
on each announcement, and on a slow timer in case one is lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from stateport.domain.engine.events import RunEvents
from stateport.domain.models import TIState
from stateport.domain.ports import RunStore

# Between announcements, the states are read again this often (a lost announcement delays a stop by at
# most this; the heartbeat stays the last resort).
RECHECK_S = 5.0


class _Wake:
    """An EventBus receiver that wakes the poll."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def deliver(self, message: bytes) -> None:
        self.event.set()


async def stopped(
    runs: RunStore,
    events: RunEvents,
    tasks: Sequence[tuple[uuid.UUID, str, str]],
    wait_s: float,
    *,
    abandoned: asyncio.Event | None = None,
    recheck_s: float = RECHECK_S,
) -> list[uuid.UUID]:
    """Of ``tasks`` (task instance id, dag_id, run_id), those not ``running`` any more (ended, or gone),
    at once if there are any, else as soon as one stops within ``wait_s`` seconds; [] when the wait ends
    or ``abandoned`` is set (the worker hung up)."""
    wake = _Wake()
    ids = [task_id for task_id, _, _ in tasks]
    topics = [events.listen_run(dag_id, run_id, wake) for dag_id, run_id in {(d, r) for _, d, r in tasks}]
    loop = asyncio.get_running_loop()
    until = loop.time() + wait_s
    try:
        while True:
            wake.event.clear()  # before the read: an announcement during it is not missed
            states = await runs.task_instance_states(ids)
            found = [task_id for task_id in ids if states.get(task_id) is not TIState.RUNNING]
            left = until - loop.time()
            if found or left <= 0 or (abandoned is not None and abandoned.is_set()):
                return found
            waits = [asyncio.ensure_future(wake.event.wait())]
            if abandoned is not None:
                waits.append(asyncio.ensure_future(abandoned.wait()))
            try:
                await asyncio.wait(waits, timeout=min(left, recheck_s), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
    finally:
        for topic in topics:
            events.unlisten(topic, wake)
