"""Where the test services live, and what to do when one is absent.

On CI (``CI=true``) a missing service fails the test loudly; on a developer machine it skips with the reason.

Every run works in names of its own: ``NAMESPACE`` is ``<STATEPORT_TEST_PG_DB>_<run id>_<worker>``, the
PostgreSQL database of this process (an xdist worker ``gw0``, ``gw1``, ...; ``main`` without xdist) and the
start of every Redis key prefix it uses (``redis_key_prefix``). tests/namespaces.py drops them at the end of
the run, and those of crashed runs once they are old.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import secrets
import socket
import time
import uuid
from pathlib import Path

import pytest

POSTGRES_HOST = os.environ.get("STATEPORT_TEST_PG_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("STATEPORT_TEST_PG_PORT", "5432"))
POSTGRES_USER = os.environ.get("STATEPORT_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("STATEPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# The base of this run's names. Plain lower-case so that it is a PostgreSQL name as it stands and a Redis
# SCAN pattern matches it literally; short so that a database per test (``_m`` and 10 more) stays in 63 bytes.
BASE_NAME = os.environ.get("STATEPORT_TEST_PG_DB", "stateport_test")
if not re.fullmatch(r"[a-z][a-z0-9_]{0,29}", BASE_NAME):
    raise pytest.UsageError(
        f"STATEPORT_TEST_PG_DB={BASE_NAME!r}: give a base name of at most 30 characters, a-z, 0-9 and _,"
        " starting with a letter (each run creates <base>_<run id>_<worker> and drops it afterwards)"
    )
# One id for the whole run: the first process to import this module (pytest itself, or xdist's controller)
# sets it, and the workers it starts inherit it. It starts with the time in hex, so that a crashed run's
# leftovers can be told old (tests/namespaces.py).
RUN_ID = os.environ.setdefault("STATEPORT_TEST_RUN_ID", f"{int(time.time()):08x}{secrets.token_hex(2)}")
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
RUN_NAMESPACE = f"{BASE_NAME}_{RUN_ID}_"
NAMESPACE = f"{RUN_NAMESPACE}{WORKER}"
POSTGRES_DB = NAMESPACE
POSTGRES_URL = f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"

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


def redis_key_prefix() -> str:
    """A Redis key prefix no other test uses, inside this run's namespace (so the run's end deletes it)."""
    return f"{NAMESPACE}_{uuid.uuid4().hex[:12]}"


# --- ports ----------------------------------------------------------------------------------------------
# A port handed out here is closed until the test's server binds it. Asking the kernel (bind to port 0)
# may hand the same port to another xdist worker, or to an outgoing connection, in between; so each worker
# takes ports from a block of its own below the kernel's ephemeral range, one after another, skipping any
# that is taken.
_PORTS_LOW, _PORTS_HIGH = 20_000, 32_000


def _port_block() -> range | None:
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if ephemeral_low < _PORTS_HIGH:
        return None  # no room below the ephemeral range: let the kernel choose
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(WORKER[2:]) if re.fullmatch(r"gw\d+", WORKER) else 0
    size = (_PORTS_HIGH - _PORTS_LOW) // max(workers, index + 1)
    start = _PORTS_LOW + index * size
    return range(start, start + size)


_BLOCK = _port_block()
# From a random place in the block, so that two runs at once (other checkouts) rarely walk it in step.
_START = random.randrange(len(_BLOCK)) if _BLOCK else 0
_ORDER: list[int] = [*_BLOCK[_START:], *_BLOCK[:_START]] if _BLOCK else [0]
_NEXT = itertools.cycle(_ORDER)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now, and that no other worker of this run is handed."""
    if _BLOCK is not None:
        for _ in range(len(_BLOCK)):
            port = next(_NEXT)
            if _bindable(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found
