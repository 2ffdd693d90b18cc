"""docs/benchmarks.md: the targets, the method, every table, the plots, and a hand-written analysis.

The markdown is generated; the analysis section between the two markers is hand-written and survives
regeneration, so a person can explain the numbers without the next run erasing it.
"""

from __future__ import annotations

from pathlib import Path

from bench.markdown_alternated import section as alternated_section
from bench.markdown_scaling import section as scaling_section
from bench.markdown_sync_execution import burst_section, chain_section, waiters_section, watchers_section
from bench.markdown_tables import (
    ceiling_table,
    direct_table,
    health_table,
    point_table,
    relative_table,
    table,
)
from bench.results import REFERENCE, Results
from bench.targets import (
    GET_RPS_TARGET,
    PUT_RPS_TARGET,
    TARGET_MACHINE_CONSTANT_RPS,
    TARGET_MACHINE_REFERENCE_RPS,
    alternated_verdicts,
    batch_verdicts,
    postgres_state_verdicts,
    redis_verdicts,
    sync_execution_verdicts,
)

ANALYSIS_START = (
    "<!-- analysis:start: hand-written, kept by `python -m bench` when it regenerates this file -->"
)
ANALYSIS_END = "<!-- analysis:end -->"
DEFAULT_ANALYSIS = "_No analysis written yet._"


def reference_section(results: Results) -> list[str]:
    """The reference app's tables, and Stateport's PostgreSQL sweep as fractions of its route."""
    if not any(p.backend == REFERENCE for p in results.points):
        return ["_Not measured in this run._"]
    s = results.settings
    pool = s.get("reference_pool_size", s.get("pool_size", "?"))
    out = [
        'Issue #2 sets its targets for a 2-core machine on which "a bare Litestar route doing the same'
        f" primary-key read with raw asyncpg served about {TARGET_MACHINE_REFERENCE_RPS:,} req/s under"
        f' uvicorn ({TARGET_MACHINE_CONSTANT_RPS:,} req/s for a constant JSON body)". Machines differ (this'
        " one from day to day), so the suite serves that route itself, right after the PostgreSQL sweep and"
        " on its data: `bench/reference_app.py`, one uvicorn process with the options `stateport serve`"
        " uses (factory, uvloop, httptools, no access log, one worker), an asyncpg pool of"
        f" {pool} connections (the server's size; like the server's, it skips asyncpg's reset query on"
        " release, so one round trip per request), no auth, one `fetchrow` of the adapter's own GET"
        " statement per request; the scope of each task instance is looked up in a dict loaded at start."
        " Same targets, generators, warm-up, duration and CPU columns as the sweep (the server column is"
        " the reference process). The targets table judges our numbers against it:"
        f" {GET_RPS_TARGET / TARGET_MACHINE_REFERENCE_RPS:.0%} of the route for GET"
        f" ({GET_RPS_TARGET:,} / {TARGET_MACHINE_REFERENCE_RPS:,}),"
        f" {PUT_RPS_TARGET / TARGET_MACHINE_REFERENCE_RPS:.0%} for PUT.",
        "",
        "### `GET /ref/state/{ti_id}/{key}`: the same primary-key read, raw asyncpg",
        "",
        *point_table(results, REFERENCE, "get"),
        "",
        "### `GET /ref/constant`: a constant JSON body, no database",
        "",
        *point_table(results, REFERENCE, "constant"),
        "",
        "### Stateport on PostgreSQL as a fraction of the reference route",
        "",
        *relative_table(results),
    ]
    return out


def read_analysis(path: Path) -> str:
    """The hand-written analysis between the markers of the markdown at ``path``, to keep it."""
    try:
        text = path.read_text()
    except OSError:
        return DEFAULT_ANALYSIS
    if ANALYSIS_START in text and ANALYSIS_END in text:
        return text.split(ANALYSIS_START, 1)[1].split(ANALYSIS_END, 1)[0].strip("\n") or DEFAULT_ANALYSIS
    return DEFAULT_ANALYSIS


def earlier_environments(results: Results) -> list[str]:
    """Where the kept numbers of earlier runs were measured: what differs from this run's environment."""
    runs = results.kept_runs()
    if not runs:
        return []
    env = results.environment
    known = {run: results.run_environments[run] for run in runs if run in results.run_environments}
    keys = ["date"] + [k for k in env if k != "date" and any(e.get(k, "-") != env[k] for e in known.values())]
    rows = [
        [run, *(known[run].get(k, "-") for k in keys)]
        if run in known
        else [run, "not recorded", *[""] * (len(keys) - 1)]
        for run in runs
    ]
    return [
        "",
        "Numbers kept from earlier runs were measured where these say (only what differs from the above):",
        "",
        *table(["run", *keys], rows, "l" * (len(keys) + 1)),
    ]


def render(results: Results, *, analysis: str, plots: list[str]) -> str:
    """docs/benchmarks.md for ``results``, with ``analysis`` kept and ``plots`` (PNG names) linked."""
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
    vs = postgres_state_verdicts(results)
    if vs:
        out += table(
            ["target", "generator", "measured", "verdict"],
            [[v.target, v.generator, v.measured, f"**{v.verdict}**"] for v in vs],
            "lllr",
        )
    else:
        out.append("_PostgreSQL was not measured in this run, so no target is judged._")
    extra = (
        redis_verdicts(results)
        + alternated_verdicts(results)
        + sync_execution_verdicts(results)
        + batch_verdicts(results)
    )
    if extra:
        out += [
            "",
            "Issues #3 (Redis and S3 backends, worker-direct), #5 (synchronous execution) and #16 (state"
            " batches), same machine:",
            "",
        ]
        out += table(
            ["target", "measured by", "measured", "verdict"],
            [[v.target, v.generator, v.measured, f"**{v.verdict}**"] for v in extra],
            "lllr",
        )
    if results.extra_runs and set(results.extra_runs.values()) != {results.run_id}:
        out += [
            "",
            "_Parts measured in earlier runs: "
            + ", ".join(f"{k} in {v}" for k, v in sorted(results.extra_runs.items()) if v != results.run_id)
            + "._",
        ]
    out += ["", "## Environment", ""]
    out += table(["", ""], [[k, v] for k, v in env.items()], "ll")
    out += earlier_environments(results)
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
        "- CPU columns (server / client / PostgreSQL / softirq / other / steal): percent of one core used"
        " during the measured window, read from /proc: the server process tree, the client processes, all"
        " PostgreSQL processes, kernel softirq (loopback TCP, charged to no process), everything else on the"
        " machine (on a shared machine: other people's work), and steal: time the virtual machine's cores"
        " were ready to run but the hypervisor ran something else (capacity this machine did not get; '-'"
        " in runs before it was recorded). 200 = both cores busy. A point whose 'other' share exceeded"
        f" {s.get('noise_threshold', 30)}% was measured again and the quieter attempt kept (noted below the"
        " table).",
        "",
        "## Results",
        "",
    ]
    sections = sorted(
        {(p.backend, p.op) for p in results.points if p.op != "health" and p.backend != REFERENCE},
        key=lambda bo: (list(results.titles).index(bo[0]) if bo[0] in results.titles else 99, bo[1]),
    )
    for backend, op in sections:
        out += [f"### {results.titles.get(backend, backend)}: state {op.upper()}", ""]
        out += point_table(results, backend, op)
        if backend in results.notes:
            out += ["", f"_{results.notes[backend]}_"]
        out.append("")
    for name, reason in results.skipped.items():
        out += [f"- {name}: skipped ({reason})"]
    out += [
        "",
        "## The issue's yardstick: bare Litestar + asyncpg route (same run)",
        "",
        *reference_section(results),
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
        "## Worker-direct state (issue #3)",
        "",
        "N coroutines in one process (the bench's), on one event loop, sharing one accessor bound to one"
        " seeded task instance (its keys in turn) or one raw redis-py client with the adapter's options."
        " The REST accessor goes through the same `stateport serve` process as the Redis sweep above (its"
        " state on Redis). CPU: this process / the server process / everything else.",
        "",
        *direct_table(results),
        "",
        "## Synchronous execution (issue #5)",
        "",
        "One `stateport serve --workers 1` process on PostgreSQL (`stateport_bench`, recreated), EventBus"
        " PostgreSQL LISTEN/NOTIFY (`STATEPORT_EVENTS_BACKEND=postgres`), pool"
        f" {results.waiters.pool_size if results.waiters else s.get('pool_size', '?')} connections.",
        "",
        "### Many waiters on one server process",
        "",
        *waiters_section(results),
        "",
        "### Watchers of state keys on one server process (issue #16)",
        "",
        *watchers_section(results),
        "",
        "### A 3-task chain (a -> b -> c, trivial async tasks), end to end",
        "",
        *chain_section(results),
        "",
        "### A burst of triggers against max_queued_runs (issue 17)",
        "",
        *burst_section(results),
        "",
        "## State GET on PostgreSQL, on Redis and on the bare route, alternated rounds (issue #15)",
        "",
        *alternated_section(results.alternated, results.extra_runs.get("alternated", results.run_id)),
        "",
        "## One and two server processes (issue #19)",
        "",
        *scaling_section(results.scaling, results.extra_runs.get("scaling", results.run_id)),
        "",
        "## Plots",
        "",
    ]
    out += [f"![{p}](benchmarks/{p})" for p in plots] or ["_matplotlib is not installed: no plots._"]
    out += ["", "## Analysis", "", ANALYSIS_START, analysis, ANALYSIS_END, ""]
    return "\n".join(out)
