"""The worker registry: which workers this Stateport saw lately, by their claims and heartbeats.

A claim is the hottest request there is (benchmarks measure it), so it writes nothing: ``claimed`` and
``heartbeat`` only note the worker in this process's memory (a dict entry, replaced by the next sighting of
the same worker), and ``flush`` writes what was noted in one transaction, once per ``flush_s`` (the server
runs it in the background). A worker is thus written at most once per flush interval per server process,
however often it claims: an idle worker long-polling with 10 s waits, and a busy one claiming hundreds of
times a second, cost the same one row write. The price is staleness: another process lists a worker up to
``flush_s`` late; this process's own listing flushes first.

A heartbeat names a task instance, not a worker: the flush looks up (one read for all of them) which worker
holds each one's lease, and records the heartbeat's host and pid for it. A task instance whose lease no
worker holds (Airflow Task SDK tasks run by something that is not a Stateport worker) is recorded under
``<hostname>:<pid>``, which is all such a heartbeat says. Rows unseen for ``retention`` are pruned.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from stateport.domain.ports import Clock, QueueLoad, WorkerRecord, WorkerSighting, WorkerStore
from stateport.domain.values import clean_text

log = logging.getLogger("stateport.workers")

# What a PostgreSQL BIGINT holds; a pid beyond it (a hostile heartbeat) is not recorded.
MAX_PID = 2**63 - 1
# What the registry keeps of a worker's queues (their names' characters in all) and of its host name: a
# claim may name 100 queues of 250 characters, and one worker token's 2,000 invented workers kept 44 MB
# of them, each listing of 1,000 workers answering 49 MB (an outsider's find). The queues kept are the
# first the claim names (the listing shows those); a DNS name is at most 253 characters.
MAX_NOTED_QUEUE_CHARS = 2048
MAX_NOTED_HOSTNAME = 255


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    flush_s: float = 5.0
    # Rows unseen this long are deleted by ``prune``.
    retention: timedelta = timedelta(days=1)
    # Noted sightings held at most between flushes: beyond it new workers wait for the next flush.
    max_pending: int = 10_000


@dataclass(slots=True)
class _Beat:
    at: datetime
    hostname: str | None
    pid: int | None


@dataclass(slots=True)
class WorkerRegistry:
    """Notes sightings in memory and flushes them to the ``WorkerStore`` in batches."""

    store: WorkerStore
    clock: Clock
    config: WorkerConfig = field(default_factory=WorkerConfig)
    _claims: dict[str, WorkerSighting] = field(default_factory=dict)
    _beats: dict[uuid.UUID, _Beat] = field(default_factory=dict)

    def claimed(self, worker_id: str, queues: list[str], hostname: str | None, pid: int | None) -> None:
        """A worker claims (or waits to) from ``queues``: noted, written by the next flush."""
        before = self._claims.get(worker_id)
        if before is None and len(self._claims) >= self.config.max_pending:
            return
        host = _text(hostname)
        if host is None and before is not None:  # a claim that names no host keeps the one named before
            host, pid = before.hostname, before.pid
        self._claims[worker_id] = WorkerSighting(
            worker_id=worker_id,
            hostname=host,
            pid=_pid(pid) if host is not None else None,
            queues=_noted_queues(queues),
            claimed_at=self.clock.now(),
        )

    def heartbeat(self, ti_id: uuid.UUID, hostname: str, pid: int) -> None:
        """The worker running task instance ``ti_id`` heartbeats from ``hostname``/``pid``."""
        if ti_id not in self._beats and len(self._beats) >= self.config.max_pending:
            return
        self._beats[ti_id] = _Beat(at=self.clock.now(), hostname=_text(hostname), pid=_pid(pid))

    async def flush(self) -> bool:
        """Write what was noted since the last flush; whether anything was (nothing was written when
        nothing was noted). On failure what was noted is dropped: workers are seen again at their next
        claim or heartbeat."""
        claims, self._claims = self._claims, {}
        beats, self._beats = self._beats, {}
        if not claims and not beats:
            return False
        sightings = dict(claims)
        if beats:
            owners = await self.store.lease_owners(list(beats))
            for ti_id, beat in beats.items():
                worker_id = owners.get(ti_id) or f"{beat.hostname or '?'}:{beat.pid}"[:250]
                seen = sightings.get(worker_id)
                if seen is None:
                    sightings[worker_id] = WorkerSighting(
                        worker_id, beat.hostname, beat.pid, heartbeat_at=beat.at
                    )
                    continue
                # Claimed (or heartbeat another task) since the last flush: one row, the latest heartbeat,
                # and the host the claim named, else the heartbeat's.
                latest = beat.at if seen.heartbeat_at is None else max(seen.heartbeat_at, beat.at)
                named = seen.hostname is not None
                sightings[worker_id] = WorkerSighting(
                    worker_id,
                    seen.hostname if named else beat.hostname,
                    seen.pid if named else beat.pid,
                    seen.queues,
                    claimed_at=seen.claimed_at,
                    heartbeat_at=latest,
                )
        await self.store.record(list(sightings.values()))
        return True

    async def seen(self, within: timedelta, *, limit: int) -> list[WorkerRecord]:
        """The workers seen in the last ``within``, most recent first (this process's notes flushed first)."""
        await self.flush()
        return await self.store.seen_since(self.clock.now() - within, limit=limit)

    async def queues(self) -> list[QueueLoad]:
        return await self.store.queue_loads()

    async def prune(self, *, batch_size: int = 1000) -> int:
        """Delete the workers unseen for ``config.retention``."""
        before = self.clock.now() - self.config.retention
        deleted = 0
        while True:
            n = await self.store.prune(before, limit=batch_size)
            deleted += n
            if n < batch_size:
                return deleted


def _text(text: str | None) -> str | None:
    """A host name as a worker sent it, at most ``MAX_NOTED_HOSTNAME`` characters: NUL, which PostgreSQL
    text cannot hold, shown as U+FFFD (``clean_text``) rather than dropped, which made ``h\x00`` the name
    ``h`` (an outsider's find)."""
    if text is None:
        return None
    return clean_text(text)[:MAX_NOTED_HOSTNAME] or None


def _noted_queues(queues: list[str]) -> tuple[str, ...]:
    """The first of the queues a claim names, each once, as many as ``MAX_NOTED_QUEUE_CHARS`` holds."""
    kept: list[str] = []
    chars = 0
    for queue in dict.fromkeys(queues):
        chars += len(queue)
        if chars > MAX_NOTED_QUEUE_CHARS:
            break
        kept.append(queue)
    return tuple(kept)


def _pid(pid: int | None) -> int | None:
    return pid if pid is not None and 0 <= pid <= MAX_PID else None
