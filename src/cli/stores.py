"""How an operator command runs on the stores, and ``stateport cleanup``.

A command on the stores opens them as the server does (migrating first), so it works with the server
stopped and needs no token; what it returns is printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from stateport.bootstrap import Services, clean_up, open_services
from stateport.config import Settings

Handler = Callable[[Services, argparse.Namespace], Awaitable[Any]]


def on_stores(handler: Handler) -> Callable[[Settings, argparse.Namespace], int]:
    """A command that runs ``handler`` on freshly opened stores and prints its answer (if any) as JSON."""

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


async def cleanup(services: Services, args: argparse.Namespace) -> Any:
    return await clean_up(services, run_retention_days=args.runs_older_than, batch_size=args.batch_size)
