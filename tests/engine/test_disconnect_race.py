"""The last-waiter check and the cancel are one transaction (issue 17): a caller with ``cancel`` leaving
process A while another caller starts waiting on process B never cancels a run B's caller waits for.

Two "processes" are two ``CallerRegistry`` over two connection pools on one database (SQLite file or
PostgreSQL), each with its own run core. Each round starts the two moves together, B's a little later
every round, so that B's registration lands at every point of A's leaving. What is allowed: the run is
cancelled before B registered (B then finds it failed), or it is not cancelled. What is not: B registered,
read the run as still going, and the run was cancelled by A's disconnect afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.migrations import upgrade
from stateport.adapters.sql.stores import open_run_stores
from stateport.domain.disconnects import CallerRegistry, OnDisconnect
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.progress import DISCONNECTED
from stateport.domain.models import DagSpec, RunState
from tests.engine.conftest import SECRET, MovableClock
from tests.fixtures.core import Wired, hs512_tokens, wire
from tests.fixtures.sql import sqlite_url
from tests.services import unique

ROUNDS = 41
# Round i: B arrives (i - 20) * STEP_S after A starts to leave, from 30 ms before it to 30 ms after.
STEP_S = 0.0015


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "stateport.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def two_processes(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Wired, CallerRegistry, CallerRegistry]]:
    url = database_url
    if url.startswith("sqlite"):
        await upgrade(url)
    clock = MovableClock()
    events = MemoryEventBus()
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    tokens = hs512_tokens(SECRET)
    databases = [await Database.connect(url, pool_size=4, timeout_s=10.0) for _ in range(2)]
    registries = []
    wired = []
    for database in databases:
        stores = open_run_stores(database)
        one = wire(stores, events, blobs, clock, tokens=tokens, config=EngineConfig(lease_s=30.0))
        wired.append(one)
        registries.append(CallerRegistry(stores.waiters, one.core.advancer, clock))
    yield wired[0], registries[0], registries[1]
    for registry in registries:
        await registry.close()
    for database in databases:
        await database.close()
    await blobs.close()


async def _race(wired: Wired, on_a: CallerRegistry, on_b: CallerRegistry, dag_id: str, offset: float) -> bool:
    """One round, B arriving ``offset`` seconds after A starts to leave (before it if negative): whether
    the run was cancelled; fails if it was cancelled though B had registered while it was going."""
    run = await wired.runs.trigger(dag_id)
    key = (run.dag_id, run.run_id)
    b_holds = asyncio.Event()
    b_may_leave = asyncio.Event()
    seen_by_b: list[RunState] = []

    async def a_leaves(delay: float) -> None:
        async with on_a.waiting(*key, OnDisconnect.CANCEL) as attendance:
            await asyncio.sleep(delay)
            attendance.disconnected = True  # its caller went away

    async def b_arrives(delay: float) -> None:
        await asyncio.sleep(delay)
        async with on_b.waiting(*key, OnDisconnect.CONTINUE):
            # Registered: from here on, B's caller waits for the run.
            seen_by_b.append((await wired.runs.get_run(*key)).state)
            b_holds.set()
            await b_may_leave.wait()

    b_task = asyncio.create_task(b_arrives(max(offset, 0.0)))
    await a_leaves(max(-offset, 0.0))
    await on_a.close()  # A's leaving (the check and the cancel) is over
    await asyncio.wait_for(b_holds.wait(), 30)
    ended = await wired.runs.get_run(*key)
    b_may_leave.set()
    await b_task
    await on_b.close()
    cancelled = ended.outcome is not None and ended.outcome.reason == DISCONNECTED
    if seen_by_b[0] is not RunState.FAILED:
        # B registered while the run was going: A's leave must have seen B and left the run alone.
        assert not cancelled, f"B {offset * 1000:+.1f} ms: run cancelled under a live waiter"
    return cancelled


async def test_a_leaving_cancel_never_cancels_a_run_a_new_waiter_holds(
    two_processes: tuple[Wired, CallerRegistry, CallerRegistry],
) -> None:
    wired, on_a, on_b = two_processes
    dag_id = unique("dag")
    spec = {"tasks": [{"task_id": "t", "queue": unique("q")}]}
    await wired.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
    outcomes = [
        await _race(wired, on_a, on_b, dag_id, (round_ - ROUNDS // 2) * STEP_S) for round_ in range(ROUNDS)
    ]
    # Both orders happen across the rounds: B early holds the run, B late finds it cancelled.
    assert True in outcomes and False in outcomes, outcomes
