"""Synchronous execution under load (issue #5): many waiters on one server, and a 3-task chain end to end.

- ``waiters``: N runs of a one-task DAG, W long-polls on them held open by a client process
  (``bench.waiters``), the server's memory and PostgreSQL connections while they wait, then a worker here
  claims and reports every task over HTTP and each waiter's wake latency is its answer's arrival minus its
  run's report (the report call's return in the worker).
- ``chain``: ``bench.chain_dag`` (a -> b -> c) served by ``stateport worker`` processes: trigger-and-wait
  one run at a time with one worker (latency, and where the time goes from the tasks' start times), then
  runs completed per second with four workers and enough concurrent triggering clients to keep them busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import time
import uuid
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

from bench import loadgen
from bench.loadgen import build_request
from bench.procstat import CpuShare, CpuWindow
from bench.server import HOST, Server, http_status, stateport_command
from bench.services import PgConnections, PgProbe, mint_api_token, nofile_limit, rss_kib
from bench.waiters import (
    Holder,
    HoldSpec,
    RawConnection,
    cdf_points,
    outcome_requests,
    summarize,
    wait_requests,
    wake_latencies,
)
from stateport.bootstrap import open_services
from stateport.config import load_settings
from stateport.domain.models import DagSpec, TaskSpec

ROOT = Path(__file__).resolve().parent.parent
# The Airflow wait endpoint (GET .../dagRuns/{run_id}/wait) re-reads the run from the database once per
# waiter per ``interval``; 1 s is the interval its docs and clients use.
AIRFLOW_INTERVAL_S = 1.0


# --- results ---------------------------------------------------------------------------------------------


class PgSummary(Struct, frozen=True, kw_only=True):
    """The most connections seen over a phase's samples (each sample is one pg_stat_activity read)."""

    samples: int
    pool_total_max: int
    pool_busy_max: int
    listener_total_max: int
    listener_busy_max: int


def pg_summary(samples: list[PgConnections]) -> PgSummary:
    return PgSummary(
        samples=len(samples),
        pool_total_max=max((s.pool_total for s in samples), default=0),
        pool_busy_max=max((s.pool_busy for s in samples), default=0),
        listener_total_max=max((s.listener_total for s in samples), default=0),
        listener_busy_max=max((s.listener_busy for s in samples), default=0),
    )


class WaitersResult(Struct, kw_only=True):
    runs: int
    per_run: int
    waiters: int
    # Of ``waiters``: on the NDJSON wait stream (the rest long-poll /outcome), and how many of each kind
    # got an answer saying "success".
    stream_waiters: int = 0
    outcome_success: int = 0
    stream_success: int = 0
    # The client processes and the source address each bound its connections to.
    client_sources: list[str] = msgspec.field(default_factory=list)
    opened: int
    connect_errors: int
    open_s: float
    answered_200: int
    success_bodies: int
    statuses: dict[int, int]
    rss_before_kib: int
    rss_after_kib: int
    rss_per_waiter_kib: float
    nofile_server: int
    nofile_client: int
    pool_size: int
    pg_waiting: PgSummary
    pg_waking: PgSummary
    idle_window_s: float
    idle_cpu: CpuShare | None
    # Transactions per second in the server's database while the waiters waited (pg_stat_database).
    idle_db_xact_per_s: float = 0.0
    report_concurrency: int
    reports_s: float
    report_errors: int
    wake: dict[str, Any]
    wake_from_report_start: dict[str, Any]
    answered_before_report_returned: int
    wake_cpu: CpuShare | None
    cdf: list[tuple[float, float]]
    airflow_interval_s: float = AIRFLOW_INTERVAL_S


class PutPoint(Struct, frozen=True, kw_only=True):
    """A short state PUT load point on the chain's server (bench.loadgen)."""

    concurrency: int
    p50_ms: float
    requests_per_s: float
    errors: int


class ChainLatencyResult(Struct, kw_only=True):
    runs: int
    warmup: int
    worker_concurrency: int
    errors: int
    latency: dict[str, Any]
    # Stage name -> summary (ms): trigger -> a starts, a -> b, b -> c, c starts -> answer received.
    stages: dict[str, dict[str, Any]]
    cpu: CpuShare | None
    db_stages: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # The yardstick (issue #15): a state PUT at concurrency 1 on the same server, measured just before and
    # just after the chain's runs (bench.loadgen, one connection); p50 ms and req/s of each.
    put_c1: list[PutPoint] = msgspec.field(default_factory=list)

    @property
    def put_c1_p50_ms(self) -> float:
        """The yardstick: the mean of the PUT p50s measured around the runs (nan when not measured)."""
        if not self.put_c1:
            return math.nan
        return sum(p.p50_ms for p in self.put_c1) / len(self.put_c1)

    @property
    def ratio(self) -> float:
        """Chain p50 / c=1 PUT p50, both measured in this run."""
        put = self.put_c1_p50_ms
        return self.latency["p50_ms"] / put if put and not math.isnan(put) and self.latency["n"] else math.nan


class EngineThroughputResult(Struct, kw_only=True):
    """Task instances claimed, run and reported end to end by ``workers`` processes, from runs queued ahead
    (bench.chain_dag's wide DAG): the engine's rate, from the server's own timestamps."""

    workers: int
    worker_concurrency: int
    runs: int
    task_instances: int
    completed: int
    # First claim (started_at) to last report applied (ended_at), server clock.
    window_s: float
    tis_per_s: float
    # State PUTs on the same server in the same run, just before (see PutPoint).
    put: PutPoint | None
    cpu: CpuShare | None


class ChainThroughputResult(Struct, kw_only=True):
    workers: int
    worker_concurrency: int
    clients: int
    window_s: float
    completed: int
    runs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    statuses: dict[int, int]
    transport_errors: dict[str, int]
    cpu: CpuShare | None
    # a -> b and b -> c from the tasks' start marks of every run that ran all three (warm-up included).
    stages: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # The same runs from the server's timestamps (bench.syncexec.db_stages).
    db_stages: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


def task_gaps(marks: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """a -> b and b -> c (ms) over every run whose three tasks started."""
    ab = [(m["b"] - m["a"]) * 1000 for m in marks.values() if {"a", "b", "c"} <= m.keys()]
    bc = [(m["c"] - m["b"]) * 1000 for m in marks.values() if {"a", "b", "c"} <= m.keys()]
    return {"a starts -> b starts": summarize(ab), "b starts -> c starts": summarize(bc)}


DB_STAGES = (
    ("trigger committed -> a claimed", "cr", "a_s"),
    ("a claimed -> a reported", "a_s", "a_e"),
    ("a reported -> b claimed", "a_e", "b_s"),
    ("b claimed -> b reported", "b_s", "b_e"),
    ("b reported -> c claimed", "b_e", "c_s"),
    ("c claimed -> c reported", "c_s", "c_e"),
)


async def db_stages(dsn: str, *, like: str, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Where a chain run's time went, from the server's own timestamps (runs whose id matches ``like``).

    ``created_at`` of the run, ``started_at`` (claimed) and ``ended_at`` (report applied) of each task
    instance, all written by the one server process with one clock.
    """
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings={"application_name": "stateport-bench-probe"})
    try:
        rows = await conn.fetch(
            "SELECT r.run_id, r.created_at_us AS cr, ti.task_id, ti.started_at_us, ti.ended_at_us"
            " FROM dag_runs r JOIN task_instances ti USING (dag_id, run_id) WHERE r.run_id LIKE $1",
            like,
        )
    finally:
        await conn.close()
    runs: dict[str, dict[str, float]] = {}
    for row in rows:
        if only is not None and row["run_id"] not in only:
            continue
        run = runs.setdefault(row["run_id"], {"cr": row["cr"]})
        if row["started_at_us"] is not None:
            run[f"{row['task_id']}_s"] = row["started_at_us"]
        if row["ended_at_us"] is not None:
            run[f"{row['task_id']}_e"] = row["ended_at_us"]
    out = {}
    for name, start, end in DB_STAGES:
        values = [(r[end] - r[start]) / 1000 for r in runs.values() if start in r and end in r]
        out[name] = summarize(values)
    return out


# --- waiters ---------------------------------------------------------------------------------------------


async def prepare_waiters(env: dict[str, str], runs: int) -> tuple[str, list[str], str]:
    """Register a one-task DAG and trigger ``runs`` runs of it in-process; (dag_id, run_ids, API token)."""
    services = await open_services(load_settings(environ=env), migrate=True)
    try:
        dag_id = f"bench_wait_{uuid.uuid4().hex[:8]}"
        await services.runs.register_dag(dag_id, DagSpec(tasks=[TaskSpec(task_id="t")], result_task="t"))
        gate = asyncio.Semaphore(10)
        run_ids = [f"w{i:05d}" for i in range(runs)]

        async def one(run_id: str) -> None:
            async with gate:
                await services.runs.trigger(dag_id, run_id=run_id)

        await asyncio.gather(*(one(r) for r in run_ids))
    finally:
        await services.close()
    token = await mint_api_token(env, "runs:read worker")
    return dag_id, run_ids, token


async def _claim_all(client: Any, runs: int) -> list[Any]:
    claimed: list[Any] = []
    idle = 0
    while len(claimed) < runs and idle < 3:
        got = await client.claim("bench-waiters", ["default"], max_tasks=100, wait_s=2)
        idle = 0 if got else idle + 1
        claimed += got
    return claimed


# Connections per client process: under its open-files limit (20,000 hard here) and the ~28,000 ephemeral
# ports of its source address.
PER_CLIENT = 15_000
# Task instances claimed, then reported, at a time (well within a lease).
CLAIM_ROUND = 2_000


def waiter_requests(
    port: int, dag_id: str, run_ids: list[str], per_run: int, token: str, stream_share: float
) -> tuple[list[bytes], set[int]]:
    """Every waiter's request, waiter i on run i % runs; every round(1 / stream_share)-th waiter is on the
    wait stream, the others long-poll the outcome. The indices of the stream waiters."""
    outcome = outcome_requests(HOST, port, dag_id, run_ids, per_run, token, 300)
    if stream_share <= 0:
        return outcome, set()
    stream = wait_requests(HOST, port, dag_id, run_ids, per_run, token)
    every = max(1, round(1 / stream_share))
    streams = set(range(0, len(outcome), every))
    return [stream[i] if i in streams else r for i, r in enumerate(outcome)], streams


async def measure_waiters(
    env: dict[str, str],
    server: Server,
    dag_id: str,
    run_ids: list[str],
    token: str,
    *,
    per_run: int,
    report_concurrency: int,
    idle_s: float,
    stream_share: float = 0.0,
    pg_dsn: str,
    pg_database: str,
    log: Any,
) -> WaitersResult:
    from stateport.worker.client import WorkerClient

    assert server.pid is not None
    base_url = f"http://{HOST}:{server.port}"
    index = {r: i for i, r in enumerate(run_ids)}
    # Warm the route once (imports, caches) so the memory baseline is the idle server, not a cold one.
    http_status(
        server.port,
        f"/api/v2/dags/{dag_id}/dagRuns/{run_ids[0]}/outcome?timeout=0",
        headers={"Authorization": f"Bearer {token}"},
    )
    await asyncio.sleep(1.0)
    rss_before = rss_kib(server.pid)
    requests, streams = waiter_requests(server.port, dag_id, run_ids, per_run, token, stream_share)
    # One client process per source address: each holds at most PER_CLIENT connections, within its own
    # open-files limit and the ~28,000 ports the kernel gives one source address.
    chunks = [requests[i : i + PER_CLIENT] for i in range(0, len(requests), PER_CLIENT)]
    sources = [f"127.0.0.{2 + i}" for i in range(len(chunks))]
    holders = [
        Holder(HoldSpec(host=HOST, port=server.port, requests=c, source=src, deadline_s=240))
        for c, src in zip(chunks, sources, strict=True)
    ]
    probe = PgProbe(pg_dsn, pg_database)
    try:
        opened = connect_errors = 0
        open_s = 0.0
        for holder in holders:
            o, e, t = await asyncio.to_thread(holder.wait_opened, 600)
            opened, connect_errors, open_s = opened + o, connect_errors + e, max(open_s, t)
        client_pids = [h.pid for h in holders]
        log(f"  {opened:,} waiters open in {open_s:.1f} s ({connect_errors} connect errors); settling")
        # The last requests need a moment to reach their handlers; then the server idles with them open.
        await asyncio.sleep(3.0)
        rss_after = rss_kib(server.pid)
        idle = CpuWindow(server.pid)
        idle.start(client_pids)
        stop = asyncio.Event()
        xact0 = await probe.transactions()
        sampler = asyncio.create_task(probe.run(stop, every_s=0.2))
        await asyncio.sleep(idle_s)
        stop.set()
        await sampler
        idle.end()
        # pg_stat_database is refreshed by backends at most every PGSTAT_MIN_INTERVAL (1 s) after a
        # transaction: read it after that, in a fresh snapshot (a new transaction of the probe).
        await asyncio.sleep(1.2)
        idle_xact_per_s = (await probe.transactions() - xact0) / idle_s
        waiting = pg_summary(probe.samples)
        probe.samples.clear()
        log(
            f"  RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB; pool busy max"
            f" {waiting.pool_busy_max}/{waiting.pool_total_max}, listener {waiting.listener_total_max};"
            f" server CPU idle-waiting {idle.result.server if idle.result else 0:.0f}%"
        )
        log(f"  claiming and reporting {len(run_ids):,} task instances, {report_concurrency} reports at once")
        reported_at: dict[int, float] = {}
        report_started: dict[int, float] = {}
        errors = 0
        queue: list[Any] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(probe.run(stop, every_s=0.1))
        wake_cpu = CpuWindow(server.pid)
        wake_cpu.start([*client_pids, os.getpid()])
        body = b'{"state": "success", "result": {"ok": true}}'

        async def reporter() -> None:
            nonlocal errors
            conn = await RawConnection.open(HOST, server.port)
            try:
                while queue:
                    task = queue.pop()
                    i = index[task.run_id]
                    raw = build_request(
                        "PATCH",
                        f"/execution/task-instances/{task.id}/state",
                        host=HOST,
                        port=server.port,
                        headers={"Authorization": f"Bearer {task.token}", "Content-Type": "application/json"},
                        body=body,
                    )
                    report_started[i] = time.monotonic()
                    status, answer = await conn.request(raw)
                    if status != 204:
                        errors += 1
                        if errors <= 5:
                            log(f"  report answered {status}: {answer[:200]!r}")
                        continue
                    reported_at[i] = time.monotonic()
            finally:
                await conn.close()

        # Claimed and reported a round at a time: claiming all 100,000 first outlasts their leases.
        reports_s = 0.0
        claimed = 0
        async with WorkerClient.create(base_url, token, timeout_s=30) as client:
            while claimed < len(run_ids):
                batch = await _claim_all(client, min(CLAIM_ROUND, len(run_ids) - claimed))
                if not batch:
                    break
                claimed += len(batch)
                queue = list(reversed(batch))
                t0 = time.monotonic()
                await asyncio.gather(*(reporter() for _ in range(report_concurrency)))
                reports_s += time.monotonic() - t0
        log(f"  reported {claimed:,} task instances, {errors} errors")
        holds = [await asyncio.to_thread(h.result, 300) for h in holders]
        wake_cpu.end()
        stop.set()
        await sampler
        waking = pg_summary(probe.samples)
    finally:
        await probe.close()
        for holder in holders:
            holder.close()
    done_at = array("d")
    status = array("H")
    success = array("B")
    for hold in holds:
        done_at.frombytes(hold.done_at)
        status.frombytes(hold.status)
        success.frombytes(hold.success)
    stream_success = sum(success[i] for i in range(len(requests)) if i in streams)
    run_of_waiter = [i % len(run_ids) for i in range(len(requests))]
    wake = wake_latencies(done_at, run_of_waiter, reported_at)
    from_start = wake_latencies(done_at, run_of_waiter, report_started)
    statuses = Counter(status)
    return WaitersResult(
        runs=len(run_ids),
        per_run=per_run,
        waiters=len(requests),
        stream_waiters=len(streams),
        outcome_success=sum(success) - stream_success,
        stream_success=stream_success,
        client_sources=sources,
        opened=opened,
        connect_errors=connect_errors,
        open_s=open_s,
        answered_200=statuses.get(200, 0),
        success_bodies=sum(h.success_body for h in holds),
        statuses={int(k): v for k, v in sorted(statuses.items())},
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        rss_per_waiter_kib=(rss_after - rss_before) / max(opened, 1),
        nofile_server=nofile_limit(server.pid),
        nofile_client=min(h.nofile for h in holds),
        pool_size=load_settings(environ=env).db_pool_size,
        pg_waiting=waiting,
        pg_waking=waking,
        idle_window_s=idle_s,
        idle_cpu=idle.result,
        idle_db_xact_per_s=idle_xact_per_s,
        report_concurrency=report_concurrency,
        reports_s=reports_s,
        report_errors=errors,
        wake=summarize(wake),
        wake_from_report_start=summarize(from_start),
        answered_before_report_returned=sum(1 for v in wake if v < 0),
        wake_cpu=wake_cpu.result,
        cdf=cdf_points(wake),
    )


# --- the chain -------------------------------------------------------------------------------------------


async def register_chain(env: dict[str, str]) -> str:
    """Register bench.chain_dag's DAG in-process (migrating the database); an API token for the rest."""
    from bench.chain_dag import DAG_ID, dag

    services = await open_services(load_settings(environ=env), migrate=True)
    try:
        await services.runs.register_dag(DAG_ID, dag.spec())
    finally:
        await services.close()
    return await mint_api_token(env, "runs:read runs:write worker")


class Workers:
    """``stateport worker bench.chain_dag`` processes."""

    def __init__(
        self,
        base_url: str,
        token: str,
        count: int,
        *,
        concurrency: int,
        log_path: Path | None,
        module: str = "bench.chain_dag",
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        if log_path is not None:
            env["BENCH_CHAIN_LOG"] = str(log_path)
        cmd = [*stateport_command(), "worker", module, "--url", base_url, "--token", token]
        cmd += ["--concurrency", str(concurrency), "--app-dir", str(ROOT), "--log-level", "warning"]
        self.concurrency = concurrency
        self.procs = [subprocess.Popen(cmd, env=env) for _ in range(count)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _stages(
    marks: dict[str, dict[str, float]], sent: dict[str, float], answered: dict[str, float]
) -> dict[str, dict[str, Any]]:
    cols: dict[str, list[float]] = {
        "trigger sent -> a starts": [],
        "a starts -> b starts": [],
        "b starts -> c starts": [],
        "c starts -> answer received": [],
    }
    for run_id, t_sent in sent.items():
        m = marks.get(run_id, {})
        if {"a", "b", "c"} <= m.keys() and run_id in answered:
            cols["trigger sent -> a starts"].append((m["a"] - t_sent) * 1000)
            cols["a starts -> b starts"].append((m["b"] - m["a"]) * 1000)
            cols["b starts -> c starts"].append((m["c"] - m["b"]) * 1000)
            cols["c starts -> answer received"].append((answered[run_id] - m["c"]) * 1000)
    return {k: summarize(v) for k, v in cols.items()}


def read_marks(path: Path) -> dict[str, dict[str, float]]:
    """The tasks' start times from bench.chain_dag's log: run_id -> task_id -> monotonic s."""
    marks: dict[str, dict[str, float]] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            t, run_id, task = line.split()
            marks.setdefault(run_id, {})[task] = float(t)
    return marks


async def measure_chain_latency(
    base_url: str,
    token: str,
    *,
    runs: int,
    warmup: int,
    worker_concurrency: int,
    log_path: Path,
    server_pid: int,
    worker_pids: list[int],
) -> ChainLatencyResult:
    """Trigger-and-wait one run at a time: the client SDK's ``run`` (``Prefer: wait``)."""
    from bench.chain_dag import DAG_ID
    from stateport.client import AsyncStateportClient

    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    latencies: list[float] = []
    errors = 0
    cpu = CpuWindow(server_pid, worker_pids)
    async with AsyncStateportClient(base_url, token, timeout=30) as client:
        for i in range(warmup + runs):
            if i == warmup:
                cpu.start([os.getpid()])
            run_id = f"lat_{i:05d}"
            t0 = time.monotonic()
            try:
                outcome = await client.run(DAG_ID, run_id=run_id, timeout=10)
            except Exception:  # noqa: BLE001 - counted
                errors += i >= warmup
                continue
            t1 = time.monotonic()
            if i < warmup:
                continue
            if outcome.result != 3:
                errors += 1
                continue
            sent[run_id], answered[run_id] = t0, t1
            latencies.append((t1 - t0) * 1000)
    cpu.end()
    return ChainLatencyResult(
        runs=runs,
        warmup=warmup,
        worker_concurrency=worker_concurrency,
        errors=errors,
        latency=summarize(latencies),
        stages=_stages(read_marks(log_path), sent, answered),
        cpu=cpu.result,
    )


def measure_put(port: int, targets: list[Any], *, concurrency: int, duration_s: float) -> PutPoint:
    """State PUTs (the sweep's requests) at ``concurrency`` on the chain's server: the yardstick."""
    from bench.sweep import OPERATIONS

    op = next(o for o in OPERATIONS if o.name == "put")
    spec = loadgen.LoadSpec(
        host=HOST,
        port=port,
        requests=op.requests(targets, port),
        connections=concurrency,
        duration_s=duration_s,
        warmup_s=0.5,
        processes=1,
        timeout_s=10.0,
    )
    s = loadgen.run_load(spec)
    return PutPoint(
        concurrency=concurrency,
        p50_ms=s.p50_ms,
        requests_per_s=s.ok / s.window_s if s.window_s else math.nan,
        errors=s.errors,
    )


async def queue_wide_runs(env: dict[str, str], prefix: str, runs: int) -> None:
    """Register bench.chain_dag's wide DAG and trigger ``runs`` runs of it in-process (queued, no worker)."""
    from bench.chain_dag import WIDE_DAG_ID, wide

    services = await open_services(load_settings(environ=env), migrate=True)
    try:
        await services.runs.register_dag(WIDE_DAG_ID, wide.spec())
        gate = asyncio.Semaphore(10)

        async def one(i: int) -> None:
            async with gate:
                await services.runs.trigger(WIDE_DAG_ID, run_id=f"{prefix}{i:05d}")

        await asyncio.gather(*(one(i) for i in range(runs)))
    finally:
        await services.close()


async def drained(dsn: str, prefix: str, expected: int, timeout_s: float) -> tuple[int, float]:
    """Wait until ``expected`` task instances of the runs named ``prefix*`` succeeded (or the timeout);
    (how many did, first claim to last report in s, server clock)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings={"application_name": "stateport-bench-probe"})
    try:
        deadline = time.monotonic() + timeout_s
        query = (
            "SELECT count(*) FILTER (WHERE state = 'success') AS done, min(started_at_us) AS first,"
            " max(ended_at_us) AS last FROM task_instances WHERE run_id LIKE $1"
        )
        while True:
            row = await conn.fetchrow(query, prefix + "%")
            if row["done"] >= expected or time.monotonic() > deadline:
                window = ((row["last"] or 0) - (row["first"] or 0)) / 1e6
                return int(row["done"]), window
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def measure_engine_throughput(
    env: dict[str, str],
    base_url: str,
    token: str,
    *,
    workers: int,
    concurrency: int,
    runs: int,
    dsn: str,
    server_pid: int,
    put: PutPoint | None,
) -> EngineThroughputResult:
    """``runs`` runs of the wide DAG queued first, then ``workers`` processes drain them."""
    from bench.chain_dag import WIDE_TASKS

    prefix = f"wide{workers}_"
    asyncio.run(queue_wide_runs(env, prefix, runs))
    expected = runs * WIDE_TASKS
    procs = Workers(base_url, token, workers, concurrency=concurrency, log_path=None)
    cpu = CpuWindow(server_pid, procs.pids)
    try:
        cpu.start([])
        done, window = asyncio.run(drained(dsn, prefix, expected, timeout_s=120))
        cpu.end()
    finally:
        procs.stop()
    return EngineThroughputResult(
        workers=workers,
        worker_concurrency=concurrency,
        runs=runs,
        task_instances=expected,
        completed=done,
        window_s=window,
        tis_per_s=done / window if window > 0 else math.nan,
        put=put,
        cpu=cpu.result,
    )


def measure_chain_throughput(
    port: int,
    token: str,
    *,
    workers: Workers,
    clients: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int,
    processes: int = 1,
    log_path: Path | None = None,
) -> ChainThroughputResult:
    """Closed loop: ``clients`` connections each trigger-and-wait (``Prefer: wait=60``) again and again.

    A 200 answer to ``Prefer: wait`` carries the outcome, so a completed request is a completed run (a 202,
    after 60 s, would be counted under statuses and is longer than any window here).
    """
    from bench.chain_dag import DAG_ID

    request = loadgen.build_request(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        host=HOST,
        port=port,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Prefer": "wait=60",
        },
        body=b'{"logical_date": null, "conf": {}}',
    )
    cpu = CpuWindow(server_pid, workers.pids)
    spec = loadgen.LoadSpec(
        host=HOST,
        port=port,
        requests=(request,),
        connections=clients,
        duration_s=duration_s,
        warmup_s=warmup_s,
        processes=processes,
        timeout_s=70.0,
    )
    s = loadgen.run_load(spec, on_start=cpu.start, on_end=cpu.end)
    return ChainThroughputResult(
        workers=len(workers.procs),
        worker_concurrency=workers.concurrency,
        clients=clients,
        window_s=s.window_s,
        completed=s.ok,
        runs_per_s=s.ok / s.window_s if s.window_s else math.nan,
        p50_ms=s.p50_ms,
        p99_ms=s.p99_ms,
        max_ms=s.max_ms,
        errors=s.errors,
        statuses=s.statuses,
        transport_errors=s.transport_errors,
        cpu=cpu.result,
        stages=task_gaps(read_marks(log_path)) if log_path is not None else {},
    )
