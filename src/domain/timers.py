"""Many deadlines on one loop timer: the waits' and the watches' timers (issue #15, waiters' memory).

A loop timer (``loop.call_at``) costs about 600 bytes with uvloop (its handle, its ``UVTimer`` and libuv's
struct), and a wait kept two: its own deadline and its run's safety re-read. With one waiter per run, as
under 20,000 callers on as many runs, that was 1.1 KiB of each waiter's 10.7 (traced, docs/benchmarks.md).
``Timers`` keeps every deadline of its owner in one heap of ``(when, seq, target)`` tuples, about 120
bytes each, under one loop timer armed for the earliest.

A target is any object with a ``fire_at`` attribute (the loop time it wants to fire at; ``inf`` for
none) and a ``fire()`` method. An entry is live while its target's ``fire_at`` is the entry's time: a
target that no longer wants it (it fired, was woken another way, or moved its time) just changes
``fire_at``, and the entry is skipped when it comes up, or dropped when the heap is compacted (when it has
grown to twice its size after the last compaction), so a busy process does not keep the dead entries of
finished waits for their whole timeout.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from typing import Protocol

log = logging.getLogger("stateport.timers")
# Compacted at no fewer entries than this: below it, dead entries cost less than scanning for them.
MIN_COMPACT = 1024
# A loop timer may fire up to its clock's resolution early (uvloop counts milliseconds): an entry this close
# to now is due.
EARLY_S = 0.001


class Timed(Protocol):
    """What ``Timers`` fires: ``fire_at`` is the loop time it wants ``fire`` called at (``inf``: never)."""

    fire_at: float

    def fire(self) -> None: ...


class Timers:
    """The deadlines of one owner (a ``RunWaits``, a ``StateWatches``) on the running loop."""

    __slots__ = ("_at", "_compact_at", "_handle", "_heap", "_loop", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._compact_at = MIN_COMPACT

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, target: Timed) -> None:
        """Fire ``target`` at loop time ``when``; it must have set ``target.fire_at = when``."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run one per test): the old one's timers are gone
            self.close()
            self._loop = loop
        heapq.heappush(self._heap, (when, next(self._seq), target))
        if len(self._heap) >= self._compact_at:
            self._compact()
        self._arm(loop)

    def soonest(self, when: float, target: Timed) -> None:
        """Fire ``target`` at ``when``, unless it is due sooner already (the watches' safety re-read, a
        RECHECK's spread and a retry all ask for "at most this late")."""
        if when < target.fire_at:
            target.fire_at = when
            self.at(when, target)

    def close(self) -> None:
        """Drop every deadline (at shutdown, or when the loop changed)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = math.inf
        self._heap.clear()
        self._compact_at = MIN_COMPACT

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._heap:
            return
        first = self._heap[0][0]
        if first < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._at = first
            self._handle = loop.call_at(first, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = math.inf
        loop = self._loop
        if loop is None:
            return
        heap = self._heap  # compacted in place: a target that schedules again while it fires is safe
        now = loop.time() + EARLY_S
        while heap and heap[0][0] <= now:
            when, _, target = heapq.heappop(heap)
            if target.fire_at != when:
                continue  # dead: the target moved on
            target.fire_at = math.inf
            try:
                target.fire()
            except Exception:  # the other deadlines must still fire
                log.exception("a timer's target failed")
        self._arm(loop)

    def _compact(self) -> None:
        self._heap[:] = [entry for entry in self._heap if entry[2].fire_at == entry[0]]
        heapq.heapify(self._heap)
        self._compact_at = max(MIN_COMPACT, 2 * len(self._heap))
        if self._handle is not None:  # the earliest may have been dead: re-armed by the caller
            self._handle.cancel()
            self._handle = None
            self._at = math.inf
