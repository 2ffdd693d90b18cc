"""The ``stateport`` argument parser: every command, its arguments and the function that runs it.

A handler takes the settings and the parsed arguments and returns the exit code; ``worker`` sets
``client_command`` instead, since it reads no server settings.
"""

from __future__ import annotations

import argparse
import uuid

from stateport.cli import runs, server, state, stores, tokens
from stateport.config import MAX_TOKEN_TTL_S
from stateport.domain.models import RunState
from stateport.worker import cli as worker_cli

# The first line of the package's docstring, which ``--help`` shows under the usage.
DESCRIPTION = "The ``stateport`` command line."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stateport", description=DESCRIPTION)
    p.add_argument("--database-url", help="overrides STATEPORT_DATABASE_URL")
    p.add_argument("--data-dir", help="overrides STATEPORT_DATA_DIR")
    sub = p.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP service (applies pending migrations first)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="server processes (default 1)")
    serve.set_defaults(handler=server.serve)

    worker = sub.add_parser("worker", help="run a worker for the DAGs of a Python module")
    worker_cli.configure(worker)
    worker.set_defaults(handler=None, client_command=worker_cli.run)

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=server.migrate)

    cleanup = sub.add_parser(
        "cleanup", help="delete expired task and asset state, and finished runs past their retention"
    )
    cleanup.add_argument("--batch-size", type=_positive_int, default=1000)
    cleanup.add_argument(
        "--runs-older-than",
        type=float,
        metavar="DAYS",
        help="delete finished runs last changed more than DAYS ago, with their task instances and result "
        "blobs (default: STATEPORT_RUN_RETENTION_DAYS; 0 keeps every run)",
    )
    cleanup.set_defaults(handler=stores.on_stores(stores.cleanup))

    token = sub.add_parser("token", help="mint a token signed with the configured key")
    token_sub = token.add_subparsers(metavar="KIND", required=True)
    ti = token_sub.add_parser("ti", help="a task-instance token for the Execution API")
    ti.add_argument("ti_id", type=uuid.UUID)
    ti.add_argument("--ttl", type=_ttl, help="lifetime in seconds (default: STATEPORT_JWT_EXPIRATION_S)")
    ti.set_defaults(handler=tokens.token_ti)
    api = token_sub.add_parser("api", help="a public API token")
    api.add_argument(
        "--scope", default=tokens.API_SCOPES, help=f'space-separated, from "{tokens.API_SCOPES}"'
    )
    api.add_argument("--subject", default="cli")
    api.add_argument(
        "--ttl",
        type=_ttl,
        help="lifetime in seconds (default: STATEPORT_JWT_EXPIRATION_S); longer than the longest pause "
        "between the holder's requests, since only a token in use is renewed",
    )
    api.set_defaults(handler=tokens.token_api)

    dags = sub.add_parser("dags", help="DAG specs")
    dags_sub = dags.add_subparsers(metavar="ACTION", required=True)
    register = dags_sub.add_parser("register", help="register a DAG spec from a JSON file ('-' for stdin)")
    register.add_argument("dag_id")
    register.add_argument("spec_file")
    register.set_defaults(handler=runs.register_dag)

    runs_parser = sub.add_parser("runs", help="DAG runs")
    runs_sub = runs_parser.add_subparsers(metavar="ACTION", required=True)
    trigger = runs_sub.add_parser("trigger", help="trigger a run; prints the run and its task instances")
    trigger.add_argument("dag_id")
    trigger.add_argument("--conf", default="{}", help="JSON object of run parameters")
    trigger.add_argument("--run-id")
    trigger.add_argument("--idempotency-key")
    trigger.set_defaults(handler=stores.on_stores(runs.trigger_run))
    show = runs_sub.add_parser("show", help="print a run and its task instances")
    show.add_argument("dag_id")
    show.add_argument("run_id")
    show.set_defaults(handler=stores.on_stores(runs.show_run))
    listing = runs_sub.add_parser("list", help="list a DAG's runs, newest first")
    listing.add_argument("dag_id")
    listing.add_argument(
        "--state",
        action="append",
        choices=[run_state.value for run_state in RunState],
        help="only runs in this state (repeatable)",
    )
    listing.add_argument("--limit", type=_positive_int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(handler=stores.on_stores(runs.list_runs))

    state_parser = sub.add_parser("state", help="read and change task or asset state (operator access)")
    state_sub = state_parser.add_subparsers(metavar="ACTION", required=True)
    for action, handler, help_text in (
        ("get", state.get_entry, "print one key's entry"),
        ("list", state.list_entries, "list a scope's entries"),
        ("put", state.put_entry, "set a key to a JSON value"),
        ("delete", state.delete_entry, "delete one key"),
        ("clear", state.clear_scope, "delete every key of a scope"),
    ):
        cmd = state_sub.add_parser(action, help=help_text)
        scope = cmd.add_argument_group("scope (a task instance, or --asset)")
        scope.add_argument("--dag")
        scope.add_argument("--run")
        scope.add_argument("--task")
        scope.add_argument("--map-index", type=int, default=-1)
        scope.add_argument("--asset")
        if action in {"get", "put", "delete"}:
            cmd.add_argument("key")
        if action == "put":
            cmd.add_argument("value", help="JSON text")
            cmd.add_argument("--expires-at", help="ISO-8601 time with a timezone")
        if action == "clear":
            cmd.add_argument("--all-map-indices", action="store_true")
        if action == "list":
            cmd.add_argument("--limit", type=int, default=100)
            cmd.add_argument("--offset", type=int, default=0)
            cmd.add_argument("--prefix", default="", help="only keys starting with this text")
        cmd.set_defaults(handler=stores.on_stores(handler))
    return p


# The argument types keep their names: argparse shows them in its errors ("invalid _ttl value: 'x'").


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _ttl(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_TOKEN_TTL_S:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_TOKEN_TTL_S} s, not {text}")
    return value
