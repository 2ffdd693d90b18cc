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


def pytest_configure(config: pytest.Config) -> None:
    if not _is_controller(config):
        return
    # A cancelled CI job or a `timeout` sends SIGTERM: end the run as Ctrl-C does, fixtures torn down and
    # the run's databases and keys dropped, instead of dying with them left behind.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    asyncio.run(namespaces.drop_stale())


@pytest.hookimpl(trylast=True)  # after the session's fixtures (servers holding connections) are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    # Each worker drops its own names; the controller then whatever a worker that died left of the run.
    asyncio.run(namespaces.drop_run(RUN_NAMESPACE if _is_controller(session.config) else f"{NAMESPACE}_"))
