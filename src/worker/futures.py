"""The asyncio helpers the worker's claim loop and its task executions share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def first(*waitables: Awaitable[Any]) -> None:
    """Wait until one of ``waitables`` is done; cancel the others (a future passed in is left running)."""
    futures = [asyncio.ensure_future(w) for w in waitables]
    owned = [f for f, w in zip(futures, waitables, strict=True) if f is not w]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in owned:
            f.cancel()
            f.add_done_callback(retrieve)


def retrieve(future: asyncio.Future[Any]) -> None:
    """Read a finished future's exception, so that asyncio does not log one nobody was meant to read."""
    if not future.cancelled():
        future.exception()
