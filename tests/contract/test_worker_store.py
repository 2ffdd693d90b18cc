"""The WorkerStore contract (the worker registry), on SQLite and PostgreSQL: one code path for both."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from stateport.adapters.sql.workers import SqlWorkerStore
from stateport.domain.models import TIState
from stateport.domain.ports import RunStores, WorkerSighting
from tests.contract.makers import now, queued_run
from tests.services import unique


@pytest.fixture
def workers(run_stores: RunStores) -> SqlWorkerStore:
    # The SQL run stores share one Database: the registry's adapter is built on the same.
    database = run_stores.runs._db  # type: ignore[attr-defined]
    return SqlWorkerStore(database)


async def test_a_claim_then_a_heartbeat_make_one_row_with_the_latest_of_each(workers: SqlWorkerStore) -> None:
    w, t0 = unique("w"), now()
    await workers.record([WorkerSighting(w, "host", 10, ("a", "b"), claimed_at=t0)])
    await workers.record([WorkerSighting(w, None, None, heartbeat_at=t0 + timedelta(seconds=2))])
    (seen,) = [r for r in await workers.seen_since(t0 - timedelta(seconds=1), limit=1000) if r.worker_id == w]
    assert (seen.hostname, seen.pid, seen.queues) == ("host", 10, ("a", "b"))  # not erased by a bare beat
    assert seen.last_claim_at == t0 and seen.last_heartbeat_at == t0 + timedelta(seconds=2)
    assert seen.first_seen_at == t0 and seen.last_seen_at == t0 + timedelta(seconds=2)
    assert seen.running == 0


async def test_times_never_go_back_and_the_latest_claim_names_the_queues(workers: SqlWorkerStore) -> None:
    w, t0 = unique("w"), now()
    await workers.record([WorkerSighting(w, "new-host", 2, ("new",), claimed_at=t0)])
    # Another process flushes an older claim after: it changes neither the times nor the queues.
    await workers.record([WorkerSighting(w, "old-host", 1, ("old",), claimed_at=t0 - timedelta(seconds=5))])
    (seen,) = [r for r in await workers.seen_since(t0 - timedelta(minutes=1), limit=1000) if r.worker_id == w]
    assert seen.queues == ("new",) and seen.last_claim_at == t0 and seen.last_seen_at == t0


async def test_seen_since_lists_the_recent_newest_first_and_prune_deletes_the_old(
    workers: SqlWorkerStore,
) -> None:
    t0 = now()
    old, mid, new = unique("old"), unique("mid"), unique("new")
    await workers.record(
        [
            WorkerSighting(old, claimed_at=t0 - timedelta(days=2)),
            WorkerSighting(mid, heartbeat_at=t0 - timedelta(seconds=30)),
            WorkerSighting(new, claimed_at=t0),
        ]
    )
    listed = [r.worker_id for r in await workers.seen_since(t0 - timedelta(minutes=5), limit=1000)]
    assert old not in listed and listed.index(new) < listed.index(mid)
    assert len(await workers.seen_since(t0 - timedelta(minutes=5), limit=1)) == 1
    assert await workers.prune(t0 - timedelta(days=1), limit=1000) >= 1
    everything = [r.worker_id for r in await workers.seen_since(t0 - timedelta(days=30), limit=100_000)]
    assert old not in everything and mid in everything and new in everything


async def test_running_counts_and_lease_owners_come_from_the_task_instances(
    workers: SqlWorkerStore, run_stores: RunStores
) -> None:
    queue, w = unique("q"), unique("w")
    await queued_run(run_stores, 3, queue=queue)
    t0 = now()
    claimed = await run_stores.leases.claim(queue, w, limit=2, now=t0, lease_until=t0 + timedelta(minutes=1))
    assert len(claimed) == 2
    await workers.record([WorkerSighting(w, claimed_at=t0)])
    (seen,) = [r for r in await workers.seen_since(t0 - timedelta(seconds=1), limit=1000) if r.worker_id == w]
    assert seen.running == 2
    owners = await workers.lease_owners([claimed[0].id, uuid.uuid4()])
    assert owners == {claimed[0].id: w}
    (load,) = [q for q in await workers.queue_loads() if q.queue == queue]
    assert (load.ready, load.running) == (1, 2) and load.oldest_ready_at is not None
    assert all(ti.state is TIState.RUNNING for ti in claimed)


async def test_an_empty_record_and_lookup_do_nothing(workers: SqlWorkerStore) -> None:
    await workers.record([])
    assert await workers.lease_owners([]) == {}
