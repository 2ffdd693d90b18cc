"""The ``stateport`` command line.

``serve`` runs the HTTP service. The other commands open the configured stores directly (the same
composition root as the server), so they work with the server stopped and need no token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from stateport.bootstrap import Services, clean_up, open_services
from stateport.config import (
    MAX_TOKEN_TTL_S,
    ConfigError,
    Settings,
    check_serving,
    ensure_secret,
    load_settings,
)
from stateport.domain.errors import StateportError
from stateport.domain.models import AssetScope, DagSpec, RunState, TaskScope
from stateport.domain.values import check_expiry
from stateport.worker import cli as worker_cli

API_SCOPES = "dags:write runs:write runs:read state:admin worker"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "client_command", None) is not None:
        # A worker is a client: it reads no server settings (STATEPORT_URL and _TOKEN are its own).
        code: int = args.client_command(args)
        return code
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        settings = load_settings(
            **{k: getattr(args, k, None) for k in ("host", "port", "workers", "database_url", "data_dir")}
        )
        result: int = args.handler(settings, args)
        return result
    except ConfigError as exc:
        print(f"stateport: configuration error: {exc}", file=sys.stderr)
        return 2
    except StateportError as exc:
        print(f"stateport: {type(exc).__name__}: {exc.detail}", file=sys.stderr)
        return 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stateport", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--database-url", help="overrides STATEPORT_DATABASE_URL")
    p.add_argument("--data-dir", help="overrides STATEPORT_DATA_DIR")
    sub = p.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP service (applies pending migrations first)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="server processes (default 1)")
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser("worker", help="run a worker for the DAGs of a Python module")
    worker_cli.configure(worker)
    worker.set_defaults(handler=None, client_command=worker_cli.run)

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=_migrate)

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
    cleanup.set_defaults(handler=_run_async(_cleanup))

    token = sub.add_parser("token", help="mint a token signed with the configured key")
    token_sub = token.add_subparsers(metavar="KIND", required=True)
    ti = token_sub.add_parser("ti", help="a task-instance token for the Execution API")
    ti.add_argument("ti_id", type=uuid.UUID)
    ti.add_argument("--ttl", type=_ttl, help="lifetime in seconds (default: STATEPORT_JWT_EXPIRATION_S)")
    ti.set_defaults(handler=_token_ti)
    api = token_sub.add_parser("api", help="a public API token")
    api.add_argument("--scope", default=API_SCOPES, help=f'space-separated, from "{API_SCOPES}"')
    api.add_argument("--subject", default="cli")
    api.add_argument(
        "--ttl",
        type=_ttl,
        help="lifetime in seconds (default: STATEPORT_JWT_EXPIRATION_S); longer than the longest pause "
        "between the holder's requests, since only a token in use is renewed",
    )
    api.set_defaults(handler=_token_api)

    dags = sub.add_parser("dags", help="DAG specs")
    dags_sub = dags.add_subparsers(metavar="ACTION", required=True)
    register = dags_sub.add_parser("register", help="register a DAG spec from a JSON file ('-' for stdin)")
    register.add_argument("dag_id")
    register.add_argument("spec_file")
    register.set_defaults(handler=_dags_register_cmd)

    runs = sub.add_parser("runs", help="DAG runs")
    runs_sub = runs.add_subparsers(metavar="ACTION", required=True)
    trigger = runs_sub.add_parser("trigger", help="trigger a run; prints the run and its task instances")
    trigger.add_argument("dag_id")
    trigger.add_argument("--conf", default="{}", help="JSON object of run parameters")
    trigger.add_argument("--run-id")
    trigger.add_argument("--idempotency-key")
    trigger.set_defaults(handler=_run_async(_runs_trigger))
    show = runs_sub.add_parser("show", help="print a run and its task instances")
    show.add_argument("dag_id")
    show.add_argument("run_id")
    show.set_defaults(handler=_run_async(_runs_show))
    listing = runs_sub.add_parser("list", help="list a DAG's runs, newest first")
    listing.add_argument("dag_id")
    listing.add_argument(
        "--state",
        action="append",
        choices=[state.value for state in RunState],
        help="only runs in this state (repeatable)",
    )
    listing.add_argument("--limit", type=_positive_int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(handler=_run_async(_runs_list))

    state = sub.add_parser("state", help="read and change task or asset state (operator access)")
    state_sub = state.add_subparsers(metavar="ACTION", required=True)
    for action, handler, help_text in (
        ("get", _state_get, "print one key's entry"),
        ("list", _state_list, "list a scope's entries"),
        ("put", _state_put, "set a key to a JSON value"),
        ("delete", _state_delete, "delete one key"),
        ("clear", _state_clear, "delete every key of a scope"),
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
        cmd.set_defaults(handler=_run_async(handler))
    return p


# --- serve, migrate, tokens ----------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from stateport.adapters.sql.migrations import upgrade
    from stateport.serving import RESERVED_FDS, raise_fd_limit

    check_serving(settings)
    settings = ensure_secret(settings)
    asyncio.run(upgrade(settings.resolved_database_url))
    # Worker processes build their own settings from the environment: hand the overrides down that way.
    for name in ("host", "port", "workers", "database_url", "data_dir"):
        os.environ[f"STATEPORT_{name.upper()}"] = str(getattr(settings, name))
    url = f"http://{settings.host}:{settings.port}"
    exe = shutil.which("stateport") or sys.argv[0]
    fds = raise_fd_limit()
    print(
        f"Stateport serving on {url} with {settings.workers} worker(s)\n"
        f"  connections: up to about {max(0, fds - RESERVED_FDS)} per process (RLIMIT_NOFILE {fds}), "
        f"heads within {settings.header_timeout_s:g} s, idle keep-alive {settings.keepalive_timeout_s:g} s\n"
        f"  database:  {_redact(settings.resolved_database_url)}\n"
        f"  state:     {settings.state_backend}\n"
        f"  data dir:  {settings.data_path}\n"
        f"  API docs:  {url}/schema/openapi.json\n"
        f'  API token: {exe} token api --scope "{API_SCOPES}"\n'
        f"  TI token:  {exe} token ti <task-instance-id>",
        flush=True,
    )
    uvicorn.run(
        "stateport.asgi:app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop" if _has_uvloop() else "asyncio",
        # uvicorn's httptools protocol with a deadline on request heads (stateport.serving).
        http="stateport.serving:HttpProtocol",
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]  # call_later takes a float
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.sql.migrations import upgrade

    asyncio.run(upgrade(settings.resolved_database_url))
    print(f"migrated {_redact(settings.resolved_database_url)}")
    return 0


def _token_ti(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.jwt import JwtTokenService

    tokens = JwtTokenService.from_settings(ensure_secret(settings, on_generated=_warn_new_secret))
    print(tokens.mint_task_token(args.ti_id, ttl_s=args.ttl))
    return 0


def _token_api(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.jwt import JwtTokenService

    scopes = frozenset(args.scope.split())
    unknown = scopes - set(API_SCOPES.split())
    if unknown:
        print(f"stateport: unknown scopes {sorted(unknown)}; known: {API_SCOPES}", file=sys.stderr)
        return 2
    tokens = JwtTokenService.from_settings(ensure_secret(settings, on_generated=_warn_new_secret))
    ttl = settings.jwt_expiration_s if args.ttl is None else args.ttl
    print(tokens.mint_api_token(args.subject, scopes, ttl_s=ttl))
    # On stderr, so that $(stateport token api) still captures the token alone.
    renewal = (
        f"renewed while in use for up to {_duration(settings.api_token_max_lifetime_days * 86400)} "
        "(STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS)"
        if settings.api_token_max_lifetime_days > 0
        else "never renewed (STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS=0)"
    )
    print(
        f"stateport: API token valid for {_duration(ttl)} (--ttl {ttl:g}), {renewal}; "
        "a holder idle for longer than the TTL must get a new one",
        file=sys.stderr,
    )
    return 0


def _warn_new_secret(path: Path) -> None:
    """A token minted with a secret made just now verifies only on a server sharing that secret."""
    print(
        f"stateport: warning: generated a new JWT secret in {path}; a server accepts this token only if it "
        "uses the same secret (the same STATEPORT_DATA_DIR, or STATEPORT_JWT_SECRET set to this file's "
        "content)",
        file=sys.stderr,
    )


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _ttl(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_TOKEN_TTL_S:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_TOKEN_TTL_S} s, not {text}")
    return value


# --- commands on the stores ----------------------------------------------------------------------------

Handler = Callable[[Services, argparse.Namespace], Awaitable[Any]]


def _run_async(handler: Handler) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def go() -> Any:
            services = await open_services(settings, migrate=True)
            try:
                return await handler(services, args)
            finally:
                await services.close()

        result = asyncio.run(go())
        if result is not None:
            print(json.dumps(result, indent=2, default=str))
        return 0

    return run


async def _cleanup(services: Services, args: argparse.Namespace) -> Any:
    if args.runs_older_than is not None and args.runs_older_than < 0:
        raise SystemExit("stateport: --runs-older-than must be 0 (keep every run) or more days")
    return await clean_up(services, run_retention_days=args.runs_older_than, batch_size=args.batch_size)


def _dags_register_cmd(settings: Settings, args: argparse.Namespace) -> int:
    text = sys.stdin.buffer.read() if args.spec_file == "-" else Path(args.spec_file).read_bytes()
    try:
        args.spec = msgspec.json.decode(text, type=DagSpec)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SystemExit(f"stateport: {args.spec_file}: {exc}") from exc
    return _run_async(_dags_register)(settings, args)


async def _dags_register(services: Services, args: argparse.Namespace) -> Any:
    dag = await services.runs.register_dag(args.dag_id, args.spec)
    return {"dag_id": dag.dag_id, "version": dag.version, **msgspec.to_builtins(dag.spec)}


async def _runs_trigger(services: Services, args: argparse.Namespace) -> Any:
    conf = json.loads(args.conf)
    if not isinstance(conf, dict):
        raise SystemExit("stateport: --conf must be a JSON object")
    run = await services.runs.trigger(
        args.dag_id, run_id=args.run_id, conf=conf, idempotency_key=args.idempotency_key
    )
    return await _run_view(services, run.dag_id, run.run_id)


async def _runs_show(services: Services, args: argparse.Namespace) -> Any:
    return await _run_view(services, args.dag_id, args.run_id)


async def _runs_list(services: Services, args: argparse.Namespace) -> Any:
    states = frozenset(RunState(state) for state in args.state or ())
    runs, total = await services.runs.list_runs(
        args.dag_id, states=states, limit=args.limit, offset=args.offset
    )
    return {"dag_runs": [msgspec.to_builtins(run) for run in runs], "total_entries": total}


async def _run_view(services: Services, dag_id: str, run_id: str) -> dict[str, Any]:
    run = await services.runs.get_run(dag_id, run_id)
    tis = await services.runs.task_instances(dag_id, run_id)
    view: dict[str, Any] = msgspec.to_builtins(run)
    view["task_instances"] = [
        {
            "id": str(ti.id),
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "try_number": ti.try_number,
            "state": ti.state,
        }
        for ti in tis
    ]
    return view


def _scope(args: argparse.Namespace) -> TaskScope | AssetScope:
    if args.asset is not None:
        if args.dag or args.run or args.task:
            raise SystemExit("stateport: give either --asset or --dag/--run/--task, not both")
        return AssetScope(name=args.asset)
    if not (args.dag and args.run and args.task):
        raise SystemExit("stateport: a task scope needs --dag, --run and --task (or give --asset)")
    return TaskScope(dag_id=args.dag, run_id=args.run, task_id=args.task, map_index=args.map_index)


async def _checked_scope(services: Services, args: argparse.Namespace, *, any_map_index: bool = False) -> Any:
    scope = _scope(args)
    if isinstance(scope, AssetScope):
        return await services.state.admin_asset_scope(scope.name)
    return await services.state.admin_task_scope(scope, any_map_index=any_map_index)


def _entry_view(entry: Any) -> dict[str, Any]:
    return {
        "key": entry.key,
        "value": json.loads(entry.value),
        "version": entry.version,
        "updated_at": entry.updated_at.isoformat(),
        "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
    }


async def _state_get(services: Services, args: argparse.Namespace) -> Any:
    return _entry_view(await services.state.get(_scope(args), args.key))


async def _state_list(services: Services, args: argparse.Namespace) -> Any:
    page = await services.state.list_entries(_scope(args), limit=args.limit, offset=args.offset)
    return {"entries": [_entry_view(e) for e in page.entries], "total_entries": page.total}


async def _state_put(services: Services, args: argparse.Namespace) -> Any:
    from datetime import datetime

    scope = await _checked_scope(services, args)
    expires_at = check_expiry(datetime.fromisoformat(args.expires_at)) if args.expires_at else None
    entry = await services.state.put(scope, args.key, args.value.encode(), expires_at=expires_at)
    return _entry_view(entry)


async def _state_delete(services: Services, args: argparse.Namespace) -> Any:
    return {"deleted": await services.state.delete(_scope(args), args.key)}


async def _state_clear(services: Services, args: argparse.Namespace) -> Any:
    scope = await _checked_scope(services, args, any_map_index=args.all_map_indices)
    return {"cleared": await services.state.clear(scope, all_map_indices=args.all_map_indices)}


def _redact(url: str) -> str:
    # Never print a database password to a terminal or a log.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
