"""The Observer port: what the run core and the adapters tell the process's instrumentation.

Metrics and lifecycle logs are what an operator sees of a run; the domain must not know how they are
kept (Prometheus, a log line, nothing). It calls the process's one ``Observer`` at each point of
interest, and the composition root installs the implementation (``stateport.telemetry.observer``).
One per process rather than one per service: the adapters that report store errors and reconnects are
built in many places, and a call through a module-level reference costs nothing on the hot path.

Every method is a no-op here, so that a process (a test, a CLI command) without instrumentation needs
nothing installed. Implementations must not raise and must not block. What a run's unit of work tells of
its changes is told once it has committed (``held_until_told``), so a change the store refused is never
logged or counted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

from stateport.domain.models import Run, TaskInstance, TIState


class Observer:
    """Points of interest of the run core and the stores; override what is kept."""

    def run_triggered(self, run: Run) -> None:
        """A run was created (not an idempotent repeat of an earlier trigger)."""

    def run_finished(self, run: Run) -> None:
        """A run reached success or failed (its ``outcome`` says why)."""

    def run_cancelled(self, run: Run) -> None:
        """A run was cancelled by a caller."""

    def task_state(self, ti: TaskInstance, state: TIState) -> None:
        """A try of a task instance moved to ``state`` (or was created in it)."""

    def task_claimed(self, ti: TaskInstance, worker_id: str, *, handed_off: bool) -> None:
        """A worker got ``ti``, now running: from a claim's read of the store, or handed off by a change
        (a report, a new run) to a claim waiting in this process, or in the answer to the worker's own
        report. (Its move to running is not also told through ``task_state``.)"""

    def task_put_back(self, ti: TaskInstance) -> None:
        """``ti``, claimed (``task_claimed``) but not handed out, went back to its queue as it was: its
        claim's answer had no room for it (``STATEPORT_MAX_CLAIM_BYTES``)."""

    def claim_polled(self, queues: tuple[str, ...], waited_s: float, got: int) -> None:
        """A worker's claim on ``queues`` was answered after ``waited_s`` with ``got`` task instances."""

    def lease_expired(self, ti: TaskInstance, reason: str) -> None:
        """The sweeper ended ``ti``'s try (its lease expired, or it ran past its timeout)."""

    def retry_scheduled(self, ti: TaskInstance, next_try: TaskInstance) -> None:
        """``ti``'s try ended and ``next_try`` was queued for it, using one of the task's retries."""

    def try_requeued(self, ti: TaskInstance, next_try: TaskInstance, reason: str) -> None:
        """``ti``'s try ended and ``next_try`` was queued for it without using a retry: the worker released
        it, the task asked to be rescheduled, or the try was given back (``reason`` says which)."""

    def store_error(self, backend: str, detail: str = "") -> None:
        """A store (``postgres``, ``sqlite``, ``redis``, ``s3``, ``filesystem``) failed an operation
        (``detail``: the Unavailable's words)."""

    def bus_reconnect(self, backend: str) -> None:
        """An event bus or change feed lost its connection and is connecting again."""

    def blob_written(self, backend: str, size: int) -> None:
        """``size`` bytes were written to the blob store."""


_installed: list[Observer] = [Observer()]

# What a unit of work tells of its changes (a run's, a try's), held until it commits: told at once, a unit
# whose commit then failed (a full disk) had its lease expiries and finished runs logged and counted again
# at each sweep that tried, 72 failed runs in the metrics for 2 real ones (an outsider's find). Failures
# (``store_error``, ``bus_reconnect``) are told at once: they happened, whatever the unit's fate.
HELD = frozenset(
    {
        "run_triggered",
        "run_finished",
        "run_cancelled",
        "task_state",
        "lease_expired",
        "retry_scheduled",
        "try_requeued",
    }
)


class _Holding:
    """The installed observer, with the calls of ``HELD`` kept in ``calls`` rather than made."""

    def __init__(self, target: Observer) -> None:
        self._target = target
        self.calls: list[Callable[[], None]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        if name not in HELD:
            return method
        return lambda *args, **kwargs: self.calls.append(functools.partial(method, *args, **kwargs))


_held: ContextVar[_Holding | None] = ContextVar("observations_held", default=None)


def observer() -> Observer:
    """The process's observer (a no-op one until ``install`` is called); inside ``held_until_told``,
    one that keeps what it is told of changes for the unit of work's commit."""
    holding = _held.get()
    return _installed[0] if holding is None else cast(Observer, holding)


@contextmanager
def held_until_told() -> Iterator[list[Callable[[], None]]]:
    """Keep what the code inside tells the observer of changes (``HELD``) in the list yielded; the unit
    of work calls ``tell`` with it once it has committed, and drops it otherwise."""
    holding = _Holding(_installed[0])
    token = _held.set(holding)
    try:
        yield holding.calls
    finally:
        _held.reset(token)


def tell(calls: list[Callable[[], None]]) -> None:
    """Make the calls held for a unit of work that committed, in order."""
    for call in calls:
        call()


def install(instance: Observer) -> None:
    """Make ``instance`` the process's observer (the composition root does, once per process)."""
    _installed[0] = instance
