"""The Observer port: what the run core and the adapters tell the process's instrumentation.

Metrics and lifecycle logs are what an operator sees of a run; the domain must not know how they are
kept (Prometheus, a log line, nothing). It calls the process's one ``Observer`` at each point of
interest, and the composition root installs the implementation (``stateport.telemetry.observer``).
One per process rather than one per service: the adapters that report store errors and reconnects are
built in many places, and a call through a module-level reference costs nothing on the hot path.

Every method is a no-op here, so that a process (a test, a CLI command) without instrumentation needs
nothing installed. Implementations must not raise and must not block: they run inside a run's lock.
"""

from __future__ import annotations

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
        """``ti``'s try ended and ``next_try`` was queued for it."""

    def store_error(self, backend: str) -> None:
        """A store (``postgres``, ``sqlite``, ``redis``, ``s3``, ``filesystem``) failed an operation."""

    def bus_reconnect(self, backend: str) -> None:
        """An event bus or change feed lost its connection and is connecting again."""

    def blob_written(self, backend: str, size: int) -> None:
        """``size`` bytes were written to the blob store."""


_installed: list[Observer] = [Observer()]


def observer() -> Observer:
    """The process's observer (a no-op one until ``install`` is called)."""
    return _installed[0]


def install(instance: Observer) -> None:
    """Make ``instance`` the process's observer (the composition root does, once per process)."""
    _installed[0] = instance
