"""Use cases wired to real stores: SQLite and PostgreSQL, like the server wires them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from stateport.adapters.clock import SystemClock
from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.memory.events import MemoryEventBus
from stateport.domain.assets import AssetCatalog
from stateport.domain.engine.config import EngineConfig
from stateport.domain.ports import RunStores, StateStore
from stateport.domain.runs import RunService
from stateport.domain.state import StateService
from stateport.domain.values import Limits
from tests.engine.conftest import Harness, MovableClock
from tests.fixtures.core import hs512_tokens, wire
from tests.services import unique


@dataclass
class Core:
    state: StateService
    runs: RunService
    stores: RunStores


@pytest.fixture
async def blobs(tmp_path: Path) -> AsyncIterator[FilesystemBlobStore]:
    store = FilesystemBlobStore(tmp_path / "blobs")
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def core(request: pytest.FixtureRequest, blobs: FilesystemBlobStore) -> Core:
    state_store: StateStore = request.getfixturevalue(f"{request.param}_state_store")
    stores: RunStores = request.getfixturevalue(f"{request.param}_run_stores")
    clock = SystemClock()
    wired = wire(stores, MemoryEventBus(), blobs, clock, tokens=hs512_tokens("usecases-" + "u" * 80))
    state = StateService(state_store, stores.bindings, stores.dags, Limits(max_value_bytes=1024), clock)
    wired.runs.deleted = state.clear_run  # as bootstrap wires them
    return Core(state=state, runs=wired.runs, stores=stores)


@dataclass
class Engine:
    """The run core driven step by step (claims, reports; a clock the test moves), with the state and
    asset use cases over the same stores."""

    harness: Harness
    state: StateService
    assets: AssetCatalog
    state_store: StateStore


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, blobs: FilesystemBlobStore) -> Engine:
    state_store: StateStore = request.getfixturevalue(f"{request.param}_state_store")
    stores: RunStores = request.getfixturevalue(f"{request.param}_run_stores")
    clock = MovableClock()
    events = MemoryEventBus()
    tokens = hs512_tokens("usecases-engine-" + "e" * 80)
    config = EngineConfig(lease_s=30.0, inline_result_bytes=64, claim_recheck_s=0.5)
    wired = wire(stores, events, blobs, clock, tokens=tokens, config=config)
    harness = Harness(
        core=wired.core,
        runs=wired.runs,
        stores=stores,
        events=events,
        blobs=blobs,
        clock=clock,
        tokens=tokens,
        queue=unique("q"),
    )
    state = StateService(
        state_store, stores.bindings, stores.dags, Limits(), clock, default_retention=timedelta(days=30)
    )
    return Engine(harness=harness, state=state, assets=AssetCatalog(stores.dags), state_store=state_store)
