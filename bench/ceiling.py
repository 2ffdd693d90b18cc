"""Ceilings: the same work without the parts above it, so the report can say where the time goes.

- ``asyncpg``: the exact statement the SQL adapter sends for a state GET (or PUT), compiled by the adapter's
  own ``statements()``, on a raw asyncpg pool of the server's size with N concurrent tasks, in one process.
  Nothing above the driver: this is what one Python process can get out of PostgreSQL on this machine.
- ``service``: ``StateService.task_get`` / ``task_put`` (authorization, binding cache, adapter) in a loop,
  in one process, without HTTP. What is left between it and the HTTP numbers is the web stack.

The HTTP floor, ``/health/live`` under the same load generator, is measured by ``__main__``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import Struct

from bench.loadgen import percentile
from bench.procstat import CpuShare, CpuWindow
from bench.server import Target
from stateport.adapters.shared.timestamps import to_us
from stateport.adapters.sql.state import statements
from stateport.bootstrap import open_services
from stateport.config import load_settings
from stateport.domain.errors import StateportError


class CeilingResult(Struct, frozen=True, kw_only=True):
    name: str
    backend: str
    op: str
    concurrency: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: float
    # Machine CPU over the window; "client" is this process (the loop itself).
    cpu: CpuShare | None = None
    error_kinds: dict[str, int] = msgspec.field(default_factory=dict)


async def ops_loop(
    op: Callable[[int], Awaitable[Any]],
    *,
    name: str,
    backend: str,
    op_name: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    errors_caught: tuple[type[Exception], ...],
    cpu_window: CpuWindow | None = None,
) -> CeilingResult:
    """Run ``op(i)`` from ``concurrency`` tasks and describe the measured window as ``name``."""
    start = time.monotonic() + warmup_s
    end = start + duration_s
    latencies = array("I")
    errors = 0
    kinds: Counter[str] = Counter()
    counter = 0
    cpu = [0.0, 0.0]

    async def worker() -> None:
        nonlocal counter, errors
        while True:
            now = time.monotonic()
            if now >= end:
                return
            counter += 1
            try:
                await op(counter)
            except errors_caught as exc:
                done = time.monotonic()
                if start <= done <= end:
                    errors += 1
                    kinds[f"{type(exc).__name__}: {str(exc)[:100]}"] += 1
                continue
            done = time.monotonic()
            if start <= done <= end:
                latencies.append(int((done - now) * 1e6))

    async def cpu_marks() -> None:
        await asyncio.sleep(max(start - time.monotonic(), 0))
        cpu[0] = time.process_time()
        if cpu_window is not None:
            cpu_window.start([os.getpid()])
        await asyncio.sleep(max(end - time.monotonic(), 0))
        cpu[1] = time.process_time()
        if cpu_window is not None:
            cpu_window.end()

    await asyncio.gather(cpu_marks(), *(worker() for _ in range(concurrency)))
    ordered = sorted(latencies)
    return CeilingResult(
        name=name,
        backend=backend,
        op=op_name,
        concurrency=concurrency,
        ops_per_s=len(ordered) / duration_s,
        p50_ms=percentile(ordered, 50) / 1000,
        p99_ms=percentile(ordered, 99) / 1000,
        errors=errors,
        cpu_s=cpu[1] - cpu[0],
        cpu=cpu_window.result if cpu_window is not None else None,
        error_kinds=dict(kinds),
    )


async def _noop_reset(connection: Any) -> None:
    """As the adapter does: skip asyncpg's reset query on release (see adapters/sql/postgres.py)."""


async def asyncpg_ceiling(
    dsn: str,
    targets: list[Target],
    *,
    op: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    pool_size: int,
    backend: str = "postgres",
    cpu_window: CpuWindow | None = None,
    fifo: bool = False,
) -> CeilingResult:
    """The adapter's statement for ``op`` (get or put) on a raw asyncpg pool.

    ``fifo`` puts a semaphore of the pool's size in front of ``acquire``: asyncio's Semaphore queues
    newcomers behind waiters, asyncpg's pool queue lets them take a just-released connection first.
    """
    import asyncpg

    task_stmts, _ = statements("postgresql")
    stmt = task_stmts.get if op == "get" else task_stmts.upsert
    pool = await asyncpg.create_pool(
        dsn,
        min_size=pool_size,
        max_size=pool_size,
        statement_cache_size=512,
        reset=_noop_reset,
        server_settings={"application_name": "stateport-bench-ceiling"},
    )
    gate = asyncio.Semaphore(pool_size) if fifo else None

    async def run_one(i: int) -> None:
        t = targets[i % len(targets)]
        params: dict[str, Any] = {
            "dag_id": t.dag_id,
            "run_id": t.run_id,
            "task_id": t.task_id,
            "map_index": t.map_index,
            "key": t.key,
            "now": to_us(datetime.now(UTC)),
        }
        if op == "put":
            params["value"] = f'{{"counter": {i}, "owner": "bench", "tags": ["a", "b"]}}'
            params["expires_at_us"] = None
        if gate is None:
            async with pool.acquire() as conn:
                await conn.fetchrow(stmt.sql, *stmt.args(params))
            return
        async with gate, pool.acquire() as conn:
            await conn.fetchrow(stmt.sql, *stmt.args(params))

    try:
        return await ops_loop(
            run_one,
            name="asyncpg-fifo" if fifo else "asyncpg",
            backend=backend,
            op_name=op,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            errors_caught=(asyncpg.PostgresError, OSError, TimeoutError),
            cpu_window=cpu_window,
        )
    finally:
        await pool.close()


async def service_ceiling(
    env: dict[str, str],
    targets: list[Target],
    *,
    backend: str,
    op: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_window: CpuWindow | None = None,
) -> CeilingResult:
    """``StateService.task_get`` / ``task_put`` in one process, without HTTP."""
    services = await open_services(load_settings(environ=env))

    async def run_one(i: int) -> None:
        t = targets[i % len(targets)]
        ti = uuid.UUID(t.ti_id)
        if op == "get":
            await services.state.task_get(t.ti_id, ti, t.key)
        else:
            value = f'{{"counter": {i}, "owner": "bench", "tags": ["a", "b"]}}'.encode()
            await services.state.task_put(t.ti_id, ti, t.key, value)

    try:
        return await ops_loop(
            run_one,
            name="service",
            backend=backend,
            op_name=op,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            errors_caught=(StateportError,),
            cpu_window=cpu_window,
        )
    finally:
        await services.close()


async def asgi_ceiling(
    env: dict[str, str],
    targets: list[Target],
    *,
    backend: str,
    op: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_window: CpuWindow | None = None,
) -> CeilingResult:
    """The Litestar app from ``create_app`` called as an ASGI callable in one process: no server, no socket.

    Between this and ``service`` is the web framework (routing, auth, encoding); between this and the HTTP
    numbers is uvicorn/httptools and the kernel's loopback.
    """
    from stateport.http.app import create_app

    services = await open_services(load_settings(environ=env))
    app = create_app(services.settings, services)
    scopes = []
    for i, t in enumerate(targets):
        path = f"/execution/state/ti/{t.ti_id}/{t.key}"
        body = b"" if op == "get" else b'{"value": {"counter": %d, "owner": "bench"}, "expires_at": null}' % i
        headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {t.token}".encode())]
        if body:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": op.upper(),
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 40000),
        }
        scopes.append((scope, body))
    expected = 200 if op == "get" else 204

    async def run_one(i: int) -> None:
        scope, body = scopes[i % len(scopes)]
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app({**scope, "state": {}}, receive, send)  # type: ignore[arg-type]
        if status != expected:
            raise StateportError(f"ASGI call answered {status}")

    try:
        return await ops_loop(
            run_one,
            name="asgi",
            backend=backend,
            op_name=op,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            errors_caught=(StateportError,),
            cpu_window=cpu_window,
        )
    finally:
        await services.close()
