"""The results of a run, as JSON, as docs/benchmarks.md, and as plots.

The markdown is generated; the analysis section between the two markers is hand-written and survives
regeneration, so a person can explain the numbers without the next run erasing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

from bench.ceiling import CeilingResult
from bench.procstat import CpuShare

ANALYSIS_START = (
    "<!-- analysis:start: hand-written, kept by `python -m bench` when it regenerates this file -->"
)
ANALYSIS_END = "<!-- analysis:end -->"
DEFAULT_ANALYSIS = "_No analysis written yet._"

GENERATORS = {"ours": "bench.loadgen", "wrk": "wrk"}


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
    run_id: str
    quick: bool
    environment: dict[str, str]
    settings: dict[str, Any]
    points: list[Point] = msgspec.field(default_factory=list)
    ceilings: list[CeilingResult] = msgspec.field(default_factory=list)
    skipped: dict[str, str] = msgspec.field(default_factory=dict)
    titles: dict[str, str] = msgspec.field(default_factory=dict)

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


# --- targets -------------------------------------------------------------------------------------------


class Verdict(Struct, frozen=True, kw_only=True):
    target: str
    generator: str
    measured: str
    verdict: str  # PASS, MISS, NOT RUN


def verdicts(results: Results) -> list[Verdict]:
    """The issue's targets, judged on PostgreSQL with one server process, per generator."""
    out: list[Verdict] = []
    for gen in ("ours", "wrk"):
        if not any(p.generator == gen and p.backend == "postgres" for p in results.points):
            continue
        get100 = results.find("postgres", "get", gen, 100)
        put100 = results.find("postgres", "put", gen, 100)
        label = GENERATORS[gen]

        def judge(ok: bool | None) -> str:
            return "NOT RUN" if ok is None else ("PASS" if ok else "MISS")

        out.append(
            Verdict(
                target="state GET >= 7,000 req/s at concurrency 100",
                generator=label,
                measured=f"{get100.requests_per_s:,.0f} req/s" if get100 else "-",
                verdict=judge(get100.requests_per_s >= 7000 if get100 else None),
            )
        )
        out.append(
            Verdict(
                target="state GET p99 <= 30 ms at concurrency 100",
                generator=label,
                measured=f"{get100.p99_ms:.1f} ms" if get100 else "-",
                verdict=judge(get100.p99_ms <= 30 if get100 else None),
            )
        )
        state_points = [
            p
            for p in results.points
            if p.backend == "postgres"
            and p.generator == gen
            and p.op in ("get", "put")
            and p.concurrency <= 400
        ]
        errors = sum(p.errors for p in state_points)
        top = max((p.concurrency for p in state_points), default=0)
        if not state_points:
            zero = "NOT RUN"
        elif errors:
            zero = "MISS"
        else:
            zero = "PASS" if top >= 400 else f"NOT RUN (only up to c={top})"
        out.append(
            Verdict(
                target="zero errors up to concurrency 400 (GET and PUT)",
                generator=label,
                measured=f"{errors} errors in {len(state_points)} points" if state_points else "-",
                verdict=zero,
            )
        )
        out.append(
            Verdict(
                target="state PUT >= 6,000 req/s at concurrency 100",
                generator=label,
                measured=f"{put100.requests_per_s:,.0f} req/s" if put100 else "-",
                verdict=judge(put100.requests_per_s >= 6000 if put100 else None),
            )
        )
    return out


# --- markdown --------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _errors(p: Point | None) -> str:
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


def _cpu(p: Point | None) -> str:
    if p is None or p.cpu is None:
        return "-"
    c = p.cpu
    return f"{c.server:.0f} / {c.client:.0f} / {c.postgres:.0f} / {c.softirq:.0f} / {c.other:.0f}"


def _field(p: Point | None, name: str, fmt: str) -> str:
    return "-" if p is None else format(getattr(p, name), fmt)


def point_table(results: Results, backend: str, op: str) -> list[str]:
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
            _field(ours, "requests_per_s", ",.0f"),
            _field(ours, "mean_ms", ".1f"),
            _field(ours, "p50_ms", ".1f"),
            _field(ours, "p95_ms", ".1f"),
            _field(ours, "p99_ms", ".1f"),
            _errors(ours),
            f"{ours.conn_min}/{ours.conn_max}" if ours and ours.conn_max else "-",
            _cpu(ours),
        ]
        if has_wrk:
            w = results.find(backend, op, "wrk", c)
            row += [
                _field(w, "requests_per_s", ",.0f"),
                _field(w, "mean_ms", ".1f"),
                _field(w, "p50_ms", ".1f"),
                _field(w, "p95_ms", ".1f"),
                _field(w, "p99_ms", ".1f"),
                _errors(w),
                _cpu(w),
            ]
        rows.append(row)
    lines = _table(header, rows, align)
    notes = [p for p in results.points if p.backend == backend and p.op == op and p.note]
    if notes:
        lines.append("")
    lines += [f"- c={p.concurrency} ({GENERATORS[p.generator]}): {p.note}" for p in notes]
    runs = sorted({p.run_id for p in results.points if p.backend == backend and p.op == op})
    if runs and runs != [results.run_id]:
        lines.append(f"\n_Measured in run(s) {', '.join(runs)}, not in the latest run ({results.run_id})._")
    return lines


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
                if r.cpu
                else "-",
            ]
        )
    return _table(
        [
            "what (one process)",
            "backend",
            "tasks",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "CPU % loop/pg/irq/other",
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


def read_analysis(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return DEFAULT_ANALYSIS
    if ANALYSIS_START in text and ANALYSIS_END in text:
        return text.split(ANALYSIS_START, 1)[1].split(ANALYSIS_END, 1)[0].strip("\n") or DEFAULT_ANALYSIS
    return DEFAULT_ANALYSIS


def markdown(results: Results, *, analysis: str, plots: list[str]) -> str:
    env, s = results.environment, results.settings
    out = [
        "# Benchmarks",
        "",
        "Generated by `python3 dev.py bench` (this run: `"
        + str(s.get("command", "python -m bench" + (" --quick" if results.quick else "")))
        + f"`), run {results.run_id}. The tables, the targets and the plots are rewritten by every run; the"
        " analysis section at the end is hand-written and kept.",
        "",
        "## Targets",
        "",
        "From the issue: PostgreSQL, one server process, a 2-core machine with the load generator on it.",
        "",
    ]
    vs = verdicts(results)
    if vs:
        out += _table(
            ["target", "generator", "measured", "verdict"],
            [[v.target, v.generator, v.measured, f"**{v.verdict}**"] for v in vs],
            "lllr",
        )
    else:
        out.append("_PostgreSQL was not measured in this run, so no target is judged._")
    out += ["", "## Environment", ""]
    out += _table(["", ""], [[k, v] for k, v in env.items()], "ll")
    out += [
        "",
        "## Method",
        "",
        f"- One `stateport serve --workers {s.get('server_workers', 1)}` process per backend on 127.0.0.1,"
        f" database pool {s.get('pool_size', '?')} connections; the load generators run on the same machine.",
        f"- `bench.loadgen`: our closed-loop HTTP/1.1 keep-alive client (asyncio Protocol on"
        f" {'uvloop' if s.get('uvloop') else 'asyncio'}), {s.get('client_processes')} client processes,"
        " connections = concurrency split between them. Each point: warm-up"
        f" {s.get('warmup_s')} s on the same connections (not recorded), then {s.get('duration_s')} s"
        " measured; every latency is kept and percentiles are exact (nearest rank) over all processes.",
        f"- wrk ({env.get('wrk', 'absent')}): the same requests replayed by a Lua script,"
        f" {s.get('client_processes')} threads, the same connections and duration, after its own warm-up run."
        " wrk counts only statuses >= 400 as errors.",
        f"- Data: {s.get('task_instances')} task instances x {s.get('keys_per_ti')} keys, seeded through the"
        " project's own API; each request goes to the next (task instance, key) in turn, with that task"
        " instance's token. GET reads pre-written keys; PUT overwrites them with a small JSON value.",
        "- Errors: non-2xx responses and transport errors (connect, reset, closed, timeout) are counted"
        " separately; the error column shows both.",
        "- mean: by Little's law it should be close to concurrency / req/s when every connection is kept"
        " busy; per-conn min/max: the fewest and most responses one connection got in the window (equal"
        " numbers mean the server served connections fairly).",
        "- CPU columns (server / client / PostgreSQL / softirq / other): percent of one core used during"
        " the measured window, read from /proc: the server"
        " process tree, the client processes, all PostgreSQL processes, kernel softirq (loopback TCP, charged"
        " to no process), and everything else on the machine (on a shared machine: other people's work)."
        " 200 = both cores busy. A point whose 'other' share exceeded"
        f" {s.get('noise_threshold', 30)}% was measured again and the quieter attempt kept (noted below the"
        " table).",
        "",
        "## Results",
        "",
    ]
    sections = sorted(
        {(p.backend, p.op) for p in results.points if p.op != "health"},
        key=lambda bo: (list(results.titles).index(bo[0]) if bo[0] in results.titles else 99, bo[1]),
    )
    for backend, op in sections:
        out += [f"### {results.titles.get(backend, backend)}: state {op.upper()}", ""]
        out += point_table(results, backend, op)
        out.append("")
    for name, reason in results.skipped.items():
        out += [f"- {name}: skipped ({reason})"]
    out += [
        "",
        "## Ceilings",
        "",
        "The same run, with layers removed: the server's cheapest endpoint (`/health/live`) under the same"
        " load (the web stack and the client alone), the use case without HTTP, and the raw driver.",
        "",
        "### `/health/live` (web framework + server + client, no database)",
        "",
        *health_table(results),
        "",
        "### Without HTTP",
        "",
        *ceiling_table(results),
        "",
        "## Plots",
        "",
    ]
    out += [f"![{p}](benchmarks/{p})" for p in plots] or ["_matplotlib is not installed: no plots._"]
    out += ["", "## Analysis", "", ANALYSIS_START, analysis, ANALYSIS_END, ""]
    return "\n".join(out)


# --- plots -----------------------------------------------------------------------------------------------


def plots(results: Results, directory: Path) -> list[str]:
    """One PNG per operation: req/s and p99 against concurrency, per backend and generator."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for op in ("get", "put"):
        series = sorted(
            {(p.backend, p.generator) for p in results.points if p.op == op},
            key=lambda s: (s[0], s[1]),
        )
        if not series:
            continue
        fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
        for backend, gen in series:
            pts = sorted(
                (p for p in results.points if (p.backend, p.op, p.generator) == (backend, op, gen)),
                key=lambda p: p.concurrency,
            )
            label = f"{backend} ({GENERATORS[gen]})"
            style = "-o" if gen == "ours" else "--s"
            ax_rps.plot([p.concurrency for p in pts], [p.requests_per_s for p in pts], style, label=label)
            ax_p99.plot([p.concurrency for p in pts], [p.p99_ms for p in pts], style, label=label)
        health = sorted(
            (p for p in results.points if p.op == "health" and p.generator == "ours"),
            key=lambda p: p.concurrency,
        )
        if health:
            ax_rps.plot(
                [p.concurrency for p in health],
                [p.requests_per_s for p in health],
                ":",
                color="grey",
                label="/health/live (bench.loadgen)",
            )
        if op == "get":
            ax_rps.axhline(7000, color="red", linewidth=0.8, label="target 7,000")
            ax_p99.axhline(30, color="red", linewidth=0.8, label="target 30 ms")
        else:
            ax_rps.axhline(6000, color="red", linewidth=0.8, label="target 6,000")
        for ax, title in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks([50, 100, 200, 400], labels=["50", "100", "200", "400"])
            ax.set_xlabel("concurrency (connections)")
            ax.set_title(f"state {op.upper()}: {title}")
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
        ax_rps.legend(fontsize=7)
        fig.tight_layout()
        name = f"state-{op}.png"
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def write(results: Results, docs: Path) -> Path:
    """Write results.json, the plots and benchmarks.md under ``docs``; return the markdown's path."""
    md = docs / "benchmarks.md"
    assets = docs / "benchmarks"
    save_json(results, assets / "results.json")
    written = plots(results, assets)
    md.write_text(markdown(results, analysis=read_analysis(md), plots=written))
    return md
