"""The run engine over real stores: SQLite and PostgreSQL, the in-process EventBus, filesystem blobs.

Time is a clock the test moves, so lease expiry and timeouts are tested without sleeping; the stores
compare the times the engine passes them, never their own clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.memory.events import MemoryEventBus
from stateport.domain.engine import RunCore
from stateport.domain.engine.claims import Claimed
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.reports import Failure, Released, Success
from stateport.domain.models import DagSpec, Run, TaskInstance, TIState
from stateport.domain.ports import RunStores, TokenService
from stateport.domain.runs import RunService
from tests.fixtures.core import hs512_tokens, wire
from tests.services import unique

SECRET = "engine-test-secret-" + "e" * 80


class MovableClock:
    """A clock the test sets; starts at the real time so tokens and stores see sensible values."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Harness:
    core: RunCore
    runs: RunService
    stores: RunStores
    events: MemoryEventBus
    blobs: FilesystemBlobStore
    clock: MovableClock
    tokens: TokenService
    queue: str

    def fresh(self, **config: Any) -> Harness:
        """This harness as seen by a fresh server process (nothing cached) on the same stores and bus,
        with ``config`` changed."""
        wired = wire(
            self.stores,
            self.events,
            self.blobs,
            self.clock,
            tokens=self.tokens,
            config=msgspec.structs.replace(self.core.config, **config),
        )
        return dataclasses.replace(self, core=wired.core, runs=wired.runs)

    async def start(self, spec: dict[str, Any], conf: dict[str, Any] | None = None) -> Run:
        """Register ``spec`` (every task on this test's queue unless it names one) and trigger a run."""
        for task in spec["tasks"]:
            task.setdefault("queue", self.queue)
        dag_id = unique("dag")
        await self.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
        return await self.runs.trigger(dag_id, conf=conf)

    async def claim(self, n: int = 100, *, worker: str = "w1", queue: str | None = None) -> list[Claimed]:
        return await self.core.claims.claim(worker, [queue or self.queue], n, 0)

    async def claim_one(self, task_id: str) -> Claimed:
        claimed = await self.claim()
        assert [c.ti.task_id for c in claimed] == [task_id], [c.ti.task_id for c in claimed]
        return claimed[0]

    async def succeed(self, claimed: Claimed, value: Any) -> None:
        await self.core.reports.report(claimed.ti.id, Success(result=msgspec.json.encode(value)))

    async def fail(self, claimed: Claimed, error: str = "boom", *, retryable: bool = True) -> None:
        await self.core.reports.report(claimed.ti.id, Failure(error=error, retryable=retryable))

    async def release(self, claimed: Claimed) -> None:
        await self.core.reports.report(claimed.ti.id, Released())

    async def run(self, run: Run) -> Run:
        return await self.runs.get_run(run.dag_id, run.run_id)

    async def tis(self, run: Run) -> list[TaskInstance]:
        return await self.stores.runs.list_task_instances(run.dag_id, run.run_id)

    async def states(self, run: Run) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ti in await self.tis(run):
            out.setdefault(ti.task_id, []).append(ti.state.value)
        return out


def chain(*task_ids: str, **options: Any) -> list[dict[str, Any]]:
    return [
        {"task_id": t, "upstream": [task_ids[i - 1]] if i else [], **options} for i, t in enumerate(task_ids)
    ]


def by_state(tis: Sequence[TaskInstance], state: TIState) -> list[TaskInstance]:
    return [ti for ti in tis if ti.state is state]


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest) -> RunStores:
    found: RunStores = request.getfixturevalue(f"{request.param}_run_stores")
    return found


@pytest.fixture
async def harness(stores: RunStores, tmp_path: Path) -> AsyncIterator[Harness]:
    clock = MovableClock()
    events = MemoryEventBus()
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    tokens = hs512_tokens(SECRET)
    config = EngineConfig(lease_s=30.0, inline_result_bytes=1024, claim_recheck_s=0.5)
    wired = wire(stores, events, blobs, clock, tokens=tokens, config=config)
    yield Harness(
        core=wired.core,
        runs=wired.runs,
        stores=stores,
        events=events,
        blobs=blobs,
        clock=clock,
        tokens=tokens,
        queue=unique("q"),
    )
    await blobs.close()
