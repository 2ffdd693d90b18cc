"""The contract suite runs unchanged against every adapter of a port.

Each backend module in tests/fixtures defines ``<name>_state_store`` (and, for run metadata,
``<name>_run_stores``); the fixtures below are parametrised over the names, so adding an adapter means
adding its name here and its fixture there.
"""

from __future__ import annotations

import pytest

from stateport.domain.ports import RunStores, StateStore

STATE_STORES = ["sqlite", "postgres", "redis", "redis_cluster", "s3", "rest"]
RUN_STORES = ["sqlite", "postgres"]


@pytest.fixture(params=STATE_STORES)
def state_store(request: pytest.FixtureRequest) -> StateStore:
    store: StateStore = request.getfixturevalue(f"{request.param}_state_store")
    return store


@pytest.fixture(params=RUN_STORES)
def run_stores(request: pytest.FixtureRequest) -> RunStores:
    stores: RunStores = request.getfixturevalue(f"{request.param}_run_stores")
    return stores
