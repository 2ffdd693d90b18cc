"""The worker registry's port: which workers were seen lately, by their claims and heartbeats.

Times are timezone-aware UTC datetimes. Every method may raise ``Unavailable``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkerSighting:
    """A worker seen claiming (from ``queues``) at ``claimed_at`` and/or heartbeating at ``heartbeat_at``.

    ``hostname`` and ``pid`` are what the worker said about itself, None when it said nothing: a seen
    worker keeps the last known ones (a sighting without them does not erase them).
    """

    worker_id: str
    hostname: str | None = None
    pid: int | None = None
    queues: tuple[str, ...] = ()
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None

    @property
    def at(self) -> datetime:
        """When it was last seen."""
        times = [t for t in (self.claimed_at, self.heartbeat_at) if t is not None]
        if not times:
            raise ValueError("a sighting needs a claim or a heartbeat")
        return max(times)


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker as the registry knows it; ``running``: the task instances it holds a lease on now."""

    worker_id: str
    hostname: str | None
    pid: int | None
    queues: tuple[str, ...]
    first_seen_at: datetime
    last_seen_at: datetime
    last_claim_at: datetime | None
    last_heartbeat_at: datetime | None
    running: int


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """A queue's task instances ready for a worker (queued) and running, and since when the oldest ready
    one waits."""

    queue: str
    ready: int
    running: int
    oldest_ready_at: datetime | None


class WorkerStore(Protocol):
    """The registry of workers (one row per worker id) and what the task instances say of the queues."""

    async def record(self, sightings: Sequence[WorkerSighting]) -> None:
        """Upsert each sighting (at most one per worker id), in one transaction. A claim sets the queues
        and the last claim, a heartbeat the last heartbeat; both the last seen time. A time never goes
        back (a late sighting of another process does not rewind what a newer one recorded), and the
        queues are those of the latest claim."""
        ...

    async def lease_owners(self, ti_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The worker id holding each task instance's lease (those that have one)."""
        ...

    async def seen_since(self, since: datetime, *, limit: int) -> list[WorkerRecord]:
        """The workers last seen at or after ``since``, most recently seen first, at most ``limit``."""
        ...

    async def queue_loads(self) -> list[QueueLoad]:
        """Every queue with task instances queued or running, by name."""
        ...

    async def prune(self, before: datetime, *, limit: int) -> int:
        """Delete at most ``limit`` workers last seen before ``before``; how many were deleted."""
        ...
