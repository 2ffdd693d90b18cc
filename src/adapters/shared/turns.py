"""FIFO turns in front of a driver's connection pool, shared by the SQL, Redis and REST adapters.

asyncpg's, redis-py's and httpcore's pools all hand a released connection to whoever asks next, also ahead
of requests already waiting, so under more requests than connections some wait far longer than the rest
(docs/benchmarks.md). An ``asyncio.Semaphore`` of the pool's size queues newcomers behind waiters, so
holding a turn while using a connection means no request ever waits at the pool itself.
"""

from __future__ import annotations

import asyncio


async def take_turn(turns: asyncio.Semaphore, timeout_s: float | None) -> None:
    """Wait for a turn in arrival order, at most ``timeout_s`` (TimeoutError); release it when done."""
    if not turns.locked():
        await turns.acquire()  # returns at once: no timer needed
        return
    async with asyncio.timeout(timeout_s):
        await turns.acquire()
