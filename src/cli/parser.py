"""The ``stateport`` argument parser: every command, its arguments and the function that runs it.

A handler takes the settings and the parsed arguments and returns the exit code; ``worker`` sets
``client_command`` instead, since it reads no server settings. Handlers are named, not imported: the
commands on the stores need the server's dependencies (``stateport[server]``), which a worker-only install
lacks, and ``stateport --help`` or ``stateport worker`` must work there (``stateport.cli.main`` imports a
handler when its command runs, and says what to install when that fails).
"""

from __future__ import annotations

import argparse
import uuid
from importlib import metadata
from typing import Any

from stateport.cli import worker_args
from stateport.cli.arguments import Parser, integer, json_object, moment, seconds
from stateport.config import MAX_TOKEN_TTL_S
from stateport.domain.models import RunState
from stateport.domain.values import MAX_OFFSET, MAX_PAGE

# The scopes ``stateport token api`` grants unless told otherwise (kept here, not in stateport.cli.tokens,
# so that the parser imports nothing of the server).
API_SCOPES = "dags:write runs:write runs:read state:admin worker"

DESCRIPTION = (
    "Stateport's command line. 'serve' runs the HTTP service; the other commands except 'worker' open the "
    "configured stores directly, as the server does, so they work with the server stopped and need no token."
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each option's help, left out where there is no default to show
    (None: the help says where the value comes from instead) or the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def version() -> str:
    try:
        return metadata.version("stateport")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def handler(name: str, *, on_stores: bool = False, reads_only: bool = False) -> dict[str, Any]:
    """``set_defaults`` for a command run by ``stateport.cli.<name>`` (``module:function``), imported when
    the command runs; ``on_stores``: the function takes the opened stores (``stateport.cli.stores``);
    ``reads_only``: it only reads them, so it creates no database where there is none."""
    return {"handler": name, "on_stores": on_stores, "reads_only": reads_only}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="stateport", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    store_options(p, after_command=False)
    sub = p.add_subparsers(metavar="COMMAND")

    def command(parent: Any, name: str, help_text: str, *, stores: bool = True) -> argparse.ArgumentParser:
        """A command; ``stores``: it reads the stores or serves them, so it takes ``--database-url`` and
        ``--data-dir`` after its name too (a group of subcommands, such as ``token``, passes False)."""
        parser: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        if stores:
            store_options(parser, after_command=True)
        return parser

    serve = command(sub, "serve", "run the HTTP service (applies pending migrations first)")
    serve.add_argument("--host", help="listen address (default: STATEPORT_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: STATEPORT_PORT, else 8080)")
    serve.add_argument("--workers", type=int, help="server processes (default: STATEPORT_WORKERS, else 1)")
    serve.set_defaults(**handler("server:serve"))

    worker = command(sub, "worker", "run a worker for the DAGs of a Python module", stores=False)
    worker_args.configure(worker)
    worker.set_defaults(handler=None, client_command=worker_args.run)

    migrate = command(sub, "migrate", "apply pending database migrations")
    migrate.set_defaults(**handler("server:migrate"))

    cleanup = command(
        sub, "cleanup", "delete expired task and asset state, and finished runs past their retention"
    )
    cleanup.add_argument(
        "--batch-size", type=integer(1), default=1000, help="rows or keys deleted per statement"
    )
    cleanup.add_argument(
        "--runs-older-than",
        type=seconds(0),
        metavar="DAYS",
        help="delete finished runs last changed more than DAYS ago, with their task instances and result "
        "blobs (default: STATEPORT_RUN_RETENTION_DAYS; 0 keeps every run)",
    )
    cleanup.set_defaults(**handler("stores:cleanup", on_stores=True))

    token = command(sub, "token", "mint a token signed with the configured key", stores=False)
    token_sub = token.add_subparsers(metavar="KIND", required=True)
    ti = command(token_sub, "ti", "a task-instance token for the Execution API")
    ti.add_argument("ti_id", metavar="TASK_INSTANCE_ID", type=uuid.UUID, help="the task instance's id")
    ti.add_argument(
        "--ttl", type=_ttl, help="lifetime in seconds (default: STATEPORT_JWT_EXPIRATION_S, else 600)"
    )
    ti.set_defaults(**handler("tokens:token_ti"))
    api = command(token_sub, "api", "a public API token")
    api.add_argument("--scope", default=API_SCOPES, help="space-separated scopes, from those of the default")
    api.add_argument(
        "--subject",
        help="the token's subject (sub): who holds it, shown in the server's logs; tokens of one subject "
        "count as one caller for STATEPORT_MAX_WAITERS_PER_CALLER, so give one application's (or worker "
        "fleet's) tokens the same subject and other holders others (default: cli-<random>, a caller of its "
        "own)",
    )
    api.add_argument(
        "--ttl",
        type=_ttl,
        help="lifetime in seconds (default: STATEPORT_JWT_EXPIRATION_S, else 600); at least twice the "
        "longest pause between the holder's requests, since a token is renewed by a request in its second "
        "half",
    )
    api.set_defaults(**handler("tokens:token_api"))

    dags = command(sub, "dags", "DAG specs", stores=False)
    dags_sub = dags.add_subparsers(metavar="ACTION", required=True)
    register = command(dags_sub, "register", "register a DAG spec from a JSON file ('-' for stdin)")
    register.add_argument("dag_id", metavar="DAG_ID", help="the DAG's id")
    register.add_argument(
        "spec_file", metavar="SPEC_FILE", help="the DagSpec as JSON (docs/api.md), '-' for stdin"
    )
    register.set_defaults(**handler("runs:register_dag"))
    dag_list = command(dags_sub, "list", "list the registered DAGs at their current versions, by dag_id")
    dag_list.add_argument(
        "--pattern",
        help="only DAGs whose dag_id contains it, as the API's dag_id_pattern (SQL LIKE: %% and _; "
        "default: every DAG)",
    )
    page_options(dag_list, "DAGs")
    dag_list.set_defaults(**handler("runs:list_dags", on_stores=True, reads_only=True))

    runs_parser = command(sub, "runs", "DAG runs (printed as the API's DAGRunResponse)", stores=False)
    runs_sub = runs_parser.add_subparsers(metavar="ACTION", required=True)
    trigger = command(runs_sub, "trigger", "trigger a run; prints the run and its task instances")
    trigger.add_argument("dag_id", metavar="DAG_ID", help="the DAG to run")
    trigger.add_argument("--conf", type=json_object, default="{}", help="JSON object of run parameters")
    trigger.add_argument(
        "--dag-run-id",
        "--run-id",
        dest="run_id",
        help="the run's id (default: generated, manual__<time>)",
    )
    trigger.add_argument(
        "--idempotency-key", help="a retry with the same key and request gets the same run (default: none)"
    )
    trigger.set_defaults(**handler("runs:trigger_run", on_stores=True))
    show = command(runs_sub, "show", "print a run and its task instances (every try)")
    show.add_argument("dag_id", metavar="DAG_ID", help="the run's DAG")
    show.add_argument("run_id", metavar="DAG_RUN_ID", help="the run's dag_run_id")
    show.set_defaults(**handler("runs:show_run", on_stores=True, reads_only=True))
    listing = command(runs_sub, "list", "list a DAG's runs, newest first")
    listing.add_argument("dag_id", metavar="DAG_ID", help="the DAG whose runs to list")
    listing.add_argument(
        "--state",
        action="append",
        choices=[run_state.value for run_state in RunState],
        help="only runs in this state (repeatable; default: every state)",
    )
    page_options(listing, "runs")
    listing.set_defaults(**handler("runs:list_runs", on_stores=True, reads_only=True))

    state_parser = command(
        sub, "state", "read and change task or asset state (operator access)", stores=False
    )
    state_sub = state_parser.add_subparsers(metavar="ACTION", required=True)
    for action, function, help_text in (
        ("get", "get_entry", "print one key's entry"),
        ("list", "list_entries", "list a scope's entries"),
        ("put", "put_entry", "set a key to a JSON value"),
        ("delete", "delete_entry", "delete one key"),
        ("clear", "clear_scope", "delete every key of a scope"),
    ):
        cmd = command(state_sub, action, help_text)
        scope = cmd.add_argument_group("scope (a task instance, or --asset)")
        # The API's names (dag_id, dag_run_id, task_id); the shorter first spellings stay for scripts.
        scope.add_argument("--dag-id", "--dag", dest="dag", help="the task's DAG")
        scope.add_argument("--dag-run-id", "--run-id", "--run", dest="run", help="the task's run")
        scope.add_argument("--task-id", "--task", dest="task", help="the task")
        scope.add_argument("--map-index", type=int, default=-1, help="the task's map index (-1: not mapped)")
        scope.add_argument("--asset", help="an asset's name, instead of a task")
        if action in {"get", "put", "delete"}:
            cmd.add_argument("key", metavar="KEY", help="the state key")
        if action == "put":
            cmd.add_argument("value", metavar="VALUE", help="the value as JSON text (not null)")
            cmd.add_argument(
                "--expires-at",
                type=moment,
                help="ISO-8601 time with a timezone when the key expires (default: never)",
            )
        if action == "clear":
            cmd.add_argument(
                "--all-map-indices", action="store_true", help="clear every map index of the task"
            )
        if action == "list":
            page_options(cmd, "entries")
            cmd.add_argument("--prefix", default="", help="only keys starting with this text")
            cmd.add_argument(
                "--cursor",
                help='page by key: the "next_cursor" of the previous page ("" for the first); the answer '
                'is {"entries", "next_cursor"} (no total)',
            )
            cmd.add_argument(
                "--keys-only", action="store_true", help="leave the values out (pages by key, as --cursor)"
            )
        cmd.set_defaults(**handler(f"state:{function}", on_stores=True, reads_only=action in ("get", "list")))
    return p


def store_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """``--database-url`` and ``--data-dir``: before the command (``stateport --data-dir X serve``), and
    after it (``stateport serve --data-dir X``), where docs/configuration.md lists them with the command's
    own options and where users put them. After the command their default is SUPPRESS: argparse then
    leaves the value given before it in place, and a value given after it replaces that one."""
    if after_command:
        where = "; given both before and after the command, this one wins"
        default: Any = argparse.SUPPRESS
    else:
        where = "; also accepted after the command, which wins if both are given"
        default = None
    parser.add_argument(
        "--database-url",
        default=default,
        help=f"database URL (default: STATEPORT_DATABASE_URL, else SQLite in the data dir){where}",
    )
    parser.add_argument(
        "--data-dir",
        default=default,
        help="directory of the SQLite file and the generated JWT secret (default: STATEPORT_DATA_DIR, else "
        f"~/.local/share/stateport){where}",
    )


def page_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--limit`` and ``--offset`` of a listing, within the bounds the stores take (a value past them is
    a usage error here, as any other bad argument, not a refusal from the stores)."""
    parser.add_argument("--limit", type=integer(1, MAX_PAGE), default=100, help=f"{what} per page")
    parser.add_argument(
        "--offset", type=integer(0, MAX_OFFSET), default=0, help=f"{what} skipped before the page"
    )


def _ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        # argparse named the function: "invalid _ttl value: 'abc'" (an outsider's find).
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    # JWT times are whole seconds (a lifetime is rounded up): under 1 s would not mean what it says.
    if not 1 <= value <= MAX_TOKEN_TTL_S:
        raise argparse.ArgumentTypeError(f"must be at least 1 and at most {MAX_TOKEN_TTL_S} s, not {text}")
    return value
