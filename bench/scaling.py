"""Issue #19: one and two server processes side by side in one run (``python -m bench --only scaling``).

PostgreSQL for state and runs, its LISTEN/NOTIFY event bus (what carries wake-ups between processes). Each
round starts ``stateport serve --workers 1`` and ``--workers 2`` (uvicorn's processes on one port, the
kernel spreading connections) one after the other, in alternating order (1, 2 then 2, 1, ...) so a trend of
the shared machine does not favour one, and measures on each fresh server:

- state GET throughput: the sweep's requests (``bench.sweep``) from ``bench.loadgen`` at ``CONCURRENCY``
  connections, with the CPU of the server's process tree, PostgreSQL, the load generator and the whole
  machine read from /proc over the measured window (``bench.procstat``);
- the 3-task chain's latency: ``bench.chain_dag`` served by one ``stateport worker`` process,
  trigger-and-wait (``Prefer: wait``) one run at a time after a warm-up; with two server processes the
  trigger, the claims and the reports land on either, so wake-ups cross processes through PostgreSQL.

The report takes medians over the rounds. Per-core efficiency is requests per second per busy core: per
core the server processes used (how much work a server core does), and per core the machine used in total
(load generator and PostgreSQL included: on a 2-core machine they share the cores with the server).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from msgspec import Struct

from bench import loadgen
from bench.procstat import CpuShare, CpuWindow, process_cpu_s
from bench.server import HOST, Server, seed
from bench.sweep import OPERATIONS, PG_URL
from bench.syncexec import Workers, register_chain
from bench.waiters import summarize

PROCESSES = (1, 2)
CONCURRENCY = 100
ROUNDS = 3


class ScalingRound(Struct, frozen=True, kw_only=True):
    """One server start: its GET point and its chain runs."""

    processes: int
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: CpuShare | None
    chain: dict[str, Any]
    chain_errors: int
    # CPU over the measured chain runs (the worker process counted apart) and how long they took.
    chain_cpu: CpuShare | None = None
    chain_window_s: float = 0.0
    # Connections to the bench's database right after the GET load (the pools at their busiest).
    pg_connections: int = 0
    # CPU seconds of the PostgreSQL backends serving the bench's database (pg_stat_activity), over the GET
    # window and over the chain's: the shared server's other databases (other people's tests) left out,
    # which the CpuShare's ``postgres`` (every postgres process) does not.
    pg_backends_get_s: float = math.nan
    pg_backends_chain_s: float = math.nan


class ScalingResult(Struct, kw_only=True):
    rounds: list[ScalingRound]
    concurrency: int
    duration_s: float
    chain_runs: int
    pool_size: int
    pg_max_connections: int
    cores: int
    # /proc/loadavg when the part started and ended: how busy the shared machine was.
    load_before: str = ""
    load_after: str = ""


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


async def _backend_pids() -> list[int] | None:
    """The PostgreSQL backends of the bench's database; None if no connection could be had for asking
    (on a shared server, other people's connections can reach max_connections)."""
    import asyncpg

    for attempt in range(5):
        try:
            conn = await asyncpg.connect(PG_URL, timeout=5)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return [int(r["pid"]) for r in rows]
        finally:
            await conn.close()
    return None


class Backends:
    """CPU time of the PostgreSQL backends of the bench's database over a window (a backend that started
    inside it counts from zero); NaN when they could not be listed at either end."""

    def __init__(self) -> None:
        self._start: dict[int, float] | None = None
        self.cpu_s = math.nan

    def start(self, pids: list[int] | None) -> None:
        self._start = None if pids is None else {pid: process_cpu_s(pid) for pid in pids}

    def end(self, pids: list[int] | None) -> None:
        if pids is None or self._start is None:
            self.cpu_s = math.nan
            return
        self.cpu_s = sum(max(process_cpu_s(pid) - self._start.get(pid, 0.0), 0.0) for pid in pids)


async def _pg_connections() -> int:
    pids = await _backend_pids()
    return -1 if pids is None else len(pids)


async def _pg_max_connections() -> int:
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


async def _chain(
    base_url: str, token: str, cpu: CpuWindow, backends: Backends, *, prefix: str, runs: int, warmup: int
) -> tuple[list[float], int, float]:
    """Trigger-and-wait ``warmup + runs`` chain runs one at a time, ``cpu`` sampled around the measured
    ones; their latencies (ms), the errors, the measured window (s)."""
    from bench.chain_dag import DAG_ID
    from stateport.client import AsyncStateportClient

    latencies: list[float] = []
    errors = 0
    started = 0.0
    async with AsyncStateportClient(base_url, token, timeout=30) as client:
        for i in range(warmup + runs):
            if i == warmup:
                cpu.start([os.getpid()])
                backends.start(await _backend_pids())
                started = time.monotonic()
            t0 = time.monotonic()
            try:
                outcome = await client.run(DAG_ID, run_id=f"{prefix}{i:05d}", timeout=10)
            except Exception:  # noqa: BLE001 - counted
                errors += i >= warmup
                continue
            elapsed = (time.monotonic() - t0) * 1000
            if i < warmup:
                continue
            if outcome.result != 3:
                errors += 1
            else:
                latencies.append(elapsed)
    cpu.end()
    backends.end(await _backend_pids())
    return latencies, errors, time.monotonic() - started


def measure(
    *,
    jwt_secret: str,
    tmp: Path,
    duration_s: float,
    warmup_s: float,
    client_processes: int,
    chain_runs: int,
    rounds: int,
    pool_size: int,
    recreate_database: Callable[[], Coroutine[Any, Any, None]],
    quiet: Callable[[], None],
    log: Callable[[str], None],
    run: Callable[[Any], Any],
) -> ScalingResult:
    """Every round's points (see the module's docstring); ``run`` runs a coroutine on the bench's loop."""
    load_before = _loadavg()
    env = {
        "STATEPORT_DATA_DIR": str(tmp / "data"),
        "STATEPORT_DATABASE_URL": PG_URL,
        "STATEPORT_EVENTS_BACKEND": "postgres",
        "STATEPORT_JWT_SECRET": jwt_secret,
    }
    asyncio.run(recreate_database())
    token = asyncio.run(register_chain(env))
    targets = asyncio.run(seed(env, runs=8, tasks=4, keys=8))
    get = next(o for o in OPERATIONS if o.name == "get")
    base = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    out: list[ScalingRound] = []
    for r in range(rounds):
        for count in PROCESSES if r % 2 == 0 else tuple(reversed(PROCESSES)):
            server = Server({**base, **env}, tmp / f"server-{count}-{r}.log", workers=count)
            server.start()
            base_url = f"http://{HOST}:{server.port}"
            try:
                quiet()
                cpu = CpuWindow(server.pid)
                spec = loadgen.LoadSpec(
                    host=HOST,
                    port=server.port,
                    requests=get.requests(targets, server.port),
                    connections=CONCURRENCY,
                    duration_s=duration_s,
                    warmup_s=warmup_s,
                    processes=client_processes,
                )
                get_backends = Backends()

                def window_start(
                    client_pids: list[int], cpu: CpuWindow = cpu, backends: Backends = get_backends
                ) -> None:
                    cpu.start(client_pids)
                    backends.start(asyncio.run(_backend_pids()))

                def window_end(cpu: CpuWindow = cpu, backends: Backends = get_backends) -> None:
                    cpu.end()
                    backends.end(asyncio.run(_backend_pids()))

                s = loadgen.run_load(spec, on_start=window_start, on_end=window_end)
                pg_connections = asyncio.run(_pg_connections())
                workers = Workers(base_url, token, 1, concurrency=4, log_path=None)
                chain_cpu = CpuWindow(server.pid, workers.pids)
                chain_backends = Backends()
                try:
                    latencies, chain_errors, chain_window_s = run(
                        _chain(
                            base_url,
                            token,
                            chain_cpu,
                            chain_backends,
                            prefix=f"scale{count}r{r}_",
                            runs=chain_runs,
                            warmup=10,
                        )
                    )
                finally:
                    workers.stop()
            finally:
                server.stop()
            point = ScalingRound(
                processes=count,
                round=r,
                requests_per_s=s.requests_per_s,
                p50_ms=s.p50_ms,
                p99_ms=s.p99_ms,
                errors=s.errors,
                cpu=cpu.result,
                chain=summarize(latencies),
                chain_errors=chain_errors,
                chain_cpu=chain_cpu.result,
                chain_window_s=chain_window_s,
                pg_connections=pg_connections,
                pg_backends_get_s=get_backends.cpu_s,
                pg_backends_chain_s=chain_backends.cpu_s,
            )
            out.append(point)
            c = point.cpu
            cpu_text = (
                f" cpu srv {c.server:.0f}% pg {c.postgres:.0f}% cli {c.client:.0f}% other {c.other:.0f}%"
                if c
                else ""
            )
            log(
                f"  round {r + 1}, {count} server process(es): GET {s.requests_per_s:,.0f} req/s"
                f" p99 {s.p99_ms:.1f} ms errors {s.errors}{cpu_text} pg connections {pg_connections};"
                f" chain p50 {point.chain['p50_ms']:.1f} p99 {point.chain['p99_ms']:.1f} ms"
                f" errors {chain_errors}"
            )
    return ScalingResult(
        rounds=out,
        concurrency=CONCURRENCY,
        duration_s=duration_s,
        chain_runs=chain_runs,
        pool_size=pool_size,
        pg_max_connections=asyncio.run(_pg_max_connections()),
        cores=os.cpu_count() or 1,
        load_before=load_before,
        load_after=_loadavg(),
    )
