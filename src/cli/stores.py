"""How an operator command runs on the stores, and ``stateport cleanup``.

A command on the stores opens them as the server does (migrating first), so it works with the server
stopped and needs no token; what it returns is printed as JSON, its values encoded as the API encodes
them (msgspec: a date is ISO 8601 with ``T`` and ``Z``, as in every API answer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from stateport.bootstrap import Services, clean_up, open_services
from stateport.config import Settings
from stateport.domain.errors import NotFound
from stateport.urls import sqlite_path

Handler = Callable[[Services, argparse.Namespace], Awaitable[Any]]


def on_stores(handler: Handler) -> Callable[[Settings, argparse.Namespace], int]:
    """A command that runs ``handler`` on freshly opened stores and prints its answer (if any) as JSON."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        if getattr(args, "reads_only", False):
            _require_database(settings)

        async def go() -> Any:
            services = await open_services(settings, migrate=True)
            try:
                return await handler(services, args)
            finally:
                await services.close()

        result = asyncio.run(go())
        if result is not None:
            # msgspec's builtins, not ``default=str``: str() of a datetime is "2026-12-06 09:01:29+00:00",
            # not the API's "2026-12-06T09:01:29Z" (an outsider's find); json.dumps keeps the layout.
            print(json.dumps(msgspec.to_builtins(result), indent=2))
        return 0

    return run


def _require_database(settings: Settings) -> None:
    """NotFound when the command would read a SQLite database that does not exist: opening it would create
    it (and a secret beside it), and a mistyped data directory would answer "nothing" rather than say so."""
    if settings.is_postgres:
        return
    path = Path(sqlite_path(settings.resolved_database_url))
    if not path.is_file() or path.stat().st_size == 0:  # an empty file is no database yet either
        raise NotFound(
            f"no database at {path}: nothing is stored there (check --data-dir or STATEPORT_DATA_DIR, or "
            "--database-url or STATEPORT_DATABASE_URL); a server creates it when it first starts, as do "
            "`stateport dags register` and `stateport runs trigger`"
        )


async def cleanup(services: Services, args: argparse.Namespace) -> Any:
    return await clean_up(services, run_retention_days=args.runs_older_than, batch_size=args.batch_size)
