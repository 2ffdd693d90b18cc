"""The benchmark's targets and their verdicts: PASS, MISS or NOT RUN for each, judged from one run's results.

The state targets are judged on PostgreSQL with one server process, per load generator: absolute (req/s,
p99, errors) and relative to the reference route (bench/reference_app.py) measured in the same run, since
the absolute numbers were set for one machine and machines differ. The others cover the Redis backend and
synchronous execution (waiters, the 3-task chain).
"""

from __future__ import annotations

import math

from msgspec import Struct

from bench.results import GENERATORS, REFERENCE, Point, Results

# The absolute targets were set for a 2-core machine on which the reference route, "a bare Litestar route
# doing the same primary-key read with raw asyncpg", served about this many req/s under uvicorn ...
TARGET_MACHINE_REFERENCE_RPS = 10_400
# ... and on which the same server answered a constant JSON body at this rate.
TARGET_MACHINE_CONSTANT_RPS = 27_000

GET_RPS_TARGET = 7000
GET_P99_TARGET_MS = 30
PUT_RPS_TARGET = 6000
ZERO_ERRORS_UP_TO_CONCURRENCY = 400
WAKE_P99_TARGET_MS = 50
WAITERS_TARGET = 100_000
WAITER_KIB_TARGET = 10
CHAIN_P50_TARGET_MS = 25
# Issue #15: the chain's p50 at most this many times the p50 of a state PUT at concurrency 1 on the same
# server in the same run (a handful of round trips and commits, each about one such PUT).
CHAIN_PUT_RATIO_TARGET = 6.0
# Issue #16: a 10-operation batch costs at most this many times a single PUT in server CPU per request.
BATCH_CPU_RATIO_TARGET = 2.0

# How the targets name the route bench/reference_app.py serves.
REFERENCE_ROUTE = "the bare Litestar + asyncpg reference route"


class Verdict(Struct, frozen=True, kw_only=True):
    target: str
    generator: str
    measured: str
    verdict: str  # PASS, MISS, NOT RUN


def judge(ok: bool | None) -> str:
    return "NOT RUN" if ok is None else ("PASS" if ok else "MISS")


def postgres_state_verdicts(results: Results) -> list[Verdict]:
    """The state targets, judged on PostgreSQL with one server process, per generator."""
    out: list[Verdict] = []
    for gen in ("ours", "wrk"):
        if not any(p.generator == gen and p.backend == "postgres" for p in results.points):
            continue
        get100 = results.find("postgres", "get", gen, 100)
        put100 = results.find("postgres", "put", gen, 100)
        label = GENERATORS[gen]
        out.append(
            Verdict(
                target=f"state GET >= {GET_RPS_TARGET:,} req/s at concurrency 100",
                generator=label,
                measured=f"{get100.requests_per_s:,.0f} req/s" if get100 else "-",
                verdict=judge(get100.requests_per_s >= GET_RPS_TARGET if get100 else None),
            )
        )
        out.append(
            Verdict(
                target=f"state GET p99 <= {GET_P99_TARGET_MS} ms at concurrency 100",
                generator=label,
                measured=f"{get100.p99_ms:.1f} ms" if get100 else "-",
                verdict=judge(get100.p99_ms <= GET_P99_TARGET_MS if get100 else None),
            )
        )
        out.append(_zero_errors_verdict(results, gen))
        out.append(
            Verdict(
                target=f"state PUT >= {PUT_RPS_TARGET:,} req/s at concurrency 100",
                generator=label,
                measured=f"{put100.requests_per_s:,.0f} req/s" if put100 else "-",
                verdict=judge(put100.requests_per_s >= PUT_RPS_TARGET if put100 else None),
            )
        )
        out += reference_route_verdicts(results, gen)
    return out


def _zero_errors_verdict(results: Results, gen: str) -> Verdict:
    state_points = [
        p
        for p in results.points
        if p.backend == "postgres"
        and p.generator == gen
        and p.op in ("get", "put")
        and p.concurrency <= ZERO_ERRORS_UP_TO_CONCURRENCY
    ]
    errors = sum(p.errors for p in state_points)
    top = max((p.concurrency for p in state_points), default=0)
    if not state_points:
        verdict = "NOT RUN"
    elif errors:
        verdict = "MISS"
    elif top >= ZERO_ERRORS_UP_TO_CONCURRENCY:
        verdict = "PASS"
    else:
        verdict = f"NOT RUN (only up to c={top})"
    return Verdict(
        target=f"zero errors up to concurrency {ZERO_ERRORS_UP_TO_CONCURRENCY} (GET and PUT)",
        generator=GENERATORS[gen],
        measured=f"{errors} errors in {len(state_points)} points" if state_points else "-",
        verdict=verdict,
    )


def _same_run(*points: Point) -> str:
    runs = sorted({p.run_id for p in points})
    return "" if len(runs) == 1 else f" (not the same run: {', '.join(runs)})"


def _reference_caveat(ref: Point) -> str:
    return f"; the reference route had {ref.errors:,} errors" if ref.errors else ""


def reference_route_verdicts(results: Results, gen: str) -> list[Verdict]:
    """The state targets as fractions of the reference route's req/s at c=100, measured in the same run."""
    ref = results.find(REFERENCE, "get", gen, 100)
    label = GENERATORS[gen]
    out: list[Verdict] = []
    for op, target in (("get", GET_RPS_TARGET), ("put", PUT_RPS_TARGET)):
        ours = results.find("postgres", op, gen, 100)
        want = target / TARGET_MACHINE_REFERENCE_RPS
        if ours is None or ref is None:
            measured, verdict = "-", "NOT RUN"
        else:
            ratio = ours.requests_per_s / ref.requests_per_s
            measured = (
                f"{ours.requests_per_s:,.0f} / {ref.requests_per_s:,.0f} req/s = {ratio:.0%}"
                + _reference_caveat(ref)
                + _same_run(ours, ref)
            )
            verdict = judge(ratio >= want)
        out.append(
            Verdict(
                target=f"state {op.upper()} relative to {REFERENCE_ROUTE} at c=100: ours / reference"
                f" (target {target:,} / {TARGET_MACHINE_REFERENCE_RPS:,} = {want:.0%})",
                generator=label,
                measured=measured,
                verdict=verdict,
            )
        )
    out += floor_verdicts(results, gen)
    ours = results.find("postgres", "get", gen, 100)
    if ours is None or ref is None:
        measured, verdict = "-", "NOT RUN"
    else:
        # At a fixed concurrency latency scales with 1 / throughput: a machine on which the reference route
        # serves k times fewer requests than the target machine's allows k times the target's p99.
        allowed = GET_P99_TARGET_MS * TARGET_MACHINE_REFERENCE_RPS / ref.requests_per_s
        measured = (
            f"p99 {ours.p99_ms:.1f} ms; allowed {GET_P99_TARGET_MS} x {TARGET_MACHINE_REFERENCE_RPS:,}"
            f" / {ref.requests_per_s:,.0f} = {allowed:.1f} ms (reference p99 {ref.p99_ms:.1f} ms)"
            + _reference_caveat(ref)
            + _same_run(ours, ref)
        )
        verdict = judge(ours.p99_ms <= allowed)
    out.append(
        Verdict(
            target=f"state GET p99 relative to {REFERENCE_ROUTE} at c=100: p99 <= {GET_P99_TARGET_MS}"
            f" ms x {TARGET_MACHINE_REFERENCE_RPS:,} / reference req/s ({GET_P99_TARGET_MS} ms where the"
            f" route serves {TARGET_MACHINE_REFERENCE_RPS:,} req/s)",
            generator=label,
            measured=measured,
            verdict=verdict,
        )
    )
    return out


# Issue #15: the state GET at or above the reference route (the framework floor) at these concurrencies.
FLOOR_CONCURRENCY = (100, 400)


def floor_verdicts(results: Results, gen: str) -> list[Verdict]:
    """Issue #15 item 1: state GET on PostgreSQL >= 1.0x the reference route, same run, c=100 and c=400.

    Judged by ``alternated_verdicts`` instead when the run has alternated rounds (measured side by side)."""
    out: list[Verdict] = []
    if results.alternated is not None:
        return out
    for c in FLOOR_CONCURRENCY:
        ours, ref = results.find("postgres", "get", gen, c), results.find(REFERENCE, "get", gen, c)
        if ours is None or ref is None:
            measured, verdict = "-", "NOT RUN"
        else:
            ratio = ours.requests_per_s / ref.requests_per_s
            measured = (
                f"{ours.requests_per_s:,.0f} / {ref.requests_per_s:,.0f} req/s = {ratio:.2f}x"
                + _reference_caveat(ref)
                + _same_run(ours, ref)
            )
            verdict = judge(ratio >= 1.0 and not ours.errors)
        out.append(
            Verdict(
                target=f"state GET >= 1.0x {REFERENCE_ROUTE} at c={c}",
                generator=GENERATORS[gen],
                measured=measured,
                verdict=verdict,
            )
        )
    return out


def redis_verdicts(results: Results) -> list[Verdict]:
    """The API's state GET on Redis against PostgreSQL at every concurrency measured, per generator.

    Judged by ``alternated_verdicts`` instead when the run has alternated rounds (measured side by side)."""
    out: list[Verdict] = []
    if results.alternated is not None:
        return out
    for gen in ("ours", "wrk"):
        levels = sorted(
            {
                x.concurrency
                for x in results.points
                if x.op == "get" and x.backend == "redis" and x.generator == gen
            }
        )
        pairs = [
            (c, results.find("redis", "get", gen, c), results.find("postgres", "get", gen, c)) for c in levels
        ]
        both = [(c, r, p) for c, r, p in pairs if r is not None and p is not None]
        if not both:
            continue
        parts = []
        for c, r, p in both:
            # A rate that counts error answers is no speed: say so next to it.
            bad = f" (Redis: {r.errors:,} errors)" if r.errors else ""
            ratio = r.requests_per_s / p.requests_per_s
            parts.append(f"c={c}: {r.requests_per_s:,.0f} vs {p.requests_per_s:,.0f} ({ratio:.2f}x){bad}")
        out.append(
            Verdict(
                target="API state GET on Redis >= on PostgreSQL at every concurrency",
                generator=GENERATORS[gen],
                measured="; ".join(parts),
                verdict=judge(all(r.requests_per_s >= p.requests_per_s and not r.errors for _, r, p in both)),
            )
        )
    return out


ALTERNATED = "bench.loadgen, alternated rounds (median)"


def alternated_verdicts(results: Results) -> list[Verdict]:
    """Issue #15 items 1 and 3 from the alternated rounds (bench/alternated.py): each ratio taken within its
    round, then the median over the rounds; a cell with errors on either side does not pass."""
    a = results.alternated
    if a is None:
        return []
    out: list[Verdict] = []
    checks = [
        (f"state GET on PostgreSQL >= 1.0x {REFERENCE_ROUTE} at c={c}", "postgres", "reference", [c])
        for c in FLOOR_CONCURRENCY
        if c in a.levels
    ]
    checks.append(
        ("API state GET on Redis >= on PostgreSQL at every concurrency", "redis", "postgres", a.levels)
    )
    for target, ours, yardstick, levels in checks:
        parts, ok = [], True
        for c in levels:
            ratios = a.ratios(ours, yardstick, c)
            median = a.median_ratio(ours, yardstick, c)
            errors = sum(p.errors for p in a.points if p.concurrency == c and p.target in (ours, yardstick))
            if median is None:
                parts.append(f"c={c}: not measured")
                ok = False
                continue
            rounds = ", ".join(f"{r:.2f}" for r in ratios)
            parts.append(
                f"c={c}: {median:.2f}x (rounds {rounds})" + (f", {errors:,} errors" if errors else "")
            )
            ok = ok and median >= 1.0 and not errors
        out.append(Verdict(target=target, generator=ALTERNATED, measured="; ".join(parts), verdict=judge(ok)))
    return out


def batch_verdicts(results: Results) -> list[Verdict]:
    """Issue #16: server CPU per request of a 10-operation batch against a single PUT (bench/batch.py)."""
    from bench import batch

    out: list[Verdict] = []
    for name, what in (("batch10", "10-operation batch"), ("batch10mixed", "10-operation mixed batch")):
        for gen in ("ours", "wrk"):
            put = results.find(batch.BACKEND, "put1", gen, batch.CONCURRENCY)
            many = results.find(batch.BACKEND, name, gen, batch.CONCURRENCY)
            put_us = batch.server_us_per_request(put) if put else None
            many_us = batch.server_us_per_request(many) if many else None
            if put is None or many is None or put_us is None or many_us is None:
                continue
            errors = f" ({put.errors + many.errors:,} errors)" if put.errors or many.errors else ""
            ratio = many_us / put_us
            measured = f"{many_us:,.0f} vs {put_us:,.0f} µs ({ratio:.2f}x) at c={batch.CONCURRENCY}"
            ok = ratio <= BATCH_CPU_RATIO_TARGET and not put.errors and not many.errors
            out.append(
                Verdict(
                    target=f"{what} <= {BATCH_CPU_RATIO_TARGET:g}x a state PUT in server CPU per"
                    " request (PostgreSQL)",
                    generator=GENERATORS[gen],
                    measured=measured + errors + _same_run(put, many),
                    verdict=judge(ok),
                )
            )
    return out


def sync_execution_verdicts(results: Results) -> list[Verdict]:
    """Many waiters on one server process, and the 3-task chain's latency and throughput."""
    out: list[Verdict] = []
    w = results.waiters
    if w is not None:
        asked = int(results.settings.get("waiters_capped_from", w.waiters))
        if asked > w.waiters:
            held = (
                f"{w.waiters:,} of the {asked:,} asked for: the server's open-files limit"
                f" ({w.nofile_server:,}) could not be raised here"
            )
            verdict = "NOT RUN"
        else:
            held, verdict = f"{w.waiters:,}", judge(w.waiters >= WAITERS_TARGET)
        out.append(
            Verdict(
                target=f"{WAITERS_TARGET:,} concurrent waiters (long-polls, streams) on one server process",
                generator="bench.waiters",
                measured=held,
                verdict=verdict,
            )
        )
        out.append(
            Verdict(
                target=f"memory per waiter <= {WAITER_KIB_TARGET} KiB (server RSS delta / waiters)",
                generator="bench.waiters",
                measured=f"{w.rss_per_waiter_kib:.1f} KiB at {w.waiters:,} waiters",
                verdict=judge(w.rss_per_waiter_kib <= WAITER_KIB_TARGET),
            )
        )
        everyone = w.answered_200 == w.waiters and w.success_bodies == w.waiters
        out.append(
            Verdict(
                target=f"{w.waiters:,} concurrent waiters on one server process: each gets its outcome",
                generator="bench.waiters",
                measured=f"{w.success_bodies:,} of {w.waiters:,} got a success outcome"
                + (f" (statuses {w.statuses}, {w.connect_errors} connect errors)" if not everyone else ""),
                verdict=judge(everyone),
            )
        )
        used = max(w.pg_waiting.pool_total_max, w.pg_waking.pool_total_max)
        listeners = max(w.pg_waiting.listener_total_max, w.pg_waking.listener_total_max)
        out.append(
            Verdict(
                target=f"PostgreSQL connections with {w.waiters:,} waiters <= pool + 1 listener",
                generator="pg_stat_activity",
                measured=f"at most {used} pool + {listeners} listener connections open (pool {w.pool_size});"
                f" busy at most {w.pg_waiting.pool_busy_max} while waiting, {w.pg_waking.pool_busy_max}"
                " while waking",
                verdict=judge(used <= w.pool_size and listeners <= 1),
            )
        )
        out.append(
            Verdict(
                target=f"wake latency p99 <= {WAKE_P99_TARGET_MS} ms at {w.waiters:,} waiters",
                generator="bench.waiters",
                measured=f"p50 {w.wake['p50_ms']:.1f} ms, p99 {w.wake['p99_ms']:.1f} ms",
                verdict=judge(w.wake["p99_ms"] <= WAKE_P99_TARGET_MS if w.wake["n"] else None),
            )
        )
    lat = results.chain_latency
    if lat is not None:
        out.append(
            Verdict(
                target=f"trigger-to-result p50 <= {CHAIN_P50_TARGET_MS} ms (3-task chain, 1 worker,"
                " PostgreSQL)",
                generator="client SDK run()",
                measured=f"p50 {lat.latency['p50_ms']:.1f} ms, p99 {lat.latency['p99_ms']:.1f} ms"
                f" ({lat.runs} runs)",
                verdict=judge(lat.latency["p50_ms"] <= CHAIN_P50_TARGET_MS if lat.latency["n"] else None),
            )
        )
    if lat is not None:
        ratio = lat.ratio
        out.append(
            Verdict(
                target=f"chain p50 <= {CHAIN_PUT_RATIO_TARGET:g}x c=1 PUT p50 (same server, same run)",
                generator="client SDK run(); bench.loadgen",
                measured=f"{ratio:.1f}x (chain p50 {lat.latency['p50_ms']:.1f} ms, PUT p50"
                f" {lat.put_c1_p50_ms:.2f} ms)"
                if not math.isnan(ratio)
                else "-",
                verdict=judge(None if math.isnan(ratio) else ratio <= CHAIN_PUT_RATIO_TARGET),
            )
        )
    t = results.chain_throughput
    if t is not None:
        out.append(
            Verdict(
                target="runs/s for the chain with 4 worker processes (no target: reported)",
                generator="bench.loadgen",
                measured=f"{t.runs_per_s:,.1f} runs/s ({t.clients} clients, {t.errors} errors)",
                verdict="-",
            )
        )
    return out
