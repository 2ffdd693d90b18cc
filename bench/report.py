"""A run's report under docs/: its results as JSON, its plots, and docs/benchmarks.md.

The schema is in bench.results, the targets in bench.targets, the markdown in bench.markdown and the
plots in bench.plots; this module writes them together.
"""

from __future__ import annotations

from pathlib import Path

from bench import markdown
from bench.plots import state_plots, wake_latency_plot
from bench.results import Results, save_json


def write(results: Results, docs: Path) -> Path:
    """Write results.json, the plots and benchmarks.md under ``docs``; return the markdown's path."""
    md = docs / "benchmarks.md"
    assets = docs / "benchmarks"
    save_json(results, assets / "results.json")
    written = state_plots(results, assets) + wake_latency_plot(results, assets)
    md.write_text(markdown.render(results, analysis=markdown.read_analysis(md), plots=written))
    return md
