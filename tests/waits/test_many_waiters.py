"""10,000 waiters in one process: they hold no database connection while they wait, share one watch per
run, and all get their outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.stores import open_run_stores
from tests.waits.conftest import WaitRig, chain, make_rig

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RUNS = 1000
PER_RUN = 10
POOL = 4


@pytest.fixture
async def small_pool(postgres_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(postgres_url, pool_size=POOL, timeout_s=10.0)
    yield database
    await database.close()


def in_use(database: Database) -> int:
    pool: Any = database._pool  # type: ignore[attr-defined]  # the asyncpg pool, for this count only
    return int(pool.get_size() - pool.get_idle_size())


async def test_ten_thousand_waiters_hold_no_connection(small_pool: Database, tmp_path: Path) -> None:
    bus = MemoryEventBus()
    rig: WaitRig = await make_rig(open_run_stores(small_pool), bus, bus, tmp_path)
    try:
        first = await rig.start({"tasks": chain("a"), "result_task": "a"})
        runs = [first] + [await rig.runs.trigger(first.dag_id) for _ in range(RUNS - 1)]
        waits = rig.waits()
        waiters = [
            asyncio.create_task(waits.wait_for_outcome(run.dag_id, run.run_id, 120, caller="test"))
            for run in runs
            for _ in range(PER_RUN)
        ]
        deadline = time.monotonic() + 60
        while bus.subscriber_count() < RUNS or any(w.run is None for w in waits._watches.values()):
            assert time.monotonic() < deadline, "the watches did not all start"
            await asyncio.sleep(0.05)
        assert waits.watching() == RUNS
        await asyncio.sleep(0.2)
        assert in_use(small_pool) == 0, "a waiter holds a database connection"
        assert not any(w.done() for w in waiters)
        # The store still answers: the waiters hold none of its few connections. (How fast is the waiters
        # benchmark's business; with every connection held, an acquire fails after the pool's timeout.)
        read = await asyncio.gather(*(rig.stores.runs.get_run(r.dag_id, r.run_id) for r in runs[:50]))
        assert [r.run_id for r in read if r is not None] == [r.run_id for r in runs[:50]]
        claimed = 0
        while claimed < RUNS:
            batch = await rig.claim(100)
            assert batch, "runs left unclaimed"
            claimed += len(batch)
            for c in batch:
                await rig.succeed(c, c.ti.run_id)
        done = await asyncio.wait_for(asyncio.gather(*waiters), 60)
        assert all(r.outcome is not None and r.outcome.results == {"a": r.run_id} for r in done)
        assert waits.watching() == 0
        assert bus.subscriber_count() == 0
    finally:
        await rig.blobs.close()
