"""A waiter that leaves while the database is out still cancels its run once the database is back.

An outsider's find: with other waiters held in the same process, the leaving waiter's row could not be
dropped in the outage, was renewed with the process's others from then on, and the run was never
cancelled. The registry tells the store again at each renewal (``CallerRegistry._unsettled``). A real
PostgreSQL reached through a TCP forwarder that the test cuts (``tests/fixtures/tcp_proxy.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import msgspec

from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.stores import open_run_stores
from stateport.domain.disconnects import CallerRegistry, OnDisconnect
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.progress import DISCONNECTED
from stateport.domain.models import DagSpec
from tests.engine.conftest import SECRET, MovableClock
from tests.fixtures.core import hs512_tokens, wire
from tests.fixtures.tcp_proxy import TcpProxy
from tests.services import POSTGRES_HOST, POSTGRES_PORT, unique

LEASE_S = 3.0  # the registry's rows: renewed (and told again) every second


async def test_a_waiter_that_left_in_an_outage_cancels_its_run_once_the_store_is_back(
    postgres_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy((POSTGRES_HOST, POSTGRES_PORT))
    await proxy.start()
    url = postgres_url.replace(f"{POSTGRES_HOST}:{POSTGRES_PORT}", f"127.0.0.1:{proxy.port}")
    assert url != postgres_url
    database = await Database.connect(url, pool_size=4, timeout_s=1.0)
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    stores = open_run_stores(database)
    wired = wire(
        stores, MemoryEventBus(), blobs, MovableClock(), tokens=hs512_tokens(SECRET), config=EngineConfig()
    )
    registry = CallerRegistry(stores.waiters, wired.core.advancer, wired.runs.clock, lease_s=LEASE_S)
    renewing = asyncio.create_task(registry.renew_forever())
    try:
        dag_id = unique("dag")
        spec = {"tasks": [{"task_id": "t", "queue": unique("q")}]}
        await wired.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
        leaving, staying = await wired.runs.trigger(dag_id), await wired.runs.trigger(dag_id)
        stays = asyncio.Event()

        async def stay() -> None:  # another caller of this process, waiting throughout
            async with registry.waiting(staying.dag_id, staying.run_id, OnDisconnect.CANCEL):
                await stays.wait()

        stayer = asyncio.create_task(stay())
        async with registry.waiting(leaving.dag_id, leaving.run_id, OnDisconnect.CANCEL) as attendance:
            await asyncio.sleep(0.2)
            await proxy.cut()  # the database is out: nothing reaches it, nothing listens
            attendance.disconnected = True  # its caller goes away meanwhile
        await asyncio.sleep(2.0)  # the registry's attempt to tell the store failed
        await proxy.start()  # back
        deadline = time.monotonic() + 20
        while True:
            run = await wired.runs.get_run(leaving.dag_id, leaving.run_id)
            if run.outcome is not None:
                break
            assert time.monotonic() < deadline, "the run of the caller that left was never cancelled"
            await asyncio.sleep(0.2)
        assert run.outcome.reason == DISCONNECTED
        still = await wired.runs.get_run(staying.dag_id, staying.run_id)
        assert still.outcome is None  # the caller that stayed keeps its run
        stays.set()
        await stayer
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        await registry.close()
        await database.close()
        await blobs.close()
        await proxy.cut()
