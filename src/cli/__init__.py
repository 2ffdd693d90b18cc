"""The ``stateport`` command line.

``serve`` runs the HTTP service. The other commands open the configured stores directly (the same
composition root as the server), so they work with the server stopped and need no token.

- the argument parser, which names every command and its handler (``stateport.cli.parser``);
- ``serve`` and ``migrate`` (``stateport.cli.server``);
- ``token ti`` and ``token api`` (``stateport.cli.tokens``);
- how a command opens the stores and prints its answer, and ``cleanup`` (``stateport.cli.stores``);
- ``dags`` and ``runs`` (``stateport.cli.runs``), ``state`` (``stateport.cli.state``);
- ``worker`` is the worker SDK's own (``stateport.worker.cli``), and the only command a base install
  (``pip install stateport``, without ``[server]``) runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable

from stateport.cli.parser import build_parser
from stateport.config import ConfigError, Settings, load_settings
from stateport.domain.errors import Held, StateportError, Unavailable, Unwritable

Handler = Callable[[Settings, argparse.Namespace], int]

# The top-level modules of the server's dependencies (the ``server`` extra of pyproject.toml): a command
# that fails to import one of them runs on an install without that extra.
SERVER_MODULES = frozenset(
    {
        "litestar",
        "uvicorn",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "alembic",
        "jwt",
        "cryptography",
        "prometheus_client",
        "httptools",
        "uvloop",
        "redis",
        "boto3",
        "botocore",
    }
)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        # Whoever read the output went away (``stateport runs list | head``): stop quietly, as other Unix
        # tools do, rather than with a traceback, and with nothing more for Python to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        # Ctrl-C before a command's own handling of it starts (``serve`` applying migrations, say): a
        # one-line stop, not a traceback (an outsider's find), with a shell's status for SIGINT.
        print("stateport: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "client_command", None) is not None:
        # A worker is a client: it reads no server settings (STATEPORT_URL and _TOKEN are its own).
        code: int = args.client_command(args)
        return code
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        # Raised by importing the command's module, or by an import inside it (serve imports uvicorn).
        missing = (exc.name or "").split(".")[0]
        if missing not in SERVER_MODULES:
            raise
        print(
            f"stateport: this command needs the server's dependencies ({missing} is not installed): "
            "pip install 'stateport[server]' (python3 dev.py serve sets them up in a checkout)",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace) -> int:
    handler = load_handler(args.handler, on_stores=args.on_stores)
    try:
        settings = load_settings(
            **{k: getattr(args, k, None) for k in ("host", "port", "workers", "database_url", "data_dir")}
        )
        return handler(settings, args)
    except ConfigError as exc:
        print(f"stateport: configuration error: {exc}", file=sys.stderr)
        return 2
    except Held as exc:  # the store answered: whether it is reachable is not the question
        print(f"stateport: Unavailable: {exc.detail}", file=sys.stderr)
        return 1
    except Unwritable as exc:
        print(
            f"stateport: Unavailable: {exc.detail}\n"
            "  the store answers but will not write: free space on the disk that holds it, or give it write "
            "access (a read-only file, or a standby rather than the primary)",
            file=sys.stderr,
        )
        return 1
    except Unavailable as exc:
        print(
            f"stateport: Unavailable: {exc.detail}\n"
            "  is the store it names running and reachable? check STATEPORT_DATABASE_URL (or --database-url; "
            "without it, SQLite in STATEPORT_DATA_DIR) for the database, STATEPORT_REDIS_URL for Redis, "
            "STATEPORT_S3_* for S3",
            file=sys.stderr,
        )
        return 1
    except StateportError as exc:
        print(f"stateport: {type(exc).__name__}: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        # A path a setting names (the data directory, a SQLite file, a key) that cannot be made or read: one
        # line naming it, not a traceback (an outsider's find).
        print(f"stateport: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 1


def load_handler(name: str, *, on_stores: bool) -> Handler:
    """The function ``stateport.cli.<module>:<function>`` (imported now: it may need ``[server]``)."""
    module_name, _, function = name.partition(":")
    found: Handler = getattr(importlib.import_module(f"stateport.cli.{module_name}"), function)
    if on_stores:
        from stateport.cli.stores import on_stores as run_on_stores

        return run_on_stores(found)  # type: ignore[arg-type]  # a store handler takes (Services, args)
    return found


__all__ = ["main"]
