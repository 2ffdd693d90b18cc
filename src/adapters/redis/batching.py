"""Reads issued in one event-loop step go to Redis as one pipeline (automatic pipelining).

Why by hand: redis-py has no automatic pipelining, and its per-command path (a pool checkout, the retry
wrapper, one ``send`` and one read per command) was the Redis adapter's cost in a py-spy profile of the state
GET at c=100 (issue #15, docs/benchmarks.md): under load many requests ask for a key in the same step, and
each paid for its own round trip. Here the first read of a step schedules a flush at the end of the step;
the flush sends every read collected by then as one non-transactional redis-py pipeline (one write, one
connection, one turn at the pool), and hands each caller its own reply. A lone read goes out as a plain
command, so a quiet server pays nothing extra but one loop turn.

Only reads are batched: a read has no effect, so a batch that fails (the connection lost) fails each of its
callers with ``Unavailable``, exactly as their own commands would have.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from stateport.adapters.redis.errors import map_redis_errors
from stateport.adapters.shared.turns import take_turn

Fields = list[bytes | None]


class _Read:
    __slots__ = ("fields", "future", "key")

    def __init__(self, key: str, fields: tuple[str, ...], future: asyncio.Future[Fields]) -> None:
        self.key = key
        self.fields = fields
        self.future = future


class ReadBatcher:
    """``HMGET`` through one pipeline per event-loop step, holding one of the store's turns per batch."""

    def __init__(self, client: Redis, turns: asyncio.Semaphore, timeout_s: float) -> None:
        self._redis = client
        self._turns = turns
        self._timeout_s = timeout_s
        self._pending: list[_Read] = []
        self._running: set[asyncio.Task[None]] = set()  # strong references until each batch ends

    async def hmget(self, key: str, fields: tuple[str, ...]) -> Fields:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Fields] = loop.create_future()
        self._pending.append(_Read(key, fields, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[_Read]) -> None:
        try:
            replies = await self._execute(batch)
        except asyncio.CancelledError:
            for read in batch:
                read.future.cancel()
            raise
        except BaseException as exc:  # noqa: BLE001 (every caller hears why its read failed)
            for read in batch:
                if not read.future.done():
                    read.future.set_exception(exc)
            return
        for read, reply in zip(batch, replies, strict=True):
            if not read.future.done():  # a caller that went away (its request cancelled) hears nothing
                read.future.set_result(reply)

    async def _execute(self, batch: list[_Read]) -> list[Any]:
        # One deadline for the turn and the command: with Redis hanging, a batch queued behind the pool
        # would otherwise wait timeout_s for its turn and timeout_s again for its reply.
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            await take_turn(self._turns, None)
            try:
                if len(batch) == 1:
                    return [await self._redis.hmget(batch[0].key, list(batch[0].fields))]
                pipe = self._redis.pipeline(transaction=False)
                for read in batch:
                    _ = pipe.hmget(read.key, list(read.fields))  # queued; returns the pipeline
                return list(await pipe.execute())
            finally:
                self._turns.release()
