"""Calls made in one event-loop step, served by one round trip (automatic batching of reads).

Why by hand: neither redis-py nor asyncpg batches independent reads of concurrent requests, and under load
many requests read a state key in the same event-loop step, each paying for its own round trip (a
connection checkout, a write, a wake-up to read the reply). A py-spy profile of the state GET at c=100 put
the Redis adapter's per-command overhead at a third of its time (issue #15, docs/benchmarks.md). Here the
first call of a step schedules a flush at the end of the step; the flush hands every call collected by
then to ``execute`` at once (one script call, one query), and gives each caller its own reply. A lone call
goes to ``execute`` alone, so a quiet server pays one loop turn and nothing else.

A batch that fails fails each of its callers with the same error their own call would have raised. Reads
go through here everywhere; Redis puts too, where ``scripts.PUT_MANY`` keeps each put its own.

``deadline_s`` bounds how long a caller waits for its batch, by a timer of the batcher's own rather than
by cancelling the driver's call: redis-py can swallow a cancellation that arrives while it opens a
connection (seen in tests/adapters/test_redis.py's hung-Redis test: a read's deadline passed during the
connection's handshake, and the read then waited out the socket timeout too, twice the deadline). A batch
still running at its deadline keeps its connection until the driver lets go; its callers have their answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Call = TypeVar("Call")
Reply = TypeVar("Reply")


class StepBatcher(Generic[Call, Reply]):
    """``await batcher(call)``: the reply to ``call``, from ``execute`` run once per event-loop step."""

    def __init__(
        self,
        execute: Callable[[Sequence[Call]], Awaitable[Sequence[Reply]]],
        *,
        deadline_s: float | None = None,
        late: Callable[[], BaseException] = TimeoutError,
        max_calls: int = 128,
        weigh: Callable[[Call], int] | None = None,
        max_weight: int = 0,
    ) -> None:
        self._execute = execute
        self._deadline_s = deadline_s
        self._late = late  # the error of a caller whose batch outlived deadline_s
        # A batch is sent early once it holds max_calls calls, or calls weighing max_weight (with weigh):
        # one command is one reply to hold and, on Redis, one script that blocks the server while it runs.
        self._max_calls = max_calls
        self._weigh = weigh
        self._max_weight = max_weight
        self._weight = 0
        self._calls: list[Call] = []
        self._futures: list[asyncio.Future[Reply]] = []
        self._running: set[asyncio.Task[None]] = set()  # strong references until each batch ends

    async def __call__(self, call: Call) -> Reply:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._calls.append(call)
        self._futures.append(future)
        if self._weigh is not None:
            self._weight += self._weigh(call)
        if len(self._calls) >= self._max_calls or (
            self._weigh is not None and self._weight >= self._max_weight
        ):
            self._flush()  # the step's flush, already scheduled or not, finds the next batch or none
        elif len(self._calls) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if not self._calls:
            return
        calls, futures = self._calls, self._futures
        self._calls, self._futures, self._weight = [], [], 0
        task = asyncio.ensure_future(self._send(calls, futures))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        if self._deadline_s is not None:
            timer = asyncio.get_running_loop().call_later(self._deadline_s, self._expire, futures)
            task.add_done_callback(lambda _: timer.cancel())

    def _expire(self, futures: list[asyncio.Future[Reply]]) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(self._late())

    async def _send(self, calls: list[Call], futures: list[asyncio.Future[Reply]]) -> None:
        try:
            replies = await self._execute(calls)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except BaseException as exc:  # noqa: BLE001 (every caller hears why its call failed)
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, reply in zip(futures, replies, strict=True):
            if not future.done():  # a caller that went away (its request cancelled) hears nothing
                future.set_result(reply)
