"""docs/benchmarks.md's part on one and two server processes (issue #19; measured by ``bench.scaling``)."""

from __future__ import annotations

import math
import statistics

from msgspec import Struct

from bench.markdown_tables import table
from bench.scaling import ScalingResult, ScalingRound


class Derived(Struct, frozen=True, kw_only=True):
    """One round's numbers, and the ratios taken within the round (never across rounds)."""

    requests_per_s: float
    p99_ms: float
    server_pct: float
    client_pct: float
    other_pct: float
    machine_pct: float
    per_server_core: float
    per_busy_core: float
    server_us: float  # server CPU per GET
    postgres_us: float  # CPU of the bench database's backends per GET
    chain_p50_ms: float
    chain_p99_ms: float
    chain_server_ms: float  # CPU per chain run
    chain_postgres_ms: float
    chain_worker_ms: float


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def derive(r: ScalingRound, duration_s: float) -> Derived:
    nan = math.nan
    c, cc, n = r.cpu, r.chain_cpu, r.chain.get("n", 0)
    gets = r.requests_per_s * duration_s
    return Derived(
        requests_per_s=r.requests_per_s,
        p99_ms=r.p99_ms,
        server_pct=c.server if c else nan,
        client_pct=c.client if c else nan,
        other_pct=c.other if c else nan,
        machine_pct=c.machine if c else nan,
        per_server_core=_ratio(r.requests_per_s, c.server / 100) if c else nan,
        per_busy_core=_ratio(r.requests_per_s, c.machine / 100) if c else nan,
        server_us=_ratio(c.server / 100 * 1e6, r.requests_per_s) if c else nan,
        postgres_us=_ratio(r.pg_backends_get_s * 1e6, gets),
        chain_p50_ms=r.chain["p50_ms"],
        chain_p99_ms=r.chain["p99_ms"],
        chain_server_ms=_ratio(cc.server / 100 * r.chain_window_s * 1000, n) if cc else nan,
        chain_postgres_ms=_ratio(r.pg_backends_chain_s * 1000, n),
        chain_worker_ms=_ratio(cc.workers / 100 * r.chain_window_s * 1000, n) if cc else nan,
    )


class Summary(Struct, frozen=True, kw_only=True):
    """The medians over one process count's rounds, field by field of ``Derived``."""

    processes: int
    rounds: int
    median: Derived
    pg_connections: int
    errors: int


def summaries(result: ScalingResult) -> list[Summary]:
    out = []
    for count in sorted({r.processes for r in result.rounds}):
        rs = [r for r in result.rounds if r.processes == count]
        derived = [derive(r, result.duration_s) for r in rs]
        medians = {}
        for name in Derived.__struct_fields__:
            values = [getattr(d, name) for d in derived if not math.isnan(getattr(d, name))]
            medians[name] = statistics.median(values) if values else math.nan
        out.append(
            Summary(
                processes=count,
                rounds=len(rs),
                median=Derived(**medians),
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
        f" {result.load_after} after (1, 5, 15 min). CPU in % of one core over the GET window; PostgreSQL:"
        " the backends serving the bench's database (pg_stat_activity), the shared server's other databases"
        " left out; ratios are taken within a round, then the median over rounds.",
        "",
    ]
    out += table(
        [
            "server processes",
            "GET req/s",
            "GET p99 ms",
            "server CPU %",
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
                _f(s.median.requests_per_s),
                _f(s.median.p99_ms, ".1f"),
                _f(s.median.server_pct),
                _f(s.median.client_pct),
                _f(s.median.other_pct),
                _f(s.median.per_server_core),
                _f(s.median.per_busy_core),
                _f(s.median.server_us),
                _f(s.median.postgres_us),
                _f(s.median.chain_p50_ms, ".1f"),
                _f(s.median.chain_p99_ms, ".1f"),
                " / ".join(
                    _f(v, ".1f")
                    for v in (s.median.chain_server_ms, s.median.chain_postgres_ms, s.median.chain_worker_ms)
                ),
                str(s.pg_connections),
                str(s.errors),
            ]
            for s in rows
        ],
        "r" * 15,
    )
    out += ["", "Each round:", ""]
    each = [(r, derive(r, result.duration_s)) for r in result.rounds]
    out += table(
        [
            "round",
            "server processes",
            "GET req/s",
            "server %",
            "other %",
            "server µs / GET",
            "PostgreSQL µs / GET",
            "chain p50 ms",
        ],
        [
            [
                str(r.round + 1),
                str(r.processes),
                _f(d.requests_per_s),
                _f(d.server_pct),
                _f(d.other_pct),
                _f(d.server_us),
                _f(d.postgres_us),
                _f(d.chain_p50_ms, ".1f"),
            ]
            for r, d in each
        ],
        "r" * 8,
    )
    by = {s.processes: s for s in rows}
    one, two = by.get(1), by.get(2)
    if one and two and one.median.requests_per_s:
        out += ["", *_reading(result, one, two)]
    return out


def _reading(result: ScalingResult, one: Summary, two: Summary) -> list[str]:
    """What the medians say, computed (the analysis explains the design behind it)."""
    a, b = one.median, two.median
    # How many GETs/s one PostgreSQL core would keep up with, in server cores' worth.
    pg_core_gets = _ratio(1e6, a.postgres_us)
    # Measured: the connections the bench's database had after the GET load, per server process.
    per_process = max(two.pg_connections / 2, one.pg_connections, 1)
    return [
        f"Two processes served {_ratio(b.requests_per_s, a.requests_per_s):.2f}x the GETs of one; a busy"
        f" server core served {_f(a.per_server_core)} GETs/s with one process and {_f(b.per_server_core)}"
        f" with two (per busy core of the whole machine, load generator and PostgreSQL included:"
        f" {_f(a.per_busy_core)} and {_f(b.per_busy_core)}); the chain's p50 went from"
        f" {_f(a.chain_p50_ms, '.1f')} to {_f(b.chain_p50_ms, '.1f')} ms. Per GET the server spent"
        f" {_f(a.server_us)} µs of CPU and the database's backends {_f(a.postgres_us)} µs: one PostgreSQL"
        f" core would keep up with about {_f(pg_core_gets)} GETs/s, the work of"
        f" {_f(_ratio(pg_core_gets, a.per_server_core), '.1f')} busy server cores. Per chain run the server"
        f" spent {_f(a.chain_server_ms, '.1f')} ms of CPU and the database's backends"
        f" {_f(a.chain_postgres_ms, '.1f')} ms ({_f(_ratio(a.chain_postgres_ms, a.chain_server_ms), '.2f')}"
        " of the server's). Connections: after the GET load the database had"
        f" {one.pg_connections} connections with one process and {two.pg_connections} with two (a pool of"
        f" up to {result.pool_size} and the event bus's LISTEN per process); with this PostgreSQL's"
        f" max_connections of {result.pg_max_connections}, about"
        f" {int(result.pg_max_connections // per_process)} server processes fit, whatever their hosts.",
    ]
