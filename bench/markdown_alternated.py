"""docs/benchmarks.md's part on state GET in alternated rounds (issue #15 items 1 and 3; bench.alternated)."""

from __future__ import annotations

import statistics

from bench.alternated import TARGETS, AlternatedResult, order
from bench.markdown_tables import table

TITLES = {"postgres": "PostgreSQL GET", "redis": "Redis GET", "reference": "bare route GET"}


def section(result: AlternatedResult | None, run_id: str) -> list[str]:
    """Each round's req/s per target and concurrency, and the ratios within each round with their medians."""
    if result is None:
        return ["_Not measured in this run (`python -m bench --only alternated`)._"]
    out = [
        f"Run {run_id}: three servers up side by side on one fresh database: `stateport serve` with"
        " PostgreSQL state, `stateport serve` with Redis state (runs on PostgreSQL), and the bare Litestar"
        f" + asyncpg route on the first one's rows. {result.rounds} rounds; in each, state GET on each server"
        f" at each concurrency (bench.loadgen, {result.duration_s:g} s measured), one right after another,"
        " the order rotated from round to round. Ratios are taken within a round, then the median over the"
        " rounds: a trend of the shared machine cannot favour one side.",
        "",
    ]
    rows = []
    for r in range(1, result.rounds + 1):
        for c in result.levels:
            cells = []
            for name in TARGETS:
                p = result.find(r, name, c)
                cells.append(
                    "-"
                    if p is None
                    else f"{p.requests_per_s:,.0f}" + (f" ({p.errors:,} err)" if p.errors else "")
                )
            redis = result.ratios("redis", "postgres", c)
            floor = result.ratios("postgres", "reference", c)
            rows.append(
                [
                    str(r),
                    str(c),
                    " -> ".join(order(r)),
                    *cells,
                    f"{redis[r - 1]:.2f}" if len(redis) >= r else "-",
                    f"{floor[r - 1]:.2f}" if len(floor) >= r else "-",
                ]
            )
    for c in result.levels:
        redis_median = result.median_ratio("redis", "postgres", c)
        floor_median = result.median_ratio("postgres", "reference", c)
        rows.append(
            [
                "**median**",
                str(c),
                "",
                "",
                "",
                "",
                "-" if redis_median is None else f"**{redis_median:.2f}**",
                "-" if floor_median is None else f"**{floor_median:.2f}**",
            ]
        )
    header = [
        "round",
        "c",
        "order",
        *(f"{TITLES[name]} req/s" for name in TARGETS),
        "Redis / PostgreSQL",
        "PostgreSQL / bare route",
    ]
    out += table(header, rows, "rrl" + "r" * (len(TARGETS) + 2))
    out += [
        "",
        "CPU per GET (µs; medians over the rounds) of the server process, of every PostgreSQL process, of"
        " every redis-server process, and of the rest of the machine (the load generator left out): where"
        " one side's requests cost more.",
        "",
    ]
    cpu_rows = []
    for c in result.levels:
        for name in TARGETS:
            points = [p for r in range(1, result.rounds + 1) if (p := result.find(r, name, c)) is not None]
            cells = [
                _median_us([p.per_request_us(getattr(p, f"{part}_pct")) for p in points])
                for part in ("server", "postgres", "redis", "other")
            ]
            cpu_rows.append([str(c), TITLES[name], *cells])
    out += table(["c", "GET on", "server", "PostgreSQL", "Redis", "other"], cpu_rows, "rlrrrr")
    return out


def _median_us(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):,.0f}" if known else "-"
