"""Retention (src/domain/retention.py): finished runs past it go, with their task instances and blobs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stateport.domain.errors import Invalid, NotFound
from stateport.domain.models import RunState
from stateport.domain.retention import RunRetention
from tests.engine.conftest import Harness, chain

BIG = ["x" * 100] * 20  # about 2 KiB, over the harness's 1 KiB inline limit: stored as a blob


def retention(harness: Harness) -> RunRetention:
    return RunRetention(harness.stores.retention, harness.blobs, harness.clock)


async def test_a_finished_run_past_retention_goes_with_its_task_instances_and_blobs(
    harness: Harness,
) -> None:
    done = await harness.start({"tasks": chain("a", "b")})
    await harness.succeed(await harness.claim_one("a"), BIG)
    await harness.succeed(await harness.claim_one("b"), 1)
    assert (await harness.run(done)).state is RunState.SUCCESS
    tis = await harness.tis(done)
    (ref,) = [ti.result_ref for ti in tis if ti.result_ref is not None]
    unfinished = await harness.start({"tasks": chain("c", "d")})
    await harness.succeed(await harness.claim_one("c"), BIG)

    # Within the retention period nothing of this test's runs goes.
    await retention(harness).purge(older_than=timedelta(days=1))
    assert (await harness.run(done)).state is RunState.SUCCESS
    assert await harness.blobs.get(ref)

    harness.clock.advance(2 * 86400)
    purged = await retention(harness).purge(older_than=timedelta(days=1), batch_size=1)
    assert purged.runs >= 1 and purged.blobs >= 1  # the PostgreSQL database is shared: maybe more
    with pytest.raises(NotFound):
        await harness.run(done)
    assert await harness.tis(done) == []
    with pytest.raises(NotFound):
        await harness.blobs.get(ref)
    # A run that has not finished stays, however old, and so do its blobs.
    assert (await harness.run(unfinished)).state is RunState.RUNNING
    (kept,) = [ti.result_ref for ti in await harness.tis(unfinished) if ti.result_ref is not None]
    assert await harness.blobs.get(kept)


async def test_a_purge_of_nothing_deletes_nothing(harness: Harness) -> None:
    done = await harness.start({"tasks": chain("a")})
    await harness.succeed(await harness.claim_one("a"), 1)
    await retention(harness).purge(older_than=timedelta(days=1))
    assert (await harness.run(done)).state is RunState.SUCCESS


@pytest.mark.parametrize(("older_than", "batch_size"), [(timedelta(0), 10), (timedelta(days=1), 0)])
async def test_a_retention_must_be_positive(harness: Harness, older_than: timedelta, batch_size: int) -> None:
    with pytest.raises(Invalid):
        await retention(harness).purge(older_than=older_than, batch_size=batch_size)
