"""The benchmark's targets: judged from one run's points, relative to the reference route, named for what
they measure, and rendered into the markdown's targets table."""

from __future__ import annotations

import re
from pathlib import Path

from bench.markdown import render
from bench.results import REFERENCE, Point, Results, load_json
from bench.targets import postgres_state_verdicts, redis_verdicts, sync_execution_verdicts
from msgspec.structs import replace


def _point(backend: str, op: str, concurrency: int, rps: float, p99_ms: float) -> Point:
    return Point(
        backend=backend,
        op=op,
        generator="ours",
        concurrency=concurrency,
        requests_per_s=rps,
        p50_ms=p99_ms / 2,
        p95_ms=p99_ms,
        p99_ms=p99_ms,
        max_ms=p99_ms,
        completed=int(rps * 10),
        non_2xx=0,
        transport_errors={},
        run_id="R",
    )


def _results(*points: Point) -> Results:
    return Results(run_id="R", quick=False, environment={}, settings={}, points=list(points))


def test_on_a_slow_machine_the_relative_targets_pass_where_the_absolute_ones_miss() -> None:
    # The reference route serves 2,000 req/s here: 67% of it for GET is 1,340, 58% for PUT is 1,160.
    results = _results(
        _point("postgres", "get", 100, 1500, 60),
        _point("postgres", "put", 100, 1100, 80),
        _point("postgres", "get", 400, 1400, 200),
        _point(REFERENCE, "get", 100, 2000, 50),
    )
    got = {v.target: v.verdict for v in postgres_state_verdicts(results)}
    assert got["state GET >= 7,000 req/s at concurrency 100"] == "MISS"
    assert got["state GET p99 <= 30 ms at concurrency 100"] == "MISS"
    assert got["zero errors up to concurrency 400 (GET and PUT)"] == "PASS"
    relative = {k: v for k, v in got.items() if "reference route" in k}
    assert [v for k, v in relative.items() if k.startswith("state GET relative")] == ["PASS"]
    assert [v for k, v in relative.items() if k.startswith("state PUT relative")] == ["MISS"]
    # p99 allowed: 30 ms x 10,400 / 2,000 = 156 ms.
    assert [v for k, v in relative.items() if k.startswith("state GET p99 relative")] == ["PASS"]


def test_without_the_reference_route_the_relative_targets_are_not_run() -> None:
    results = _results(_point("postgres", "get", 100, 8000, 10))
    relative = [v for v in postgres_state_verdicts(results) if "reference route" in v.target]
    assert len(relative) == 5 and {v.verdict for v in relative} == {"NOT RUN"}


def test_the_framework_floor_is_judged_at_c100_and_c400_against_the_same_runs_reference() -> None:
    results = _results(
        _point("postgres", "get", 100, 2100, 60),
        _point(REFERENCE, "get", 100, 2000, 50),
        _point("postgres", "get", 400, 1900, 200),
        _point(REFERENCE, "get", 400, 2000, 300),
    )
    got = {v.target: (v.verdict, v.measured) for v in postgres_state_verdicts(results)}
    floor = "state GET >= 1.0x the bare Litestar + asyncpg reference route at c="
    assert got[floor + "100"] == ("PASS", "2,100 / 2,000 req/s = 1.05x")
    assert got[floor + "400"] == ("MISS", "1,900 / 2,000 req/s = 0.95x")


def test_redis_must_match_postgresql_at_every_concurrency_measured() -> None:
    points = [_point("postgres", "get", c, 1000, 50) for c in (50, 100, 400)]
    ahead = _results(*points, *(_point("redis", "get", c, 1100, 50) for c in (50, 100, 400)))
    behind_once = _results(
        *points, *(_point("redis", "get", c, rps, 50) for c, rps in ((50, 1100), (100, 1200), (400, 990)))
    )
    [verdict] = redis_verdicts(ahead)
    assert verdict.verdict == "PASS" and verdict.measured.startswith("c=50: 1,100 vs 1,000 (1.10x); c=100")
    [verdict] = redis_verdicts(behind_once)
    assert verdict.verdict == "MISS" and "c=400: 990 vs 1,000 (0.99x)" in verdict.measured


def test_an_error_below_c400_misses_the_zero_errors_target() -> None:
    failing = replace(_point("postgres", "put", 200, 6500, 10), non_2xx=1, statuses={503: 1})
    got = {v.target: v.verdict for v in postgres_state_verdicts(_results(failing))}
    assert got["zero errors up to concurrency 400 (GET and PUT)"] == "MISS"


def test_no_target_is_named_after_an_issue_and_each_is_in_the_markdown() -> None:
    results = _results(
        _point("postgres", "get", 100, 1500, 60),
        _point("postgres", "put", 100, 1100, 80),
        _point("redis", "get", 100, 1600, 50),
        _point(REFERENCE, "get", 100, 2000, 50),
    )
    verdicts = postgres_state_verdicts(results) + redis_verdicts(results) + sync_execution_verdicts(results)
    assert verdicts
    markdown = render(results, analysis="kept", plots=[])
    for v in verdicts:
        assert not re.search(r"#\d", v.target), v.target
        assert f"| {v.target} | {v.generator} | {v.measured} | **{v.verdict}** |" in markdown


def test_waiters_held_below_the_asked_count_are_not_run_and_memory_is_judged_per_waiter() -> None:
    recorded = load_json(Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "results.json")
    assert recorded is not None and recorded.waiters is not None
    few = replace(recorded.waiters, waiters=19_744, rss_per_waiter_kib=25.0)
    capped = _results()
    capped.waiters = few
    capped.settings = {"waiters_capped_from": 100_000}
    got = {v.target: (v.verdict, v.measured) for v in sync_execution_verdicts(capped)}
    verdict, measured = got["100,000 concurrent waiters (long-polls, streams) on one server process"]
    assert verdict == "NOT RUN" and measured.startswith("19,744 of the 100,000 asked for")
    assert got["memory per waiter <= 10 KiB (server RSS delta / waiters)"][0] == "MISS"

    full = _results()
    full.waiters = replace(recorded.waiters, waiters=100_000, rss_per_waiter_kib=9.5)
    verdicts = {v.target: v.verdict for v in sync_execution_verdicts(full)}
    assert verdicts["100,000 concurrent waiters (long-polls, streams) on one server process"] == "PASS"
    assert verdicts["memory per waiter <= 10 KiB (server RSS delta / waiters)"] == "PASS"
