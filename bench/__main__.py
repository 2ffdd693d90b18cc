"""Run the benchmark suite: ``python -m bench [--quick] [--only sqlite,postgres,redis,s3,ceiling,...]``.

For each backend: seed data through the project's API, start one ``stateport serve`` process, sweep state
GET and PUT over the concurrency levels with our load generator and (if installed) wrk; on PostgreSQL, then
the issue's yardstick on the same data (``reference``: bench/reference_app.py, a bare Litestar + asyncpg
route, one uvicorn process with the server's options); measure ``/health/live`` under the same load, then
the ceilings without HTTP. ``direct``: worker-direct state throughput (the accessor on Redis and over REST,
next to raw redis-py). ``waiters``: 10,000 long-polls on one server process. ``chain``: a 3-task chain's
trigger-to-result latency and runs per second. ``batch``: a 10-operation state batch next to a single PUT on
PostgreSQL, server CPU per request (bench/batch.py). ``burst``: 5,000 trigger-and-waits at once against a
DAG with max_queued_runs 1,000 (bench/burst.py). ``scaling``: state GET throughput and the chain's latency
with 1 and 2 server processes, alternated rounds (bench/scaling.py). ``alternated``: state GET on
PostgreSQL, on Redis and on the bare route, servers side by side, alternated rounds (bench/alternated.py;
issue #15 items 1 and 3). Finally write docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import os
import platform
import secrets
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import alternated, batch, burst, ceiling, direct, loadgen, report, scaling, syncexec, watchers, wrk
from bench.procstat import CpuWindow, wait_quiet
from bench.results import REFERENCE, Point, Results, load_json
from bench.server import HOST, SERVER_NOFILE, ReferenceServer, Server, Target, expect_200, raise_nofile, seed
from bench.services import delete_redis_prefix, nofile_limit, time_wait_to
from bench.sweep import (
    BACKENDS,
    CONCURRENCY,
    HEALTH_PATH,
    OPERATIONS,
    PG_DATABASE,
    PG_HOST,
    PG_PORT,
    PG_URL,
    PG_USER,
    QUICK_CONCURRENCY,
    REDIS_URL,
    REFERENCE_OPERATIONS,
    Backend,
)
from stateport.config import Settings, load_settings
from stateport.domain.seats import DEFAULT_LIMIT
from stateport.fds import RESERVED_FDS

ROOT = Path(__file__).resolve().parent.parent
SEED_RUNS, SEED_TASKS, SEED_KEYS = 8, 4, 8  # 32 task instances x 8 keys


def _log(message: str) -> None:
    print(f"[bench {dt.datetime.now(dt.UTC).strftime('%H:%M:%S')}] {message}", flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    names = [b.name for b in BACKENDS]
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short points, concurrency 50 and 100 only")
    p.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(names)}, {', '.join(EXTRA_PARTS)}"
    )
    p.add_argument("--duration", type=float, help="measured seconds per point (default 10, quick 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2, quick 1)")
    p.add_argument("--concurrency", help="comma-separated levels (default 50,100,200,400)")
    p.add_argument("--processes", type=int, default=2, help="load generator processes / wrk threads")
    p.add_argument("--no-wrk", action="store_true", help="skip wrk even when installed")
    p.add_argument(
        "--noise", type=float, default=30.0, help="re-measure a point once when other CPU > this %%"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each point, wait up to this many seconds for the machine to be idle (0: never)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the markdown and plots from results.json, measure nothing",
    )
    p.add_argument("--waiters", type=int, help="concurrent waiters (default 100000, quick 300)")
    p.add_argument(
        "--waiters-stream-share",
        type=float,
        default=0.2,
        help="the share of the waiters on the NDJSON wait stream (the rest long-poll /outcome)",
    )
    p.add_argument("--waiters-per-run", type=int, default=1, help="waiters per run (runs = waiters / this)")
    p.add_argument("--report-concurrency", type=int, default=8, help="the waiters' worker: reports at once")
    p.add_argument("--watchers", type=int, help="state key watchers (default 10000, quick 300)")
    p.add_argument("--watch-keys", type=int, help="keys the watchers share (default 100, quick 10)")
    p.add_argument("--chain-runs", type=int, help="chain latency: measured runs (default 200, quick 20)")
    p.add_argument("--chain-clients", type=int, default=32, help="chain throughput: triggering clients")
    p.add_argument(
        "--server-env",
        default="",
        help="extra STATEPORT_* variables for the waiters/chain server, e.g. STATEPORT_CLAIM_RECHECK_S=0.1",
    )
    p.add_argument("--scaling-rounds", type=int, default=scaling.ROUNDS, help="scaling: rounds (medians)")
    p.add_argument(
        "--alternated-rounds", type=int, default=alternated.ROUNDS, help="alternated: rounds (medians)"
    )
    p.add_argument("--direct-concurrency", help="worker-direct coroutines (default 10,100; quick 100)")
    p.add_argument("--out", type=Path, help="docs directory to write (default docs/, quick: a temp dir)")
    return p.parse_args(argv)


def _versions() -> dict[str, str]:
    out = {}
    for dist in (
        "litestar",
        "msgspec",
        "asyncpg",
        "uvicorn",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "aiosqlite",
        "redis",
        "boto3",
        "moto",
        "httpx",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _os() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))}, kernel {platform.release()}"
    except OSError:
        pass
    return platform.platform()


async def _postgres_version() -> str:
    import asyncpg

    try:
        conn = await asyncpg.connect(user=PG_USER, host=PG_HOST, port=PG_PORT, database="postgres", timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"unreachable ({exc})"
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


async def _redis_version() -> str:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        info = await client.info("server")
        return str(info.get("redis_version", "unknown"))
    except (OSError, redis.RedisError) as exc:
        return f"unreachable ({exc})"
    finally:
        await client.aclose()


async def _recreate_pg_database() -> None:
    """Drop and create the bench's own database, so every run starts from the same empty tables."""
    import asyncpg

    conn = await asyncpg.connect(user=PG_USER, host=PG_HOST, port=PG_PORT, database="postgres", timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        await conn.close()


def environment(args: argparse.Namespace, started: dt.datetime) -> dict[str, str]:
    v = _versions()
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{_cpu_model()}, {os.cpu_count()} cores",
        "memory": _memory(),
        "OS": _os(),
        "Python": platform.python_version(),
        "litestar / msgspec": f"{v['litestar']} / {v['msgspec']}",
        "uvicorn / uvloop / httptools": f"{v['uvicorn']} / {v['uvloop']} / {v['httptools']}",
        "asyncpg / SQLAlchemy (statements compiled once) / aiosqlite": (
            f"{v['asyncpg']} / {v['sqlalchemy']} / {v['aiosqlite']}"
        ),
        "PostgreSQL": asyncio.run(_postgres_version()),
        "Redis server / redis-py": f"{asyncio.run(_redis_version())} / {v['redis']}",
        "boto3 / moto (S3 mock) / httpx": f"{v['boto3']} / {v['moto']} / {v['httpx']}",
        "SQLite": sqlite3.sqlite_version,
        "wrk": wrk.version() if not args.no_wrk else "disabled (--no-wrk)",
        "machine": "shared: other work (other test runs) may run during the benchmark; see 'other' CPU",
    }


class Suite:
    """One run of the suite; collects points into ``results``."""

    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        self.args = args
        self.results = results
        self.duration: float = results.settings["duration_s"]
        self.warmup: float = results.settings["warmup_s"]
        self.levels: list[int] = results.settings["concurrency"]
        self.use_wrk = not args.no_wrk and wrk.available() is not None

    def _quiet(self) -> None:
        if self.args.quiet_wait <= 0:
            return
        waited, busy = wait_quiet(self.args.noise, self.args.quiet_wait)
        if waited >= 1.5:
            _log(f"  waited {waited:.0f} s for the machine to calm down (now {busy:.0f}% busy)")

    def _measure(self, run: Callable[[CpuWindow], Point], server_pid: int | None) -> Point:
        """Measure a point; once more if other work took a large share of the CPU, keeping the quieter one."""
        self._quiet()
        first = run(CpuWindow(server_pid))
        if first.cpu is None or first.cpu.other <= self.args.noise:
            return first
        _log(f"  other processes used {first.cpu.other:.0f}% CPU during the point: measuring it again")
        self._quiet()
        second = run(CpuWindow(server_pid))
        assert second.cpu is not None
        kept, dropped = (second, first) if second.cpu.other < first.cpu.other else (first, second)
        note = (
            f"measured twice (other CPU {first.cpu.other:.0f}% then {second.cpu.other:.0f}%); kept the"
            f" quieter one; the other gave {dropped.requests_per_s:,.0f} req/s, p99 {dropped.p99_ms:.1f} ms"
        )
        return _replace(kept, attempts=2, note=note)

    def point(self, backend: str, op: str, requests: tuple[bytes, ...], server: Server, c: int) -> None:
        port = server.port

        def ours(cpu: CpuWindow) -> Point:
            spec = loadgen.LoadSpec(
                host=HOST,
                port=port,
                requests=requests,
                connections=c,
                duration_s=self.duration,
                warmup_s=self.warmup,
                processes=self.args.processes,
            )
            s = loadgen.run_load(spec, on_start=cpu.start, on_end=cpu.end)
            return Point(
                backend=backend,
                op=op,
                generator="ours",
                concurrency=c,
                requests_per_s=s.requests_per_s,
                p50_ms=s.p50_ms,
                p95_ms=s.p95_ms,
                p99_ms=s.p99_ms,
                max_ms=s.max_ms,
                completed=s.completed,
                non_2xx=s.non_2xx,
                transport_errors=s.transport_errors,
                statuses=s.statuses,
                cpu=cpu.result,
                mean_ms=s.mean_ms,
                conn_min=s.conn_min,
                conn_max=s.conn_max,
                run_id=self.results.run_id,
            )

        def with_wrk(cpu: CpuWindow) -> Point:
            w = wrk.run(
                f"http://{HOST}:{port}",
                requests,
                connections=c,
                threads=self.args.processes,
                duration_s=self.duration,
                warmup_s=self.warmup,
                on_start=cpu.start,
                on_end=cpu.end,
            )
            return Point(
                backend=backend,
                op=op,
                generator="wrk",
                concurrency=c,
                requests_per_s=w.requests_per_s,
                p50_ms=w.p50_ms,
                p95_ms=w.p95_ms,
                p99_ms=w.p99_ms,
                max_ms=w.max_ms,
                completed=w.completed,
                non_2xx=w.non_2xx,
                transport_errors=w.transport_errors,
                cpu=cpu.result,
                mean_ms=w.mean_ms,
                run_id=self.results.run_id,
            )

        generators = [ours, with_wrk] if self.use_wrk else [ours]
        for gen in generators:
            p = self._measure(gen, server.pid)
            self.results.points.append(p)
            cpu = p.cpu
            _log(
                f"  {backend} {op} c={c} {GENERATORS_SHORT[p.generator]}: {p.requests_per_s:,.0f} req/s"
                f" mean {p.mean_ms:.1f} p50 {p.p50_ms:.1f} p99 {p.p99_ms:.1f} ms errors {p.errors}"
                + (f" per-conn {p.conn_min}..{p.conn_max}" if p.conn_max else "")
                + (f" cpu srv {cpu.server:.0f}% cli {cpu.client:.0f}% pg {cpu.postgres:.0f}%" if cpu else "")
                + (f" irq {cpu.softirq:.0f}% other {cpu.other:.0f}%" if cpu else "")
                + (f" steal {cpu.steal:.0f}%" if cpu and cpu.steal is not None else "")
            )

    def backend(
        self,
        backend: Backend,
        *,
        health: bool,
        ceilings: bool,
        points: bool = True,
        direct: bool = False,
        reference: bool = False,
    ) -> None:
        reason = backend.missing()
        if reason:
            _log(f"{backend.name}: skipped ({reason})")
            self.results.skipped[backend.name] = reason
            return
        if not (points or ceilings or direct or reference):
            return
        if points:
            self.results.titles[backend.name] = backend.title
            if backend.notes:
                self.results.notes[backend.name] = backend.notes
        service = backend.service() if backend.service is not None else contextlib.nullcontext({})
        with tempfile.TemporaryDirectory(prefix=f"stateport-bench-{backend.name}-") as tmp, service as extra:
            data = Path(tmp) / "data"
            stateport_env = {
                **backend.env(data),
                **{k: v for k, v in extra.items() if k.startswith("STATEPORT_")},
                "STATEPORT_JWT_SECRET": self.results.settings["jwt_secret"],
            }
            try:
                self._backend_run(
                    backend, stateport_env, Path(tmp), health, ceilings, points, direct, reference
                )
            finally:
                prefix = stateport_env.get("STATEPORT_REDIS_PREFIX")
                if stateport_env.get("STATEPORT_STATE_BACKEND") == "redis" and prefix:
                    n = asyncio.run(delete_redis_prefix(REDIS_URL, prefix))
                    _log(f"{backend.name}: deleted {n} Redis keys under {prefix}:")

    def _backend_run(
        self,
        backend: Backend,
        stateport_env: dict[str, str],
        tmp: Path,
        health: bool,
        ceilings: bool,
        points: bool,
        direct: bool,
        reference: bool,
    ) -> None:
        if backend.needs_postgres_db:
            asyncio.run(_recreate_pg_database())
        _log(f"{backend.name}: seeding")
        targets = asyncio.run(seed(stateport_env, runs=SEED_RUNS, tasks=SEED_TASKS, keys=SEED_KEYS))
        base = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        server = Server({**base, **stateport_env}, tmp / "server.log")
        if points or direct:
            _log(f"{backend.name}: starting stateport serve")
            server.start()
        try:
            if points or direct:
                expect_200(server, OPERATIONS[0].path(targets[0]), token=targets[0].token)
            for op in OPERATIONS if points else ():
                requests = op.requests(targets, server.port)
                for c in self.levels:
                    self.point(backend.name, op.name, requests, server, c)
            if reference:
                # Right after the sweep, on its data, with the server's pool size.
                pool = load_settings(environ={**base, **stateport_env}).db_pool_size
                self.reference(targets, tmp, pool)
            if health and points:
                health_req = (loadgen.build_request("GET", HEALTH_PATH, host=HOST, port=server.port),)
                for c in self.levels:
                    self.point(backend.name, "health", health_req, server, c)
            if direct:
                self.direct(stateport_env, targets, server)
        finally:
            server.stop()
        if ceilings:
            self.ceilings(backend, stateport_env, targets)

    def reference(self, targets: list[Target], tmp: Path, pool_size: int) -> None:
        """The issue's yardstick, bench/reference_app.py, on the seeded database: the sweep's points."""
        server = ReferenceServer.on(PG_URL, pool_size, tmp / "reference.log")
        _log(f"{REFERENCE}: starting the bare Litestar + asyncpg app (uvicorn, pool {pool_size})")
        server.start()
        self.results.settings["reference_pool_size"] = pool_size
        try:
            expect_200(server, REFERENCE_OPERATIONS[0].path(targets[0]))
            for op in REFERENCE_OPERATIONS:
                requests = op.requests(targets, server.port)
                for c in self.levels:
                    self.point(REFERENCE, op.name, requests, server, c)
        finally:
            server.stop()

    def direct(self, env: dict[str, str], targets: list[Target], server: Server) -> None:
        """Worker-direct state: the accessor on Redis and over REST, and raw redis-py, same loop sizes."""
        common: dict[str, Any] = {"duration_s": self.duration, "warmup_s": self.warmup}
        redis: dict[str, Any] = {
            "redis_url": env["STATEPORT_REDIS_URL"],
            "redis_prefix": env["STATEPORT_REDIS_PREFIX"],
        }
        base_url = f"http://{HOST}:{server.port}"
        for c in self.results.settings["direct_concurrency"]:
            kinds: list[tuple[str, Callable[..., Any]]] = []
            for op, raw_op in (("get", "get"), ("get", "hmget"), ("set", "set")):
                kinds.append(
                    (
                        f"raw redis-py {raw_op.upper()}",
                        functools.partial(
                            direct.raw_redis, raw_op, targets, concurrency=c, **redis, **common
                        ),
                    )
                )
                if raw_op == "hmget":
                    continue
                for kind in ("redis", "rest"):
                    kinds.append(
                        (
                            f"AsyncTaskStateAccessor backend={kind} {op}",
                            functools.partial(
                                direct.accessor,
                                kind,
                                op,
                                targets,
                                base_url=base_url,
                                concurrency=c,
                                **redis,
                                **common,
                            ),
                        )
                    )
            for title, make in kinds:
                _log(f"direct: {title}, {c} coroutines")
                self._quiet()
                before = time_wait_to(server.port)
                r = _run_async(make(cpu_window=CpuWindow(server.pid)))
                if r.name == "accessor-rest":
                    churn = time_wait_to(server.port) - before
                    self.results.direct_churn[f"{r.op} c={c}"] = churn
                    _log(f"  {churn} connections closed by the client (TIME_WAIT)")
                self.results.direct.append(r)
                _log_ceiling(r)

    def batches(self) -> None:
        """Issue #16: a 10-operation batch and a single PUT, back to back on one PostgreSQL server."""
        reason = POSTGRES.missing()
        if reason:
            _log(f"batch: skipped ({reason})")
            self.results.skipped[batch.BACKEND] = reason
            return
        self.results.titles[batch.BACKEND] = batch.TITLE
        with tempfile.TemporaryDirectory(prefix="stateport-bench-batch-") as tmp:
            env = {
                **POSTGRES.env(Path(tmp) / "data"),
                "STATEPORT_JWT_SECRET": self.results.settings["jwt_secret"],
            }
            asyncio.run(_recreate_pg_database())
            _log("batch: seeding")
            targets = asyncio.run(seed(env, runs=SEED_RUNS, tasks=SEED_TASKS, keys=SEED_KEYS))
            base = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
            server = Server({**base, **env}, Path(tmp) / "server.log")
            _log("batch: starting stateport serve")
            server.start()
            try:
                expect_200(server, OPERATIONS[0].path(targets[0]), token=targets[0].token)
                for op in batch.BATCH_OPERATIONS:
                    self.point(
                        batch.BACKEND, op.name, op.requests(targets, server.port), server, batch.CONCURRENCY
                    )
            finally:
                server.stop()
        for op in batch.BATCH_OPERATIONS:
            for gen in GENERATORS_SHORT:
                p = self.results.find(batch.BACKEND, op.name, gen, batch.CONCURRENCY)
                us = batch.server_us_per_request(p) if p else None
                if us is not None:
                    _log(f"  {op.title} ({GENERATORS_SHORT[gen]}): server CPU {us:,.0f} µs per request")

    def sync_execution(self, parts: set[str]) -> None:
        """Issue #5: waiters and the chain, each on a fresh PostgreSQL database and its own server."""
        reason = POSTGRES.missing()
        if reason:
            _log(f"sync execution: skipped ({reason})")
            self.results.skipped["sync execution"] = reason
            return
        s = self.results.settings
        with tempfile.TemporaryDirectory(prefix="stateport-bench-sync-") as tmp:
            env = {
                "STATEPORT_DATA_DIR": str(Path(tmp) / "data"),
                "STATEPORT_DATABASE_URL": PG_URL,
                "STATEPORT_EVENTS_BACKEND": "postgres",
                "STATEPORT_JWT_SECRET": s["jwt_secret"],
            }
            for item in filter(None, self.args.server_env.split(",")):
                name, _, value = item.partition("=")
                env[name.strip()] = value.strip()
            base = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
            if "waiters" in parts:
                self._waiters(env, base, Path(tmp))
            if "watchers" in parts:
                self._watchers(env, base, Path(tmp))
            if "chain" in parts:
                self._chain(env, base, Path(tmp))
            if "burst" in parts:
                self._burst(env, base, Path(tmp))

    def _burst(self, env: dict[str, str], base: dict[str, str], tmp: Path) -> None:
        """Issue 17: a burst of trigger-and-waits against a DAG with max_queued_runs (bench/burst.py)."""
        asyncio.run(_recreate_pg_database())
        token = asyncio.run(burst.register(env))
        server = Server({**base, **env}, burst.log_path(tmp))
        _log(f"burst: {burst.TRIGGERS:,} trigger-and-waits, max_queued_runs 1,000")
        server.start()
        workers: list[syncexec.Workers] = []
        base_url = f"http://{HOST}:{server.port}"

        def start_workers() -> None:
            workers.append(
                syncexec.Workers(base_url, token, 2, concurrency=16, log_path=None, module="bench.burst_dag")
            )

        try:
            assert server.pid is not None
            self.results.burst = _run_async(burst.measure(server.port, server.pid, token, start_workers))
        finally:
            for w in workers:
                w.stop()
            server.stop()
        for line in burst.describe(self.results.burst):
            _log(line)

    def _waiters(self, env: dict[str, str], base: dict[str, str], tmp: Path) -> None:
        s = self.results.settings
        per_run = max(1, s["waiters_per_run"])
        # The server inherits this process's limits: where the hard open-files limit cannot be raised (no
        # CAP_SYS_RESOURCE), the waiters are as many as its sockets can be, and the report says so.
        fits = raise_nofile(SERVER_NOFILE) - RESERVED_FDS
        if s["waiters"] > fits:
            _log(f"waiters: {s['waiters']:,} asked, the open-files limit allows {fits:,}: measuring {fits:,}")
            s["waiters_capped_from"] = s["waiters"]
            s["waiters"] = fits
        runs = max(1, s["waiters"] // per_run)
        asyncio.run(_recreate_pg_database())
        _log(f"waiters: triggering {runs:,} runs of a one-task DAG")
        dag_id, run_ids, token = asyncio.run(syncexec.prepare_waiters(env, runs))
        # One token stands for every caller here: the process's waiters, and that token's share of them,
        # must hold them all (STATEPORT_MAX_WAITERS_PER_CALLER is half of the process's by default).
        room = str(max(DEFAULT_LIMIT, runs * per_run + 1_000))
        limits = {"STATEPORT_MAX_WAITERS": room, "STATEPORT_MAX_WAITERS_PER_CALLER": room}
        server = Server({**base, **env, **limits}, tmp / "server-waiters.log")
        server.start()
        try:
            _log(
                f"waiters: {runs * per_run:,} long-polls ({per_run} per run), server ulimit -n"
                f" {nofile_limit(server.pid or 0)}"
            )
            self._quiet()
            self.results.waiters = _run_async(
                syncexec.measure_waiters(
                    env,
                    server,
                    dag_id,
                    run_ids,
                    token,
                    per_run=per_run,
                    report_concurrency=s["report_concurrency"],
                    idle_s=3.0 if self.args.quick else 30.0,
                    stream_share=s["waiters_stream_share"],
                    pg_dsn=f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres",
                    pg_database=PG_DATABASE,
                    log=_log,
                )
            )
        finally:
            server.stop()
        w = self.results.waiters
        _log(
            f"  answered 200: {w.answered_200:,}/{w.waiters:,}; wake p50 {w.wake['p50_ms']:.1f}"
            f" p99 {w.wake['p99_ms']:.1f} ms; {w.rss_per_waiter_kib:.1f} KiB per waiter;"
            f" pool busy max while waking {w.pg_waking.pool_busy_max}"
        )

    def _watchers(self, env: dict[str, str], base: dict[str, str], tmp: Path) -> None:
        """Issue #16: state key watchers (long-polls) on one server process, woken by PUTs."""
        s = self.results.settings
        fits = raise_nofile(SERVER_NOFILE) - RESERVED_FDS
        count = min(s["watchers"], fits)
        keys = max(1, min(s["watch_keys"], count))
        asyncio.run(_recreate_pg_database())
        ti_id, token = asyncio.run(watchers.prepare_watchers(env, keys))
        server = Server({**base, **env}, tmp / "server-watchers.log")
        server.start()
        try:
            _log(f"watchers: {count:,} long-polls on {keys} keys of one task instance")
            self._quiet()
            self.results.watchers = _run_async(
                watchers.measure_watchers(
                    env,
                    server,
                    ti_id,
                    token,
                    watchers=count,
                    keys=keys,
                    pg_dsn=f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres",
                    pg_database=PG_DATABASE,
                    log=_log,
                )
            )
        finally:
            server.stop()
        w = self.results.watchers
        _log(
            f"  answered 200: {w.answered_200:,}/{w.watchers:,}; wake p50 {w.wake['p50_ms']:.1f}"
            f" p99 {w.wake['p99_ms']:.1f} ms after the ack; {w.rss_per_watcher_kib:.1f} KiB per watcher;"
            f" PostgreSQL: pool {w.pg_waking.pool_total_max} + listener {w.pg_waking.listener_total_max}"
        )

    def _chain(self, env: dict[str, str], base: dict[str, str], tmp: Path) -> None:
        s = self.results.settings
        asyncio.run(_recreate_pg_database())
        token = asyncio.run(syncexec.register_chain(env))
        # The yardstick's keys (a state PUT at concurrency 1 on this server, issue #15).
        targets = asyncio.run(seed(env, runs=1, tasks=4, keys=8))
        server = Server({**base, **env}, tmp / "server-chain.log")
        server.start()
        base_url = f"http://{HOST}:{server.port}"
        assert server.pid is not None
        try:
            log_path = tmp / "chain-marks.log"
            workers = syncexec.Workers(base_url, token, 1, concurrency=4, log_path=log_path)
            try:
                _log(f"chain: latency, one worker process, {s['chain_runs']} runs one at a time")
                self._quiet()
                yardstick = [syncexec.measure_put(server.port, targets, concurrency=1, duration_s=3.0)]
                r = _run_async(
                    syncexec.measure_chain_latency(
                        base_url,
                        token,
                        runs=s["chain_runs"],
                        warmup=10 if self.args.quick else 30,
                        worker_concurrency=4,
                        log_path=log_path,
                        server_pid=server.pid,
                        worker_pids=workers.pids,
                    )
                )
                yardstick.append(syncexec.measure_put(server.port, targets, concurrency=1, duration_s=3.0))
                r.put_c1 = yardstick
                measured = {f"lat_{i:05d}" for i in range(r.warmup, r.warmup + r.runs)}
                r.db_stages = asyncio.run(syncexec.db_stages(PG_URL, like="lat_%", only=measured))
                self.results.chain_latency = r
                _log(
                    f"  p50 {r.latency['p50_ms']:.1f} p99 {r.latency['p99_ms']:.1f} ms, errors {r.errors};"
                    f" c=1 PUT p50 {r.put_c1_p50_ms:.2f} ms, ratio {r.ratio:.1f}x;"
                    + "; ".join(f" {k} p50 {v['p50_ms']:.1f}" for k, v in r.stages.items())
                )
            finally:
                workers.stop()
            marks4 = tmp / "chain-marks-4.log"
            workers = syncexec.Workers(base_url, token, 4, concurrency=4, log_path=marks4)
            try:
                _log(f"chain: throughput, 4 worker processes, {s['chain_clients']} triggering clients")
                self._quiet()
                t = syncexec.measure_chain_throughput(
                    server.port,
                    token,
                    workers=workers,
                    clients=s["chain_clients"],
                    duration_s=self.duration * 2,
                    warmup_s=self.warmup + 1,
                    server_pid=server.pid,
                    log_path=marks4,
                )
                t.db_stages = asyncio.run(syncexec.db_stages(PG_URL, like="manual%"))
                self.results.chain_throughput = t
                cpu = t.cpu
                _log(
                    f"  {t.runs_per_s:,.1f} runs/s, p50 {t.p50_ms:.1f} p99 {t.p99_ms:.1f} ms,"
                    f" errors {t.errors}"
                    + (
                        f"; cpu srv {cpu.server:.0f}% workers {cpu.workers:.0f}% pg {cpu.postgres:.0f}%"
                        f" cli {cpu.client:.0f}% other {cpu.other:.0f}%"
                        if cpu
                        else ""
                    )
                    + "; ".join(
                        f" {k} p50 {v['p50_ms']:.1f} p99 {v['p99_ms']:.1f}" for k, v in t.stages.items()
                    )
                )
            finally:
                workers.stop()
            self._engine_throughput(env, server, base_url, token, targets)
        finally:
            server.stop()

    def _engine_throughput(
        self, env: dict[str, str], server: Server, base_url: str, token: str, targets: list[Target]
    ) -> None:
        """Issue #15: task instances per second with 1, 2 and 4 worker processes, next to state PUTs."""
        assert server.pid is not None
        runs = 40 if self.args.quick else 150
        self.results.engine_throughput = []
        for count in (1, 2, 4):
            self._quiet()
            put = syncexec.measure_put(server.port, targets, concurrency=16, duration_s=3.0)
            _log(f"engine: {runs} runs of the wide DAG queued, {count} worker process(es) draining them")
            e = syncexec.measure_engine_throughput(
                env,
                base_url,
                token,
                workers=count,
                concurrency=4,
                runs=runs,
                dsn=PG_URL,
                server_pid=server.pid,
                put=put,
            )
            self.results.engine_throughput.append(e)
            _log(
                f"  {e.tis_per_s:,.0f} TIs/s ({e.completed}/{e.task_instances} in {e.window_s:.2f} s);"
                f" state PUT c=16 {put.requests_per_s:,.0f} req/s"
            )

    def scaling(self) -> None:
        """Issue #19: 1 and 2 server processes side by side, alternated rounds (bench/scaling.py)."""
        reason = POSTGRES.missing()
        if reason:
            _log(f"scaling: skipped ({reason})")
            self.results.skipped["scaling"] = reason
            return
        _log(f"scaling: 1 and 2 server processes, {self.args.scaling_rounds} rounds")
        with tempfile.TemporaryDirectory(prefix="stateport-bench-scaling-") as tmp:
            self.results.scaling = scaling.measure(
                jwt_secret=self.results.settings["jwt_secret"],
                tmp=Path(tmp),
                duration_s=self.duration,
                warmup_s=self.warmup,
                client_processes=self.args.processes,
                chain_runs=min(self.results.settings["chain_runs"], 100),
                rounds=self.args.scaling_rounds,
                pool_size=Settings().db_pool_size,
                recreate_database=_recreate_pg_database,
                quiet=self._quiet,
                log=_log,
                run=_run_async,
            )

    def alternated(self) -> None:
        """Issue #15 items 1 and 3: PostgreSQL GET, Redis GET and the bare route, alternated rounds."""
        # Both servers' runs (and the bare route's rows) are on PostgreSQL; one of them keeps state on Redis.
        reason = POSTGRES.missing() or next((b.missing() for b in BACKENDS if b.name == "redis"), None)
        if reason:
            _log(f"alternated: skipped ({reason})")
            self.results.skipped["alternated"] = reason
            return
        _log(f"alternated: PostgreSQL, Redis and the bare route, {self.args.alternated_rounds} rounds")
        with tempfile.TemporaryDirectory(prefix="stateport-bench-alternated-") as tmp:
            self.results.alternated = alternated.measure(
                jwt_secret=self.results.settings["jwt_secret"],
                tmp=Path(tmp),
                levels=self.levels,
                duration_s=self.duration,
                warmup_s=self.warmup,
                client_processes=self.args.processes,
                rounds=self.args.alternated_rounds,
                pool_size=Settings().db_pool_size,
                recreate_database=_recreate_pg_database,
                quiet=self._quiet,
                log=_log,
            )

    def ceilings(self, backend: Backend, env: dict[str, str], targets: list[Target]) -> None:
        c = 100 if 100 in self.levels else self.levels[0]
        pool = Settings().db_pool_size
        common: dict[str, Any] = {"concurrency": c, "duration_s": self.duration, "warmup_s": self.warmup}
        for op in ("get", "put"):
            kinds: list[tuple[str, Callable[..., Any]]] = [
                (
                    f"Litestar app called in-process (ASGI, no server), {op.upper()}",
                    functools.partial(
                        ceiling.asgi_ceiling, env, targets, backend=backend.name, op=op, **common
                    ),
                ),
                (
                    f"StateService.task_{op} without HTTP",
                    functools.partial(
                        ceiling.service_ceiling, env, targets, backend=backend.name, op=op, **common
                    ),
                ),
            ]
            if backend.name == "postgres":
                kinds.append(
                    (
                        f"raw asyncpg {op.upper()} statement, pool {pool}",
                        functools.partial(
                            ceiling.asyncpg_ceiling, PG_URL, targets, op=op, pool_size=pool, **common
                        ),
                    )
                )
                kinds.append(
                    (
                        f"raw asyncpg {op.upper()} statement behind a FIFO semaphore, pool {pool}",
                        functools.partial(
                            ceiling.asyncpg_ceiling,
                            PG_URL,
                            targets,
                            op=op,
                            pool_size=pool,
                            fifo=True,
                            **common,
                        ),
                    )
                )
            for title, make in kinds:
                _log(f"{backend.name}: ceiling {title}, {c} tasks")
                self._quiet()
                r = _run_async(make(cpu_window=CpuWindow(None)))
                self.results.ceilings.append(r)
                _log_ceiling(r)


def _log_ceiling(r: ceiling.CeilingResult) -> None:
    cpu = r.cpu
    _log(
        f"  {r.ops_per_s:,.0f} ops/s p50 {r.p50_ms:.1f} p99 {r.p99_ms:.1f} ms errors {r.errors}"
        + (f" cpu loop {cpu.client:.0f}% pg {cpu.postgres:.0f}% other {cpu.other:.0f}%" if cpu else "")
    )


GENERATORS_SHORT = {"ours": "loadgen", "wrk": "wrk"}
EXTRA_PARTS = (
    "ceiling",
    "direct",
    "waiters",
    "watchers",
    "chain",
    "burst",
    "batch",
    "scaling",
    "alternated",
    REFERENCE,
)
SYNC_PARTS = {"direct", "waiters", "watchers", "chain", "burst", "scaling", "alternated"}
POSTGRES = next(b for b in BACKENDS if b.name == "postgres")


def _replace(p: Point, **changes: Any) -> Point:
    import msgspec

    return msgspec.structs.replace(p, **changes)


def _run_async(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loadgen._new_loop) as runner:
        return runner.run(coro)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # So the finally blocks stop the server we started instead of leaving it running.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = _args(argv)
    started = dt.datetime.now(dt.UTC)
    run_id = started.strftime("%Y%m%dT%H%M%SZ")
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    known = {b.name for b in BACKENDS} | set(EXTRA_PARTS)
    if only - known:
        print(f"unknown --only names: {sorted(only - known)} (known: {sorted(known)})", file=sys.stderr)
        return 2
    levels = [int(x) for x in args.concurrency.split(",")] if args.concurrency else None
    settings: dict[str, Any] = {
        "duration_s": args.duration or (3.0 if args.quick else 10.0),
        "warmup_s": args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0),
        "concurrency": levels or list(QUICK_CONCURRENCY if args.quick else CONCURRENCY),
        "client_processes": args.processes,
        "server_workers": 1,
        "pool_size": Settings().db_pool_size,
        "uvloop": loadgen.uvloop_available(),
        "task_instances": SEED_RUNS * SEED_TASKS,
        "keys_per_ti": SEED_KEYS,
        "noise_threshold": args.noise,
        "jwt_secret": secrets.token_urlsafe(48),
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
    }
    docs = args.out or (
        ROOT / "docs" if not args.quick else Path(tempfile.gettempdir()) / "stateport-bench-quick"
    )
    if args.report_only:
        stored = load_json(docs / "benchmarks" / "results.json")
        if stored is None:
            print(f"no results in {docs / 'benchmarks' / 'results.json'}", file=sys.stderr)
            return 1
        print(report.write(stored, docs))
        return 0
    results = Results(
        run_id=run_id, quick=args.quick, environment=environment(args, started), settings=settings
    )
    backend_names = only & {b.name for b in BACKENDS}
    parts = set(SYNC_PARTS) if not only else only & SYNC_PARTS
    ceiling_only = "ceiling" in only and not backend_names
    do_ceilings = not only or "ceiling" in only
    do_points = not only or bool(backend_names)
    if not only or backend_names or ceiling_only:
        selected = [b for b in BACKENDS if not backend_names or b.name in backend_names]
    else:
        selected = []
    if "direct" in parts and not any(b.name == "redis" for b in selected):
        # Worker-direct needs the Redis backend's server and data, not its sweep.
        selected += [b for b in BACKENDS if b.name == "redis"]
    # The yardstick runs with the PostgreSQL sweep (on its data), or alone (seeding that data).
    reference = not only or REFERENCE in only or POSTGRES.name in backend_names
    if reference and POSTGRES not in selected:
        selected.append(POSTGRES)
    settings.update(
        {
            "waiters": args.waiters or (300 if args.quick else 100_000),
            "waiters_stream_share": args.waiters_stream_share,
            "waiters_per_run": args.waiters_per_run,
            "report_concurrency": args.report_concurrency,
            "watchers": args.watchers or (300 if args.quick else 10_000),
            "watch_keys": args.watch_keys or (10 if args.quick else 100),
            "chain_runs": args.chain_runs or (20 if args.quick else 200),
            "chain_clients": args.chain_clients,
            "server_env": args.server_env,
            "direct_concurrency": [
                int(x) for x in (args.direct_concurrency or ("100" if args.quick else "10,100")).split(",")
            ],
        }
    )
    if only:
        # A partial run replaces the numbers it measures and keeps the rest of the previous run.
        previous = load_json(docs / "benchmarks" / "results.json")
        if previous is not None:
            names = {b.name for b in selected if do_points or do_ceilings}
            results.points = [p for p in previous.points if p.backend not in names or not do_points]
            results.ceilings = [c for c in previous.ceilings if c.backend not in names or not do_ceilings]
            results.titles = {k: v for k, v in previous.titles.items() if k not in names or not do_points}
            results.notes = {k: v for k, v in previous.notes.items() if k not in names or not do_points}
            if reference:
                results.points = [p for p in results.points if p.backend != REFERENCE]
            if "batch" in only:
                results.points = [p for p in results.points if p.backend != batch.BACKEND]
            results.direct = previous.direct if "direct" not in parts else []
            results.direct_churn = previous.direct_churn if "direct" not in parts else {}
            results.waiters = previous.waiters if "waiters" not in parts else None
            if "waiters" not in parts and "waiters_capped_from" in previous.settings:
                # How many the kept waiters' run asked for: its verdict says why it held fewer.
                results.settings["waiters_capped_from"] = previous.settings["waiters_capped_from"]
            results.burst = previous.burst if "burst" not in parts else None
            results.scaling = previous.scaling if "scaling" not in parts else None
            results.alternated = previous.alternated if "alternated" not in parts else None
            results.watchers = previous.watchers if "watchers" not in parts else None
            results.chain_latency = previous.chain_latency if "chain" not in parts else None
            results.chain_throughput = previous.chain_throughput if "chain" not in parts else None
            results.engine_throughput = previous.engine_throughput if "chain" not in parts else []
            results.extra_runs = {
                k: v for k, v in previous.extra_runs.items() if k not in parts
            } | dict.fromkeys(parts, run_id)
            results.keep_environments(previous)
        else:
            results.extra_runs = dict.fromkeys(parts, run_id)
    else:
        results.extra_runs = dict.fromkeys(parts, run_id)
    suite = Suite(args, results)
    _log(
        f"run {run_id}: {', '.join(b.name for b in selected)}"
        f" {'+ ' + ', '.join(sorted(parts)) if parts else ''}; wrk {'on' if suite.use_wrk else 'off'}"
    )
    health_done = any(p.op == "health" for p in results.points)
    for backend in selected:
        # /health/live touches no store: measure it once, on the first backend's server.
        needs_health = not health_done and do_points
        sweep = do_points and (not only or backend.name in backend_names)
        ceilings = do_ceilings and (not only or backend.name in backend_names or ceiling_only)
        suite.backend(
            backend,
            health=needs_health,
            ceilings=ceilings,
            points=sweep,
            direct="direct" in parts and backend.name == "redis",
            reference=reference and backend is POSTGRES,
        )
        health_done = health_done or any(p.op == "health" for p in results.points)
    if parts & {"waiters", "watchers", "chain", "burst"}:
        suite.sync_execution(parts)
    if "scaling" in parts:
        suite.scaling()
    if "alternated" in parts:
        suite.alternated()
    if not only or "batch" in only:
        suite.batches()
    results.settings.pop("jwt_secret")
    path = report.write(results, docs)
    _log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
