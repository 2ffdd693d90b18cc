"""Redis reads of one event-loop step as one pipeline (see ``adapters/shared/batching.py`` for why)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from stateport.adapters.redis.errors import map_redis_errors
from stateport.adapters.shared.batching import StepBatcher
from stateport.adapters.shared.turns import take_turn

Fields = list[bytes | None]
# A hash's key, and the fields to read from it.
HashRead = tuple[str, tuple[str, ...]]


class ReadBatcher:
    """``HMGET`` through one non-transactional pipeline per event-loop step, one turn at the pool each."""

    def __init__(self, client: Redis, turns: asyncio.Semaphore, timeout_s: float) -> None:
        self._redis = client
        self._turns = turns
        self._timeout_s = timeout_s
        self._batcher: StepBatcher[HashRead, Fields] = StepBatcher(self._execute)

    async def hmget(self, key: str, fields: tuple[str, ...]) -> Fields:
        return await self._batcher((key, fields))

    async def _execute(self, batch: Sequence[HashRead]) -> list[Any]:
        # One deadline for the turn and the command: with Redis hanging, a batch queued behind the pool
        # would otherwise wait timeout_s for its turn and timeout_s again for its reply.
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            await take_turn(self._turns, None)
            try:
                if len(batch) == 1:
                    key, fields = batch[0]
                    return [await self._redis.hmget(key, list(fields))]
                pipe = self._redis.pipeline(transaction=False)
                for key, fields in batch:
                    _ = pipe.hmget(key, list(fields))  # queued; returns the pipeline
                return list(await pipe.execute())
            finally:
                self._turns.release()
