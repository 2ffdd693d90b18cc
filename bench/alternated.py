"""Issue #15 items 1 and 3 in alternated rounds (``python -m bench --only alternated``).

The sweep measures each backend in a block of its own, a minute or more after the one before: on this
shared machine the host's speed moves more than that (PostgreSQL GET at c=400 ran 3,666-5,561 req/s
between rounds of session 14), so a Redis/PostgreSQL ratio from the sweep judges the host as much as the
code. Here three servers are up side by side for the whole part, on one freshly created database:

- ``stateport serve`` with PostgreSQL state,
- ``stateport serve`` with Redis state (runs on PostgreSQL, a fresh key prefix),
- the bare Litestar + asyncpg route (``bench/reference_app.py``) on the PostgreSQL server's seeded rows.

Each round measures state GET on each at each concurrency, one right after another, in an order rotated
from round to round (PG, Redis, bare; then Redis, bare, PG; ...). The verdicts take each ratio within its
round (Redis GET / PG GET for item 3, PG GET / bare route for item 1) and then the median over the rounds;
never a ratio of two medians. An idle server costs the others nothing to speak of (no load, a sweep timer).
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from msgspec import Struct

from bench import loadgen
from bench.procstat import CpuWindow
from bench.server import HOST, ReferenceServer, Server, expect_200, seed
from bench.services import delete_redis_prefix
from bench.sweep import BACKENDS, OPERATIONS, PG_URL, REDIS_URL, REFERENCE_OPERATIONS

ROUNDS = 3
TARGETS = ("postgres", "redis", "reference")
SEED = {"runs": 8, "tasks": 4, "keys": 8}


class AlternatedPoint(Struct, frozen=True, kw_only=True):
    round: int
    target: str  # one of TARGETS
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU in % of one core over the window: the server process, every postgres process, every
    # redis-server process (counted apart from "other" here), and the rest of the machine.
    server_pct: float | None = None
    postgres_pct: float | None = None
    redis_pct: float | None = None
    other_pct: float | None = None

    def per_request_us(self, pct: float | None) -> float | None:
        """CPU µs per request of a share of ``pct`` % of one core."""
        if pct is None or self.requests_per_s <= 0:
            return None
        return pct / 100 * 1e6 / self.requests_per_s


class AlternatedResult(Struct, kw_only=True):
    points: list[AlternatedPoint]
    rounds: int
    levels: list[int]
    duration_s: float

    def find(self, round_: int, target: str, concurrency: int) -> AlternatedPoint | None:
        return next(
            (
                p
                for p in self.points
                if p.round == round_ and p.target == target and p.concurrency == concurrency
            ),
            None,
        )

    def ratios(self, target: str, yardstick: str, concurrency: int) -> list[float]:
        """``target`` req/s over ``yardstick`` req/s, one per round in which both were measured."""
        out = []
        for r in range(1, self.rounds + 1):
            a, b = self.find(r, target, concurrency), self.find(r, yardstick, concurrency)
            if a is not None and b is not None and b.requests_per_s > 0:
                out.append(a.requests_per_s / b.requests_per_s)
        return out

    def median_ratio(self, target: str, yardstick: str, concurrency: int) -> float | None:
        ratios = self.ratios(target, yardstick, concurrency)
        return statistics.median(ratios) if ratios else None


def order(round_: int) -> list[str]:
    """The targets in round ``round_``'s order: rotated by one each round."""
    shift = (round_ - 1) % len(TARGETS)
    return [*TARGETS[shift:], *TARGETS[:shift]]


def measure(
    *,
    jwt_secret: str,
    tmp: Path,
    levels: list[int],
    duration_s: float,
    warmup_s: float,
    client_processes: int,
    rounds: int,
    pool_size: int,
    recreate_database: Callable[[], Coroutine[Any, Any, None]],
    quiet: Callable[[], None],
    log: Callable[[str], None],
) -> AlternatedResult:
    """Every round's points (see the module's docstring)."""
    asyncio.run(recreate_database())
    backends = {b.name: b for b in BACKENDS}
    envs = {
        name: {**backends[name].env(tmp / name), "STATEPORT_JWT_SECRET": jwt_secret}
        for name in ("postgres", "redis")
    }
    servers: dict[str, Server] = {}
    requests: dict[str, tuple[bytes, ...]] = {}
    try:
        for name, env in envs.items():
            log(f"alternated: seeding {name}")
            targets = asyncio.run(seed(env, **SEED))
            base = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
            server = servers[name] = Server({**base, **env}, tmp / f"{name}.log")  # stopped if it fails
            server.start()
            requests[name] = OPERATIONS[0].requests(targets, server.port)
            if name == "postgres":
                reference = servers["reference"] = ReferenceServer.on(
                    PG_URL, pool_size, tmp / "reference.log"
                )
                reference.start()
                requests["reference"] = REFERENCE_OPERATIONS[0].requests(targets, reference.port)
                expect_200(reference, REFERENCE_OPERATIONS[0].path(targets[0]))
            expect_200(server, OPERATIONS[0].path(targets[0]), token=targets[0].token)
        points = []
        for r in range(1, rounds + 1):
            for c in levels:
                for name in order(r):
                    quiet()
                    load = loadgen.LoadSpec(
                        host=HOST,
                        port=servers[name].port,
                        requests=requests[name],
                        connections=c,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                        processes=client_processes,
                    )
                    point = _point(r, name, servers[name], load)
                    log(
                        f"  round {r} {name} GET c={c}: {point.requests_per_s:,.0f} req/s"
                        f" p99 {point.p99_ms:.1f} ms errors {point.errors}"
                    )
                    points.append(point)
        return AlternatedResult(points=points, rounds=rounds, levels=list(levels), duration_s=duration_s)
    finally:
        for server in servers.values():
            server.stop()
        prefix = envs["redis"].get("STATEPORT_REDIS_PREFIX")
        if prefix:
            asyncio.run(delete_redis_prefix(REDIS_URL, prefix))


def _point(round_: int, name: str, server: Server, spec: loadgen.LoadSpec) -> AlternatedPoint:
    cpu = CpuWindow(server.pid)
    s = loadgen.run_load(spec, on_start=cpu.start, on_end=cpu.end)
    share = cpu.result
    return AlternatedPoint(
        round=round_,
        target=name,
        concurrency=spec.connections,
        requests_per_s=s.requests_per_s,
        p50_ms=s.p50_ms,
        p99_ms=s.p99_ms,
        errors=s.errors,
        server_pct=None if share is None else share.server,
        postgres_pct=None if share is None else share.postgres,
        redis_pct=None if share is None else share.redis,
        other_pct=None if share is None else round(max(share.other - share.redis, 0.0), 1),
    )
