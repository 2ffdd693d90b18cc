"""Telling when a waiting caller goes away (ASGI ``http.disconnect``), for the disconnect policy
(``stateport.domain.disconnects``): a waiter that named one races its wait against its connection."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any, TypeVar

from litestar import Request
from litestar.types import Receive

from stateport.domain.disconnects import CallerRegistry, OnDisconnect
from stateport.domain.models import Run
from stateport.http.auth import require_scope
from stateport.http.errors import CallerGone, RequestInvalid

T = TypeVar("T")
QUERY_NAME = "on_disconnect"
PREFERENCE = "on-disconnect"


async def until_disconnected(receive: Receive) -> None:
    """Return when the caller's connection is gone. The request's body must have been read already (a
    GET has none): any ``http.request`` message still to come is passed over."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def watched(receive: Receive, wait: Coroutine[Any, Any, T]) -> T:
    """``wait``'s result, watching the connection meanwhile; CallerGone when the caller went away first:
    the wait is cancelled then, so that what it holds (its seat among the process's waits,
    stateport.domain.seats) comes back at once rather than when its time runs out (an outsider's find: a
    client with a shorter timeout than its wait, retrying, was refused for the waits it had left behind)."""
    waiting = asyncio.ensure_future(wait)
    gone = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, gone):
            if not task.done():
                task.cancel()
        for task in (waiting, gone):
            with suppress(asyncio.CancelledError):
                await task
    if waiting.cancelled():
        raise CallerGone
    return waiting.result()


async def attended(
    callers: CallerRegistry,
    policy: OnDisconnect,
    run: tuple[str, str],
    receive: Receive,
    wait: Coroutine[Any, Any, Run],
) -> Run:
    """Run ``wait`` as a waiter of ``run`` with ``policy``, watching the connection meanwhile; the run as
    the wait ends, or CallerGone when the caller disconnected first (the policy then applies)."""
    async with callers.waiting(*run, policy) as attendance:
        try:
            return await watched(receive, wait)
        except CallerGone:
            attendance.disconnected = True
            raise


# A waiter's policy decides whether its run is cancelled: ``cancel`` cancels it when the caller goes, and
# ``continue`` holds it against the other waiters' ``cancel``. A route whose own scope is ``runs:read`` (a
# long-poll, a wait stream) lets a read-only token wait, not decide that (an outsider's find: a
# ``runs:read`` token cancelled any run by naming ``cancel`` and hanging up).
POLICY_SCOPE = "runs:write"


def policy_param(request: Request[Any, Any, Any], raw: str | None) -> OnDisconnect | None:
    """The ``on_disconnect`` query parameter of a GET waiter: ``cancel`` or ``continue``; None if absent.
    Naming one needs ``POLICY_SCOPE`` (Forbidden otherwise)."""
    if raw is None:
        return None
    try:
        policy = OnDisconnect(raw)
    except ValueError:
        raise RequestInvalid.one(
            "enum", ["query", QUERY_NAME], "on_disconnect must be 'cancel' or 'continue'", raw
        ) from None
    require_scope(request, POLICY_SCOPE, "a disconnect policy (on_disconnect): it decides the run's fate")
    return policy
