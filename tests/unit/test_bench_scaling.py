"""bench/markdown_scaling.py: ratios are taken within a round, then the median over rounds."""

from __future__ import annotations

import math
from pathlib import Path

from bench.markdown_scaling import derive, section, summaries
from bench.procstat import CpuShare
from bench.results import load_json
from bench.scaling import ScalingResult, ScalingRound

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _round(processes: int, n: int, rps: float, server: float, machine: float) -> ScalingRound:
    return ScalingRound(
        processes=processes,
        round=n,
        requests_per_s=rps,
        p50_ms=1.0,
        p99_ms=2.0,
        errors=0,
        cpu=CpuShare(server=server, client=10, postgres=5, machine=machine, other=machine - server - 15),
        chain={"n": 100, "p50_ms": 10.0, "p99_ms": 20.0},
        chain_errors=0,
        chain_cpu=CpuShare(server=50, client=1, postgres=20, machine=100, other=0, workers=30),
        chain_window_s=2.0,
        pg_connections=21 * processes,
        pg_backends_get_s=0.5,
        pg_backends_chain_s=0.2,
    )


def _result(rounds: list[ScalingRound]) -> ScalingResult:
    return ScalingResult(
        rounds=rounds,
        concurrency=100,
        duration_s=10.0,
        chain_runs=100,
        pool_size=20,
        pg_max_connections=100,
        cores=2,
    )


def test_a_round_s_ratios_use_its_own_numbers() -> None:
    d = derive(_round(1, 0, 1000.0, 50.0, 150.0), 10.0)
    assert d.per_server_core == 2000.0
    assert math.isclose(d.per_busy_core, 1000 / 1.5)
    assert math.isclose(d.server_us, 500.0)
    assert math.isclose(d.postgres_us, 0.5 * 1e6 / 10_000)
    # Per chain run: 50% of a core over 2 s for 100 runs, and the backends' 0.2 s.
    assert math.isclose(d.chain_server_ms, 10.0)
    assert math.isclose(d.chain_postgres_ms, 2.0)
    assert math.isclose(d.chain_worker_ms, 6.0)


def test_medians_are_of_per_round_ratios_never_ratios_of_medians() -> None:
    # Per core: 2,000, 5,000 and 3,000 GETs/s, median 3,000; the median req/s (2,000) over the median
    # server CPU (50%) would say 4,000, which no round measured.
    rounds = [_round(1, 0, 1000, 50, 100), _round(1, 1, 2000, 40, 100), _round(1, 2, 3000, 100, 100)]
    (one,) = summaries(_result(rounds))
    assert one.rounds == 3
    assert math.isclose(one.median.per_server_core, 3000.0, rel_tol=1e-3)
    assert one.pg_connections == 21


def test_the_section_reads_one_against_two_processes() -> None:
    rounds = [_round(1, 0, 1000, 50, 150), _round(2, 0, 1800, 95, 190)]
    text = "\n".join(section(_result(rounds), "RUN"))
    assert "Run RUN" in text
    assert "Two processes served 1.80x the GETs of one" in text
    # 100 max_connections over 21 connections per process.
    assert "about 4 server processes fit" in text
    assert section(None, "RUN") == ["_Not measured in this run (`python -m bench --only scaling`)._"]


def test_the_committed_results_hold_the_part() -> None:
    results = load_json(DOCS / "benchmarks" / "results.json")
    assert results is not None and results.scaling is not None
    assert {r.processes for r in results.scaling.rounds} == {1, 2}
