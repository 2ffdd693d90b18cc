"""The run feed: every run's changes, as they are announced on the event bus, for the console's stream.

The run core announces each committed change of a run (its state, or its task instances) on the run's
topic (``run:<dag_id>:<run_id>``, ``stateport.domain.engine.events``) of the event bus, which carries it to
every server process. The feed taps that family of topics once per process (``EventBus.tap``), while at
least one stream is open, and hands each stream the runs that changed: a stream costs a dict of pending
changes (at most ``MAX_PENDING`` runs, the latest state of each; beyond it the stream is told to re-read
everything, as it is after the bus reconnects), one future while it waits, and nothing on the publishers'
side. Streams count in the process's long waits (``stateport.domain.seats``), and all end when the server
shuts down (``drain``).

Events are hints, as everywhere on the bus (``EventBus``): one may be lost, so a reader re-reads what it
shows on a ``recheck`` and now and then anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from stateport.domain.engine.events import message_state, run_topic
from stateport.domain.errors import Unavailable
from stateport.domain.lru import Lru
from stateport.domain.ports import RECHECK, EventBus, RunStore
from stateport.domain.seats import Seats

PREFIX = run_topic("", "")[: -len("::")] + ":"  # "run:"
# Runs a stream holds changes of between two reads; a client that falls further behind re-reads all.
MAX_PENDING = 256
# Run topics whose split into (dag_id, run_id) needed a read (both may hold ":"), remembered.
RESOLVED = 4096


@dataclass(frozen=True, slots=True)
class RunChange:
    """A run changed: its state after the change (``queued``, ``running``, ``success``, ``failed``)."""

    dag_id: str
    run_id: str
    state: str


class Recheck:
    """Changes may have been missed (the bus reconnected, or the stream fell behind): re-read."""


RECHECK_ALL = Recheck()


class _Stream:
    """One open stream's pending changes, keyed by topic (a run's later change replaces its earlier)."""

    __slots__ = ("_ended", "_missed", "_pending", "_waiter", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._pending: dict[str, bytes] = {}
        self._missed = False
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def heard(self, topic: str, message: bytes) -> None:
        if message == RECHECK:
            self._missed = True
        elif not topic.startswith(self.prefix):
            return
        elif topic in self._pending or len(self._pending) < MAX_PENDING:
            self._pending[topic] = message
        else:
            self._missed = True
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, wait_s: float) -> tuple[bool, dict[str, bytes]] | None:
        """(missed, pending) once there is something, or None after ``wait_s`` idle; Unavailable once
        ended."""
        if not (self._pending or self._missed or self._ended):
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(wait_s, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._ended:
            raise Unavailable("the server is shutting down")
        if not (self._pending or self._missed):
            return None
        taken = (self._missed, self._pending)
        self._missed, self._pending = False, {}
        return taken


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class RunFeed:
    """The process's streams of run changes over the event bus."""

    def __init__(self, bus: EventBus, runs: RunStore, *, seats: Seats) -> None:
        self._bus = bus
        self._runs = runs
        # The process's long waits, which its streams count in (stateport.domain.seats).
        self._seats = seats
        self._streams: set[_Stream] = set()
        self._resolved: Lru[str, tuple[str, str]] = Lru(RESOLVED)
        self._closed = False

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def changes(
        self, dag_id: str | None, *, idle_s: float, caller: str
    ) -> AsyncGenerator[list[RunChange] | Recheck | None, None]:
        """The changes of every run (of ``dag_id``'s only, if given), as they are announced: first None
        once the stream is set up (a change after that is sent), then a list of changes, ``RECHECK_ALL``
        (re-read everything), or None after ``idle_s`` without any (a heartbeat). Overloaded or Refused
        past the process's seats (``caller``'s among them); Unavailable when the server shuts down."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        # With a DAG, only its topics are kept (its id may hold ":": others' may match, checked below).
        stream = _Stream(PREFIX if dag_id is None else f"{PREFIX}{dag_id}:")
        self._seats.take(caller)
        if not self._streams:
            self._bus.tap(PREFIX, self)
        self._streams.add(stream)
        try:
            yield None
            while True:
                taken = await stream.take(idle_s)
                if taken is None:
                    yield None
                    continue
                missed, pending = taken
                if missed:
                    yield RECHECK_ALL
                changes = []
                for topic, message in pending.items():
                    run = await self._resolve(topic)
                    if run is not None and (dag_id is None or run[0] == dag_id):
                        changes.append(RunChange(run[0], run[1], message_state(message)))
                if changes:
                    yield changes
        finally:
            self._seats.give(caller)
            self._streams.discard(stream)
            if not self._streams:
                self._bus.untap(PREFIX, self)

    def heard(self, topic: str, message: bytes) -> None:
        """The bus's tap: hand the message to every open stream."""
        for stream in list(self._streams):
            stream.heard(topic, message)

    async def _resolve(self, topic: str) -> tuple[str, str] | None:
        """The run of a topic. ``run:<dag_id>:<run_id>`` is ambiguous when the ids hold ":" (both may):
        then the split that names an existing run is the one, found by reading (and remembered)."""
        rest = topic[len(PREFIX) :]
        splits = [i for i, c in enumerate(rest) if c == ":"]
        if len(splits) == 1:
            return rest[: splits[0]], rest[splits[0] + 1 :]
        known = self._resolved.get(topic)
        if known is not None:
            return known
        for i in splits:
            dag_id, run_id = rest[:i], rest[i + 1 :]
            if dag_id and run_id and await self._runs.get_run(dag_id, run_id) is not None:
                self._resolved.put(topic, (dag_id, run_id))
                return dag_id, run_id
        return None

    def drain(self) -> None:
        """End every stream (the server is shutting down): each ends with Unavailable."""
        for stream in list(self._streams):
            stream.end()

    async def close(self) -> None:
        self._closed = True
        self.drain()
