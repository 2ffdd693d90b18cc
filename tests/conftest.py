"""Shared fixtures, and the run's own names in PostgreSQL and Redis (tests/services.py, tests/namespaces.py).

Adapter fixtures live in tests/fixtures/<backend>.py, one module per backend.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import pytest

from tests import namespaces
from tests.services import NAMESPACE, RUN_NAMESPACE

pytest_plugins = [
    "tests.fixtures.sql",
    "tests.fixtures.redis",
    "tests.fixtures.redis_cluster",
    "tests.fixtures.s3",
    "tests.fixtures.rest",
]


def _is_controller(config: pytest.Config) -> bool:
    """pytest itself, or xdist's controller: not one of its workers (those have ``workerinput``)."""
    return not hasattr(config, "workerinput")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# xdist's `load` scheduling hands each worker its first quarter of the tests in one consecutive block, and
# later ones in blocks as large: the end-to-end tests, consecutive in collection order, then all went to one
# worker (more than 40 % of the suite's time). Blocks of two let every idle worker take the next tests.
SCHEDULE_CHUNK = 2


def pytest_configure(config: pytest.Config) -> None:
    if not _is_controller(config):
        return
    if getattr(config.option, "dist", "no") == "load" and getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = SCHEDULE_CHUNK  # unless --maxschedchunk says otherwise
    # A cancelled CI job or a `timeout` sends SIGTERM: end the run as Ctrl-C does, fixtures torn down and
    # the run's databases and keys dropped, instead of dying with them left behind.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    asyncio.run(namespaces.drop_stale())


@pytest.hookimpl(trylast=True)  # after the session's fixtures (servers holding connections) are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    # Each worker drops its own names; the controller then whatever a worker that died left of the run.
    asyncio.run(namespaces.drop_run(RUN_NAMESPACE if _is_controller(session.config) else f"{NAMESPACE}_"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers, the longest tests first, then the slow ones, then the rest, so that no long test
    starts near the end of the run while the other workers idle.

    Each ``longest`` test is followed by a unit test: with blocks of two (``SCHEDULE_CHUNK``), each worker
    then starts on a long test of its own instead of two in a row. The order is the same on every worker
    (xdist requires it); plain pytest keeps the collection order.
    """
    if _is_controller(config):
        return
    longest = [item for item in items if item.get_closest_marker("longest")]
    slow = [item for item in items if item.get_closest_marker("slow") and item not in longest]
    first = {id(item) for item in (*longest, *slow)}
    rest = [item for item in items if id(item) not in first]
    fillers = [item for item in rest if "unit" in item.path.parts][-len(longest) :] if longest else []
    taken = {id(item) for item in fillers}
    paired: list[pytest.Item] = []
    for index, item in enumerate(longest):
        paired += [item, *fillers[index : index + 1]]
    items[:] = [*paired, *slow, *(item for item in rest if id(item) not in taken)]
