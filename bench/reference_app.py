"""The issue's yardstick: a bare Litestar route doing the same primary-key read with raw asyncpg.

Issue #2 states its throughput targets next to two measurements "on such a machine": this route served
about 10,400 req/s under uvicorn, and a constant JSON body about 27,000 req/s. Machines of that kind differ
from day to day (this one by 2x between sessions), so the suite serves this app with the same uvicorn
settings as ``stateport serve``, in the same run as the real server, and reports our numbers next to it.

No auth, no use case, no metrics: the path names the task instance, whose scope is looked up in a dict
loaded at start (the real server caches the same binding), then one ``fetchrow`` of the adapter's own
compiled GET statement on an asyncpg pool of the server's size. Like the server's pool, it skips asyncpg's
default reset query on release (``RESET ALL; UNLISTEN *; ...``, a second round trip per request): with it,
this route served about 35% fewer requests in an A/B on this machine, a handicap the server does not have.
So the yardstick is one round trip per request, as the server's GET is.

Run: ``uvicorn --factory bench.reference_app:app`` with ``BENCH_REFERENCE_DSN`` set (and
``BENCH_REFERENCE_POOL``, default 20); the suite starts it as ``bench.server.ReferenceServer``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
from litestar import Litestar, Response, get
from litestar.datastructures import State

from stateport.adapters.shared.timestamps import to_us
from stateport.adapters.sql.state import statements

GET = statements("postgresql")[0].get
SCOPES = "SELECT id::text, dag_id, run_id, task_id, map_index FROM task_instances"


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (nothing here changes session state; as the server does)."""


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    size = int(os.environ.get("BENCH_REFERENCE_POOL", "20"))
    pool = await asyncpg.create_pool(
        os.environ["BENCH_REFERENCE_DSN"], min_size=size, max_size=size, reset=_keep_session
    )
    assert pool is not None
    rows = await pool.fetch(SCOPES)
    app.state.pool = pool
    app.state.scopes = {r["id"]: (r["dag_id"], r["run_id"], r["task_id"], r["map_index"]) for r in rows}
    try:
        yield
    finally:
        await pool.close()


@get("/ref/state/{ti_id:str}/{key:str}")
async def state_get(ti_id: str, key: str, state: State) -> Response[bytes]:
    dag_id, run_id, task_id, map_index = state.scopes[ti_id]
    params = {
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": map_index,
        "key": key,
        "now": to_us(datetime.now(UTC)),
    }
    row = await state.pool.fetchrow(GET.sql, *GET.args(params))
    return Response(row["value"].encode(), media_type="application/json")


@get("/ref/constant")
async def constant() -> dict[str, str]:
    return {"status": "ok"}


def app() -> Litestar:
    """The reference app (a factory, like ``stateport.asgi:app``)."""
    return Litestar([state_get, constant], lifespan=[_lifespan], openapi_config=None)
