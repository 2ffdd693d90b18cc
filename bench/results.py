"""The results of a benchmark run: its load points, ceilings and parts, and their JSON file.

docs/benchmarks/results.json holds one ``Results``; a partial run (``--only``) starts from it and
``--report-only`` renders docs/benchmarks.md from it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

from bench.alternated import AlternatedResult
from bench.burst import BurstResult
from bench.ceiling import CeilingResult
from bench.procstat import CpuShare
from bench.scaling import ScalingResult
from bench.syncexec import (
    ChainLatencyResult,
    ChainThroughputResult,
    EngineThroughputResult,
    WaitersResult,
)
from bench.watchers import WatchersResult

# Load generator name in a Point -> how the report names it.
GENERATORS = {"ours": "bench.loadgen", "wrk": "wrk"}
# Points of the reference route (bench/reference_app.py) carry this backend name; ops "get", "constant".
REFERENCE = "reference"


class Point(Struct, frozen=True, kw_only=True):
    """One load point as one generator measured it."""

    backend: str
    op: str  # get, put, health
    generator: str  # ours, wrk
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    completed: int
    non_2xx: int
    transport_errors: dict[str, int]
    statuses: dict[int, int] = msgspec.field(default_factory=dict)
    cpu: CpuShare | None = None
    mean_ms: float = 0.0
    # Fewest and most responses one connection got (bench.loadgen only): the server's fairness.
    conn_min: int = 0
    conn_max: int = 0
    attempts: int = 1
    note: str = ""
    run_id: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.transport_errors.values())


class Results(Struct, kw_only=True):
    """One run: every load point and part it measured (or kept from an earlier run), and its settings."""

    run_id: str
    quick: bool
    environment: dict[str, str]
    settings: dict[str, Any]
    points: list[Point] = msgspec.field(default_factory=list)
    ceilings: list[CeilingResult] = msgspec.field(default_factory=list)
    skipped: dict[str, str] = msgspec.field(default_factory=dict)
    titles: dict[str, str] = msgspec.field(default_factory=dict)
    # Backend name -> a caveat printed under its tables (S3: what moto is).
    notes: dict[str, str] = msgspec.field(default_factory=dict)
    direct: list[CeilingResult] = msgspec.field(default_factory=list)
    waiters: WaitersResult | None = None
    # Admission under a burst of triggers (issue 17).
    burst: BurstResult | None = None
    # Watchers of state keys on one server process (issue #16).
    watchers: WatchersResult | None = None
    chain_latency: ChainLatencyResult | None = None
    chain_throughput: ChainThroughputResult | None = None
    # Task instances per second with 1, 2 and 4 worker processes (issue #15; no target).
    engine_throughput: list[EngineThroughputResult] = msgspec.field(default_factory=list)
    # One and two server processes side by side (issue #19, bench/scaling.py).
    scaling: ScalingResult | None = None
    # PostgreSQL GET, Redis GET and the bare route in alternated rounds (issue #15, bench/alternated.py).
    alternated: AlternatedResult | None = None
    # "accessor-rest get c=100" -> sockets left in TIME_WAIT towards the server by that loop (churn).
    direct_churn: dict[str, int] = msgspec.field(default_factory=dict)
    # Part (direct, waiters, chain) -> the run that measured it, when a partial run kept older numbers.
    extra_runs: dict[str, str] = msgspec.field(default_factory=dict)
    # Run id -> the environment of an earlier run whose numbers are kept: a partial run on another machine
    # must not present them as measured on its own.
    run_environments: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)

    def kept_runs(self) -> list[str]:
        """The earlier runs whose numbers this report still shows, oldest first."""
        runs = {p.run_id for p in self.points if p.run_id} | set(self.extra_runs.values())
        return sorted(runs - {self.run_id})

    def keep_environments(self, previous: Results) -> None:
        """Carry over from ``previous`` the environment of every earlier run still shown."""
        known = previous.run_environments | {previous.run_id: previous.environment}
        self.run_environments = {run: known[run] for run in self.kept_runs() if run in known}

    def find(self, backend: str, op: str, generator: str, concurrency: int) -> Point | None:
        for p in self.points:
            if (p.backend, p.op, p.generator, p.concurrency) == (backend, op, generator, concurrency):
                return p
        return None


def save_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=1))


def load_json(path: Path) -> Results | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Results)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
