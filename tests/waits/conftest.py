"""The wait use case over real stores (SQLite, PostgreSQL) and real buses (memory, PostgreSQL, Redis).

The engine and the waiters get two different bus objects on one channel, as two server processes would:
a run's change reaches a waiter only through the bus server, never by a shortcut inside the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from stateport.adapters.clock import SystemClock
from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.redis.events import RedisEventBus
from stateport.adapters.sql.events import PostgresEventBus
from stateport.bootstrap import Services, open_services
from stateport.config import load_settings
from stateport.domain.engine import RunCore
from stateport.domain.engine.claims import Claimed
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.events import RunEvents
from stateport.domain.engine.reports import Success
from stateport.domain.models import DagSpec, Run
from stateport.domain.ports import EventBus, RunStores
from stateport.domain.runs import RunService
from stateport.domain.waiting import RunWaits, WaitConfig
from tests.apps import app_for
from tests.fixtures.core import hs512_tokens, wire
from tests.fixtures.redis import redis_available
from tests.services import REDIS_URL, require, unique

SECRET = "waits-test-secret-" + "w" * 80
# Long enough that a test finishing in time proves the event path, not the safety timer.
EVENTS_ONLY = WaitConfig(recheck_s=120.0)


@dataclass
class WaitRig:
    """A run core publishing on one bus and waits listening on another (same channel)."""

    core: RunCore
    runs: RunService
    stores: RunStores
    engine_bus: EventBus
    waiter_bus: EventBus
    queue: str
    blobs: FilesystemBlobStore

    def waits(self, config: WaitConfig = EVENTS_ONLY, bus: EventBus | None = None) -> RunWaits:
        return RunWaits(
            self.stores.runs, RunEvents(bus or self.waiter_bus), self.core.plans, self.core.results, config
        )

    async def start(self, spec: dict[str, Any], conf: dict[str, Any] | None = None) -> Run:
        for task in spec["tasks"]:
            task.setdefault("queue", self.queue)
        dag_id = unique("dag")
        await self.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
        return await self.runs.trigger(dag_id, conf=conf)

    async def claim(self, n: int = 100) -> list[Claimed]:
        return await self.core.claims.claim("w1", [self.queue], n, 0)

    async def claim_one(self, task_id: str) -> Claimed:
        claimed = await self.claim()
        assert [c.ti.task_id for c in claimed] == [task_id]
        return claimed[0]

    async def succeed(self, claimed: Claimed, value: Any) -> None:
        await self.core.reports.report(claimed.ti.id, Success(result=msgspec.json.encode(value)))


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest) -> RunStores:
    found: RunStores = request.getfixturevalue(f"{request.param}_run_stores")
    return found


@pytest.fixture(params=["memory", "postgres", "redis"])
def bus_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_url")
    if request.param == "redis":
        require(redis_available(), f"Redis at {REDIS_URL}")
        return "redis", REDIS_URL
    return "memory", ""


@pytest.fixture
async def buses(bus_backend: tuple[str, str]) -> AsyncIterator[tuple[EventBus, EventBus]]:
    """(the engine's bus, the waiters' bus): two connections on one channel of this test's own."""
    kind, url = bus_backend
    channel = unique("waits")
    if kind == "memory":
        memory = MemoryEventBus()
        yield memory, memory
        return
    opened: list[PostgresEventBus | RedisEventBus] = []
    try:
        for _ in range(2):
            if kind == "postgres":
                opened.append(await PostgresEventBus.connect(url, timeout_s=5.0, channel=channel))
            else:
                opened.append(await RedisEventBus.connect(url, timeout_s=5.0, channel=channel))
        yield opened[0], opened[1]
    finally:
        for bus in opened:
            await bus.close()


async def make_rig(stores: RunStores, engine_bus: EventBus, waiter_bus: EventBus, tmp: Path) -> WaitRig:
    blobs = FilesystemBlobStore(tmp / "blobs")
    config = EngineConfig(claim_recheck_s=0.5)
    wired = wire(stores, engine_bus, blobs, SystemClock(), tokens=hs512_tokens(SECRET), config=config)
    return WaitRig(
        core=wired.core,
        runs=wired.runs,
        stores=stores,
        engine_bus=engine_bus,
        waiter_bus=waiter_bus,
        queue=unique("q"),
        blobs=blobs,
    )


@pytest.fixture
async def rig(stores: RunStores, buses: tuple[EventBus, EventBus], tmp_path: Path) -> AsyncIterator[WaitRig]:
    made = await make_rig(stores, buses[0], buses[1], tmp_path)
    yield made
    await made.blobs.close()


@pytest.fixture
async def memory_rig(stores: RunStores, tmp_path: Path) -> AsyncIterator[WaitRig]:
    """Over one in-process bus: for tests about the waiters, not about the buses."""
    bus = MemoryEventBus()
    made = await make_rig(stores, bus, bus, tmp_path)
    yield made
    await made.blobs.close()


def chain(*task_ids: str, **options: Any) -> list[dict[str, Any]]:
    return [
        {"task_id": t, "upstream": [task_ids[i - 1]] if i else [], **options} for i, t in enumerate(task_ids)
    ]


# --- the HTTP app over real stores ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def http_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{(tmp_path / 'stateport.db').resolve()}"


@pytest.fixture
async def services(http_database_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=http_database_url, jwt_secret=SECRET, claim_recheck_s=0.5
    )
    opened = await open_services(settings, migrate=http_database_url.startswith("sqlite"))
    yield opened
    await opened.close()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = app_for(services)  # built once per worker and settings (tests/apps.py)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types its ASGI app narrowly
    async with httpx.AsyncClient(transport=transport, base_url="http://stateport", timeout=30) as c:
        yield c


def api(services: Services, *scopes: str) -> dict[str, str]:
    token = services.tokens.mint_api_token("tester", frozenset(scopes))
    return {"Authorization": f"Bearer {token}"}


async def register(services: Services, spec: dict[str, Any]) -> tuple[str, str]:
    """Register ``spec`` under a fresh dag_id with every task on a fresh queue; return both."""
    queue = unique("q")
    for task in spec["tasks"]:
        task.setdefault("queue", queue)
    dag_id = unique("dag")
    await services.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
    return dag_id, queue
