"""Turns in front of a driver's connection pool, shared by the SQL, Redis and REST adapters.

asyncpg's, redis-py's and httpcore's pools all hand a released connection to whoever asks next, also ahead
of requests already waiting, so under more requests than connections some wait far longer than the rest
(docs/benchmarks.md). Turns of the pool's size queue newcomers behind waiters, so holding a turn while
using a connection means no request ever waits at the pool itself.

A server's stores take ``FairTurns``: callers (``stateport.domain.fairness.current_caller``) take turns,
each caller's own requests in arrival order. In one queue for all, one task instance sending 200 state
writes at once made every other caller's request wait behind them: another task instance's read went from
0.4-0.7 ms to 62-69 ms at the median, 12.6-13.3 ms with these turns (docs/benchmarks.md, session 25). A
client of a server (the REST adapter) has one caller: an ``asyncio.Semaphore``, turns in arrival order.
"""

from __future__ import annotations

import asyncio

from stateport.domain.turns import FairTurns


async def take_turn(turns: asyncio.Semaphore | FairTurns, timeout_s: float | None) -> None:
    """Wait for a turn, at most ``timeout_s`` (TimeoutError); release it when done."""
    if not turns.locked():
        await turns.acquire()  # returns at once: no timer needed
        return
    async with asyncio.timeout(timeout_s):
        await turns.acquire()
