"""The RetentionStore contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from stateport.domain.models import RunState
from stateport.domain.ports import RetentionStore, RunStores
from tests.contract.makers import finish, make_tis, now, queued_run


async def delete_every_finished_run(store: RetentionStore, before: datetime) -> None:
    """Empty the store of finished runs (the PostgreSQL database is shared by every test and test run)."""
    while batch := await store.finished_runs(ended_before=before, limit=500):
        for dag_id, run_id in batch:
            assert await store.delete_run(dag_id, run_id, ended_before=before)


async def test_finished_runs_changed_before_the_cutoff_are_listed_oldest_first(run_stores: RunStores) -> None:
    await delete_every_finished_run(run_stores.retention, now())
    first = await finish(run_stores.runs, (await queued_run(run_stores, 1))[0])
    await queued_run(run_stores, 1)  # queued, so never listed
    running, tis = await queued_run(run_stores, 1)
    at = now()
    await run_stores.leases.claim(tis[0].queue, "w", limit=1, now=at, lease_until=at + timedelta(seconds=30))
    await asyncio.sleep(0.002)
    second = await finish(run_stores.runs, (await queued_run(run_stores, 1))[0], RunState.FAILED)
    await asyncio.sleep(0.002)
    cutoff = now()
    await asyncio.sleep(0.002)
    await finish(run_stores.runs, (await queued_run(run_stores, 1))[0])  # finished after the cutoff
    # Runs another test's server finishes in this database meanwhile may be listed too, and ahead of this
    # test's own when created earlier (more than 10 once, in a full run): this test's own come oldest
    # first, and a limit of 1 gives the oldest of the listing.
    listed = await run_stores.retention.finished_runs(ended_before=cutoff, limit=10_000)
    assert [key for key in listed if key in (first, second)] == [first, second]
    assert await run_stores.retention.finished_runs(ended_before=cutoff, limit=1) == listed[:1]
    assert (await run_stores.runs.get_run(running.dag_id, running.run_id)) is not None


async def test_delete_run_takes_a_finished_run_with_its_task_instances(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 2)
    key = await finish(run_stores.runs, run)
    assert not await run_stores.retention.delete_run(
        *key, ended_before=now() - timedelta(hours=1)
    )  # too recent
    assert await run_stores.runs.get_run(*key) is not None
    assert await run_stores.retention.delete_run(*key, ended_before=now() + timedelta(seconds=1))
    assert await run_stores.runs.get_run(*key) is None
    assert await run_stores.runs.list_task_instances(*key) == []
    assert await run_stores.runs.get_task_instance(tis[0].id) is None
    assert await run_stores.bindings.get_binding(tis[1].id) is None
    assert not await run_stores.retention.delete_run(
        *key, ended_before=now() + timedelta(seconds=1)
    )  # gone already
    # The DAG stays, and the run id may be used again.
    dag = await run_stores.dags.get_dag(run.dag_id)
    assert dag is not None
    assert await run_stores.runs.create_run(run, make_tis(run, ["t000"])) == run


async def test_an_unfinished_run_is_never_deleted(run_stores: RunStores) -> None:
    run, tis = await queued_run(run_stores, 1)
    later = now() + timedelta(days=1)
    assert not await run_stores.retention.delete_run(run.dag_id, run.run_id, ended_before=later)
    assert (run.dag_id, run.run_id) not in await run_stores.retention.finished_runs(
        ended_before=later, limit=10_000
    )
    assert await run_stores.runs.get_task_instance(tis[0].id) is not None
