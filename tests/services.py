"""Where the test services live, and what to do when one is absent.

On CI (``CI=true``) a missing service fails the test loudly; on a developer machine it skips with the reason.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

POSTGRES_HOST = os.environ.get("STATEPORT_TEST_PG_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("STATEPORT_TEST_PG_PORT", "5432"))
POSTGRES_USER = os.environ.get("STATEPORT_TEST_PG_USER", "postgres")
POSTGRES_DB = os.environ.get("STATEPORT_TEST_PG_DB", "stateport_test")
POSTGRES_URL = f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"
REDIS_URL = os.environ.get("STATEPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(available: bool, what: str) -> None:
    """Fail on CI, skip elsewhere, when a service the test needs is absent."""
    if available:
        return
    message = f"{what} is not reachable"
    if ON_CI:
        pytest.fail(f"{message} (CI=true: every service must be present)")
    pytest.skip(message)


def unique(prefix: str) -> str:
    """A fresh name, so tests on shared services never see each other's data."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
