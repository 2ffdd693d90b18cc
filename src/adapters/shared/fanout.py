"""In-process fan-out by topic: the in-memory event bus, and the local side of the listening buses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from stateport.domain.ports import RECHECK, Receiver, Tap

# A subscriber that falls this far behind loses messages rather than holding memory: messages are hints, so
# the last one held becomes a RECHECK (re-read everything) and no wake-up is lost, only made less precise.
MAX_BACKLOG = 256


class Subscription:
    """One subscriber's messages, in order, at most ``MAX_BACKLOG`` held; one consumer awaits ``next``.

    Lean on purpose: a process holds one per run it watches, so 100,000 runs waited on are 100,000 of
    these. An ``asyncio.Queue`` (four deques and an Event) with ``asyncio.wait_for`` (a Task, its coroutine,
    a future and a timer per call) cost about 5 KiB each; a list, one future and one timer while waiting
    cost a few hundred bytes (docs/benchmarks.md, waiters).
    """

    __slots__ = ("_messages", "_waiter")

    def __init__(self) -> None:
        self._messages: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, message: bytes) -> None:
        if len(self._messages) >= MAX_BACKLOG:
            # A state watcher hears of one key per message: dropping one would leave its watchers to the
            # slow re-read, where "re-read everything" finds it at once.
            self._messages[-1] = RECHECK
            return
        self._messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, wait_s: float) -> bytes | None:
        if not self._messages:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            timer = loop.call_later(max(0.0, wait_s), _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._messages:
                return None
        # At most MAX_BACKLOG entries, usually one: popping the head is cheap.
        return self._messages.pop(0)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Fanout:
    """This process's receivers by topic (subscriptions and listeners); delivering costs one dict lookup
    when nobody listens.

    A topic's one receiver is kept as it is, a set made only for a second: a run waited on by one caller,
    the common case, then costs a dict entry rather than a set too (about 200 bytes, times 100,000)."""

    def __init__(self) -> None:
        self._topics: dict[str, Receiver | set[Receiver]] = {}
        # Prefix subscribers (``tap``): a handful per process at most (one per tapped family of topics).
        self._taps: dict[str, set[Tap]] = {}

    def dispatch(self, topic: str, message: bytes) -> None:
        """Deliver to this process's subscribers (cross-process buses call this for what they receive)."""
        if self._taps:  # one truth test on the hot path while nobody taps
            for prefix, taps in list(self._taps.items()):
                if topic.startswith(prefix):
                    for tap in list(taps):
                        tap.heard(topic, message)
        held = self._topics.get(topic)
        if held is None:
            return
        if isinstance(held, set):
            for receiver in list(held):  # a receiver may unlisten while it is called
                receiver.deliver(message)
        else:
            held.deliver(message)

    def broadcast(self, message: bytes) -> None:
        """Deliver to every subscriber of this process, whatever its topic (a RECHECK after a reconnect)."""
        for topic in list(self._topics):
            held = self._topics.get(topic)
            for receiver in list(held) if isinstance(held, set) else [held] if held is not None else []:
                receiver.deliver(message)
        for prefix, taps in list(self._taps.items()):
            for tap in list(taps):
                tap.heard(prefix, message)

    def tap(self, prefix: str, tap: Tap) -> None:
        self._taps.setdefault(prefix, set()).add(tap)

    def untap(self, prefix: str, tap: Tap) -> None:
        taps = self._taps.get(prefix)
        if taps is not None:
            taps.discard(tap)
            if not taps:
                del self._taps[prefix]

    def listen(self, topic: str, receiver: Receiver) -> None:
        held = self._topics.get(topic)
        if held is None:
            self._topics[topic] = receiver
        elif isinstance(held, set):
            held.add(receiver)
        elif held is not receiver:
            self._topics[topic] = {held, receiver}

    def unlisten(self, topic: str, receiver: Receiver) -> None:
        held = self._topics.get(topic)
        if held is receiver:
            del self._topics[topic]
        elif isinstance(held, set):
            held.discard(receiver)
            if len(held) == 1:
                self._topics[topic] = held.pop()

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        sub = Subscription()
        self.listen(topic, sub)
        try:
            yield sub
        finally:
            self.unlisten(topic, sub)

    def subscriber_count(self, topic: str | None = None) -> int:
        """How many subscriptions and listeners are open (on one topic, or in all)."""
        topics = self._topics.values() if topic is None else [self._topics.get(topic)]
        return sum(len(held) if isinstance(held, set) else 1 for held in topics if held is not None)
