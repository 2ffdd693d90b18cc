"""Markdown sections for synchronous execution: many waiters on one server process, and the 3-task chain."""

from __future__ import annotations

from typing import Any

from bench.markdown_tables import cpu_share, ms, table
from bench.results import Results


def waiters_section(results: Results) -> list[str]:
    w = results.waiters
    if w is None:
        return ["_Not measured in this run._"]
    mib = 1024
    rows = [
        [
            "waiters: long-polls `GET .../outcome?timeout=300` / NDJSON streams `GET .../wait?interval=1`",
            f"{w.waiters - w.stream_waiters:,} / {w.stream_waiters:,}"
            f" on {w.runs:,} runs ({w.per_run} per run)",
        ],
        [
            "... whose answer says success: outcome / stream",
            f"{w.outcome_success:,} of {w.waiters - w.stream_waiters:,} / {w.stream_success:,} of"
            f" {w.stream_waiters:,}",
        ],
        [
            "connections opened / connect errors / time to open",
            f"{w.opened:,} / {w.connect_errors} / {w.open_s:.1f} s",
        ],
        [
            "answers 200 with a success outcome",
            f"{w.success_bodies:,} of {w.waiters:,} (statuses: {w.statuses})",
        ],
        ["open-files limit: server / client", f"{w.nofile_server:,} / {w.nofile_client:,}"],
        [
            "server RSS before / with the waiters open",
            f"{w.rss_before_kib / mib:.1f} MiB / {w.rss_after_kib / mib:.1f} MiB",
        ],
        ["memory per waiter (RSS delta / waiters)", f"{w.rss_per_waiter_kib:.1f} KiB"],
        [
            f"server's PostgreSQL connections while waiting ({w.pg_waiting.samples} samples over"
            f" {w.idle_window_s:.0f} s)",
            f"pool: {w.pg_waiting.pool_total_max} open, at most {w.pg_waiting.pool_busy_max} not idle;"
            f" listener: {w.pg_waiting.listener_total_max}",
        ],
        [
            f"... while the waiters were woken ({w.pg_waking.samples} samples)",
            f"pool: {w.pg_waking.pool_total_max} open, at most {w.pg_waking.pool_busy_max} not idle;"
            f" listener: {w.pg_waking.listener_total_max}",
        ],
        [
            "server's PostgreSQL connections, most seen / pool size (STATEPORT_DB_POOL_SIZE) + 1 listener",
            f"{max(w.pg_waiting.pool_total_max, w.pg_waking.pool_total_max)}"
            f" + {max(w.pg_waiting.listener_total_max, w.pg_waking.listener_total_max)} / {w.pool_size} + 1",
        ],
        [
            f"CPU % while the waiters wait, {w.idle_window_s:.0f} s"
            " (server / client / pg / irq / other / steal)",
            cpu_share(w.idle_cpu),
        ],
        [
            "database transactions/s while the waiters wait (pg_stat_database, the server's database)",
            f"{w.idle_db_xact_per_s:,.1f}",
        ],
        [
            "reports (worker in the bench process, over HTTP)",
            f"{w.runs:,} in {w.reports_s:.1f} s ({w.runs / w.reports_s if w.reports_s else 0:,.0f}/s),"
            f" {w.report_concurrency} at once, {w.report_errors} errors",
        ],
        [
            "CPU % while waking (server / client+worker / postgres / irq / other / steal)",
            cpu_share(w.wake_cpu),
        ],
    ]
    out = table(["", ""], rows, "ll")
    out += [
        "",
        "Wake latency (ms), from the report call's return in the worker to the waiter's whole answer:",
        "",
    ]
    head = ["measured from", "n", "min", "p50", "p90", "p99", "max"]
    lat_rows = []
    for label, d in (("report returned", w.wake), ("report sent", w.wake_from_report_start)):
        lat_rows.append(
            [
                label,
                f"{d['n']:,}",
                ms(d["min_ms"]),
                ms(d["p50_ms"]),
                ms(d["p90_ms"]),
                ms(d["p99_ms"]),
                ms(d["max_ms"]),
            ]
        )
    out += table(head, lat_rows, "lrrrrrr")
    out += [
        "",
        f"{w.answered_before_report_returned:,} waiters had their answer before their run's report call"
        " returned (negative latency): the server commits, notifies, then answers the report, so a woken"
        " waiter can win the race.",
        "",
        f"How the waiters are held: {len(w.client_sources) or 1} client processes (`bench.waiters.hold`,"
        " one `asyncio.Protocol` per connection on uvloop), each binding its connections to its own source"
        f" address ({', '.join(w.client_sources) or '127.0.0.1'}) before connecting, at most"
        " 15,000 each: the kernel gives a bound socket a port from `ip_local_port_range` (about 28,000) per"
        " source address, and 127.0.0.0/8 is all loopback. Each process raises its soft `RLIMIT_NOFILE`, and"
        " the hard one up to `fs.nr_open` where it may (root with CAP_SYS_RESOURCE); the server is started"
        " with the same (open-files limit above). Where the hard limit cannot be raised the waiters are"
        " capped to what the server's limit holds (less 256 for its own descriptors) and the run says so."
        " Connects are 200 at a time per process, within the server's listen backlog (2,048) and"
        " `net.core.somaxconn`."
        + (
            f" **This run asked for {results.settings['waiters_capped_from']:,} waiters; the server's"
            f" open-files limit ({w.nofile_server:,}, hard limit not raisable here) held {w.waiters:,}.**"
            if "waiters_capped_from" in results.settings
            else ""
        ),
        "",
        f"**Computed, not measured**: Airflow's wait endpoint re-reads the run from the database once per"
        f" waiter per `interval`; at `interval={w.airflow_interval_s:g}` the same {w.waiters:,} waiters would"
        f" cost {w.waiters / w.airflow_interval_s:,.0f} queries/s continuously while they wait, and a waiter"
        f" would learn of its outcome up to {w.airflow_interval_s:g} s late (half that on average). Here"
        " they cost the safety re-reads only (each watch re-reads its run every 30 s x [0.5, 1.5], the first"
        f" 15-45 s after it starts: about {w.runs / 30:,.0f} reads/s for {w.runs:,} runs in steady state),"
        f" plus one read per run change; measured above: {w.idle_db_xact_per_s:,.1f} transactions/s over a"
        f" {w.idle_window_s:.0f} s window that began about 8 s after the first waiter.",
    ]
    return out


def chain_section(results: Results) -> list[str]:
    out: list[str] = []
    c = results.chain_latency
    if c is None:
        out.append("_Latency not measured in this run._")
    else:
        out += [
            f"Trigger-and-wait one run at a time (`AsyncStateportClient.run`: `POST .../dagRuns` with"
            f" `Prefer: wait=10`), one `stateport worker` process (concurrency {c.worker_concurrency}),"
            f" {c.warmup} warm-up runs then {c.runs} measured; {c.errors} errors.",
            "",
        ]
        head = ["", "n", "min", "p50", "p90", "p99", "max"]
        rows = [
            ["trigger-to-result (client)", f"{c.latency['n']:,}"]
            + [ms(c.latency[k]) for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
        ]
        for name, d in c.stages.items():
            rows.append(
                [name, f"{d['n']:,}"] + [ms(d[k]) for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
            )
        out += table(head, rows, "lrrrrrr")
        if c.put_c1:
            puts = ", ".join(f"{p.p50_ms:.2f} ms ({p.requests_per_s:,.0f} req/s)" for p in c.put_c1)
            out += [
                "",
                f"The yardstick, a state PUT at concurrency 1 on the same server (`bench.loadgen`, one"
                f" connection, 3 s just before and just after the runs): p50 {puts}. Chain p50 / PUT p50 ="
                f" **{c.ratio:.1f}x**.",
            ]
        out += ["", *_db_stage_table(c.db_stages)]
        out += [
            "",
            "The stages come from the tasks' own start times (each task writes `time.monotonic()` when it"
            " starts; one clock for all processes): *trigger sent -> a starts* is the trigger's commit, the"
            " queue event, the worker's claim long-poll waking and claiming, and the task's dispatch; *a ->"
            " b* and *b -> c* are a report, the run's advance and the report's answer, which carries the next"
            " task (the worker's report claims it: `Stateport-Claim`); *c starts"
            " -> answer received* is the last report, the outcome, the run event, the waiter's wake and the"
            " response.",
            "",
            f"CPU % over the measured runs (server / client / postgres / worker / irq / other / steal):"
            f" {cpu_share(c.cpu, workers=True)}",
            "",
        ]
    t = results.chain_throughput
    if t is None:
        out.append("_Throughput not measured in this run._")
    else:
        out += [
            f"Runs per second: {t.workers} `stateport worker` processes (concurrency {t.worker_concurrency}"
            f" each), {t.clients} `bench.loadgen` connections each sending `POST .../dagRuns` with"
            f" `Prefer: wait=60` and the next one when the answer (the outcome) comes; {t.window_s:.0f} s"
            " measured after a warm-up.",
            "",
        ]
        out += table(
            [
                "runs/s",
                "completed",
                "p50 ms",
                "p99 ms",
                "max ms",
                "errors",
                "CPU % server / client / postgres / workers / irq / other / steal",
            ],
            [
                [
                    f"{t.runs_per_s:,.1f}",
                    f"{t.completed:,}",
                    ms(t.p50_ms),
                    ms(t.p99_ms),
                    ms(t.max_ms),
                    str(t.errors) + (f" ({t.statuses} {t.transport_errors})" if t.errors else ""),
                    cpu_share(t.cpu, workers=True),
                ]
            ],
            "rrrrrlr",
        )
        out += ["", *_db_stage_table(t.db_stages)]
        if t.stages:
            out += [
                "",
                "Under this load, the gaps between the tasks' starts (every run, warm-up included; ms):",
                "",
            ]
            keys = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
            out += table(
                ["", "n", "min", "p50", "p90", "p99", "max"],
                [[k, f"{d['n']:,}"] + [ms(d[x]) for x in keys] for k, d in t.stages.items()],
                "lrrrrrr",
            )
    out += ["", *engine_section(results)]
    return out


def engine_section(results: Results) -> list[str]:
    """Task instances per second with 1, 2 and 4 worker processes, next to state PUT req/s (no target)."""
    rows = results.engine_throughput
    if not rows:
        return ["_Engine throughput not measured in this run._"]
    e = rows[0]
    out = [
        f"Engine throughput: {e.runs} runs of an {e.task_instances // max(e.runs, 1)}-task DAG of trivial"
        " independent tasks queued first, then N `stateport worker` processes (concurrency"
        f" {e.worker_concurrency} each) drain them; task instances per second from the server's own"
        " timestamps (first claim to last report applied). Next to it, state PUT req/s at concurrency 16"
        " on the same server just before (`bench.loadgen`, 3 s). No target.",
        "",
    ]
    out += table(
        [
            "workers",
            "TIs/s",
            "completed",
            "window s",
            "state PUT req/s (c=16)",
            "CPU % server / client / postgres / workers / irq / other / steal",
        ],
        [
            [
                str(r.workers),
                f"{r.tis_per_s:,.0f}",
                f"{r.completed:,}/{r.task_instances:,}",
                f"{r.window_s:.2f}",
                f"{r.put.requests_per_s:,.0f}" if r.put else "-",
                cpu_share(r.cpu, workers=True),
            ]
            for r in rows
        ],
        "rrrrrl",
    )
    return out


def _db_stage_table(stages: dict[str, dict[str, Any]]) -> list[str]:
    if not stages:
        return []
    keys = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    return [
        "The same runs from the server's own timestamps (run `created_at`, each task instance's `started_at`"
        " = claimed and `ended_at` = report applied; ms):",
        "",
        *table(
            ["stage (server clock)", "n", "min", "p50", "p90", "p99", "max"],
            [[k, f"{d['n']:,}"] + [ms(d[x]) for x in keys] for k, d in stages.items()],
            "lrrrrrr",
        ),
    ]


def watchers_section(results: Results) -> list[str]:
    """Issue #16: watchers of state keys (long-polls) on one server process, woken by one PUT per key."""
    w = results.watchers
    if w is None:
        return ["_Not measured in this run._"]
    rows = [
        [
            "watchers: `GET /execution/state/ti/{ti}/{key}?wait=300` + `If-None-Match`",
            f"{w.watchers:,} on {w.keys} keys",
        ],
        [
            "connections opened / connect errors / time to open",
            f"{w.opened:,} / {w.connect_errors} / {w.open_s:.1f} s",
        ],
        ["answers 200 after the write (statuses)", f"{w.answered_200:,} of {w.watchers:,} ({w.statuses})"],
        ["memory per watcher (RSS delta / watchers)", f"{w.rss_per_watcher_kib:.1f} KiB"],
        [
            f"server's PostgreSQL connections while waiting ({w.pg_waiting.samples} samples)",
            f"pool: {w.pg_waiting.pool_total_max} open, at most {w.pg_waiting.pool_busy_max} not idle;"
            f" listener: {w.pg_waiting.listener_total_max}",
        ],
        [
            f"... while they were woken ({w.pg_waking.samples} samples)",
            f"pool: {w.pg_waking.pool_total_max} open, at most {w.pg_waking.pool_busy_max} not idle;"
            f" listener: {w.pg_waking.listener_total_max}",
        ],
        [f"{w.keys} PUTs, one at a time, 0.2 s apart", f"{w.writes_s:.2f} s, {w.write_errors} errors"],
        [
            "wake after the write's 204: p50 / p90 / p99 / max (ms)",
            " / ".join(ms(w.wake[f"{q}_ms"]) for q in ("p50", "p90", "p99", "max")),
        ],
    ]
    return table(["", "measured"], rows, "lr")


def burst_section(results: Results) -> list[str]:
    """Issue 17: a burst of trigger-and-waits against a DAG with max_queued_runs (bench/burst.py)."""
    b = results.burst
    if b is None:
        return ["_Not measured in this run._"]
    rows = [
        ["trigger-and-waits sent at once (`Prefer: wait=120`)", f"{b.triggers:,}"],
        ["the DAG's `max_queued_runs`", f"{b.max_queued_runs:,}"],
        ["answers by status", ", ".join(f"{k}: {v:,}" for k, v in sorted(b.statuses.items()))],
        ["5xx", f"{b.server_errors:,}"],
        ["429 answered after p50 / p99", f"{b.refused_p50_ms:,.0f} / {b.refused_p99_ms:,.0f} ms"],
        [
            "429 answered after p50 / p99, from the request's sending",
            f"{b.refused_sent_p50_ms:,.0f} / {b.refused_sent_p99_ms:,.0f} ms",
        ],
        ["accepted: trigger-and-wait p50 / p99", f"{b.accepted_p50_ms:,.0f} / {b.accepted_p99_ms:,.0f} ms"],
        [
            "accepted: from the workers' start, p99 / all answered in",
            f"{b.drain_p99_ms:,.0f} ms / {b.drain_s:.1f} s",
        ],
        [
            "server RSS before / peak / after",
            f"{b.rss_before_kib / 1024:.0f} / {b.rss_peak_kib / 1024:.0f} / {b.rss_after_kib / 1024:.0f} MiB",
        ],
    ]
    return [
        *table(["", ""], rows, "ll"),
        "",
        "No worker serves the DAG while the burst lands, so no run leaves `queued` and the limit is exact;"
        " two `stateport worker bench.burst_dag` processes start once every refusal is in. The accepted"
        " callers' latency is therefore mostly their wait for the workers to start and drain 1,000 runs.",
    ]
