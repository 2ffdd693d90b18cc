"""Use cases wired to real stores: SQLite and PostgreSQL, like the server wires them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from stateport.adapters.clock import SystemClock
from stateport.domain.ports import RunStore, StateStore
from stateport.domain.runs import RunService
from stateport.domain.state import StateService
from stateport.domain.values import Limits


@dataclass
class Core:
    state: StateService
    runs: RunService
    run_store: RunStore


@pytest.fixture(params=["sqlite", "postgres"])
def core(request: pytest.FixtureRequest) -> Core:
    state_store: StateStore = request.getfixturevalue(f"{request.param}_state_store")
    run_store: RunStore = request.getfixturevalue(f"{request.param}_run_store")
    clock = SystemClock()
    return Core(
        state=StateService(state_store, run_store, Limits(max_value_bytes=1024), clock),
        runs=RunService(run_store, clock),
        run_store=run_store,
    )
