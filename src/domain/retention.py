"""Retention: finished runs are deleted once they are old enough, with their task instances and result blobs.

Run metadata otherwise grows without bound: a service answering synchronous runs creates thousands a day.
Task and asset state are not touched here; they have their own expiry (``expires_at``) and clears.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from msgspec import Struct

from stateport.domain.errors import Invalid
from stateport.domain.ports import BlobStore, Clock, RetentionStore
from stateport.domain.results import run_blob_prefix


class PurgedRuns(Struct, frozen=True, kw_only=True):
    """What one purge deleted."""

    runs: int
    blobs: int


class RunRetention:
    """Deletes finished runs that have not changed for ``older_than``."""

    def __init__(
        self,
        runs: RetentionStore,
        blobs: BlobStore,
        clock: Clock,
        *,
        deleted: Callable[[str, str], None] | None = None,
    ) -> None:
        """``deleted``: told each run deleted (``StateService.forget_run``, as ``RunService`` tells it)."""
        self.runs = runs
        self.blobs = blobs
        self.clock = clock
        self.deleted = deleted

    async def purge(self, *, older_than: timedelta, batch_size: int = 500) -> PurgedRuns:
        """Delete every finished run last changed more than ``older_than`` ago; safe in several processes.

        A run's result blobs are deleted before its rows. A crash in between leaves a run past its
        retention whose result blob is gone, which the next purge deletes; the other order could leave
        blobs that nothing refers to any more, and nothing would ever find them again.
        """
        if older_than <= timedelta(0):
            raise Invalid("the retention period must be positive")
        if batch_size < 1:
            raise Invalid("batch_size must be at least 1")
        cutoff = self.clock.now() - older_than
        runs = blobs = 0
        while True:
            batch = await self.runs.finished_runs(ended_before=cutoff, limit=batch_size)
            deleted = 0
            for dag_id, run_id in batch:
                blobs += await self.blobs.delete_tree(run_blob_prefix(dag_id, run_id))
                if await self.runs.delete_run(dag_id, run_id, ended_before=cutoff):
                    deleted += 1
                    if self.deleted is not None:
                        self.deleted(dag_id, run_id)
            runs += deleted
            # A short batch is the last one. If nothing of a full batch could be deleted, the next read
            # might return the same runs: stop rather than spin.
            if len(batch) < batch_size or deleted == 0:
                return PurgedRuns(runs=runs, blobs=blobs)
