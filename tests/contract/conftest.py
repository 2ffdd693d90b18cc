"""The contract suite runs unchanged against every adapter of a port.

Each backend module in tests/fixtures defines ``<name>_state_store``; the ``state_store`` fixture below is
parametrised over the names, so adding an adapter means adding its name here and its fixture there.
"""

from __future__ import annotations

import pytest

from stateport.domain.ports import StateStore

STATE_STORES = ["sqlite", "postgres", "redis", "s3", "rest"]


@pytest.fixture(params=STATE_STORES)
def state_store(request: pytest.FixtureRequest) -> StateStore:
    store: StateStore = request.getfixturevalue(f"{request.param}_state_store")
    return store
