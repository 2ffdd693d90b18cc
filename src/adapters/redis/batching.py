"""Redis reads of one event-loop step as one command (see ``adapters/shared/batching.py`` for why).

A batch is one ``EVALSHA`` of ``scripts.READ_ENTRIES``, not a pipeline of ``HMGET``s: redis-py packs each
pipelined command and parses each reply in Python (13-15 µs of client CPU per read in a 50-read batch,
against 2.5 µs for the script's one command and one reply; docs/benchmarks.md, session 7), and a lone read
stays a plain ``HMGET``. The script also reads the whole batch at one instant, which no caller needs but
none is hurt by.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis

from stateport.adapters.redis import scripts
from stateport.adapters.redis.errors import map_redis_errors
from stateport.adapters.shared.batching import StepBatcher
from stateport.adapters.shared.turns import take_turn

# An entry's hash fields, in the order READ_ENTRIES returns them: value, updated at, expires at, version.
ENTRY_FIELDS = ("v", "u", "e", "n")
Fields = list[bytes | str | None]


class ReadBatcher:
    """An entry's fields, read in one script call per event-loop step, one turn at the pool each."""

    def __init__(self, client: Redis, turns: asyncio.Semaphore, timeout_s: float) -> None:
        self._redis = client
        self._turns = turns
        self._timeout_s = timeout_s
        self._read_entries = client.register_script(scripts.READ_ENTRIES)
        self._batcher: StepBatcher[str, Fields] = StepBatcher(self._execute)

    async def entry_fields(self, key: str) -> Fields:
        """The ``ENTRY_FIELDS`` of the entry hash ``key``, each None if absent."""
        return await self._batcher(key)

    async def _execute(self, keys: Sequence[str]) -> list[Fields]:
        # One deadline for the turn and the command: with Redis hanging, a batch queued behind the pool
        # would otherwise wait timeout_s for its turn and timeout_s again for its reply.
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            await take_turn(self._turns, None)
            try:
                if len(keys) == 1:
                    return [list(await self._redis.hmget(keys[0], ENTRY_FIELDS))]
                flat = await self._read_entries(keys=list(keys))
            finally:
                self._turns.release()
        width = len(ENTRY_FIELDS)
        return [list(flat[i : i + width]) for i in range(0, len(flat), width)]
