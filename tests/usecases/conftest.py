"""Use cases wired to real stores: SQLite and PostgreSQL, like the server wires them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from stateport.adapters.clock import SystemClock
from stateport.domain.ports import RunStores, StateStore
from stateport.domain.runs import RunService
from stateport.domain.state import StateService
from stateport.domain.values import Limits


@dataclass
class Core:
    state: StateService
    runs: RunService
    stores: RunStores


@pytest.fixture(params=["sqlite", "postgres"])
def core(request: pytest.FixtureRequest) -> Core:
    state_store: StateStore = request.getfixturevalue(f"{request.param}_state_store")
    stores: RunStores = request.getfixturevalue(f"{request.param}_run_stores")
    clock = SystemClock()
    return Core(
        state=StateService(state_store, stores.bindings, stores.dags, Limits(max_value_bytes=1024), clock),
        runs=RunService(stores.dags, stores.runs, clock),
        stores=stores,
    )
