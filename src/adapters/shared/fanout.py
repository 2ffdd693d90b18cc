"""In-process fan-out by topic: the in-memory event bus, and the local side of the listening buses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

# A subscriber that falls this far behind loses messages rather than holding memory: messages are hints
# (the subscriber re-reads the stores), so dropping one delays a wake-up but never loses it.
MAX_BACKLOG = 256


class Subscription:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(MAX_BACKLOG)

    def deliver(self, message: bytes) -> None:
        with suppress(asyncio.QueueFull):
            self._queue.put_nowait(message)

    async def next(self, wait_s: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return None


class Fanout:
    """This process's subscriptions by topic; delivering costs one dict lookup when nobody listens."""

    def __init__(self) -> None:
        self._topics: dict[str, set[Subscription]] = {}

    def dispatch(self, topic: str, message: bytes) -> None:
        """Deliver to this process's subscribers (cross-process buses call this for what they receive)."""
        for sub in self._topics.get(topic, ()):
            sub.deliver(message)

    def broadcast(self, message: bytes) -> None:
        """Deliver to every subscriber of this process, whatever its topic (a RECHECK after a reconnect)."""
        for subs in self._topics.values():
            for sub in subs:
                sub.deliver(message)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        sub = Subscription()
        self._topics.setdefault(topic, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._topics.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._topics[topic]

    def subscriber_count(self, topic: str | None = None) -> int:
        """How many subscriptions are open (on one topic, or in all)."""
        if topic is not None:
            return len(self._topics.get(topic, ()))
        return sum(len(s) for s in self._topics.values())
