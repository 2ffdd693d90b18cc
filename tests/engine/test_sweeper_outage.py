"""A store outage is logged when it starts, now and then while it lasts, and when it ends: not once per
sweep (an outsider's find: every server process wrote a line a second, 3,600 an hour, while PostgreSQL
was down). The outage is real: the sweeper's PostgreSQL database is dropped under it, then made again."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pytest

from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.migrations import upgrade
from stateport.adapters.sql.stores import open_run_stores
from stateport.domain.engine import sweeper as sweeping
from tests.engine.conftest import SECRET, MovableClock
from tests.fixtures.core import hs512_tokens, wire
from tests.fixtures.sql import admin_sql
from tests.services import POSTGRES_DB, POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, port_open, require

pytestmark = pytest.mark.postgres


async def test_an_outage_is_logged_as_it_starts_while_it_lasts_and_as_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(port_open(POSTGRES_HOST, POSTGRES_PORT), "PostgreSQL")
    name = f"{POSTGRES_DB}_o{uuid.uuid4().hex[:10]}"  # in the run's namespace: dropped even after a crash
    url = f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    await admin_sql(f'CREATE DATABASE "{name}"')
    database: Database | None = None
    try:
        await upgrade(url)
        database = await Database.connect(url, pool_size=2, timeout_s=2.0)
        core = wire(
            open_run_stores(database),
            MemoryEventBus(),
            FilesystemBlobStore(tmp_path / "blobs"),
            MovableClock(),
            tokens=hs512_tokens(SECRET),
        ).core
        monkeypatch.setattr(sweeping, "OUTAGE_LOG_S", 0.5)  # "now and then", at a test's pace
        caplog.set_level(logging.WARNING, logger="stateport.engine")
        sweeps = asyncio.create_task(core.sweeper.run(0.02))
        try:
            await asyncio.sleep(0.3)  # sweeping, quietly
            began = time.monotonic()
            await admin_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
            await asyncio.sleep(1.6)
            await admin_sql(f'CREATE DATABASE "{name}"')
            await upgrade(url)
            for _ in range(100):
                if any("work again" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            lasted = time.monotonic() - began
        finally:
            sweeps.cancel()
            await asyncio.gather(sweeps, return_exceptions=True)
    finally:
        if database is not None:
            await database.close()
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    lines = [r.getMessage() for r in caplog.records if r.name == "stateport.engine"]
    assert sum(line.startswith("lease sweep failed") for line in lines) == 1, lines
    still = [line for line in lines if line.startswith("lease sweeps still failing")]
    # About every 0.5 s of the outage (1.6 s, and the database's making again: longer on a loaded machine),
    # where a line a sweep (every 0.02 s) was dozens.
    assert 1 <= len(still) <= lasted / 0.5 + 1, (lasted, lines)
    assert lines[-1].startswith("lease sweeps work again, after "), lines
    assert len(lines) == 2 + len(still)
