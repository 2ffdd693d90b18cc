"""bench/alternated.py's verdicts and section: ratios within a round, then the median over the rounds."""

from __future__ import annotations

from bench.alternated import TARGETS, AlternatedPoint, AlternatedResult, order
from bench.markdown_alternated import section
from bench.results import Results
from bench.targets import alternated_verdicts

from tests.unit.bench_points import load_point


def _point(round_: int, target: str, c: int, rps: float, errors: int = 0) -> AlternatedPoint:
    return AlternatedPoint(
        round=round_, target=target, concurrency=c, requests_per_s=rps, p50_ms=1.0, p99_ms=2.0, errors=errors
    )


def _result(
    rps: dict[tuple[int, str, int], float], errors: dict[tuple[int, str, int], int]
) -> AlternatedResult:
    points = [_point(r, t, c, v, errors.get((r, t, c), 0)) for (r, t, c), v in rps.items()]
    return AlternatedResult(points=points, rounds=3, levels=[100, 400], duration_s=5.0)


def _rps(redis: list[float], reference: list[float]) -> dict[tuple[int, str, int], float]:
    """PostgreSQL at 1,000 req/s in every round; Redis and the bare route per round, both levels alike."""
    out: dict[tuple[int, str, int], float] = {}
    for c in (100, 400):
        for r in (1, 2, 3):
            out[(r, "postgres", c)] = 1000.0
            out[(r, "redis", c)] = redis[r - 1]
            out[(r, "reference", c)] = reference[r - 1]
    return out


def _verdicts(result: AlternatedResult) -> dict[str, str]:
    results = Results(run_id="r", quick=False, environment={}, settings={}, alternated=result)
    return {v.target: v.verdict for v in alternated_verdicts(results)}


def test_the_order_rotates_so_each_target_goes_first_once_in_three_rounds() -> None:
    assert [order(r)[0] for r in (1, 2, 3)] == list(TARGETS)
    assert all(sorted(order(r)) == sorted(TARGETS) for r in (1, 2, 3, 4))


def test_the_median_of_the_rounds_ratios_judges_each_item() -> None:
    # Redis / PG per round 1.2, 0.5, 1.1: median 1.1 passes though one round is far under.
    # PG / bare per round 1000 / 1100, 1000 / 900, 1000 / 1200: median 0.91 misses.
    verdicts = _verdicts(_result(_rps([1200, 500, 1100], [1100, 900, 1200]), {}))
    assert [v for t, v in verdicts.items() if "Redis" in t] == ["PASS"]
    assert [v for t, v in verdicts.items() if "Redis" not in t] == ["MISS", "MISS"]


def test_errors_on_either_side_fail_the_cell() -> None:
    errors = {(2, "postgres", 400): 3}
    verdicts = _verdicts(_result(_rps([1200, 1200, 1200], [900, 900, 900]), errors))
    assert [v for t, v in verdicts.items() if "c=100" in t] == ["PASS"]
    assert [v for t, v in verdicts.items() if "c=400" in t] == ["MISS"]
    assert verdicts["API state GET on Redis >= on PostgreSQL at every concurrency"] == "MISS"


def test_the_section_shows_each_round_and_the_medians() -> None:
    text = "\n".join(section(_result(_rps([1200, 500, 1100], [1100, 900, 1200]), {}), "run-1"))
    assert "Run run-1" in text
    assert "| **median** | 100 |" in text and "**1.10**" in text and "**0.91**" in text
    assert "| 2 | 400 | redis -> reference -> postgres | 1,000 | 500 | 900 | 0.50 | 1.11 |" in text
    assert "_Not measured" in section(None, "run-1")[0]


def test_alternated_rounds_replace_the_sweeps_single_point_verdicts_for_the_same_targets() -> None:
    from bench.targets import floor_verdicts, redis_verdicts

    points = [load_point(b, c) for b in ("postgres", "redis", "reference") for c in (100, 400)]
    sweep_only = Results(run_id="r", quick=False, environment={}, settings={}, points=points)
    assert redis_verdicts(sweep_only) and floor_verdicts(sweep_only, "ours")
    both = Results(
        run_id="r",
        quick=False,
        environment={},
        settings={},
        points=points,
        alternated=_result(_rps([1200, 1200, 1200], [900, 900, 900]), {}),
    )
    assert redis_verdicts(both) == [] and floor_verdicts(both, "ours") == []
    assert len(alternated_verdicts(both)) == 3
