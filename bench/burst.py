"""Admission under a burst (issue 17): 5,000 trigger-and-waits at once against a DAG with
``max_queued_runs`` 1,000 (bench/burst_dag.py), on one server process on PostgreSQL.

No worker serves the DAG while the burst lands, so no run leaves ``queued`` and the limit is exact: 1,000
triggers are accepted (each then waits, ``Prefer: wait``) and 4,000 answer 429 at once, before anything is
written. Once every refusal is in, workers start, and the accepted callers get their answers. Reported:
the answers by status (no 5xx expected), how long the refusals took, the server's resident memory before,
at its peak during the burst and after, and the latency of the accepted trigger-and-waits: from sending
to the answer, and from the workers' start to the answer (the queue of 1,000 draining).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from msgspec import Struct

from bench.server import raise_nofile
from bench.services import mint_api_token, rss_kib
from stateport.bootstrap import open_services
from stateport.config import load_settings

TRIGGERS = int(os.environ.get("BENCH_BURST_TRIGGERS", "5000"))
WAIT_S = 120
# Refusals come back at once; the accepted ones hold their connections while they wait. More connections
# than accepted runs, so that the refused triggers are never queued behind them in the client.
CONNECTIONS = 2000
QUIET_S = 2.0  # no refusal for this long after the last trigger was sent: the burst has landed


class BurstResult(Struct, kw_only=True):
    triggers: int
    max_queued_runs: int
    statuses: dict[str, int]
    server_errors: int
    refused_p50_ms: float
    refused_p99_ms: float
    # From the moment the request's head was written (a connection was free): without the time a trigger
    # waited in the client for one of its CONNECTIONS, which the accepted triggers hold while they wait.
    refused_sent_p50_ms: float = 0.0
    refused_sent_p99_ms: float = 0.0
    accepted_p50_ms: float
    accepted_p99_ms: float
    drain_p99_ms: float
    drain_s: float
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int


async def register(env: dict[str, str]) -> str:
    """Register the DAG in-process (migrating the database); an API token for the rest."""
    from bench.burst_dag import DAG_ID, dag

    services = await open_services(load_settings(environ=env), migrate=True)
    try:
        await services.runs.register_dag(DAG_ID, dag.spec())
    finally:
        await services.close()
    return await mint_api_token(env, "runs:read runs:write worker")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def measure(
    port: int, pid: int, token: str, start_workers: Any, *, triggers: int = TRIGGERS
) -> BurstResult:
    """Send the burst, start the workers (``start_workers()``) once it has landed, and wait for every
    answer."""
    from bench.burst_dag import DAG_ID, MAX_QUEUED_RUNS

    raise_nofile(CONNECTIONS + 1000)
    url = f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/dagRuns"
    headers = {
        "Authorization": f"Bearer {token}",
        "Prefer": f"wait={WAIT_S}",
        "Content-Type": "application/json",
    }
    statuses: Counter[str] = Counter()
    refused: list[float] = []
    accepted: list[tuple[float, float]] = []  # (sent, answered), monotonic
    last_refusal = time.monotonic()
    rss_before = rss_kib(pid)
    peak = rss_before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.1)

    refused_sent: list[float] = []

    async def headers_sent(_: Any, context: Any, __: Any) -> None:
        context.trace_request_ctx["written"] = time.monotonic()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(headers_sent)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal last_refusal
        sent = time.monotonic()
        body = f'{{"logical_date": null, "conf": {{"n": {n}}}}}'
        trace: dict[str, float] = {}
        try:
            async with session.post(url, data=body, headers=headers, trace_request_ctx=trace) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError as exc:
            statuses[f"error: {type(exc).__name__}"] += 1
            return
        answered = time.monotonic()
        statuses[str(status)] += 1
        if status == 429:
            refused.append(answered - sent)
            refused_sent.append(answered - trace.get("written", sent))
            last_refusal = answered
        elif status in (200, 202):
            accepted.append((sent, answered))

    sampler = asyncio.create_task(sample())
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=WAIT_S + 60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trace_configs=[tracing]
    ) as session:
        calls = [asyncio.create_task(one(session, n)) for n in range(triggers)]
        # Landed: every trigger was answered or is waiting, and no refusal came for a while.
        while (
            time.monotonic() - last_refusal < QUIET_S or sum(statuses.values()) + MAX_QUEUED_RUNS < triggers
        ):
            if all(call.done() for call in calls):
                break
            await asyncio.sleep(0.1)
        workers_at = time.monotonic()
        start_workers()
        await asyncio.gather(*calls)
    drained = time.monotonic()
    done.set()
    await sampler
    return BurstResult(
        triggers=triggers,
        max_queued_runs=MAX_QUEUED_RUNS,
        statuses=dict(statuses),
        server_errors=sum(count for status, count in statuses.items() if status.startswith("5")),
        refused_p50_ms=_pct(refused, 0.5),
        refused_p99_ms=_pct(refused, 0.99),
        refused_sent_p50_ms=_pct(refused_sent, 0.5),
        refused_sent_p99_ms=_pct(refused_sent, 0.99),
        accepted_p50_ms=_pct([b - a for a, b in accepted], 0.5),
        accepted_p99_ms=_pct([b - a for a, b in accepted], 0.99),
        drain_p99_ms=_pct([b - workers_at for _, b in accepted], 0.99),
        drain_s=drained - workers_at,
        rss_before_kib=rss_before,
        rss_peak_kib=peak,
        rss_after_kib=rss_kib(pid),
    )


def describe(r: BurstResult) -> list[str]:
    """Lines for the log."""
    return [
        f"  {r.triggers:,} triggers, max_queued_runs {r.max_queued_runs:,}:"
        f" {dict(sorted(r.statuses.items()))}; 5xx {r.server_errors}",
        f"  429 answered p50 {r.refused_p50_ms:.1f} ms, p99 {r.refused_p99_ms:.1f} ms"
        f" (from the request's sending: p50 {r.refused_sent_p50_ms:.1f} ms,"
        f" p99 {r.refused_sent_p99_ms:.1f} ms)",
        f"  accepted trigger-and-wait p50 {r.accepted_p50_ms:.0f} ms, p99 {r.accepted_p99_ms:.0f} ms"
        f" (from the workers' start: p99 {r.drain_p99_ms:.0f} ms, all in {r.drain_s:.1f} s)",
        f"  server RSS {r.rss_before_kib / 1024:.0f} -> peak {r.rss_peak_kib / 1024:.0f}"
        f" -> {r.rss_after_kib / 1024:.0f} MiB",
    ]


def log_path(tmp: Path) -> Path:
    return tmp / "server-burst.log"
