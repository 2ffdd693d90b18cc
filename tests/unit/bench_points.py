"""A load point for the bench's unit tests: only what a test judges varies, the rest is fixed."""

from __future__ import annotations

from bench.results import Point


def load_point(backend: str, concurrency: int = 100, *, rps: float = 1000.0, run_id: str = "r") -> Point:
    """A state GET point of our load generator, without errors."""
    return Point(
        backend=backend,
        op="get",
        generator="ours",
        concurrency=concurrency,
        requests_per_s=rps,
        p50_ms=1.0,
        p95_ms=1.0,
        p99_ms=1.0,
        max_ms=1.0,
        completed=1,
        non_2xx=0,
        transport_errors={},
        run_id=run_id,
    )
