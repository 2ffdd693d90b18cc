"""What the suite measures: the backends, the operations, and the concurrency levels.

Adding a backend is one entry in ``BACKENDS``: a name, the ``STATEPORT_*`` variables that select it, and
what it needs to be present. The server, the seeding and every table and plot follow from the entry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import build_request
from bench.server import HOST, Target

CONCURRENCY = (50, 100, 200, 400)
QUICK_CONCURRENCY = (50, 100)

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
# BENCH_PG_DATABASE: another database, for benches run side by side on one PostgreSQL server.
PG_DATABASE = os.environ.get("BENCH_PG_DATABASE", "stateport_bench")
PG_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@dataclass(frozen=True)
class Backend:
    """A configuration of the server under test."""

    name: str
    title: str
    # STATEPORT_* variables for a fresh data directory (the JWT secret is added by the suite).
    env: Callable[[Path], dict[str, str]]
    # None when the backend can run here, else why not.
    missing: Callable[[], str | None] = lambda: None
    # PostgreSQL is (re)created empty before the backend's server starts.
    needs_postgres_db: bool = False
    notes: str = ""
    # A context around the backend's whole run (a moto process for S3) that yields more variables.
    service: Callable[[], contextlib.AbstractContextManager[dict[str, str]]] | None = None


def _postgres_missing() -> str | None:
    return None if _port_open(PG_HOST, PG_PORT) else f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}"


def _redis_missing() -> str | None:
    if not _module("stateport.adapters.redis.state"):
        return "the Redis state adapter is not in this checkout yet"
    return None if _port_open("127.0.0.1", 6379) else "Redis is not reachable at 127.0.0.1:6379"


def _s3_missing() -> str | None:
    if not _module("stateport.adapters.s3.state") or not _module("moto"):
        return "the S3 state adapter or moto[server] is not installed"
    return None


@contextlib.contextmanager
def _moto() -> Iterator[dict[str, str]]:
    from bench.services import moto_s3

    with moto_s3(f"stateport-bench-{uuid.uuid4().hex[:8]}") as env:
        yield env


BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="sqlite",
        title="SQLite (embedded default)",
        env=lambda data: {"STATEPORT_DATA_DIR": str(data)},
    ),
    Backend(
        name="postgres",
        title="PostgreSQL",
        env=lambda data: {"STATEPORT_DATA_DIR": str(data), "STATEPORT_DATABASE_URL": PG_URL},
        missing=_postgres_missing,
        needs_postgres_db=True,
    ),
    Backend(
        name="redis",
        title="Redis state (runs on PostgreSQL)",
        env=lambda data: {
            "STATEPORT_DATA_DIR": str(data),
            "STATEPORT_DATABASE_URL": PG_URL,
            "STATEPORT_STATE_BACKEND": "redis",
            "STATEPORT_REDIS_URL": REDIS_URL,
            # A fresh prefix per run: the bench never deletes keys it did not write.
            "STATEPORT_REDIS_PREFIX": f"stateport_bench_{uuid.uuid4().hex[:8]}",
        },
        missing=lambda: _postgres_missing() or _redis_missing(),
        needs_postgres_db=True,
    ),
    Backend(
        name="s3",
        title="S3 state against a moto server (runs on PostgreSQL)",
        env=lambda data: {
            "STATEPORT_DATA_DIR": str(data),
            "STATEPORT_DATABASE_URL": PG_URL,
            "STATEPORT_STATE_BACKEND": "s3",
        },
        missing=lambda: _postgres_missing() or _s3_missing(),
        needs_postgres_db=True,
        service=_moto,
        notes=(
            "moto is a single-threaded Python mock of S3 in one process on this machine: these numbers"
            " measure the S3 adapter (boto3 on its thread pool) against moto, not S3."
        ),
    ),
)


def _state_path(target: Target) -> str:
    return f"/execution/state/ti/{target.ti_id}/{target.key}"


@dataclass(frozen=True)
class Operation:
    """An HTTP call the load generators repeat over the seeded targets."""

    name: str
    title: str
    method: str
    body: Callable[[int], bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The Execution API's state route unless told otherwise (the reference app has its own routes).
    path: Callable[[Target], str] = _state_path
    # Send the target's task-instance token (the reference app checks none).
    auth: bool = True

    def requests(self, targets: list[Target], port: int) -> tuple[bytes, ...]:
        """One raw request per target, each with its own task instance's token when ``auth``."""
        out = []
        for i, t in enumerate(targets):
            token = {"Authorization": f"Bearer {t.token}"} if self.auth else {}
            headers = {**token, **self.headers}
            body = self.body(i) if self.body is not None else b""
            out.append(
                build_request(self.method, self.path(t), host=HOST, port=port, headers=headers, body=body)
            )
        return tuple(out)


def _put_body(i: int) -> bytes:
    return b'{"value": {"counter": %d, "owner": "bench", "tags": ["a", "b"]}, "expires_at": null}' % i


OPERATIONS: tuple[Operation, ...] = (
    Operation(name="get", title="state GET", method="GET"),
    Operation(
        name="put",
        title="state PUT",
        method="PUT",
        body=_put_body,
        headers={"Content-Type": "application/json"},
    ),
)

HEALTH_PATH = "/health/live"

# The yardstick (bench/reference_app.py): a bare Litestar route doing the same primary-key read with
# raw asyncpg, and a constant JSON body; measured in the same run as the PostgreSQL sweep, on its data.
REFERENCE_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        name="get",
        title="GET /ref/state/{ti_id}/{key}",
        method="GET",
        path=lambda t: f"/ref/state/{t.ti_id}/{t.key}",
        auth=False,
    ),
    Operation(
        name="constant", title="GET /ref/constant", method="GET", path=lambda t: "/ref/constant", auth=False
    ),
)
