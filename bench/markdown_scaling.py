"""docs/benchmarks.md's part on one and two server processes (issue #19; measured by ``bench.scaling``)."""

from __future__ import annotations

import math
import statistics

from msgspec import Struct

from bench.markdown_tables import table
from bench.scaling import ScalingResult, ScalingRound


class Summary(Struct, frozen=True, kw_only=True):
    """The medians over one process count's rounds."""

    processes: int
    rounds: int
    requests_per_s: float
    p99_ms: float
    server_pct: float
    postgres_pct: float
    client_pct: float
    other_pct: float
    machine_pct: float
    chain_p50_ms: float
    chain_p99_ms: float
    # CPU per chain run, in ms: the server processes, PostgreSQL, the worker process.
    chain_server_ms: float
    chain_postgres_ms: float
    chain_worker_ms: float
    pg_connections: int
    errors: int

    @property
    def per_server_core(self) -> float:
        return self.requests_per_s / (self.server_pct / 100) if self.server_pct else math.nan

    @property
    def per_busy_core(self) -> float:
        return self.requests_per_s / (self.machine_pct / 100) if self.machine_pct else math.nan

    def us_per_request(self, pct: float) -> float:
        return pct / 100 / self.requests_per_s * 1e6 if self.requests_per_s else math.nan


def summaries(result: ScalingResult) -> list[Summary]:
    out = []
    for count in sorted({r.processes for r in result.rounds}):
        rs = [r for r in result.rounds if r.processes == count]

        def med(values: list[float]) -> float:
            values = [v for v in values if not math.isnan(v)]
            return statistics.median(values) if values else math.nan

        def cpu(name: str, rounds: list[ScalingRound] = rs) -> float:
            return med([getattr(r.cpu, name) for r in rounds if r.cpu is not None])

        def per_run(name: str, rounds: list[ScalingRound] = rs) -> float:
            """ms of CPU per measured chain run."""
            return med(
                [
                    getattr(r.chain_cpu, name) / 100 * r.chain_window_s * 1000 / r.chain["n"]
                    for r in rounds
                    if r.chain_cpu is not None and r.chain["n"]
                ]
            )

        out.append(
            Summary(
                processes=count,
                rounds=len(rs),
                requests_per_s=med([r.requests_per_s for r in rs]),
                p99_ms=med([r.p99_ms for r in rs]),
                server_pct=cpu("server"),
                postgres_pct=cpu("postgres"),
                client_pct=cpu("client"),
                other_pct=cpu("other"),
                machine_pct=cpu("machine"),
                chain_p50_ms=med([r.chain["p50_ms"] for r in rs]),
                chain_p99_ms=med([r.chain["p99_ms"] for r in rs]),
                chain_server_ms=per_run("server"),
                chain_postgres_ms=per_run("postgres"),
                chain_worker_ms=per_run("workers"),
                pg_connections=max(r.pg_connections for r in rs),
                errors=sum(r.errors + r.chain_errors for r in rs),
            )
        )
    return out


def _f(value: float, fmt: str = ",.0f") -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def section(result: ScalingResult | None, run_id: str) -> list[str]:
    """The markdown of the part: the medians, each round, and what they say of the first bottleneck."""
    if result is None:
        return ["_Not measured in this run (`python -m bench --only scaling`)._"]
    rows = summaries(result)
    out = [
        f"Run {run_id}: `stateport serve --workers 1` and `--workers 2` on PostgreSQL (state and runs,"
        f" LISTEN/NOTIFY between processes, pool {result.pool_size} connections per process), started"
        f" afresh for each point, {len(result.rounds) // max(len(rows), 1)} rounds in alternating order;"
        f" medians. State GET: bench.loadgen, {result.concurrency} connections, {result.duration_s:g} s"
        f" measured. Chain: {result.chain_runs} trigger-and-waits one at a time, one worker process."
        f" Machine: {result.cores} cores, load average {result.load_before} before and"
        f" {result.load_after} after (1, 5, 15 min). CPU in % of one core over the GET window.",
        "",
    ]
    out += table(
        [
            "server processes",
            "GET req/s",
            "GET p99 ms",
            "server CPU %",
            "PostgreSQL CPU %",
            "load gen CPU %",
            "other %",
            "req/s per server core",
            "req/s per busy core (machine)",
            "server µs / GET",
            "PostgreSQL µs / GET",
            "chain p50 ms",
            "chain p99 ms",
            "CPU ms / chain run: server, PostgreSQL, worker",
            "PostgreSQL connections",
            "errors",
        ],
        [
            [
                str(s.processes),
                _f(s.requests_per_s),
                _f(s.p99_ms, ".1f"),
                _f(s.server_pct),
                _f(s.postgres_pct),
                _f(s.client_pct),
                _f(s.other_pct),
                _f(s.per_server_core),
                _f(s.per_busy_core),
                _f(s.us_per_request(s.server_pct)),
                _f(s.us_per_request(s.postgres_pct)),
                _f(s.chain_p50_ms, ".1f"),
                _f(s.chain_p99_ms, ".1f"),
                " / ".join(_f(v, ".1f") for v in (s.chain_server_ms, s.chain_postgres_ms, s.chain_worker_ms)),
                str(s.pg_connections),
                str(s.errors),
            ]
            for s in rows
        ],
        "r" * 16,
    )
    out += ["", "Each round:", ""]
    out += table(
        ["round", "server processes", "GET req/s", "server %", "PostgreSQL %", "other %", "chain p50 ms"],
        [
            [
                str(r.round + 1),
                str(r.processes),
                _f(r.requests_per_s),
                _f(r.cpu.server if r.cpu else math.nan),
                _f(r.cpu.postgres if r.cpu else math.nan),
                _f(r.cpu.other if r.cpu else math.nan),
                _f(r.chain["p50_ms"], ".1f"),
            ]
            for r in result.rounds
        ],
        "rrrrrrr",
    )
    by = {s.processes: s for s in rows}
    one, two = by.get(1), by.get(2)
    if one and two and one.requests_per_s:
        out += ["", *_reading(result, one, two)]
    return out


def _reading(result: ScalingResult, one: Summary, two: Summary) -> list[str]:
    """What the medians say, computed (the analysis explains the design behind it)."""
    pg_get = one.us_per_request(one.postgres_pct)
    srv_get = one.us_per_request(one.server_pct)
    # How many server cores' worth of GETs one PostgreSQL core would keep up with.
    pg_core_gets = 1e6 / pg_get if pg_get else math.nan
    # Measured: the connections the bench's database had after the GET load, per server process.
    per_process = max(two.pg_connections / 2, one.pg_connections, 1)
    return [
        f"Two processes served {two.requests_per_s / one.requests_per_s:.2f}x the GETs of one, a server"
        f" core {_f(one.per_server_core)} GETs/s with one process and {_f(two.per_server_core)} with two"
        f" (per busy core of the whole machine: {_f(one.per_busy_core)} and {_f(two.per_busy_core)}); the"
        f" chain's p50 went from {_f(one.chain_p50_ms, '.1f')} to {_f(two.chain_p50_ms, '.1f')} ms. Per GET"
        f" the server spent {_f(srv_get)} µs of CPU and PostgreSQL {_f(pg_get)} µs: one PostgreSQL core"
        f" would keep up with about {_f(pg_core_gets)} GETs/s, the work of"
        f" {_f(pg_core_gets / one.per_server_core, '.0f')} server cores. Per chain run the server"
        f" spent {_f(one.chain_server_ms, '.1f')} ms and PostgreSQL {_f(one.chain_postgres_ms, '.1f')} ms"
        f" ({_f(one.chain_postgres_ms / one.chain_server_ms if one.chain_server_ms else math.nan, '.2f')}"
        " of the server's): the run path is where the database's share is largest. Connections: after the"
        f" GET load the database had {one.pg_connections} connections with one process and"
        f" {two.pg_connections} with two (a pool of up to {result.pool_size} and the event bus's LISTEN"
        f" per process); with this PostgreSQL's max_connections of {result.pg_max_connections}, about"
        f" {int(result.pg_max_connections // per_process)} server processes fit, whatever their hosts.",
    ]
