"""Early refusal of a DAG's triggers past its ``max_queued_runs``, in one process, before anything is read.

Acceptance is never decided here: the run store counts a DAG's queued runs under the DAG's row lock right
before a run commits (``RunStore.create_run``), in any process. What this module decides is only which
triggers need not get that far, so that the surplus of a burst costs no pooled connection:

- a DAG whose trigger was refused for its limit a moment ago is taken to be full for ``FULL_FOR_S``;
- a DAG with as many triggers under way in this process as its limit refuses the next one: if every one
  of them is accepted the queue is full, and if some are not, the refused caller is only told to retry
  sooner than it had to (429 with ``Retry-After``).

The limit is the one this process last read for the DAG (a re-registration in another process is seen at
its next read here). A process that has not read it yet lets one trigger read it while the DAG's other
triggers wait for that read (``learning``, before the triggers' bodies are read), so that a burst landing
on a fresh process does not all read at once (docs/benchmarks.md, session 11: the first window of a
burst, when every trigger read the DAG and the pool ran out, ended thousands of triggers with 503).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from stateport.domain.errors import Refused
from stateport.domain.ports import Clock

# After a trigger of a DAG was refused for its max_queued_runs, this process refuses the DAG's next
# triggers without reading anything for this long: the staleness a refusal may have (room that opened
# meanwhile, in any process, is found by the first trigger after it). Acceptance is never decided here.
FULL_FOR_S = 0.5
# Past FULL_FOR_S one trigger finds out (it reads and, if there is room, is accepted); the others are
# refused meanwhile, so that a burst does not all find out at once, for at most this long should that one
# not come back.
PROBE_S = 5.0
# Above this many DAGs remembered (full, or with a limit), the stale ones are dropped.
PRUNE_AT = 1024


class TriggerGate:
    """Per DAG, in this process: when it was last found full, its triggers under way, and its limit as
    last read."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        # Per DAG last refused for its max_queued_runs: until when it is taken to be full, why, and since
        # when (the refusal that found it full).
        self._full: dict[str, tuple[datetime, str, datetime]] = {}
        # Per DAG: triggers between their gate and the end of their run's creation (absent at zero).
        self._under_way: dict[str, int] = {}
        # Per DAG: its max_queued_runs as this process last read it (None: it has none).
        self._limits: dict[str, int | None] = {}
        # Per DAG whose limit no trigger has read yet: set when the one reading it is done.
        self._reading: dict[str, asyncio.Event] = {}

    @asynccontextmanager
    async def learning(self, dag_id: str) -> AsyncIterator[bool]:
        """Before a trigger's body is read: whether this trigger is to read the DAG now. True if this
        process has not read the DAG's limit and no other trigger is reading it (this one reads it for the
        others), or the one that was has ended without reading it. False once the limit is known; while
        another trigger reads it, this one waits for that read first."""
        if dag_id in self._limits:
            yield False
            return
        reading = self._reading.get(dag_id)
        if reading is not None:
            await reading.wait()
            yield dag_id not in self._limits
            return
        reading = self._reading[dag_id] = asyncio.Event()
        try:
            yield True
        finally:
            if self._reading.get(dag_id) is reading:
                # Its read failed (an unknown DAG, a store down), or was never made: the others read for
                # themselves.
                del self._reading[dag_id]
                reading.set()

    @asynccontextmanager
    async def passing(self, dag_id: str, *, keyed: bool) -> AsyncIterator[None]:
        """Hold the body (the DAG's read and the run's creation) as one of the DAG's triggers under way,
        or raise Refused before it if the DAG is known to be full. ``keyed``: the trigger carries an
        Idempotency-Key; it is never refused here, as its retry must get its run however full the queue."""
        if not keyed:
            self.refuse_if_full(dag_id)
            self._refuse_past_limit(dag_id)
        self._under_way[dag_id] = self._under_way.get(dag_id, 0) + 1
        try:
            yield
        finally:
            left = self._under_way[dag_id] - 1
            if left:
                self._under_way[dag_id] = left
            else:
                del self._under_way[dag_id]

    def refuse_if_known_full(self, dag_id: str) -> None:
        """Refused if the DAG is taken to be full right now (as ``refuse_if_full``), with no other effect:
        no trigger is picked to find out."""
        full = self._full.get(dag_id)
        if full is not None and self.clock.now() < full[0]:
            raise Refused(full[1])

    def refuse_if_full(self, dag_id: str) -> None:
        """Refused if a trigger of the DAG was refused for its ``max_queued_runs`` in this process less than
        ``FULL_FOR_S`` ago; else nothing. The refusal may be up to ``FULL_FOR_S`` stale."""
        self.refuse_if_known_full(dag_id)
        full = self._full.get(dag_id)
        if full is None:
            return
        _, detail, since = full
        now = self.clock.now()
        # This one finds out; the DAG's other triggers are refused until it does (see ``accepted``).
        self._full[dag_id] = (now + timedelta(seconds=PROBE_S), detail, since)

    def _refuse_past_limit(self, dag_id: str) -> None:
        limit = self._limits.get(dag_id)
        if limit is not None and self._under_way.get(dag_id, 0) >= limit:
            raise Refused(
                f"DAG '{dag_id}' has {limit} triggers under way, its max_queued_runs: nothing was created;"
                " try again later"
            )

    def read(self, dag_id: str, limit: int | None) -> None:
        """The DAG was read: its ``max_queued_runs`` is ``limit``. Triggers waiting for it go on."""
        if dag_id not in self._limits and len(self._limits) >= PRUNE_AT:
            self._limits.clear()  # read again at the next trigger of each: costs one read per DAG
        self._limits[dag_id] = limit
        reading = self._reading.pop(dag_id, None)
        if reading is not None:
            reading.set()

    def refused(self, dag_id: str, detail: str) -> None:
        """A trigger of the DAG was refused by the store for its max_queued_runs."""
        now = self.clock.now()
        if len(self._full) >= PRUNE_AT:
            self._full = {dag: full for dag, full in self._full.items() if full[0] > now}
        self._full[dag_id] = (now + timedelta(seconds=FULL_FOR_S), detail, now)

    def accepted(self, dag_id: str, asked_at: datetime) -> None:
        """A run of the DAG was created by a trigger that began at ``asked_at``: if that was after the DAG
        was last found full, there was room since, and the DAG's triggers find out for themselves again.
        (Triggers under way from before the refusal prove nothing about the queue after it.)"""
        full = self._full.get(dag_id)
        if full is not None and full[2] <= asked_at:
            del self._full[dag_id]
