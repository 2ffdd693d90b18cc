"""The plots under docs/benchmarks/: state GET and PUT against concurrency, and the wake latency CDF.

Each returns the PNG names it wrote, or none when matplotlib is not installed.
"""

from __future__ import annotations

from pathlib import Path

from bench.results import GENERATORS, REFERENCE, Results
from bench.targets import GET_P99_TARGET_MS, GET_RPS_TARGET, PUT_RPS_TARGET, WAKE_P99_TARGET_MS


def state_plots(results: Results, directory: Path) -> list[str]:
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
            name = "reference route (bare Litestar + asyncpg)" if backend == REFERENCE else backend
            label = f"{name} ({GENERATORS[gen]})"
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
            ax_rps.axhline(GET_RPS_TARGET, color="red", linewidth=0.8, label=f"target {GET_RPS_TARGET:,}")
            ax_p99.axhline(
                GET_P99_TARGET_MS, color="red", linewidth=0.8, label=f"target {GET_P99_TARGET_MS} ms"
            )
        else:
            ax_rps.axhline(PUT_RPS_TARGET, color="red", linewidth=0.8, label=f"target {PUT_RPS_TARGET:,}")
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


def wake_latency_plot(results: Results, directory: Path) -> list[str]:
    """The wake latency CDF, when the waiters were measured."""
    w = results.waiters
    if w is None or not w.cdf:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([x for x, _ in w.cdf], [y for _, y in w.cdf], "-", label=f"{w.waiters:,} waiters")
    ax.axvline(WAKE_P99_TARGET_MS, color="red", linewidth=0.8, label=f"target p99 {WAKE_P99_TARGET_MS} ms")
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("wake latency: report returned -> waiter answered (ms)")
    ax.set_ylabel("fraction of waiters")
    ax.set_title("Wake latency CDF, one server process, PostgreSQL LISTEN/NOTIFY")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "wake-latency-cdf.png", dpi=110)
    plt.close(fig)
    return ["wake-latency-cdf.png"]
