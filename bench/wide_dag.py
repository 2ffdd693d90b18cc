"""Per-report latency on a wide DAG: ``python -m bench.wide_dag [--url URL] [--roots 100] [--tasks 10000]``.

The run core wired in this process as the server wires it (``bootstrap.wire_run_core``), on SQLite (a
file in a temporary directory, the default) or on the database ``--url`` names (migrated first; the
run is left in it). One DAG of ``--tasks`` tasks: ``--roots`` roots, every other task downstream of all of
them (the shape an outsider found taking 69 s for the roots' 100 reports). Its run's roots are claimed at
once, then reported successful one after another; each report's latency is timed, and a probe coroutine
sleeping 10 ms at a time measures how long the event loop was held meanwhile (what every other client of a
server would wait). The last report queues every downstream task: its cost follows what it changes, and is
shown apart. Garbage collection time is taken from ``gc.callbacks``.

Not a test: nothing is asserted, the figures are printed (and written as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.jwt import JwtTokenService
from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.migrations import upgrade
from stateport.adapters.sql.stores import open_run_stores
from stateport.bootstrap import wire_run_core
from stateport.domain.engine import RunCore
from stateport.domain.engine.claims import Claimed
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.reports import Success
from stateport.domain.ids import uuid7
from stateport.domain.models import DagSpec
from stateport.domain.runs import RunService

PROBE_S = 0.01
QUEUE = "bench_wide"


class WideResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one measurement found; times in milliseconds unless named in seconds."""

    roots: int
    tasks: int
    reports: int
    total_s: float
    p50_ms: float
    p90_ms: float
    max_ms: float
    # The last report, which queues every downstream task.
    last_ms: float
    # The longest the event loop was held during any report but the last, and during the last.
    loop_held_ms: float
    last_loop_held_ms: float
    gc_s: float
    gc_collections: int


class _UtcClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class _GcTime:
    """Seconds spent in garbage collection while ``counting`` (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count the collections of the block."""
        gc.callbacks.append(self._callback)
        try:
            yield
        finally:
            gc.callbacks.remove(self._callback)


def wide_spec(roots: int, tasks: int) -> DagSpec:
    """``roots`` root tasks and ``tasks - roots`` tasks each downstream of every root."""
    root_ids = [f"r{i}" for i in range(roots)]
    specs: list[dict[str, Any]] = [{"task_id": r, "queue": QUEUE} for r in root_ids]
    specs += [{"task_id": f"d{i}", "upstream": root_ids, "queue": QUEUE} for i in range(tasks - roots)]
    return msgspec.convert({"tasks": specs}, DagSpec)


async def _probe(held: list[float]) -> None:
    """Append how late each 10 ms sleep woke: the time the loop was held by something else."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(PROBE_S)
        held.append(time.perf_counter() - started - PROBE_S)


def _wire(database: Database, blobs_dir: Path) -> tuple[RunCore, RunService]:
    """The run core and the run use cases over ``database``, as ``bootstrap.open_services`` wires them."""
    stores = open_run_stores(database)
    secret = "bench-wide-" + "w" * 80
    tokens = JwtTokenService(
        algorithm="HS512",
        signing_key=secret,
        verifying_key=secret,
        kid="bench",
        task_audience="urn:airflow.apache.org:task",
        api_audience="urn:stateport:api",
    )
    clock = _UtcClock()
    core = wire_run_core(
        dags=stores.dags,
        runs=stores.runs,
        leases=stores.leases,
        events=MemoryEventBus(),
        blobs=FilesystemBlobStore(blobs_dir),
        tokens=tokens,
        clock=clock,
        config=EngineConfig(lease_s=3600.0),
    )
    runs = RunService(
        stores.dags, stores.runs, clock, plans=core.plans, advancer=core.advancer, results=core.results
    )
    return core, runs


class _Timings(msgspec.Struct, kw_only=True):
    latencies: list[float] = msgspec.field(default_factory=list)
    held: list[float] = msgspec.field(default_factory=list)
    total_s: float = 0.0


async def _report_all(core: RunCore, claimed: list[Claimed], gc_time: _GcTime) -> _Timings:
    """Report each claimed root successful, one after another, timing each and the loop meanwhile."""
    out = _Timings()
    wakes: list[float] = []
    probe = asyncio.create_task(_probe(wakes))
    try:
        with gc_time.counting():
            for c in claimed:
                started, seen = time.perf_counter(), len(wakes)
                await core.reports.report(c.ti.id, Success(result=b"1"))
                out.latencies.append(time.perf_counter() - started)
                await asyncio.sleep(PROBE_S * 2)  # the probe's wake-up that spans the report's end
                out.held.append(max(wakes[seen:], default=0.0))
    finally:
        probe.cancel()
    out.total_s = sum(out.latencies)
    return out


async def measure(url: str, blobs_dir: Path, *, roots: int, tasks: int) -> WideResult:
    """Register the wide DAG, trigger a run, claim its roots and report them one by one."""
    await upgrade(url)
    database = await Database.connect(url, pool_size=4, timeout_s=60.0)
    gc_time = _GcTime()
    try:
        core, runs = _wire(database, blobs_dir)
        dag_id = f"bench_wide_{uuid7().hex[-12:]}"
        await runs.register_dag(dag_id, wide_spec(roots, tasks))
        await runs.trigger(dag_id)
        claimed = await core.claims.claim("bench", [QUEUE], roots, 0)
        timings = await _report_all(core, claimed, gc_time)
    finally:
        await database.close()
    return _result(roots, tasks, timings, gc_time)


def _result(roots: int, tasks: int, t: _Timings, gc_time: _GcTime) -> WideResult:
    body = sorted(t.latencies[:-1]) or [0.0]
    return WideResult(
        roots=roots,
        tasks=tasks,
        reports=len(t.latencies),
        total_s=round(t.total_s, 2),
        p50_ms=round(statistics.median(body) * 1000, 1),
        p90_ms=round(body[int(len(body) * 0.9)] * 1000, 1),
        max_ms=round(body[-1] * 1000, 1),
        last_ms=round(t.latencies[-1] * 1000, 1) if t.latencies else 0.0,
        loop_held_ms=round(max(t.held[:-1], default=0.0) * 1000, 1),
        last_loop_held_ms=round(t.held[-1] * 1000, 1) if t.held else 0.0,
        gc_s=round(gc_time.seconds, 2),
        gc_collections=gc_time.collections,
    )


def describe(r: WideResult) -> str:
    return (
        f"{r.tasks:,} tasks, {r.roots} roots: {r.reports} reports in {r.total_s:.2f} s; all but the last:"
        f" p50 {r.p50_ms:.0f} ms, p90 {r.p90_ms:.0f} ms, max {r.max_ms:.0f} ms, event loop held up to"
        f" {r.loop_held_ms:.0f} ms; the last (queues {r.tasks - r.roots:,}): {r.last_ms:.0f} ms, held up to"
        f" {r.last_loop_held_ms:.0f} ms; garbage collection {r.gc_s:.2f} s in {r.gc_collections} collections"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.wide_dag", description=__doc__)
    p.add_argument("--url", help="a database URL (default: SQLite in a temporary directory)")
    p.add_argument("--roots", type=int, default=100)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-wide-") as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'stateport.db'}"
        result = asyncio.run(measure(url, Path(tmp) / "blobs", roots=args.roots, tasks=args.tasks))
    print(describe(result))
    if args.json is not None:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(result)))


if __name__ == "__main__":
    main()
