"""Parking outcome long-polls before the routes: the HTTP layer's one fast path (issue #15, waiters).

A ``GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/outcome`` waits up to 300 s. Through the route it waits
inside Litestar's middleware, routing, dependency and handler coroutines, about 12 KiB per waiter on top of
uvicorn's own 9.4 KiB per held request (docs/benchmarks.md, waiters): the part of 100,000 waiters' memory
Stateport controls. ``OutcomeParking`` sits right inside the Litestar app, before all of that: a request
whose token verifies with ``runs:read`` waits here on the run's watch (one coroutine and one future), and
then goes through the route as any request does, which checks everything again and answers from the
snapshot parked with it (``PARKED_RUN`` in the scope's state) rather than reading the run again.

Nothing is answered here and nothing is refused here: a request this module is not sure of (another
route, another method, a query other than one ``timeout``, no or a bad token, an unknown run, a store
that fails) goes on to the route at once, and the route gives the answer it always gives. So the route
stays the one definition of the endpoint (its validation, errors, headers, metrics and OpenAPI); this
module only moves where the waiting happens. A client cannot set ``PARKED_RUN``: the scope's state is
the server's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from stateport.domain.errors import StateportError
from stateport.domain.models import Run
from stateport.domain.waiting import RunWaits
from stateport.http.auth import VERIFIED_API_CLAIMS_KEY, bearer_of
from stateport.http.errors import RequestInvalid
from stateport.http.providers import services_of, tokens_of
from stateport.http.waits import PARKED_RUN, outcome_timeout

log = logging.getLogger("stateport.http")
PREFIX = "/api/v2/dags/"
SUFFIX = "/outcome"
SCOPE = "runs:read"


class OutcomeParking:
    """ASGI wrapper of the Litestar app's handler stack (``create_app`` installs it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: every other request goes on with no extra frame (the state GET's path).
        if scope["type"] == ScopeType.HTTP and scope["method"] == "GET" and scope["path"].endswith(SUFFIX):
            return self._parked(scope, receive, send)
        return self.app(scope, receive, send)

    async def _parked(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = await _park(scope)
        if run is not None:
            scope["state"][PARKED_RUN] = run
        await self.app(scope, receive, send)


async def _park(scope: Any) -> Run | None:
    """Wait as the route would, and return the run as last seen; None to leave it all to the route."""
    ids = _run_ids(scope["path"])
    if ids is None:
        return None
    seconds = _timeout(scope["query_string"])
    waits = _waits_for(scope) if seconds is not None else None
    if waits is None or seconds is None:
        return None
    try:
        return await waits.park(*ids, seconds)
    except Exception:  # the route answers (its own way) whatever went wrong here; never a 500 from here
        log.exception("parking an outcome long-poll failed")
        return None


def _waits_for(scope: Any) -> RunWaits | None:
    """The waits, if the request's token verifies and carries ``runs:read``; its claims are kept for the
    route, which must not refuse a token that expired while the request waited. (A function of its own
    so that the token's text is not held for the whole wait.)"""
    try:
        claims = tokens_of(scope).verify_api_token(bearer_of(scope))
        if SCOPE not in claims.scopes:
            return None
        waits = services_of(scope).waits
    except (StateportError, KeyError):
        return None
    scope["state"][VERIFIED_API_CLAIMS_KEY] = claims
    return waits


def _run_ids(path: str) -> tuple[str, str] | None:
    """``(dag_id, run_id)`` of an outcome path, as the route's template reads them; None otherwise."""
    if not path.startswith(PREFIX):
        return None
    parts = path[len(PREFIX) : -len(SUFFIX)].split("/")
    if len(parts) != 3 or parts[1] != "dagRuns" or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


def _timeout(query: bytes) -> float | None:
    """The wait the route would apply for this query, or None when the query is for the route to judge."""
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(query))
    except (UnicodeDecodeError, ValueError):
        return None
    if any(name != "timeout" for name, _ in pairs) or len(pairs) > 1:
        return None
    raw = pairs[0][1] if pairs else None
    try:
        return outcome_timeout(raw)
    except RequestInvalid:
        return None
