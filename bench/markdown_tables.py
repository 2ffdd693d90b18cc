"""Markdown tables of a run's measurements: the load points, the ceilings, worker-direct state, and the cells
they share (errors, CPU shares, milliseconds).
"""

from __future__ import annotations

from typing import Any

from bench.procstat import CpuShare
from bench.results import GENERATORS, REFERENCE, Point, Results


def table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def ms(v: Any) -> str:
    """Milliseconds to one decimal; '-' for none or NaN."""
    return "-" if v is None or v != v else f"{v:.1f}"


def cpu_share(c: CpuShare | None, *, workers: bool = False) -> str:
    """Percent of one core: server / client / postgres [/ workers] / softirq / other / steal."""
    if c is None:
        return "-"
    parts = [c.server, c.client, c.postgres] + ([c.workers] if workers else []) + [c.softirq, c.other]
    return " / ".join(f"{v:.0f}" for v in parts) + f" / {_steal(c)}"


def _steal(c: CpuShare) -> str:
    return "-" if c.steal is None else f"{c.steal:.0f}"


def _errors_cell(p: Point | None) -> str:
    if p is None:
        return "-"
    if p.errors == 0:
        return "0"
    parts = [f"{n}x{code}" for code, n in sorted(p.statuses.items())] if p.statuses else []
    if p.non_2xx and not p.statuses:
        parts.append(f"{p.non_2xx}x>=400")
    parts += [f"{n} {kind}" for kind, n in sorted(p.transport_errors.items())]
    rate = p.errors / max(p.completed + sum(p.transport_errors.values()), 1)
    return f"{p.errors} ({rate:.2%}: {', '.join(parts)})"


def _cpu_cell(p: Point | None) -> str:
    return "-" if p is None else cpu_share(p.cpu)


def _point_field(p: Point | None, name: str, fmt: str) -> str:
    return "-" if p is None else format(getattr(p, name), fmt)


def point_table(results: Results, backend: str, op: str) -> list[str]:
    """One row per concurrency: our generator's numbers, then wrk's when it ran."""
    levels = sorted({p.concurrency for p in results.points if p.backend == backend and p.op == op})
    has_wrk = any(p.generator == "wrk" and p.backend == backend and p.op == op for p in results.points)
    header = ["c", "req/s", "mean ms", "p50 ms", "p95 ms", "p99 ms", "errors", "per-conn min/max", "CPU %"]
    align = "rrrrrrlrr"
    if has_wrk:
        header += ["wrk req/s", "wrk mean", "wrk p50", "wrk p95", "wrk p99", "wrk errors", "wrk CPU %"]
        align += "rrrrrlr"
    rows = []
    for c in levels:
        ours = results.find(backend, op, "ours", c)
        row = [
            str(c),
            _point_field(ours, "requests_per_s", ",.0f"),
            _point_field(ours, "mean_ms", ".1f"),
            _point_field(ours, "p50_ms", ".1f"),
            _point_field(ours, "p95_ms", ".1f"),
            _point_field(ours, "p99_ms", ".1f"),
            _errors_cell(ours),
            f"{ours.conn_min}/{ours.conn_max}" if ours and ours.conn_max else "-",
            _cpu_cell(ours),
        ]
        if has_wrk:
            w = results.find(backend, op, "wrk", c)
            row += [
                _point_field(w, "requests_per_s", ",.0f"),
                _point_field(w, "mean_ms", ".1f"),
                _point_field(w, "p50_ms", ".1f"),
                _point_field(w, "p95_ms", ".1f"),
                _point_field(w, "p99_ms", ".1f"),
                _errors_cell(w),
                _cpu_cell(w),
            ]
        rows.append(row)
    lines = table(header, rows, align)
    notes = [p for p in results.points if p.backend == backend and p.op == op and p.note]
    if notes:
        lines.append("")
    lines += [f"- c={p.concurrency} ({GENERATORS[p.generator]}): {p.note}" for p in notes]
    runs = sorted({p.run_id for p in results.points if p.backend == backend and p.op == op})
    if runs and runs != [results.run_id]:
        lines.append(f"\n_Measured in run(s) {', '.join(runs)}, not in the latest run ({results.run_id})._")
    return lines


def relative_table(results: Results) -> list[str]:
    """Per concurrency and generator: our GET and PUT req/s over the reference route's."""
    levels = sorted({p.concurrency for p in results.points if p.backend == REFERENCE and p.op == "get"})
    gens = [g for g in GENERATORS if any(p.backend == REFERENCE and p.generator == g for p in results.points)]
    header = ["c"]
    for g in gens:
        header += [f"GET / reference ({GENERATORS[g]})", f"PUT / reference ({GENERATORS[g]})"]
    rows = []
    for c in levels:
        row = [str(c)]
        for g in gens:
            ref = results.find(REFERENCE, "get", g, c)
            for op in ("get", "put"):
                ours = results.find("postgres", op, g, c)
                row.append(
                    f"{ours.requests_per_s / ref.requests_per_s:.0%}"
                    if ours and ref and ref.requests_per_s
                    else "-"
                )
        rows.append(row)
    return table(header, rows, "r" * len(header))


def ceiling_table(results: Results) -> list[str]:
    if not results.ceilings:
        return ["_No ceilings measured in this run._"]
    rows = []
    for r in results.ceilings:
        what = {
            "asyncpg": f"raw asyncpg loop, the adapter's {r.op.upper()} statement",
            "asyncpg-fifo": f"the same, behind a FIFO semaphore of the pool's size, {r.op.upper()}",
            "service": f"StateService.task_{r.op} in a loop, no HTTP",
            "asgi": f"the Litestar app called in-process (ASGI), {r.op.upper()}, no server or socket",
        }.get(r.name, r.name)
        rows.append(
            [
                what,
                r.backend,
                str(r.concurrency),
                f"{r.ops_per_s:,.0f}",
                f"{r.p50_ms:.1f}",
                f"{r.p99_ms:.1f}",
                str(r.errors) + (f" ({'; '.join(r.error_kinds)})" if r.error_kinds else ""),
                f"{r.cpu.client:.0f} / {r.cpu.postgres:.0f} / {r.cpu.softirq:.0f} / {r.cpu.other:.0f}"
                f" / {_steal(r.cpu)}"
                if r.cpu
                else "-",
            ]
        )
    return table(
        [
            "what (one process)",
            "backend",
            "tasks",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "CPU % loop/pg/irq/other/steal",
        ],
        rows,
        "llrrrrrr",
    )


def health_table(results: Results) -> list[str]:
    backends = sorted({p.backend for p in results.points if p.op == "health"})
    lines: list[str] = []
    for b in backends:
        lines.append(f"Server on {results.titles.get(b, b)}:\n")
        lines += point_table(results, b, "health")
        lines.append("")
    return lines or ["_Not measured in this run._"]


DIRECT_TITLES = {
    "accessor-redis": "AsyncTaskStateAccessor, backend=redis (worker-direct)",
    "accessor-rest": "AsyncTaskStateAccessor, backend=rest (through the server, on Redis)",
    "redis-py": "raw redis.asyncio (ceiling)",
}


def direct_table(results: Results) -> list[str]:
    if not results.direct:
        return ["_Not measured in this run._"]
    rows = []
    for r in results.direct:
        what = DIRECT_TITLES.get(r.name, r.name)
        op = r.op.upper() + (" (the adapter's read command)" if r.op == "hmget" else "")
        rows.append(
            [
                what,
                op,
                str(r.concurrency),
                f"{r.ops_per_s:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                str(r.errors) + (f" ({'; '.join(r.error_kinds)})" if r.error_kinds else ""),
                f"{r.cpu.client:.0f} / {r.cpu.server:.0f} / {r.cpu.other:.0f}" if r.cpu else "-",
            ]
        )
    return table(
        [
            "what (one process, one event loop)",
            "op",
            "coroutines",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "CPU % this process / server / other",
        ],
        rows,
        "llrrrrrr",
    )
