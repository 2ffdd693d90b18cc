"""Ending the waits of this process when its server shuts down.

uvicorn stops accepting connections, asks each open one to shut down, and then waits for every request
in flight to finish before it runs the app's own shutdown (``timeout_graceful_shutdown`` is unset: a
report must never be cut off half-way). A run's outcome long-poll waits up to 300 s, and a wait stream
or a state watch for as long as its client stays: they held the shutdown for as long (an outsider's
probe found a server taking five minutes to stop). So ``stateport.serving.HttpProtocol`` calls ``drain``
when uvicorn asks its connection to shut down, and each app registers here, for its lifespan, what ends
its waits: a long-poll answers as if its time had passed (202 for a run, wait again anywhere), a run's
wait stream ends, and a state watch ends with ``Unavailable`` (503, or a stream's ``event: error``). A
worker's long-polls (a claim, a stop poll: ``LongPolls``) answer as if their wait had passed, with
nothing, so the worker asks again, of a server that is up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Process-wide: the server's protocol knows no app, and one process serves one app (tests build several,
# each registered for the time its lifespan runs).
_drains: list[Callable[[], None]] = []


@contextmanager
def draining(drain: Callable[[], None]) -> Iterator[None]:
    """Call ``drain`` if the server shuts down while the context is open."""
    _drains.append(drain)
    try:
        yield
    finally:
        if drain in _drains:  # not drained
            _drains.remove(drain)


def drain() -> None:
    """End every registered app's waits (the server is shutting down). Each is called once: uvicorn asks
    every connection to shut down, and 20,000 connections must not drain 20,000 times."""
    while _drains:
        _drains.pop()()


class LongPolls:
    """A worker's long-polls open in one app (claims, stop polls): each holds an event that ends its wait,
    as the worker hanging up would; ``drain`` sets them all, and any opened after it at once."""

    def __init__(self) -> None:
        self._open: set[asyncio.Event] = set()
        self._drained = False

    @contextmanager
    def open(self, ended: asyncio.Event) -> Iterator[None]:
        """For the time of one long-poll whose wait ``ended`` ends."""
        if self._drained:
            ended.set()
        self._open.add(ended)
        try:
            yield
        finally:
            self._open.discard(ended)

    def drain(self) -> None:
        self._drained = True
        for ended in self._open:
            ended.set()
