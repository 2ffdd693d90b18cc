"""Dropping what test runs leave in PostgreSQL and Redis: a run's own names at its end, crashed runs' later.

The names are tests/services.py's: ``<base>_<run id>_<worker>`` for a worker's database and the start of its
Redis key prefixes, ``<that>_m<hex>`` for a test's own database. A run drops everything under its run id
when it ends (each worker its own, then the controller whatever a dead worker left). Names of another run
are dropped only when they are clearly the suite's (this base, a run id, a worker) and the run id says they
are older than ``STALE_S``: a run at the same time under the same base keeps its names.
"""

from __future__ import annotations

import re
import time
from contextlib import suppress
from urllib.parse import urlsplit

import asyncpg
from redis.asyncio import Redis

from tests.services import (
    BASE_NAME,
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_USER,
    REDIS_URL,
    port_open,
)

STALE_S = 6 * 3600  # far longer than a whole serial run, far shorter than leftovers piling up
_OURS = re.compile(rf"{re.escape(BASE_NAME)}_(?P<started>[0-9a-f]{{8}})[0-9a-f]{{4}}_(?:gw\d+|main)(?:_|$)")


def stale(name: str, now: float) -> bool:
    """Whether ``name`` is one of this suite's, made by a run that started more than ``STALE_S`` ago."""
    found = _OURS.match(name)
    return found is not None and now - int(found["started"], 16) > STALE_S


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, database="postgres", timeout=5
    )


async def drop_databases(*, under: str = "", now: float = 0.0) -> list[str]:
    """Drop the databases named ``under`` (which ends in ``_``) or more, or, given ``now``, the stale ones."""
    if not port_open(POSTGRES_HOST, POSTGRES_PORT):
        return []
    admin = await _admin()
    try:
        names: list[str] = [row[0] for row in await admin.fetch("SELECT datname FROM pg_database")]
        dropped = []
        for name in names:
            if under and f"{name}_".startswith(under):
                # This run's own: forced, since a server of ours may still hold a connection.
                statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            elif now and stale(name, now):
                # Not forced: a stale name still in use is somebody's, and stays.
                statement = f'DROP DATABASE IF EXISTS "{name}"'
            else:
                continue
            with suppress(asyncpg.ObjectInUseError):
                await admin.execute(statement)
                dropped.append(name)
        return dropped
    finally:
        await admin.close()


def _redis_reachable() -> bool:
    parts = urlsplit(REDIS_URL)
    return port_open(parts.hostname or "127.0.0.1", parts.port or 6379)


async def delete_keys(*, under: str = "", now: float = 0.0) -> int:
    """Delete the Redis keys starting with ``under`` or, given ``now``, those of stale runs; say how many."""
    if not _redis_reachable():
        return 0
    client = Redis.from_url(REDIS_URL, decode_responses=False)
    try:
        deleted = 0
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{under or BASE_NAME + '_'}*", count=1000):
            if under or stale(key.decode(errors="replace"), now):
                batch.append(key)
            if len(batch) >= 500:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
        return deleted
    finally:
        await client.aclose()


async def drop_stale() -> None:
    now = time.time()
    await drop_databases(now=now)
    await delete_keys(now=now)


async def drop_run(under: str) -> None:
    """Drop the databases and keys of one namespace; ``under`` ends in ``_``, so ``gw1_`` spares ``gw10``."""
    await drop_databases(under=under)
    await delete_keys(under=under)
