"""Stop signals: the worker hears within about a second that a task it runs must stop.

A run cancelled (the cancel route, its last disconnecting caller with ``on-disconnect=cancel``, or its
deadline) ends its running tries on the server. A task's heartbeat would tell its worker (409) only at
its next beat, a third of the lease later (10 s by default). So each worker process holds one long-poll,
``POST /execution/workers/stops``, naming every task instance it runs: the server answers as soon as one
of them is no longer running (it listens to the runs' events, from every server process), and the worker
interrupts those tasks as a lost lease does (an async task is cancelled, a sync one sees
``ctx.stopping``). One poll per process, not per task; it is sent again whenever the set of tasks grows.
The heartbeat stays as it was: the last resort, and what tells Airflow Task SDK workers, which do not
poll.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping

from stateport.domain.errors import NotFound, StateportError
from stateport.domain.quiet import Repeated
from stateport.worker.client import WorkerClient
from stateport.worker.execution import Running
from stateport.worker.futures import first, retrieve

log = logging.getLogger("stateport.worker")

# How long one poll waits on the server before it is sent again (the server allows up to 60 s).
WAIT_S = 25.0
# After the set of tasks grows, the poll is sent again this much later, so that the tasks of one claim
# (or of several claims in quick succession) go in one poll.
SETTLE_S = 0.05
# After a failed poll (the server unreachable), the next one waits this long.
RETRY_S = 1.0


class StopSignals:
    """This worker's stop-signal poll over ``running`` (the worker's running tasks, by id)."""

    def __init__(
        self, client: WorkerClient, running: Mapping[uuid.UUID, Running], stopping: asyncio.Event
    ) -> None:
        self._client = client
        self._running = running
        self._stopping = stopping
        self._grown = asyncio.Event()
        # Named by the server already (a task finishing is reported meanwhile): not asked about again.
        self._told: set[uuid.UUID] = set()

    def started(self) -> None:
        """A task started: the poll in flight does not name it, so it is sent again."""
        self._grown.set()

    async def run(self) -> None:
        """Poll until the worker stops (or the server has no stop route: then heartbeats alone tell)."""
        polls = Repeated(log, "stop-signal poll")
        while not self._stopping.is_set():
            self._told &= self._running.keys()
            tasks = [r for r in self._running.values() if _stoppable(r) and r.claimed.id not in self._told]
            if not tasks:
                await first(self._grown.wait(), self._stopping.wait())
                self._grown.clear()
                continue
            self._grown.clear()
            asked_at = asyncio.get_running_loop().time()
            poll = asyncio.ensure_future(self._client.stops([r.claimed for r in tasks], wait_s=WAIT_S))
            poll.add_done_callback(retrieve)
            await first(poll, self._grown.wait(), self._stopping.wait())
            if not poll.done():
                poll.cancel()  # a task started, or the worker is stopping: ask again with the new set
                if self._grown.is_set():
                    await first(asyncio.sleep(SETTLE_S), self._stopping.wait())
                continue
            try:
                stopped = poll.result()
            except NotFound:
                log.info("the server has no stop-signal route: tasks learn of a cancel at their heartbeat")
                return
            except StateportError as exc:
                polls.failed(exc.detail)
                await first(asyncio.sleep(RETRY_S), self._stopping.wait())
                continue
            polls.worked()
            if not stopped and asyncio.get_running_loop().time() - asked_at < RETRY_S:
                # Answered at once with nothing to stop: the server found no seat for the wait among its long
                # waits (it answers such a poll rather than refuse it). Asked again a moment later, not in a
                # loop; a cancel is then heard within about that moment.
                await first(asyncio.sleep(RETRY_S), self._grown.wait(), self._stopping.wait())
            self._told.update(stopped)
            for ti_id in stopped:
                running = self._running.get(ti_id)
                if running is not None and _stoppable(running):
                    # Any end of the try: a worker frozen past its lease hears of its expiry here first (an
                    # outsider's find: "its run was cancelled or ended" of a run that went on with a retry).
                    log.warning(
                        "the server ended %s (its run cancelled or ended, or its lease expired: the "
                        "worker did not heartbeat in time): stopping it",
                        ti_id,
                    )
                    running.interrupt("lost")


def _stoppable(running: Running) -> bool:
    """Still running its function, and not interrupted already."""
    return running.reason is None and not (running.body is not None and running.body.done())
