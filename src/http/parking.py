"""Parking outcome long-polls below ASGI: the HTTP layer's one fast path (issue #15, waiters).

A ``GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/outcome`` waits up to 300 s. Through the route it waits
inside uvicorn's request task and Litestar's middleware, routing, dependency and handler coroutines: 13.7
KiB per waiter with the wait moved before the routes, of which uvicorn's own task and request cycle are
most (docs/benchmarks.md, waiters). The server's protocol (``stateport.serving.HttpProtocol``) asks
``park`` before it starts a request's task: a request whose token verifies with ``runs:read`` then waits
with no task at all, as a ``Hold`` on the run's watch (a callback), and when the wait ends the protocol
starts the request's task as it would have at once. The request then goes through the route as any request
does, which checks everything again and answers from the snapshot parked with it (``PARKED_RUN`` in the
scope's state) rather than waiting or reading the run again. A client that goes away while parked costs
nothing more: the hold is cancelled, and no route runs for it.

Nothing is answered here and nothing is refused here: a request this module is not sure of (another
route, another method, a query other than one ``timeout``, no or a bad token, an unknown run, a store
that fails) goes on to the route at once, and the route gives the answer it always gives. So the route
stays the one definition of the endpoint (its validation, errors, headers, metrics and OpenAPI); this
module only moves where the waiting happens. A client cannot set ``PARKED_RUN``: the scope's state is
the server's. Under another ASGI server, or with several apps in one process (tests), nothing is parked
here and the route waits itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

from stateport.domain.errors import StateportError
from stateport.domain.ports import TokenClaims, TokenService
from stateport.domain.waiting import Hold, Resume, RunWaits
from stateport.http.auth import VERIFIED_API_CLAIMS_KEY, bearer_of, waiter
from stateport.http.errors import RequestInvalid
from stateport.http.guards import head_refusal
from stateport.http.waits import outcome_timeout

log = logging.getLogger("stateport.http")
PREFIX = "/api/v2/dags/"
SUFFIX = "/outcome"
STREAM_SUFFIX = "/wait"
SCOPE = "runs:read"


class Parking:
    """What parks one app's outcome long-polls: its token service and its waits."""

    __slots__ = ("tokens", "waits")

    def __init__(self, tokens: TokenService, waits: RunWaits) -> None:
        self.tokens = tokens
        self.waits = waits

    def park(self, scope: Any, resume: Resume) -> Hold | None:
        """Make the request wait as the route would, then ``resume`` it with the run it ended on (for the
        route, as ``PARKED_RUN`` in the scope's state) or None (the route finds out why it could not
        wait); None to resume it at once. The caller starts the request's task in the context it would
        have started in at once (one closure and context per parked request here was 0.4 KiB)."""
        ids = _run_ids(scope["path"]) if scope["method"] == "GET" else None
        seconds = None if ids is None else _timeout(scope["query_string"])
        if ids is None or seconds is None or seconds <= 0 or head_refusal(scope) is not None:
            # For the app: a wait of no time holds no seat, and is not parked; nor is one whose head the
            # app refuses at once (an outsider's find: parked first, it was refused only when its wait
            # ended, holding a seat meanwhile).
            return None
        claims = self._verified(scope)
        if claims is None:
            return None
        try:
            return self.waits.hold(*ids, seconds, resume, caller=waiter(claims))
        except StateportError:
            # Ids no run can have (Invalid), or no seat for the wait (Overloaded, Refused): the route
            # answers why (422, 503 or 429).
            return None
        except Exception:  # the route answers (its own way) whatever went wrong here; never a 500 here
            log.exception("parking an outcome long-poll failed")
            return None

    def _verified(self, scope: Any) -> TokenClaims | None:
        """The request's token's claims if it verifies and carries ``runs:read``, else None; they are
        kept for the route, which must not refuse a token that expired while the request waited."""
        try:
            claims = self.tokens.verify_api_token(bearer_of(scope))
        except StateportError:
            return None
        if SCOPE not in claims.scopes:
            return None
        scope["state"][VERIFIED_API_CLAIMS_KEY] = claims
        return claims


# Process-wide: the server's protocol knows no app, and one process serves one app. Tests build several at
# once; then none is parked (``parking_for`` answers None) and every route waits itself.
_apps: list[Parking] = []


@contextmanager
def parking(tokens: TokenService, waits: RunWaits) -> Iterator[None]:
    """Park the app's outcome long-polls while the context (the app's lifespan) is open."""
    entry = Parking(tokens, waits)
    _apps.append(entry)
    try:
        yield
    finally:
        _apps.remove(entry)


def parking_for() -> Parking | None:
    """The one app of this process that parks, if there is exactly one."""
    return _apps[0] if len(_apps) == 1 else None


def may_park(scope: Any) -> bool:
    """Whether the request could be parked at all: the protocol asks this of every request (a state GET
    included) before it builds anything for ``park``, so it is two string tests."""
    path: str = scope["path"]
    return scope["method"] == "GET" and path.endswith(SUFFIX)


def may_stream(scope: Any) -> bool:
    """Whether the request could be a wait stream, which its route may hand over to the protocol once it
    has answered (``stateport.http.waits.StreamHandoff``)."""
    path: str = scope["path"]
    return scope["method"] == "GET" and path.endswith(STREAM_SUFFIX)


def park(scope: Any, resume: Resume) -> Hold | None:
    """For the protocol: park the request if this process parks it (see ``Parking.park``)."""
    entry = parking_for()
    return None if entry is None else entry.park(scope, resume)


def _run_ids(path: str) -> tuple[str, str] | None:
    """``(dag_id, run_id)`` of an outcome path, as the route's template reads them; None otherwise."""
    if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
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
