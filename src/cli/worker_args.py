"""The ``stateport worker`` command's arguments, and its entry, without the worker SDK imported.

Every ``stateport`` command builds the whole parser; importing ``stateport.worker`` for it (httpx, aiohttp)
took most of a short command's start (``token api``, a configuration error). ``run`` imports the worker
SDK (``stateport.worker.cli``) when the command runs.
"""

from __future__ import annotations

import argparse

from stateport.cli.arguments import integer, seconds

# The worker SDK's floor (stateport.worker.execution.MIN_HEARTBEAT_S), repeated so that the parser does not
# import the SDK: a period of 0 or less heartbeated each running task in a loop (300 requests a second).
MIN_HEARTBEAT_S = 0.2
# The server's bound on a claim's long-poll (wait_s of POST /execution/workers/claim).
MAX_CLAIM_WAIT_S = 60.0
# The SDK's bound on its concurrency (stateport.worker.runner.MAX_CONCURRENCY): what one stop poll names.
MAX_CONCURRENCY = 1000


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the worker's arguments to ``parser`` (the ``worker`` subcommand of ``stateport``)."""
    parser.add_argument(
        "target", metavar="MODULE[:ATTR]", help="module defining the DAGs (ATTR: one Dag or a list)"
    )
    # No default from the environment here: ``--help`` shows defaults, and must never show a token.
    parser.add_argument("--url", help="server URL, e.g. http://127.0.0.1:8080 (default: STATEPORT_URL)")
    parser.add_argument("--token", help="API token with scope worker (default: STATEPORT_TOKEN)")
    parser.add_argument("--queues", default="default", help="comma-separated queues to claim from")
    parser.add_argument(
        "--concurrency",
        type=integer(1, MAX_CONCURRENCY),
        default=4,
        help=f"task instances run at once, at most {MAX_CONCURRENCY}",
    )
    parser.add_argument(
        "--worker-id",
        help="the worker's name in claims, unique among running workers (default: <hostname>-<pid>-<random>)",
    )
    parser.add_argument("--register", action="store_true", help="register the DAG specs first (dags:write)")
    parser.add_argument(
        "--grace", type=seconds(0), default=30.0, help="seconds running tasks get on shutdown"
    )
    parser.add_argument(
        "--wait",
        type=seconds(0, MAX_CLAIM_WAIT_S),
        default=10.0,
        help=f"long-poll seconds of each claim, at most {MAX_CLAIM_WAIT_S:g}",
    )
    parser.add_argument(
        "--heartbeat",
        type=seconds(MIN_HEARTBEAT_S),
        help=f"heartbeat period in seconds, at least {MIN_HEARTBEAT_S:g} (default: a third of the lease)",
    )
    parser.add_argument(
        "--stall-exit",
        type=seconds(1),
        default=60.0,
        help="exit (status 70) once the event loop has not turned for this many seconds: an async task "
        "that never awaits holds it, and a supervisor should start a new worker",
    )
    parser.add_argument("--app-dir", default=".", help="directory put first on sys.path")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level"
    )


def run(args: argparse.Namespace) -> int:
    """The ``stateport worker`` command (``stateport.worker.cli.run``)."""
    from stateport.worker.cli import run as run_worker

    return run_worker(args)
