"""A partial bench run keeps earlier runs' numbers, and says where those were measured."""

from __future__ import annotations

from bench.markdown import earlier_environments
from bench.results import Results

from tests.unit.bench_points import load_point

XEON = {"date": "2026-12-03 18:05 UTC", "CPU": "Xeon, 2 cores", "Python": "3.11.7"}
EPYC = {"date": "2026-12-04 22:40 UTC", "CPU": "EPYC, 2 cores", "Python": "3.11.7"}


def test_a_partial_run_carries_the_environment_of_every_earlier_run_it_still_shows() -> None:
    oldest = {"CPU": "Opteron"}
    previous = Results(
        run_id="B",
        quick=False,
        environment=XEON,
        settings={},
        points=[load_point("postgres", run_id="A"), load_point("postgres", run_id="B")],
        extra_runs={"chain": "B"},
        run_environments={"A": oldest, "gone": {"CPU": "no longer shown"}},
    )
    current = Results(
        run_id="C",
        quick=False,
        environment=EPYC,
        settings={},
        points=[load_point("postgres", run_id="A"), load_point("postgres", run_id="C")],
        extra_runs={"chain": "B", "alternated": "C"},
    )
    current.keep_environments(previous)
    assert current.kept_runs() == ["A", "B"]
    assert current.run_environments == {"A": oldest, "B": XEON}


def test_the_report_names_each_kept_run_with_what_differs_from_this_runs_environment() -> None:
    results = Results(
        run_id="C",
        quick=False,
        environment=EPYC,
        settings={},
        points=[load_point("postgres", run_id="A"), load_point("postgres", run_id="B")],
        run_environments={"B": XEON},
    )
    text = "\n".join(earlier_environments(results))
    assert "| run | date | CPU |" in text  # Python is the same everywhere: not repeated
    assert "| B | 2026-12-03 18:05 UTC | Xeon, 2 cores |" in text
    assert "| A | not recorded |  |" in text


def test_a_run_that_keeps_nothing_adds_nothing() -> None:
    results = Results(
        run_id="C", quick=False, environment=EPYC, settings={}, points=[load_point("postgres", run_id="C")]
    )
    assert earlier_environments(results) == []
