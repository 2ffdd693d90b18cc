"""Turns in which callers take a scarce resource (a store's connections, a body check's processes): each
caller's requests in arrival order, callers in rotation (``stateport.domain.fairness.current_caller``).

Shared by the stores' adapters (``adapters/shared/turns.py``, in front of their drivers' pools) and the
HTTP layer's body checks (``http/checking.py``): one token sending many large reports at once held the one
checking process while another caller's report waited behind all of them (an outsider's find).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable

from stateport.domain.fairness import current_caller


class FairTurns:
    """``size`` turns; while none is free, a freed turn goes to the next caller waiting in rotation.

    Written here rather than taken from a library: asyncio has no fair queue, and what this needs is a
    semaphore whose waiters are served round-robin by caller (a caller waiting gets a turn before any
    caller gets a second one), with asyncio.Semaphore's other manners (``locked``, cancellation passing
    a turn on) so the adapters take it as they took that.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        # The callers waiting, in rotation order (a dict keeps insertion order): each with its waiters.
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def locked(self) -> bool:
        """Whether an ``acquire`` would wait."""
        return self._free == 0

    async def acquire(self) -> None:
        """Take a turn, waiting (as the current caller) while none is free."""
        if self._free > 0:
            self._free -= 1
            return
        caller = current_caller.get()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(caller)
        if queue is None:
            queue = self._waiting[caller] = deque()
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # given a turn as it was cancelled (a timeout): pass it on
            else:
                self._forget(caller, waiter)
            raise

    def release(self) -> None:
        """Give back a turn: to the first waiting caller in rotation (which then goes last), else free."""
        while self._waiting:
            caller = next(iter(self._waiting))
            queue = self._waiting.pop(caller)
            waiter = queue.popleft()
            if queue:
                self._waiting[caller] = queue
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _forget(self, caller: Hashable, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(caller)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._waiting[caller]
