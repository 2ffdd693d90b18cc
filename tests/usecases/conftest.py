"""Use cases wired to real stores: SQLite and PostgreSQL, like the server wires them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stateport.adapters.clock import SystemClock
from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.memory.events import MemoryEventBus
from stateport.domain.ports import RunStores, StateStore
from stateport.domain.runs import RunService
from stateport.domain.state import StateService
from stateport.domain.values import Limits
from tests.fixtures.core import hs512_tokens, wire


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
    return Core(
        state=StateService(state_store, stores.bindings, stores.dags, Limits(max_value_bytes=1024), clock),
        runs=wired.runs,
        stores=stores,
    )
