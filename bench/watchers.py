"""Watchers of state keys on one server process (issue #16, item 3): wake latency and connections.

``watchers`` long-polls (``GET /execution/state/ti/{ti}/{key}?wait=300`` with ``If-None-Match: "1"``) on
``keys`` keys of one task instance (watcher i on key i % keys) are held open by the waiters' client
processes (``bench.waiters.Holder``, one connection each). Once they idle, PostgreSQL's connections are
sampled (the pool and the event bus's listener), then the suite writes every key once, one PUT at a time
and ``GAP_S`` apart (so that each write's wake-up is measured alone, not queued behind the previous key's),
recording when each PUT's 204 arrived: a watcher's wake latency is its answer's arrival minus the ack of its
key's write (one monotonic clock for every process on the machine).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from array import array
from collections import Counter
from typing import Any

from msgspec import Struct

from bench.loadgen import build_request
from bench.server import HOST, Server
from bench.services import PgProbe, rss_kib
from bench.syncexec import PER_CLIENT, PgSummary, pg_summary
from bench.waiters import Holder, HoldSpec, RawConnection, cdf_points, summarize, wake_latencies
from stateport.bootstrap import open_services
from stateport.config import load_settings
from stateport.domain.models import DagSpec, TaskSpec

WAIT_S = 300
# Between two writes: long enough for one key's watchers (10,000 / 100 keys) to be answered.
GAP_S = 0.2


class WatchersResult(Struct, kw_only=True):
    watchers: int
    keys: int
    opened: int
    connect_errors: int
    open_s: float
    answered_200: int
    statuses: dict[int, int]
    rss_before_kib: int
    rss_after_kib: int
    rss_per_watcher_kib: float
    pool_size: int
    # PostgreSQL connections while the watchers waited, and while they woke.
    pg_waiting: PgSummary
    pg_waking: PgSummary
    writes_s: float
    write_errors: int
    # Answer arrival minus the write's ack (ms): negative means the answer came before the writer read its
    # 204 (both are on loopback; the server sends the 204 first).
    wake: dict[str, Any]
    cdf: list[tuple[float, float]]


async def prepare_watchers(env: dict[str, str], keys: int) -> tuple[uuid.UUID, str]:
    """A one-task DAG, a run, and ``keys`` keys (at version 1) in its task instance's state; (ti, token)."""
    services = await open_services(load_settings(environ=env), migrate=True)
    try:
        dag_id = f"bench_watch_{uuid.uuid4().hex[:8]}"
        await services.runs.register_dag(dag_id, DagSpec(tasks=[TaskSpec(task_id="t")]))
        run = await services.runs.trigger(dag_id)
        (ti,) = await services.runs.task_instances(dag_id, run.run_id)
        token = services.tokens.mint_task_token(ti.id)
        for k in range(keys):
            await services.state.task_put(str(ti.id), ti.id, key_name(k), b"0")
    finally:
        await services.close()
    return ti.id, token


def key_name(k: int) -> str:
    return f"watched/{k:05d}"


async def measure_watchers(
    env: dict[str, str],
    server: Server,
    ti_id: uuid.UUID,
    token: str,
    *,
    watchers: int,
    keys: int,
    pg_dsn: str,
    pg_database: str,
    log: Any,
) -> WatchersResult:
    assert server.pid is not None
    auth = {"Authorization": f"Bearer {token}"}
    paths = [f"/execution/state/ti/{ti_id}/{key_name(k)}" for k in range(keys)]
    requests = [
        build_request(
            "GET",
            f"{paths[i % keys]}?wait={WAIT_S}",
            host=HOST,
            port=server.port,
            headers={**auth, "If-None-Match": '"1"'},
        )
        for i in range(watchers)
    ]
    await asyncio.sleep(1.0)
    rss_before = rss_kib(server.pid)
    chunks = [requests[i : i + PER_CLIENT] for i in range(0, len(requests), PER_CLIENT)]
    holders = [
        Holder(HoldSpec(host=HOST, port=server.port, requests=c, source=f"127.0.0.{2 + i}", deadline_s=120))
        for i, c in enumerate(chunks)
    ]
    probe = PgProbe(pg_dsn, pg_database)
    acked: dict[int, float] = {}
    errors = 0
    try:
        opened = connect_errors = 0
        open_s = 0.0
        for holder in holders:
            o, e, t = await asyncio.to_thread(holder.wait_opened, 600)
            opened, connect_errors, open_s = opened + o, connect_errors + e, max(open_s, t)
        log(f"  {opened:,} watchers open in {open_s:.1f} s ({connect_errors} connect errors); settling")
        await asyncio.sleep(3.0)
        rss_after = rss_kib(server.pid)
        stop = asyncio.Event()
        sampler = asyncio.create_task(probe.run(stop, every_s=0.2))
        await asyncio.sleep(3.0)
        stop.set()
        await sampler
        waiting = pg_summary(probe.samples)
        probe.samples.clear()
        log(
            f"  RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB; pool busy max"
            f" {waiting.pool_busy_max}/{waiting.pool_total_max}, listener {waiting.listener_total_max}"
        )
        stop = asyncio.Event()
        sampler = asyncio.create_task(probe.run(stop, every_s=0.1))
        conn = await RawConnection.open(HOST, server.port)
        started = time.monotonic()
        try:
            for k, path in enumerate(paths):
                raw = build_request(
                    "PUT",
                    path,
                    host=HOST,
                    port=server.port,
                    headers={**auth, "Content-Type": "application/json"},
                    body=b'{"value": 1}',
                )
                code, _ = await conn.request(raw)
                if code == 204:
                    acked[k] = time.monotonic()
                else:
                    errors += 1
                await asyncio.sleep(GAP_S)
        finally:
            await conn.close()
        writes_s = time.monotonic() - started
        holds = [await asyncio.to_thread(h.result, 300) for h in holders]
        stop.set()
        await sampler
        waking = pg_summary(probe.samples)
    finally:
        await probe.close()
        for holder in holders:
            holder.close()
    done_at = array("d")
    status = array("H")
    for hold in holds:
        done_at.frombytes(hold.done_at)
        status.frombytes(hold.status)
    wake = wake_latencies(done_at, [i % keys for i in range(watchers)], acked)
    statuses = Counter(status)
    return WatchersResult(
        watchers=watchers,
        keys=keys,
        opened=opened,
        connect_errors=connect_errors,
        open_s=open_s,
        answered_200=statuses.get(200, 0),
        statuses={int(k): v for k, v in sorted(statuses.items())},
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        rss_per_watcher_kib=(rss_after - rss_before) / max(opened, 1),
        pool_size=load_settings(environ=env).db_pool_size,
        pg_waiting=waiting,
        pg_waking=waking,
        writes_s=writes_s,
        write_errors=errors,
        wake=summarize(wake),
        cdf=cdf_points(wake),
    )
